-- Partial cash-out: the bettor closes a part of an accepted bet's stake at the offer for that
-- part; the rest rides on at the same odds. The bet's stake and potential_payout are what is left
-- at risk (so settlement, rollback, voids and the liability work on them as before); what the
-- parts took is on the bet (cashed_out_stake, cashed_out_amount) and, part by part, in
-- betting.cash_outs (stake: the part closed, released: the potential payout it took with it,
-- partial). A whole cash-out's row has the bet's stake and potential payout then (backfilled
-- here: until now a bet's stake and potential payout never changed).
--
-- betting.cash_out takes the stake the offer was priced on (p_stake) and answers 'changed' when
-- the bet's is no longer that (a part cashed out meanwhile). For a part it takes the part and the
-- potential payout of what is left (betting.domain.cashout.split): one transaction moves the
-- part out of held, pays the amount, the house takes the difference, the liability drops by what
-- the part released, and the bettor's automatic cash-out goes (its amount was for the whole bet).
--
-- A bet cancel annuls every standing cash-out, whole or partial, of the bets it reaches: the bet
-- gets its whole stake and potential payout back, the money as in 0016. Rolling the cancel back
-- restores them when the bet is open (accepted) and was not cashed out again meanwhile.
--
-- What a bet returned (the loss limits' betting.bet_returns, GetActivity) counts the parts' amounts.

ALTER TABLE betting.bets
    ADD COLUMN cashed_out_stake bigint NOT NULL DEFAULT 0 CONSTRAINT bets_cashed_out_stake_check CHECK (cashed_out_stake >= 0),
    ADD COLUMN cashed_out_amount bigint NOT NULL DEFAULT 0 CONSTRAINT bets_cashed_out_amount_check CHECK (cashed_out_amount >= 0);

ALTER TABLE betting.cash_outs
    ADD COLUMN stake bigint, ADD COLUMN released bigint, ADD COLUMN partial boolean NOT NULL DEFAULT false;
UPDATE betting.cash_outs c SET stake = b.stake, released = b.potential_payout FROM betting.bets b WHERE b.bet_id = c.bet_id;
ALTER TABLE betting.cash_outs
    ALTER COLUMN stake SET NOT NULL, ALTER COLUMN released SET NOT NULL,
    ADD CONSTRAINT cash_outs_stake_check CHECK (stake > 0),
    ADD CONSTRAINT cash_outs_released_check CHECK (released >= 0);
DROP INDEX betting.cash_outs_standing;
CREATE UNIQUE INDEX cash_outs_standing_whole ON betting.cash_outs (bet_id) WHERE annulled_by IS NULL AND NOT partial;
CREATE INDEX cash_outs_standing ON betting.cash_outs (bet_id) WHERE annulled_by IS NULL;

DROP FUNCTION betting.cash_out(uuid, text, text, bytea, bigint, smallint[]);
CREATE FUNCTION betting.cash_out(p_bet_id uuid, p_account text, p_request_id text, p_digest bytea,
                                 p_amount bigint, p_open_legs smallint[], p_stake bigint,
                                 p_part bigint DEFAULT NULL, p_left_payout bigint DEFAULT NULL)
RETURNS TABLE (outcome text, request_digest bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_bet betting.bets%ROWTYPE;
    v_txn uuid := gen_random_uuid();
    v_house text;
    v_part bigint;
    v_released bigint;
    v_seq bigint;
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
    IF v_bet.stake <> p_stake OR EXISTS (
            SELECT 1 FROM betting.selections s
             WHERE s.bet_id = p_bet_id AND s.leg = ANY (p_open_legs) AND s.return_per_unit IS NOT NULL) THEN
        RETURN QUERY SELECT 'changed'::text, NULL::bytea;   -- a part cashed out or a leg settled since it was priced
        RETURN;
    END IF;
    IF p_part IS NULL THEN
        v_part := v_bet.stake;
        v_released := v_bet.potential_payout;
    ELSIF p_part <= 0 OR p_part >= v_bet.stake OR p_left_payout IS NULL OR p_left_payout < 0
          OR p_left_payout > v_bet.potential_payout THEN
        RAISE EXCEPTION 'part % of stake % leaving a potential payout of % out of %', p_part, v_bet.stake,
            p_left_payout, v_bet.potential_payout USING ERRCODE = 'check_violation';
    ELSE
        v_part := p_part;
        v_released := v_bet.potential_payout - p_left_payout;
    END IF;
    IF p_amount > v_released THEN
        RAISE EXCEPTION 'cash-out amount % is above the potential payout %', p_amount, v_released
            USING ERRCODE = 'check_violation';
    END IF;

    SELECT count(*) INTO v_seq FROM betting.cash_outs c WHERE c.bet_id = p_bet_id;
    INSERT INTO betting.cash_outs (bet_id, account_id, request_id, request_digest, amount, stake, released, partial)
    VALUES (p_bet_id, p_account, p_request_id, p_digest, p_amount, v_part, v_released, p_part IS NOT NULL);
    IF p_part IS NULL THEN
        UPDATE betting.bets SET status = 'cashed_out', payout = p_amount, settled_at = clock_timestamp()
         WHERE bet_id = p_bet_id;
    ELSE
        UPDATE betting.bets SET stake = stake - v_part, potential_payout = p_left_payout,
                                cashed_out_stake = cashed_out_stake + v_part,
                                cashed_out_amount = cashed_out_amount + p_amount, auto_cash_out = NULL
         WHERE bet_id = p_bet_id;
    END IF;

    v_house := 'house:' || v_bet.currency || ':' || (abs(hashtext(p_bet_id::text)) % 16);  -- a shard (0018)
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
      FROM (VALUES ('held:' || p_account || ':' || v_bet.currency, -v_part),
                   ('player:' || p_account || ':' || v_bet.currency, p_amount),
                   (v_house, v_part - p_amount)) AS m(account_id, amount)
     WHERE m.amount <> 0
     ORDER BY m.account_id;

    UPDATE betting.liability l SET amount = l.amount - v_released
      FROM betting.selections s
     WHERE s.bet_id = p_bet_id AND l.match_id = s.match_id AND l.market_key = s.market_key
       AND l.outcome_id = s.outcome_id AND l.currency = v_bet.currency;

    -- one event id per cash-out of the bet (the first whole one keeps 0013's '<bet>:cashed_out:0')
    INSERT INTO betting.outbox (subject, msg_id, payload, bet_id)
    VALUES ('bets.' || regexp_replace(p_account, '[.\s*>]', '_', 'g') || '.' || p_bet_id,
            p_bet_id || CASE WHEN p_part IS NULL THEN ':cashed_out:' ELSE ':cashed_out_part:' END || v_seq,
            NULL, p_bet_id);
    PERFORM pg_notify('betting_outbox', '');

    RETURN QUERY SELECT 'cashed_out'::text, p_digest;
END $$;

CREATE OR REPLACE FUNCTION betting.annul_cash_outs(p_match text, p_market_key text, p_start timestamptz,
                                                   p_end timestamptz, p_cancel text)
RETURNS TABLE (bets_reopened integer, amount bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM betting.new_cash_out_batch();
    WITH standing AS (
        SELECT c.bet_id, sum(c.stake) AS stake, sum(c.amount) AS amount, sum(c.released) AS released,
               coalesce(sum(c.stake) FILTER (WHERE c.partial), 0) AS part_stake,
               coalesce(sum(c.amount) FILTER (WHERE c.partial), 0) AS part_amount,
               coalesce(sum(c.released) FILTER (WHERE c.partial), 0) AS part_released
          FROM betting.cash_outs c JOIN betting.bets b ON b.bet_id = c.bet_id
         WHERE c.annulled_by IS NULL AND b.status IN ('accepted', 'cashed_out')
           AND b.placed_at >= p_start AND (p_end IS NULL OR b.placed_at < p_end)
           AND EXISTS (SELECT 1 FROM betting.selections s
                        WHERE s.bet_id = b.bet_id AND s.match_id = p_match AND s.market_key = p_market_key
                          AND s.settled_version IS NULL AND s.cancelled_by IS NULL)
         GROUP BY c.bet_id),
    hit AS (
        UPDATE betting.bets b SET status = 'accepted', payout = 0, result = 0, settled_at = NULL,
                                  stake = b.stake + s.part_stake,
                                  potential_payout = b.potential_payout + s.part_released,
                                  cashed_out_stake = b.cashed_out_stake - s.part_stake,
                                  cashed_out_amount = b.cashed_out_amount - s.part_amount
          FROM standing s
         WHERE b.bet_id = s.bet_id
        RETURNING b.bet_id, b.account_id, b.currency, s.stake, s.amount, s.released)
    INSERT INTO cash_out_batch SELECT h.bet_id, h.account_id, h.currency, h.stake, h.amount, h.released, p_cancel
      FROM hit h;
    UPDATE betting.cash_outs c SET annulled_by = p_cancel, annulled_at = now()
      FROM cash_out_batch x WHERE c.bet_id = x.bet_id AND c.annulled_by IS NULL;
    RETURN QUERY SELECT * FROM betting.move_cash_outs(1, 'cash-out annulled by cancel ' || p_cancel,
                                                      'cash_out_annulled');
END $$;

CREATE OR REPLACE FUNCTION betting.restore_cash_outs(p_cancels text[])
RETURNS TABLE (bets_restored integer, amount bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM betting.new_cash_out_batch();
    WITH annulled AS (  -- per bet, the cash-outs of the latest of these cancels that annulled any
        SELECT DISTINCT ON (c.bet_id) c.bet_id, c.annulled_by,
               sum(c.stake) OVER w AS stake, sum(c.amount) OVER w AS amount, sum(c.released) OVER w AS released,
               coalesce(sum(c.stake) FILTER (WHERE c.partial) OVER w, 0) AS part_stake,
               coalesce(sum(c.amount) FILTER (WHERE c.partial) OVER w, 0) AS part_amount,
               coalesce(sum(c.released) FILTER (WHERE c.partial) OVER w, 0) AS part_released,
               max(c.amount) FILTER (WHERE NOT c.partial) OVER w AS whole
          FROM betting.cash_outs c
         WHERE c.annulled_by = ANY (p_cancels)
        WINDOW w AS (PARTITION BY c.bet_id, c.annulled_by)
         ORDER BY c.bet_id, c.annulled_at DESC),
    back AS (
        UPDATE betting.bets b SET status = CASE WHEN a.whole IS NULL THEN 'accepted' ELSE 'cashed_out' END,
                                  payout = coalesce(a.whole, 0), result = 0,
                                  settled_at = CASE WHEN a.whole IS NULL THEN NULL ELSE clock_timestamp() END,
                                  stake = b.stake - a.part_stake,
                                  potential_payout = b.potential_payout - a.part_released,
                                  cashed_out_stake = b.cashed_out_stake + a.part_stake,
                                  cashed_out_amount = b.cashed_out_amount + a.part_amount
          FROM annulled a
         WHERE a.bet_id = b.bet_id AND b.status = 'accepted'
           AND NOT EXISTS (SELECT 1 FROM betting.cash_outs x WHERE x.bet_id = b.bet_id AND x.annulled_by IS NULL)
        RETURNING b.bet_id, b.account_id, b.currency, a.stake, a.amount, a.released, a.annulled_by)
    INSERT INTO cash_out_batch SELECT * FROM back;
    UPDATE betting.cash_outs c SET annulled_by = NULL, annulled_at = NULL
      FROM cash_out_batch x WHERE c.bet_id = x.bet_id AND c.annulled_by = x.cancel_id;
    RETURN QUERY SELECT * FROM betting.move_cash_outs(-1, 'cash-out restored: its cancel rolled back',
                                                      'cash_out_restored');
END $$;

-- what a bet returned counts its partial cash-outs (0020's trigger, redefined)
CREATE OR REPLACE FUNCTION betting.count_return() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_delta bigint := betting.bet_returned(NEW.status, NEW.stake, NEW.payout) + NEW.cashed_out_amount
                      - betting.bet_returned(OLD.status, OLD.stake, OLD.payout) - OLD.cashed_out_amount;
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

DROP TRIGGER bets_count_return ON betting.bets;
CREATE TRIGGER bets_count_return AFTER UPDATE OF status, payout, cashed_out_amount ON betting.bets
    FOR EACH ROW
    WHEN (OLD.cashed_out_amount IS DISTINCT FROM NEW.cashed_out_amount
          OR ((OLD.status IS DISTINCT FROM NEW.status OR OLD.payout IS DISTINCT FROM NEW.payout)
              AND (OLD.status NOT IN ('pending', 'accepted') OR NEW.status NOT IN ('pending', 'accepted'))))
    EXECUTE FUNCTION betting.count_return();
