-- What the settlement service knows of each match's result, and every settlement it made.
CREATE TABLE settlement.matches (
    match_id    text PRIMARY KEY,
    home        integer NOT NULL DEFAULT 0,
    away        integer NOT NULL DEFAULT 0,
    ht_home     integer,
    ht_away     integer,
    ht_at       timestamptz,
    ended       boolean NOT NULL DEFAULT false,
    ended_at    timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- goals in the order they were stored in FEED (for next-goal markets); one row per feed event
CREATE TABLE settlement.goals (
    event_id    text PRIMARY KEY,
    match_id    text NOT NULL,
    stream_seq  bigint NOT NULL,
    side        text NOT NULL CHECK (side IN ('home', 'away')),
    received_at timestamptz NOT NULL
);
CREATE INDEX goals_match ON settlement.goals (match_id, stream_seq);

-- one row per market and settlement version: the results it was settled with
CREATE TABLE settlement.settlements (
    settlement_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    match_id      text NOT NULL,
    market_key    text NOT NULL,
    version       integer NOT NULL,
    origin        text NOT NULL CHECK (origin IN ('score', 'provider', 'manual')),
    results       jsonb NOT NULL,
    decided_at    timestamptz NOT NULL,
    bets_settled  integer NOT NULL DEFAULT 0,
    total_payout  bigint NOT NULL DEFAULT 0,
    actor         text NOT NULL DEFAULT '',
    reason        text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (match_id, market_key, version)
);
