-- The betting service owns the schema "betting" (bets, wallet accounts, ledger, outbox).
-- Tables arrive with the bet-acceptance issue, each in a new numbered migration.
CREATE SCHEMA IF NOT EXISTS betting;
