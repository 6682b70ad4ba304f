-- An operator's suspension may freeze withdrawals as well (PlayerAdminService.SuspendPlayer with
-- freeze_withdrawals, for a fraud or anti-money-laundering review). A withdrawal reads the flag
-- after its postings, under its player's balance row lock; the freeze takes the player's balance
-- rows before it commits: so no withdrawal commits after the freeze has.
ALTER TABLE betting.suspensions ADD COLUMN withdrawals_frozen boolean NOT NULL DEFAULT false;
