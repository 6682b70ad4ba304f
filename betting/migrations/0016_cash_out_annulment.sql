-- A bet cancel reaches cashed-out bets too. A provider's bet_cancel (or a trader's VoidMarket) says
-- the bets placed in a window should never have stood, e.g. accepted after a goal the feed reported
-- late. Before this, a cashed-out bet was left alone, so a bettor who backed a goal already scored
-- and cashed out at once kept the cash-out the cancel was meant to take back. Now the cash-out is
-- annulled first and the cancel then treats the bet as if it had never been cashed out:
--   betting.annul_cash_outs (called by the cancel before it voids the legs): each cashed-out bet
--   placed in the window with an open leg on the market goes back to accepted; one correction
--   transaction puts each stake back in held and takes each cash-out back from the player (what
--   they no longer have is owed, on their receivable account, as for a settlement rolled back);
--   the house gives back what it kept; the bets' liability comes back; the cash-out is marked
--   annulled by the cancel. The cancel then voids the leg: a single is settled void (its stake
--   back), an accumulator rides on its other legs.
--   betting.restore_cash_outs (called when the cancel is rolled back, after its void is): each
--   cash-out that cancel annulled is put back if its bet is open again (accepted): the same money
--   moves as the cash-out did. A bet cashed out again meanwhile keeps its new cash-out.
-- A bet may now be cashed out again after an annulment: one standing cash-out per bet.

ALTER TABLE betting.cash_outs ADD COLUMN annulled_by text, ADD COLUMN annulled_at timestamptz;
ALTER TABLE betting.cash_outs DROP CONSTRAINT cash_outs_pkey;
CREATE UNIQUE INDEX cash_outs_standing ON betting.cash_outs (bet_id) WHERE annulled_by IS NULL;
CREATE INDEX cash_outs_annulled ON betting.cash_outs (annulled_by) WHERE annulled_by IS NOT NULL;

-- the bets whose cash-out is annulled or restored, filled by the caller
CREATE FUNCTION betting.new_cash_out_batch() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS cash_out_batch (
        bet_id uuid PRIMARY KEY, account_id text, currency char(3), stake bigint, amount bigint,
        potential_payout bigint, cancel_id text) ON COMMIT DROP;
    TRUNCATE cash_out_batch;
END $$;

-- the money of annulled (p_sign = 1) or restored (p_sign = -1) cash-outs in cash_out_batch, one
-- correction transaction: held +stake, player -amount (at most their balance, the rest owed on
-- receivable), house amount - stake; reversed for a restore (which never owes anything). Then
-- the liability and a '<bet>:<p_event>:<cancel>' event per bet. Returns (bets, amount).
CREATE FUNCTION betting.move_cash_outs(p_sign integer, p_reason text, p_event text)
RETURNS TABLE (moved integer, moved_amount bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_txn uuid := gen_random_uuid();
    v_count integer;
    v_amount bigint;
BEGIN
    SELECT count(*), coalesce(sum(c.amount), 0) INTO v_count, v_amount FROM cash_out_batch c;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;
    INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency)
    SELECT DISTINCT 'receivable:' || account_id || ':' || currency, 'receivable', account_id, currency
      FROM cash_out_batch WHERE p_sign = 1
    ON CONFLICT (account_id) DO NOTHING;
    INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency)
    SELECT DISTINCT 'house:' || currency, 'house', '', currency FROM cash_out_batch
    ON CONFLICT (account_id) DO NOTHING;
    -- every account this can touch, locked in account order (as every movement does) before
    -- reading what the players have
    PERFORM 1 FROM betting.ledger_accounts
     WHERE account_id IN (SELECT 'held:' || account_id || ':' || currency FROM cash_out_batch
                          UNION SELECT 'player:' || account_id || ':' || currency FROM cash_out_batch
                          UNION SELECT 'receivable:' || account_id || ':' || currency FROM cash_out_batch
                          UNION SELECT 'house:' || currency FROM cash_out_batch)
     ORDER BY account_id FOR UPDATE;

    INSERT INTO betting.transactions (transaction_id, kind, owner, currency, bet_id, reason)
    SELECT v_txn, 'correction', CASE WHEN count(DISTINCT account_id) = 1 THEN min(account_id) ELSE '' END,
           min(currency), CASE WHEN count(*) = 1 THEN min(bet_id::text)::uuid END, p_reason
      FROM cash_out_batch;
    -- one statement: the balance check runs per statement (0004). Per bet, in bet order, the
    -- player pays back from what they have; the rest is owed.
    INSERT INTO betting.postings (transaction_id, account_id, amount, bet_id)
    SELECT v_txn, m.account_id, m.amount, m.bet_id
      FROM (SELECT 'held:' || c.account_id || ':' || c.currency AS account_id, p_sign * c.stake AS amount, c.bet_id
              FROM cash_out_batch c
            UNION ALL
            SELECT 'player:' || x.account_id || ':' || x.currency, -p_sign * x.paid, x.bet_id
              FROM (SELECT c.account_id, c.currency, c.bet_id,
                           CASE WHEN p_sign = -1 THEN c.amount
                                ELSE greatest(0, least(c.amount, a.balance - (sum(c.amount) OVER w - c.amount)))
                           END AS paid
                      FROM cash_out_batch c
                      JOIN betting.ledger_accounts a ON a.account_id = 'player:' || c.account_id || ':' || c.currency
                    WINDOW w AS (PARTITION BY c.account_id, c.currency ORDER BY c.bet_id)) x
             WHERE x.paid > 0
            UNION ALL
            SELECT 'receivable:' || x.account_id || ':' || x.currency, -(x.amount - x.paid), x.bet_id
              FROM (SELECT c.account_id, c.currency, c.bet_id, c.amount,
                           greatest(0, least(c.amount, a.balance - (sum(c.amount) OVER w - c.amount))) AS paid
                      FROM cash_out_batch c
                      JOIN betting.ledger_accounts a ON a.account_id = 'player:' || c.account_id || ':' || c.currency
                    WINDOW w AS (PARTITION BY c.account_id, c.currency ORDER BY c.bet_id)) x
             WHERE p_sign = 1 AND x.amount > x.paid
            UNION ALL
            SELECT 'house:' || c.currency, p_sign * (sum(c.amount) - sum(c.stake)), NULL
              FROM cash_out_batch c GROUP BY c.currency HAVING sum(c.amount) <> sum(c.stake)) m
     ORDER BY m.account_id;

    -- the bets' liability: back for an annulment, released again for a restore
    INSERT INTO betting.liability AS li (match_id, market_key, outcome_id, currency, amount)
    SELECT s.match_id, s.market_key, s.outcome_id, c.currency, p_sign * sum(c.potential_payout)
      FROM cash_out_batch c JOIN betting.selections s ON s.bet_id = c.bet_id
     GROUP BY 1, 2, 3, 4
    ON CONFLICT (match_id, market_key, outcome_id, currency) DO UPDATE SET amount = li.amount + excluded.amount;

    INSERT INTO betting.outbox (subject, msg_id, payload, bet_id)
    SELECT 'bets.' || regexp_replace(c.account_id, '[.\s*>]', '_', 'g') || '.' || c.bet_id,
           c.bet_id || ':' || p_event || ':' || c.cancel_id, NULL, c.bet_id
      FROM cash_out_batch c;
    PERFORM pg_notify('betting_outbox', '');
    RETURN QUERY SELECT v_count, v_amount;
END $$;

CREATE FUNCTION betting.annul_cash_outs(p_match text, p_market_key text, p_start timestamptz,
                                        p_end timestamptz, p_cancel text)
RETURNS TABLE (bets_reopened integer, amount bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM betting.new_cash_out_batch();
    WITH hit AS (
        UPDATE betting.bets b SET status = 'accepted', payout = 0, result = 0, settled_at = NULL
         WHERE b.status = 'cashed_out' AND b.placed_at >= p_start AND (p_end IS NULL OR b.placed_at < p_end)
           AND EXISTS (SELECT 1 FROM betting.selections s
                        WHERE s.bet_id = b.bet_id AND s.match_id = p_match AND s.market_key = p_market_key
                          AND s.settled_version IS NULL AND s.cancelled_by IS NULL)
        RETURNING b.bet_id, b.account_id, b.currency, b.stake, b.potential_payout)
    INSERT INTO cash_out_batch
    SELECT h.bet_id, h.account_id, h.currency, h.stake, c.amount, h.potential_payout, p_cancel
      FROM hit h JOIN betting.cash_outs c ON c.bet_id = h.bet_id AND c.annulled_by IS NULL;
    UPDATE betting.cash_outs c SET annulled_by = p_cancel, annulled_at = now()
      FROM cash_out_batch x WHERE c.bet_id = x.bet_id AND c.annulled_by IS NULL;
    RETURN QUERY SELECT * FROM betting.move_cash_outs(1, 'cash-out annulled by cancel ' || p_cancel,
                                                      'cash_out_annulled');
END $$;

CREATE FUNCTION betting.restore_cash_outs(p_cancels text[])
RETURNS TABLE (bets_restored integer, amount bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM betting.new_cash_out_batch();
    WITH back AS (
        UPDATE betting.bets b SET status = 'cashed_out', payout = c.amount, result = 0, settled_at = clock_timestamp()
          FROM betting.cash_outs c
         WHERE c.bet_id = b.bet_id AND c.annulled_by = ANY (p_cancels) AND b.status = 'accepted'
        RETURNING b.bet_id, b.account_id, b.currency, b.stake, c.amount, b.potential_payout, c.annulled_by)
    INSERT INTO cash_out_batch SELECT * FROM back;
    UPDATE betting.cash_outs c SET annulled_by = NULL, annulled_at = NULL
      FROM cash_out_batch x WHERE c.bet_id = x.bet_id AND c.annulled_by = x.cancel_id;
    RETURN QUERY SELECT * FROM betting.move_cash_outs(-1, 'cash-out restored: its cancel rolled back',
                                                      'cash_out_restored');
END $$;
