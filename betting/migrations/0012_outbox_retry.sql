-- An outbox event JetStream refused is tried again later, not every round: retry_at is when
-- (1 s after the first refusal, doubling, at most a minute), attempts how often it was refused.
-- The relay takes only events without a retry_at in the future, so refused events neither take a
-- round's places from the events behind them nor cost a JetStream request each round.
ALTER TABLE betting.outbox
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_at timestamptz;
