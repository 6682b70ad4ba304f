-- betting.settle_market: the current definition (a repeatable file, see mesh/migrate.py: edit it in
-- place; it is applied again whenever its content is new).
--
-- Settling a market, set-based (created by 0004, which explains the steps: legs, decided bets,
-- one ledger transaction with bulk postings, liability, outbox). The settlement service decides
-- each outcome's result and return per unit; this function moves the money. Calling it again at the
-- same version changes nothing.
--
-- Bet builders (PlaceBetRequest.bet_builder_odds, session 19): 2-10 legs on one match, priced
-- together by the own model (pricing.builder). The bet stands at its own odds, not the product of
-- its legs' odds, so it is settled by its own rule once every leg is known or one has lost:
--   * a leg lost: lost, as an accumulator;
--   * every leg won outright (return per unit = its odds): won, paying its potential payout (the
--     stake left times the builder's odds, rounded down, as placed);
--   * otherwise (a leg void, or only partly won or lost by a provider's void factor): void, the
--     stake left comes back.
-- A bet builder is told from its legs: more than one, all on one match (an accumulator's legs are on
-- different matches, and PlaceBet refuses same-match legs that are not a bet builder).
--
-- Multi-leg bets are locked first (session 19): a bet with legs on two markets settled at the same
-- moment stayed open (see the lock below). A bet builder's legs are all settled at full time, in
-- parallel; before, it was left open in about half the runs of its test. An accumulator whose
-- matches end together could meet it too.
--
-- History: 0004 (this function); this file (bet builders, the lock). A database that applied what
-- was briefly 0024_bet_builder.sql keeps its record.

CREATE OR REPLACE FUNCTION betting.settle_market(
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

    -- The open bets with more than one leg on this market are locked first, in bet order. Two
    -- markets settled at once (a bet builder's legs at full time, an accumulator's matches ending
    -- together) would otherwise each leave such a bet open: neither sees the other's leg before it
    -- commits. Now the second waits here, and its statements below start after the first committed,
    -- so they see its legs settled.
    PERFORM 1 FROM betting.bets b
     WHERE b.status = 'accepted'
       AND b.bet_id IN (SELECT s.bet_id FROM betting.selections s
                         WHERE s.match_id = p_match AND s.market_key = p_market_key)
       AND EXISTS (SELECT 1 FROM betting.selections o WHERE o.bet_id = b.bet_id AND o.leg = 1)
     ORDER BY b.bet_id FOR UPDATE;

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
                -- a bet builder: its own payout when every leg won outright, else its stake back
                WHEN count(DISTINCT s.match_id) = 1 THEN
                     CASE WHEN bool_and(s.result = 1 AND s.return_per_unit = s.odds) THEN b.potential_payout
                          ELSE b.stake END
                -- an accumulator's odds are rounded down to two places, as when it was placed
                ELSE floor(b.stake * trunc(betting.product(s.return_per_unit), 2))::bigint END,
           CASE WHEN bool_or(s.return_per_unit = 0) THEN 2                      -- lost
                WHEN count(*) = 1 THEN min(s.result)                            -- a single: its leg
                WHEN count(DISTINCT s.match_id) = 1 THEN                        -- a bet builder
                     CASE WHEN bool_and(s.result = 1 AND s.return_per_unit = s.odds) THEN 1 ELSE 3 END
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
    -- The postings, written in bulk: the accounts are locked in account order (as every movement
    -- does), each posting's balance_after is the account's balance plus the running sum, and each
    -- account's balance moves once by its total (the CHECK still refuses a negative one). The
    -- per-row posting trigger stands aside for this one statement (betting.bulk_postings); the
    -- statement-level balance check still runs.
    CREATE TEMP TABLE IF NOT EXISTS settle_moves (ord bigserial, account_id text, amount bigint, bet_id uuid)
        ON COMMIT DROP;
    TRUNCATE settle_moves;
    INSERT INTO settle_moves (account_id, amount, bet_id)
    SELECT 'held:' || account_id || ':' || currency, -stake, bet_id FROM settle_batch
    UNION ALL
    SELECT 'player:' || account_id || ':' || currency, payout, bet_id FROM settle_batch WHERE payout > 0
    UNION ALL
    SELECT 'house:' || currency, sum(stake) - sum(payout), NULL FROM settle_batch
     GROUP BY currency HAVING sum(stake) <> sum(payout);
    PERFORM 1 FROM betting.ledger_accounts
     WHERE account_id IN (SELECT DISTINCT account_id FROM settle_moves) ORDER BY account_id FOR UPDATE;
    PERFORM set_config('betting.bulk_postings', 'on', true);
    INSERT INTO betting.postings (posting_id, transaction_id, account_id, amount, bet_id, balance_after)
    SELECT nextval('betting.postings_posting_id_seq'), v_txn, x.account_id, x.amount, x.bet_id, x.after
      FROM (SELECT m.account_id, m.amount, m.bet_id,
                   a.balance + sum(m.amount) OVER (PARTITION BY m.account_id ORDER BY m.ord) AS after
              FROM settle_moves m JOIN betting.ledger_accounts a ON a.account_id = m.account_id
             ORDER BY m.account_id, m.ord OFFSET 0) x;
    PERFORM set_config('betting.bulk_postings', 'off', true);
    UPDATE betting.ledger_accounts a SET balance = a.balance + t.total
      FROM (SELECT account_id, sum(amount) AS total FROM settle_moves GROUP BY account_id) t
     WHERE a.account_id = t.account_id;
    IF (SELECT count(DISTINCT account_id) FROM settle_moves) <>
       (SELECT count(*) FROM betting.ledger_accounts WHERE account_id IN (SELECT account_id FROM settle_moves)) THEN
        RAISE EXCEPTION 'a settlement posting names no ledger account' USING ERRCODE = 'foreign_key_violation';
    END IF;

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
