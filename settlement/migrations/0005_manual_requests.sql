-- Manual settlement calls, idempotent by request id: the first answer is kept and given again.
CREATE TABLE settlement.requests (
    request_id  text PRIMARY KEY,
    digest      bytea NOT NULL,
    response    bytea NOT NULL,               -- the serialized Settlement answered
    actor       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
