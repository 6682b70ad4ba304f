-- Loss limits (responsible gambling): a player's own limit on their net loss over a rolling
-- 24 hours, 7 days and 30 days, with the cooling-off rule of the other limits (0014).
--
-- The net loss of a period is what the player staked on the bets placed in it less what those
-- bets returned; a bet still open counts as lost, so a bet is refused when, if it lost, the loss
-- would pass a limit (betting.place_bet, SQLSTATE LB006). Both sides are kept by the hour the bets
-- were placed in, so the check adds up at most 721 small rows whatever the player's number of bets:
--   - stakes: betting.stake_buckets (0009), now kept 31 days instead of 24 hours (a rejected bet
--     takes its stake back out of its bucket, as before);
--   - returns: betting.bet_returns, kept by a trigger on betting.bets: whenever a bet's status or
--     payout changes, the difference in what it returned (a settlement's payout, a void's stake, a
--     cash-out; and back out on a rollback or an annulment) goes to its hour.
--
-- The trigger never waits for a lock, so it can never deadlock with the settlement or cash-out
-- transaction it runs in: it adds to the hour's row unless another transaction holds that row,
-- and then writes a row of its own (an hour is the sum of its rows). Rows older than 31 days are
-- deleted by the trigger, skipping any another transaction holds.
-- the same columns as the deposit limits: an amount per period, the pending set and its time
CREATE TABLE betting.loss_limits (LIKE betting.deposit_limits INCLUDING ALL);

ALTER TABLE betting.protection_log DROP CONSTRAINT protection_log_action_check;
ALTER TABLE betting.protection_log ADD CONSTRAINT protection_log_action_check
    CHECK (action IN ('stake_limits', 'deposit_limits', 'loss_limits', 'break', 'suspend', 'resume'));

CREATE TABLE betting.bet_returns (
    account_id text NOT NULL,
    currency   char(3) NOT NULL,
    hour       timestamptz NOT NULL,  -- the UTC hour the bets were placed in
    returned   bigint NOT NULL
);
CREATE INDEX bet_returns_hour ON betting.bet_returns (account_id, currency, hour) INCLUDE (returned);

-- What a bet has returned to the player, by its status. A rejected bet: nothing, since its stake
-- left its stake bucket when it was rejected.
CREATE FUNCTION betting.bet_returned(p_status text, p_stake bigint, p_payout bigint) RETURNS bigint
IMMUTABLE LANGUAGE sql AS $$
    SELECT CASE p_status WHEN 'settled' THEN p_payout WHEN 'cashed_out' THEN p_payout
                         WHEN 'voided' THEN p_stake ELSE 0 END
$$;

CREATE FUNCTION betting.count_return() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_delta bigint := betting.bet_returned(NEW.status, NEW.stake, NEW.payout)
                      - betting.bet_returned(OLD.status, OLD.stake, OLD.payout);
    v_hour timestamptz := date_trunc('hour', NEW.placed_at, 'UTC');
BEGIN
    IF v_delta = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE betting.bet_returns r SET returned = r.returned + v_delta
     WHERE r.ctid = (SELECT x.ctid FROM betting.bet_returns x
                      WHERE x.account_id = NEW.account_id AND x.currency = NEW.currency AND x.hour = v_hour
                      LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
        INSERT INTO betting.bet_returns (account_id, currency, hour, returned)
        VALUES (NEW.account_id, NEW.currency, v_hour, v_delta);
    END IF;
    DELETE FROM betting.bet_returns r
     WHERE r.ctid IN (SELECT x.ctid FROM betting.bet_returns x
                       WHERE x.account_id = NEW.account_id AND x.currency = NEW.currency
                         AND x.hour < date_trunc('hour', now() - interval '31 days', 'UTC')
                       FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END $$;

CREATE TRIGGER bets_count_return AFTER UPDATE OF status, payout ON betting.bets
    FOR EACH ROW
    WHEN ((OLD.status IS DISTINCT FROM NEW.status OR OLD.payout IS DISTINCT FROM NEW.payout)
          AND (OLD.status NOT IN ('pending', 'accepted') OR NEW.status NOT IN ('pending', 'accepted')))
    EXECUTE FUNCTION betting.count_return();

-- the last 31 days as they stand: the stakes of the hours betting.place_bet has deleted already,
-- and what the bets returned
INSERT INTO betting.stake_buckets (account_id, currency, hour, staked)
SELECT b.account_id, b.currency, date_trunc('hour', b.placed_at, 'UTC'), sum(b.stake)
FROM betting.bets b
WHERE b.placed_at >= date_trunc('hour', now() - interval '31 days', 'UTC') AND b.status <> 'rejected'
GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;

INSERT INTO betting.bet_returns (account_id, currency, hour, returned)
SELECT b.account_id, b.currency, date_trunc('hour', b.placed_at, 'UTC'),
       sum(betting.bet_returned(b.status, b.stake, b.payout))
FROM betting.bets b
WHERE b.placed_at >= date_trunc('hour', now() - interval '31 days', 'UTC')
GROUP BY 1, 2, 3
HAVING sum(betting.bet_returned(b.status, b.stake, b.payout)) <> 0;
