-- FEED events the settler could not apply (a malformed event, a bug it exposes), parked so that
-- settlement goes on with the events behind them instead of stopping at the first one it cannot
-- apply. settlement.server parks an event only after it failed three times for a reason that is
-- not a dependency being down (PostgreSQL or NATS lost are retried without end, nothing parked);
-- `python -m settlement.failed` lists them and applies them again once the cause is fixed.
CREATE TABLE settlement.failed_events (
    stream_seq   bigint PRIMARY KEY,                 -- the event's sequence in the FEED stream
    subject      text NOT NULL,
    match_id     text NOT NULL DEFAULT '',           -- '' when the message is not a FeedEvent at all
    event_id     text NOT NULL DEFAULT '',
    kind         text NOT NULL DEFAULT '',
    payload      bytea NOT NULL,                     -- the message's bytes as they were in the stream
    error        text NOT NULL,
    attempts     integer NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    retried_at   timestamptz,                        -- applied again by hand, successfully
    retry_error  text                                -- the last failed attempt by hand
);
CREATE INDEX failed_events_open ON settlement.failed_events (stream_seq) WHERE retried_at IS NULL;
