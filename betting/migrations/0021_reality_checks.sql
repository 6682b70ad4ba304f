-- Reality checks (responsible gambling): how often the player's apps remind them how long they
-- have been playing and how their bets of that time stand (WalletService.GetActivity, read from
-- betting.bets by the bets_account index). Kept with the account, so every device follows it;
-- no row: never. Changes are logged in protection_log as the limits are.
CREATE TABLE betting.reality_checks (
    account_id       text PRIMARY KEY,
    interval_seconds integer NOT NULL CHECK (interval_seconds BETWEEN 900 AND 86400),
    set_at           timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE betting.protection_log DROP CONSTRAINT protection_log_action_check;
ALTER TABLE betting.protection_log ADD CONSTRAINT protection_log_action_check
    CHECK (action IN ('stake_limits', 'deposit_limits', 'loss_limits', 'reality_check', 'break', 'suspend',
                      'resume'));
