-- Every bet cancel received (and whether it was rolled back).
CREATE TABLE settlement.cancels (
    cancel_id     text PRIMARY KEY,            -- the feed event id
    match_id      text NOT NULL,
    market_key    text NOT NULL,
    start_time    timestamptz NOT NULL,
    end_time      timestamptz,
    reason        text NOT NULL DEFAULT '',
    bets_voided   integer NOT NULL DEFAULT 0,
    rolled_back_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cancels_market ON settlement.cancels (match_id, market_key);
