-- Rolling back a market's settlement (a corrected result, a provider's rollback): compensating
-- ledger entries, never edits. The bets whose leg on the market was settled at that version go
-- back to accepted (an accumulator too, whatever its other legs did), their legs on the market
-- back to open, their liability back. Money: each stake goes back to held, each payout comes back
-- from the player; a player who has already spent it owes the rest (a 'receivable' account, the
-- only player-side account that may go below zero), the house gives back what it took.

ALTER TABLE betting.ledger_accounts DROP CONSTRAINT ledger_accounts_kind_check;
ALTER TABLE betting.ledger_accounts ADD CONSTRAINT ledger_accounts_kind_check
    CHECK (kind IN ('player', 'held', 'house', 'cash', 'receivable'));
ALTER TABLE betting.ledger_accounts DROP CONSTRAINT player_and_held_never_negative;
ALTER TABLE betting.ledger_accounts ADD CONSTRAINT player_and_held_never_negative
    CHECK (kind IN ('house', 'cash', 'receivable') OR balance >= 0);

CREATE FUNCTION betting.rollback_market(p_match text, p_market_key text, p_version integer)
RETURNS TABLE (bets_reopened integer, payouts_reversed bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_txn uuid := gen_random_uuid();
    v_count integer;
    v_payout bigint;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS rollback_batch (
        bet_id uuid PRIMARY KEY, account_id text, currency char(3), stake bigint, payout bigint,
        potential_payout bigint) ON COMMIT DROP;
    TRUNCATE rollback_batch;

    WITH reopened AS (
        UPDATE betting.bets b SET status = 'accepted', payout = 0, result = 0, settled_at = NULL
         WHERE b.status = 'settled'
           AND b.bet_id IN (SELECT bet_id FROM betting.selections
                             WHERE match_id = p_match AND market_key = p_market_key AND settled_version = p_version)
        RETURNING b.bet_id, b.account_id, b.currency, b.stake, b.potential_payout,
                  (SELECT payout FROM betting.bets o WHERE o.bet_id = b.bet_id) AS old_payout)
    INSERT INTO rollback_batch SELECT bet_id, account_id, currency, stake, old_payout, potential_payout FROM reopened;
    -- (the sub-select reads the row as it was before this statement: the payout being reversed)

    UPDATE betting.selections SET result = 0, return_per_unit = NULL, settled_version = NULL
     WHERE match_id = p_match AND market_key = p_market_key AND settled_version = p_version;

    SELECT count(*), coalesce(sum(payout), 0) INTO v_count, v_payout FROM rollback_batch;
    IF v_count = 0 THEN
        RETURN QUERY SELECT 0, 0::bigint;
        RETURN;
    END IF;

    INSERT INTO betting.ledger_accounts (account_id, kind, owner, currency)
    SELECT DISTINCT 'receivable:' || account_id || ':' || currency, 'receivable', account_id, currency
      FROM rollback_batch WHERE payout > 0
    ON CONFLICT (account_id) DO NOTHING;

    -- every account this can touch, locked in account order (as every movement does) before reading
    -- what the players have
    PERFORM 1 FROM betting.ledger_accounts
     WHERE account_id IN (SELECT 'held:' || account_id || ':' || currency FROM rollback_batch
                          UNION SELECT 'player:' || account_id || ':' || currency FROM rollback_batch
                          UNION SELECT 'receivable:' || account_id || ':' || currency FROM rollback_batch
                          UNION SELECT 'house:' || currency FROM rollback_batch)
     ORDER BY account_id FOR UPDATE;

    CREATE TEMP TABLE IF NOT EXISTS rollback_moves (ord bigserial, account_id text, amount bigint, bet_id uuid)
        ON COMMIT DROP;
    TRUNCATE rollback_moves;
    -- per player: the payouts come back from what they have, the rest is owed
    WITH owed AS (
        SELECT r.account_id, r.currency, sum(r.payout) AS total, a.balance
          FROM rollback_batch r JOIN betting.ledger_accounts a
            ON a.account_id = 'player:' || r.account_id || ':' || r.currency
         WHERE r.payout > 0 GROUP BY r.account_id, r.currency, a.balance)
    INSERT INTO rollback_moves (account_id, amount, bet_id)
    SELECT 'held:' || account_id || ':' || currency, stake, bet_id FROM rollback_batch
    UNION ALL
    SELECT 'player:' || account_id || ':' || currency, -least(total, balance), NULL FROM owed WHERE least(total, balance) > 0
    UNION ALL
    SELECT 'receivable:' || account_id || ':' || currency, -(total - balance), NULL FROM owed WHERE total > balance
    UNION ALL
    SELECT 'house:' || currency, sum(payout) - sum(stake), NULL FROM rollback_batch
     GROUP BY currency HAVING sum(payout) <> sum(stake);

    INSERT INTO betting.transactions (transaction_id, kind, owner, currency, reason)
    SELECT v_txn, 'correction', '', min(currency), 'rollback ' || p_match || ' ' || p_market_key || ' v' || p_version
      FROM rollback_batch;
    PERFORM set_config('betting.bulk_postings', 'on', true);
    INSERT INTO betting.postings (posting_id, transaction_id, account_id, amount, bet_id, balance_after)
    SELECT nextval('betting.postings_posting_id_seq'), v_txn, x.account_id, x.amount, x.bet_id, x.after
      FROM (SELECT m.account_id, m.amount, m.bet_id,
                   a.balance + sum(m.amount) OVER (PARTITION BY m.account_id ORDER BY m.ord) AS after
              FROM rollback_moves m JOIN betting.ledger_accounts a ON a.account_id = m.account_id
             ORDER BY m.account_id, m.ord OFFSET 0) x;
    PERFORM set_config('betting.bulk_postings', 'off', true);
    UPDATE betting.ledger_accounts a SET balance = a.balance + t.total
      FROM (SELECT account_id, sum(amount) AS total FROM rollback_moves GROUP BY account_id) t
     WHERE a.account_id = t.account_id;

    INSERT INTO betting.liability AS li (match_id, market_key, outcome_id, currency, amount)
    SELECT s.match_id, s.market_key, s.outcome_id, r.currency, sum(r.potential_payout)
      FROM rollback_batch r JOIN betting.selections s ON s.bet_id = r.bet_id
     GROUP BY 1, 2, 3, 4
    ON CONFLICT (match_id, market_key, outcome_id, currency) DO UPDATE SET amount = li.amount + excluded.amount;

    INSERT INTO betting.outbox (subject, msg_id, payload, bet_id)
    SELECT 'bets.' || regexp_replace(account_id, '[.\s*>]', '_', 'g') || '.' || bet_id,
           bet_id || ':reopened:' || p_market_key || ':' || p_version, NULL, bet_id
      FROM rollback_batch;
    PERFORM pg_notify('betting_outbox', '');

    RETURN QUERY SELECT v_count, v_payout;
END $$;
