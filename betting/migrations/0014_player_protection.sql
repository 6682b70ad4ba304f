-- Player protection (responsible gambling), on top of the stake limits of 0002/0009:
--
-- 1. A limit a player sets on themself is tightened at once but loosened (raised, or removed)
--    only after a cooling-off period: the new set waits in pending_* until pending_from, and
--    until then the tighter of the old and the new holds (betting.domain.protection decides;
--    betting.place_bet reads the pending set once pending_from has passed).
-- 2. Deposit limits over a rolling 24 hours, 7 days and 30 days, same rule. The wallet locks the
--    row before it adds up the deposits, so two deposits at once cannot both slip under it.
-- 3. Breaks (a time-out or self-exclusion): no bet (betting.place_bet, SQLSTATE LB004) and no
--    deposit until `until`. A break is never shortened: `until` only moves later.
-- 4. Every change a player makes to these is kept in protection_log (who, when, what).

ALTER TABLE betting.account_limits
    ADD COLUMN pending_max_stake bigint,
    ADD COLUMN pending_max_daily_stake bigint,
    ADD COLUMN pending_from timestamptz,          -- NULL: nothing pending
    ADD CONSTRAINT account_limits_positive CHECK (max_stake > 0 AND max_daily_stake > 0
                                                  AND pending_max_stake > 0 AND pending_max_daily_stake > 0);

CREATE TABLE betting.deposit_limits (
    account_id          text NOT NULL,
    currency            char(3) NOT NULL,
    max_daily           bigint CHECK (max_daily > 0),     -- NULL: no limit over that period
    max_weekly          bigint CHECK (max_weekly > 0),
    max_monthly         bigint CHECK (max_monthly > 0),
    pending_max_daily   bigint CHECK (pending_max_daily > 0),
    pending_max_weekly  bigint CHECK (pending_max_weekly > 0),
    pending_max_monthly bigint CHECK (pending_max_monthly > 0),
    pending_from        timestamptz,                        -- NULL: nothing pending
    PRIMARY KEY (account_id, currency)
);

CREATE TABLE betting.breaks (
    account_id text PRIMARY KEY,
    until      timestamptz NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now()
);

-- Append-only, as the ledger is.
CREATE TABLE betting.protection_log (
    id         bigserial PRIMARY KEY,
    account_id text NOT NULL,
    action     text NOT NULL CHECK (action IN ('stake_limits', 'deposit_limits', 'break')),
    detail     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX protection_log_account ON betting.protection_log (account_id, id);
CREATE TRIGGER protection_log_append_only BEFORE UPDATE OR DELETE ON betting.protection_log
    FOR EACH ROW EXECUTE FUNCTION betting.immutable();

-- a player's deposits over the last 30 days, for the deposit limits
CREATE INDEX transactions_deposits ON betting.transactions (owner, currency, created_at) WHERE kind = 'deposit';
