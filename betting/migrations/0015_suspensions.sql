-- The operator's suspension of a player's account (PlayerAdminService): no bet
-- (betting.place_bet, SQLSTATE LB005) and no deposit while the row exists; withdrawals and
-- cash-outs still work. Lifting it deletes the row; betting.protection_log keeps both (actions
-- 'suspend' and 'resume', with the operator and the reason).
CREATE TABLE betting.suspensions (
    account_id   text PRIMARY KEY,
    reason       text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    suspended_by text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE betting.protection_log DROP CONSTRAINT protection_log_action_check;
ALTER TABLE betting.protection_log ADD CONSTRAINT protection_log_action_check
    CHECK (action IN ('stake_limits', 'deposit_limits', 'break', 'suspend', 'resume'));
