-- Cash-outs spread over 16 house accounts per currency (house:<cur>:0 .. house:<cur>:15, kind
-- 'house', chosen by the bet id) instead of all posting to house:<cur>. Every posting moves its
-- account's balance, so each cash-out held the one house row locked until its commit: cash-outs
-- went one commit at a time, ~250/s here, when a goal sets off a burst of automatic cash-outs
-- (make bench-auto). The house is the sum of its accounts (kind 'house'), as the reports and the
-- reconciliation already read it. Settlements and rollbacks, one bulk transaction each, keep
-- posting to house:<cur>. betting.cash_out is otherwise as in 0013.

CREATE OR REPLACE FUNCTION betting.cash_out(p_bet_id uuid, p_account text, p_request_id text, p_digest bytea,
                                 p_amount bigint, p_open_legs smallint[])
RETURNS TABLE (outcome text, request_digest bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_bet betting.bets%ROWTYPE;
    v_txn uuid := gen_random_uuid();
    v_house text;
BEGIN
    -- an earlier call with this request id: its answer, whatever the bet is now
    RETURN QUERY SELECT 'exists'::text, c.request_digest FROM betting.cash_outs c
                  WHERE c.account_id = p_account AND c.request_id = p_request_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO v_bet FROM betting.bets b WHERE b.bet_id = p_bet_id AND b.account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::bytea;
        RETURN;
    END IF;
    IF v_bet.status <> 'accepted' THEN
        RETURN QUERY SELECT ('not_open:' || v_bet.status)::text, NULL::bytea;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM betting.selections s
                WHERE s.bet_id = p_bet_id AND s.leg = ANY (p_open_legs) AND s.return_per_unit IS NOT NULL) THEN
        RETURN QUERY SELECT 'changed'::text, NULL::bytea;   -- a leg was settled since it was priced
        RETURN;
    END IF;
    IF p_amount > v_bet.potential_payout THEN
        RAISE EXCEPTION 'cash-out amount % is above the potential payout %', p_amount, v_bet.potential_payout
            USING ERRCODE = 'check_violation';
    END IF;

    INSERT INTO betting.cash_outs (bet_id, account_id, request_id, request_digest, amount)
    VALUES (p_bet_id, p_account, p_request_id, p_digest, p_amount);
    UPDATE betting.bets SET status = 'cashed_out', payout = p_amount, settled_at = clock_timestamp()
     WHERE bet_id = p_bet_id;

    v_house := 'house:' || v_bet.currency || ':' || (abs(hashtext(p_bet_id::text)) % 16);  -- a shard
    INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency)
    VALUES (v_house, 'house', '', v_bet.currency) ON CONFLICT (account_id) DO NOTHING;
    INSERT INTO betting.transactions (transaction_id, kind, owner, currency, bet_id, request_id, request_digest)
    VALUES (v_txn, 'cash_out', p_account, v_bet.currency, p_bet_id, p_request_id, p_digest);
    PERFORM 1 FROM betting.ledger_accounts a
     WHERE a.account_id IN ('held:' || p_account || ':' || v_bet.currency,
                            'player:' || p_account || ':' || v_bet.currency, v_house)
     ORDER BY a.account_id FOR UPDATE;
    -- one statement: the balance check runs per statement (0004)
    INSERT INTO betting.postings (transaction_id, account_id, amount, bet_id)
    SELECT v_txn, m.account_id, m.amount, p_bet_id
      FROM (VALUES ('held:' || p_account || ':' || v_bet.currency, -v_bet.stake),
                   ('player:' || p_account || ':' || v_bet.currency, p_amount),
                   (v_house, v_bet.stake - p_amount)) AS m(account_id, amount)
     WHERE m.amount <> 0
     ORDER BY m.account_id;

    UPDATE betting.liability l SET amount = l.amount - v_bet.potential_payout
      FROM betting.selections s
     WHERE s.bet_id = p_bet_id AND l.match_id = s.match_id AND l.market_key = s.market_key
       AND l.outcome_id = s.outcome_id AND l.currency = v_bet.currency;

    INSERT INTO betting.outbox (subject, msg_id, payload, bet_id)
    VALUES ('bets.' || regexp_replace(p_account, '[.\s*>]', '_', 'g') || '.' || p_bet_id,
            p_bet_id || ':cashed_out:0', NULL, p_bet_id);
    PERFORM pg_notify('betting_outbox', '');

    RETURN QUERY SELECT 'cashed_out'::text, p_digest;
END $$;
