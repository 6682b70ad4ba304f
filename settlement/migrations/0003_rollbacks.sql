-- A settlement version that was rolled back (its bets reopened); the next settlement of the market
-- takes the next version.
ALTER TABLE settlement.settlements ADD COLUMN rolled_back_at timestamptz, ADD COLUMN rollback_reason text;
