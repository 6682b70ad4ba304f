-- Settling a market, set-based: the settlement service decides each outcome's result and return
-- per unit stake (with pricing.settlement, the one implementation of the rules) and calls
-- betting.settle_market; this function moves the money. One statement, one transaction:
--   1. the open legs on the market get their result and return per unit (a bet placed after the
--      result was known - past-posting - gets 1: its stake back, never a win);
--   2. every accepted bet that is now decided (all legs known, or one leg lost) is settled:
--      payout = floor(stake x its leg's return per unit) for a single, floor(stake x the product of
--      its legs' returns rounded down to two places) for an accumulator (a void leg counts 1.00),
--      status settled, at this settlement version;
--   3. one ledger transaction: each bet's stake leaves its held account, each payout goes to its
--      player account, the house takes the difference per currency;
--   4. the bets' liability is released and a 'settled' event per bet goes to the outbox (the relay
--      builds the event from the bet).
-- Legs and bets already settled at this version are left alone, so calling it again with the same
-- version (a redelivered result, a second settlement replica) changes nothing.

CREATE AGGREGATE betting.product(numeric) (sfunc = numeric_mul, stype = numeric, initcond = '1');

ALTER TABLE betting.selections ADD COLUMN return_per_unit numeric, ADD COLUMN settled_version integer;
ALTER TABLE betting.postings ADD COLUMN bet_id uuid;
ALTER TABLE betting.outbox ALTER COLUMN payload DROP NOT NULL, ADD COLUMN bet_id uuid;
CREATE INDEX selections_open_market ON betting.selections (match_id, market_key) WHERE settled_version IS NULL;

CREATE FUNCTION betting.settle_market(
    p_match text, p_market_key text, p_version integer, p_results jsonb, p_decided_at timestamptz)
RETURNS TABLE (bets_settled integer, total_payout bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_txn uuid := gen_random_uuid();
    v_count integer;
    v_payout bigint;
BEGIN
    -- p_results: [{"outcome_id": "home", "odds": "2.10", "result": 1, "rpu": "2.10"}, ...]
    CREATE TEMP TABLE IF NOT EXISTS settle_batch (
        bet_id uuid PRIMARY KEY, account_id text, currency char(3), stake bigint, potential_payout bigint,
        payout bigint, result smallint) ON COMMIT DROP;
    TRUNCATE settle_batch;

    UPDATE betting.selections s
       SET result = CASE WHEN b.placed_at > p_decided_at THEN 3 ELSE r.result END,
           return_per_unit = CASE WHEN b.placed_at > p_decided_at THEN 1 ELSE r.rpu END,
           settled_version = p_version
      FROM jsonb_to_recordset(p_results) AS r(outcome_id text, odds numeric, result smallint, rpu numeric),
           betting.bets b
     WHERE s.match_id = p_match AND s.market_key = p_market_key AND s.outcome_id = r.outcome_id
       AND s.odds = r.odds AND b.bet_id = s.bet_id AND b.status = 'accepted'
       AND s.settled_version IS DISTINCT FROM p_version;

    INSERT INTO settle_batch
    SELECT b.bet_id, b.account_id, b.currency, b.stake, b.potential_payout,
           CASE WHEN bool_or(s.return_per_unit = 0) THEN 0
                WHEN count(*) = 1 THEN floor(b.stake * min(s.return_per_unit))::bigint
                -- an accumulator's odds are rounded down to two places, as when it was placed
                ELSE floor(b.stake * trunc(betting.product(s.return_per_unit), 2))::bigint END,
           CASE WHEN bool_or(s.return_per_unit = 0) THEN 2                      -- lost
                WHEN count(*) = 1 THEN min(s.result)                            -- a single: its leg
                WHEN bool_and(s.return_per_unit = 1) THEN 3                     -- every leg void
                ELSE 1 END                                                      -- an accumulator that won
      FROM betting.bets b JOIN betting.selections s ON s.bet_id = b.bet_id
     WHERE b.status = 'accepted'
       AND b.bet_id IN (SELECT bet_id FROM betting.selections WHERE match_id = p_match AND market_key = p_market_key)
     GROUP BY b.bet_id
    HAVING bool_and(s.return_per_unit IS NOT NULL) OR bool_or(s.return_per_unit = 0);

    -- lock and flip the bets; one whose status changed meanwhile (another replica) drops out
    WITH done AS (
        UPDATE betting.bets b
           SET status = 'settled', payout = x.payout, result = x.result, settled_at = clock_timestamp(),
               settlement_version = p_version
          FROM settle_batch x
         WHERE b.bet_id = x.bet_id AND b.status = 'accepted'
        RETURNING b.bet_id)
    DELETE FROM settle_batch x WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.bet_id = x.bet_id);

    SELECT count(*), coalesce(sum(payout), 0) INTO v_count, v_payout FROM settle_batch;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;

    INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency)
    SELECT DISTINCT 'house:' || currency, 'house', '', currency FROM settle_batch
    ON CONFLICT (account_id) DO NOTHING;
    INSERT INTO betting.transactions (transaction_id, kind, owner, currency, reason)
    SELECT v_txn, 'settlement', '', min(currency), p_match || ' ' || p_market_key || ' v' || p_version
      FROM settle_batch;
    INSERT INTO betting.postings (transaction_id, account_id, amount, bet_id)
    SELECT v_txn, 'held:' || account_id || ':' || currency, -stake, bet_id FROM settle_batch
    UNION ALL
    SELECT v_txn, 'player:' || account_id || ':' || currency, payout, bet_id FROM settle_batch WHERE payout > 0
    UNION ALL
    SELECT v_txn, 'house:' || currency, sum(stake) - sum(payout), NULL FROM settle_batch
     GROUP BY currency HAVING sum(stake) <> sum(payout)
    ORDER BY 2;  -- accounts in a fixed order: two settlements never wait on each other in a cycle

    UPDATE betting.liability l SET amount = l.amount - x.total
      FROM (SELECT s.match_id, s.market_key, s.outcome_id, b.currency, sum(b.potential_payout) AS total
              FROM settle_batch b JOIN betting.selections s ON s.bet_id = b.bet_id
             GROUP BY 1, 2, 3, 4) x
     WHERE l.match_id = x.match_id AND l.market_key = x.market_key AND l.outcome_id = x.outcome_id
       AND l.currency = x.currency;

    INSERT INTO betting.outbox (subject, msg_id, payload, bet_id)
    SELECT 'bets.' || regexp_replace(account_id, '[.\s*>]', '_', 'g') || '.' || bet_id,
           bet_id || ':settled:' || p_version, NULL, bet_id
      FROM settle_batch;
    PERFORM pg_notify('betting_outbox', '');

    RETURN QUERY SELECT v_count, v_payout;
END $$;
