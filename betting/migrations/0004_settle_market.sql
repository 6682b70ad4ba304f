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

-- Balanced ledger transactions, checked per statement instead of per row at commit: the per-row
-- check summed the whole transaction once for every posting, quadratic for a settlement that
-- writes 200,000 postings in one transaction. Now every INSERT into postings must leave each
-- transaction it touches balanced: a transaction's postings are written in one statement.
DROP TRIGGER postings_balanced ON betting.postings;
DROP FUNCTION betting.check_balanced();
CREATE FUNCTION betting.check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE bad uuid;
BEGIN
    SELECT p.transaction_id INTO bad FROM betting.postings p
     WHERE p.transaction_id IN (SELECT DISTINCT transaction_id FROM inserted)
     GROUP BY p.transaction_id HAVING sum(p.amount) <> 0 LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', bad USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER postings_balanced AFTER INSERT ON betting.postings
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION betting.check_balanced();

-- the same posting trigger without a catalogue lookup per row (the sequence by name), standing
-- aside only while betting.settle_market writes its postings in bulk (it moves the balances itself)
DROP TRIGGER postings_apply ON betting.postings;
CREATE TRIGGER postings_apply BEFORE INSERT ON betting.postings FOR EACH ROW
    WHEN (coalesce(current_setting('betting.bulk_postings', true), '') <> 'on')
    EXECUTE FUNCTION betting.apply_posting();
CREATE OR REPLACE FUNCTION betting.apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE betting.ledger_accounts SET balance = balance + NEW.amount
     WHERE account_id = NEW.account_id
     RETURNING balance INTO NEW.balance_after;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no ledger account %', NEW.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    NEW.posting_id := nextval('betting.postings_posting_id_seq');
    RETURN NEW;
END $$;

CREATE AGGREGATE betting.product(numeric) (sfunc = numeric_mul, stype = numeric, initcond = '1');

ALTER TABLE betting.selections ADD COLUMN return_per_unit numeric, ADD COLUMN settled_version integer;
ALTER TABLE betting.postings ADD COLUMN bet_id uuid;

-- placing a bet writes its two hold postings in one statement (see the balance check above)
CREATE OR REPLACE FUNCTION betting.place_bet(
    p_bet_id uuid, p_account text, p_request_id text, p_digest bytea, p_currency char(3), p_stake bigint,
    p_policy smallint, p_status text, p_odds numeric, p_payout bigint, p_in_play boolean, p_delay float8,
    p_legs jsonb, p_max_liability bigint, p_max_daily bigint, p_now timestamptz, p_subject text, p_msg_id text,
    p_event bytea)
RETURNS TABLE (outcome text, bet_id uuid, balance bigint, placed_at timestamptz, decided_at timestamptz,
               request_digest bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := p_now;
    v_txn uuid := gen_random_uuid();
    v_balance bigint;
    v_staked bigint;
    v_own_max bigint;
    v_own_daily bigint;
    v_amount bigint;
    v_leg jsonb;
BEGIN
    INSERT INTO betting.bets AS b (bet_id, account_id, request_id, request_digest, currency, stake, policy, status,
                                   odds, potential_payout, in_play, placed_at, decide_at, decided_at)
    VALUES (p_bet_id, p_account, p_request_id, p_digest, p_currency, p_stake, p_policy, p_status, p_odds, p_payout,
            p_in_play, v_now, v_now + p_delay * interval '1 second',
            CASE WHEN p_status = 'accepted' THEN v_now END)
    ON CONFLICT (account_id, request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'exists'::text, b.bet_id, 0::bigint, b.placed_at, b.decided_at, b.request_digest
                     FROM betting.bets b WHERE b.account_id = p_account AND b.request_id = p_request_id;
        RETURN;
    END IF;

    INSERT INTO betting.selections (bet_id, leg, match_id, market_key, market_type, outcome_id, requested_odds,
                                    market_version, seen_version, odds)
    SELECT p_bet_id, (l.ord - 1)::smallint, l.v->>'match_id', l.v->>'market_key', l.v->>'market_type',
           l.v->>'outcome_id', (l.v->>'requested_odds')::numeric, (l.v->>'market_version')::bigint,
           (l.v->>'seen_version')::bigint, (l.v->>'odds')::numeric
    FROM jsonb_array_elements(p_legs) WITH ORDINALITY AS l(v, ord);

    -- the stake hold; the player's row lock taken here serialises this player's bets from now on
    INSERT INTO betting.transactions (transaction_id, kind, owner, currency, bet_id)
    VALUES (v_txn, 'stake_hold', p_account, p_currency, p_bet_id);
    -- lock the player's held and player rows in account order (as every other movement does)
    PERFORM 1 FROM betting.ledger_accounts a
     WHERE a.account_id IN ('held:' || p_account || ':' || p_currency, 'player:' || p_account || ':' || p_currency)
     ORDER BY a.account_id FOR UPDATE;
    SELECT a.balance INTO v_balance FROM betting.ledger_accounts a
     WHERE a.account_id = 'player:' || p_account || ':' || p_currency;
    IF v_balance IS NULL OR v_balance < p_stake THEN  -- the CHECK on the balance would refuse it too
        RAISE EXCEPTION 'stake % is more than the available balance', p_stake USING ERRCODE = 'LB001';
    END IF;
    INSERT INTO betting.postings (transaction_id, account_id, amount, bet_id)
    VALUES (v_txn, 'held:' || p_account || ':' || p_currency, p_stake, p_bet_id),
           (v_txn, 'player:' || p_account || ':' || p_currency, -p_stake, p_bet_id);
    v_balance := v_balance - p_stake;

    SELECT l.max_stake, l.max_daily_stake INTO v_own_max, v_own_daily
    FROM betting.account_limits l WHERE l.account_id = p_account AND l.currency = p_currency;
    IF v_own_max IS NOT NULL AND p_stake > v_own_max THEN
        RAISE EXCEPTION 'stake is above your limit a bet' USING ERRCODE = 'LB003', DETAIL = v_own_max::text;
    END IF;
    SELECT coalesce(sum(b.stake), 0) INTO v_staked FROM betting.bets b
    WHERE b.account_id = p_account AND b.currency = p_currency
      AND b.placed_at > v_now - interval '24 hours' AND b.status <> 'rejected';
    IF v_staked > coalesce(v_own_daily, p_max_daily) THEN
        RAISE EXCEPTION 'stakes over 24 hours would exceed your limit' USING ERRCODE = 'LB003';
    END IF;

    IF p_status = 'accepted' THEN
        FOR v_leg IN SELECT * FROM jsonb_array_elements(p_legs) LOOP
            INSERT INTO betting.liability AS li (match_id, market_key, outcome_id, currency, amount)
            VALUES (v_leg->>'match_id', v_leg->>'market_key', v_leg->>'outcome_id', p_currency, p_payout)
            ON CONFLICT (match_id, market_key, outcome_id, currency)
            DO UPDATE SET amount = li.amount + excluded.amount
            RETURNING li.amount INTO v_amount;
            IF v_amount > p_max_liability THEN
                RAISE EXCEPTION 'liability limit reached on % % %', v_leg->>'match_id', v_leg->>'market_key',
                    v_leg->>'outcome_id' USING ERRCODE = 'LB002';
            END IF;
        END LOOP;
    END IF;

    INSERT INTO betting.outbox (subject, msg_id, payload, balance, currency)
    VALUES (p_subject, p_msg_id, p_event, v_balance, p_currency);
    PERFORM pg_notify('betting_outbox', '');

    RETURN QUERY SELECT 'placed'::text, p_bet_id, v_balance, v_now,
                        CASE WHEN p_status = 'accepted' THEN v_now END, p_digest;
END $$;

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
