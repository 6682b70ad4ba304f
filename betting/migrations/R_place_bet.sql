-- betting.place_bet: the current definition (a repeatable file, see mesh/migrate.py: edit it in
-- place; it is applied again whenever its content is new).
--
-- Placing a bet in one transaction: the bet and its legs, the stake hold (a ledger transaction
-- through the same postings and triggers as every movement), the player's own limits (the daily
-- one from hourly stake buckets, 0009), the liability and the outbox event, all or nothing. The
-- rules (prices, policies, operator limits) were applied by the service before the call; this
-- function only writes, and refuses with these SQLSTATEs:
--   LB001 insufficient funds, LB002 liability limit (message: the leg), LB003 the player's own limit,
--   LB004 the player is on a break (0014; detail: its end, as seconds since 1970), LB005 the
--   operator suspended the account (0015), LB006 the player's own loss limit (0020; detail:
--   "<period 0, 1, 2>:<limit>:<net loss before this bet>").
-- When the (account, request id) exists already nothing is written and outcome = 'exists'.
-- betting.place_bets (0010) calls it once per bet of a batch, each in its own subtransaction.
--
-- History: created by 0003; its hold postings in one statement in 0004; the daily limit from
-- buckets in 0009; its NOTIFY betting_outbox removed by what was 0011 (the betting process wakes
-- its own outbox relay when a batch commits, and PostgreSQL's CPU per bet fell by a tenth without
-- the NOTIFY; settlement, rollbacks and bet cancels still notify). 0011 became this file;
-- databases that applied 0011 keep its record. Breaks and pending (cooled-off) limits: 0014;
-- suspensions: 0015; loss limits, and stake buckets kept 31 days instead of 24 hours: 0020.
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
    v_break timestamptz;
    v_suspended boolean;
    v_loss_limits bigint[];
    v_lost bigint[];  -- the net loss over each period, this bet's stake included
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
    -- the player's break and the operator's suspension, in one statement
    SELECT (SELECT k.until FROM betting.breaks k WHERE k.account_id = p_account),
           EXISTS (SELECT 1 FROM betting.suspensions su WHERE su.account_id = p_account)
      INTO v_break, v_suspended;
    IF v_break > v_now THEN
        RAISE EXCEPTION 'on a break from betting' USING ERRCODE = 'LB004',
            DETAIL = extract(epoch FROM v_break)::text;
    END IF;
    IF v_suspended THEN
        RAISE EXCEPTION 'the account is suspended' USING ERRCODE = 'LB005';
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

    -- the player's own limits: the pending set once its cooling-off is over (0014); their loss
    -- limits (0020) in the same statement
    SELECT CASE WHEN l.pending_from <= v_now THEN l.pending_max_stake ELSE l.max_stake END,
           CASE WHEN l.pending_from <= v_now THEN l.pending_max_daily_stake ELSE l.max_daily_stake END,
           (SELECT CASE WHEN x.pending_from <= v_now
                        THEN ARRAY[x.pending_max_daily, x.pending_max_weekly, x.pending_max_monthly]
                        ELSE ARRAY[x.max_daily, x.max_weekly, x.max_monthly] END
            FROM betting.loss_limits x WHERE x.account_id = p_account AND x.currency = p_currency)
      INTO v_own_max, v_own_daily, v_loss_limits
    FROM (SELECT 1) AS one
    LEFT JOIN betting.account_limits l ON l.account_id = p_account AND l.currency = p_currency;
    IF v_own_max IS NOT NULL AND p_stake > v_own_max THEN
        RAISE EXCEPTION 'stake is above your limit a bet' USING ERRCODE = 'LB003', DETAIL = v_own_max::text;
    END IF;
    -- the player's stakes over the last 24 hours, from hourly buckets: at most 25 rows to add up
    -- however many bets the player places (a sum over the bets themselves grew with each bet)
    INSERT INTO betting.stake_buckets AS sb (account_id, currency, hour, staked)
    VALUES (p_account, p_currency, date_trunc('hour', v_now, 'UTC'), p_stake)
    ON CONFLICT (account_id, currency, hour) DO UPDATE SET staked = sb.staked + excluded.staked;
    SELECT coalesce(sum(sb.staked), 0) INTO v_staked FROM betting.stake_buckets sb
    WHERE sb.account_id = p_account AND sb.currency = p_currency
      AND sb.hour >= date_trunc('hour', v_now - interval '24 hours', 'UTC');
    DELETE FROM betting.stake_buckets sb
    WHERE sb.account_id = p_account AND sb.currency = p_currency
      AND sb.hour < date_trunc('hour', v_now - interval '31 days', 'UTC');  -- the loss limits' 30 days
    IF v_staked > coalesce(v_own_daily, p_max_daily) THEN
        RAISE EXCEPTION 'stakes over 24 hours would exceed your limit' USING ERRCODE = 'LB003';
    END IF;

    -- the player's own loss limits (0020), only when they have one: the net loss of each period is
    -- the stakes of the bets placed in it (this one's included, as if lost) less what they returned
    IF v_loss_limits[1] IS NOT NULL OR v_loss_limits[2] IS NOT NULL OR v_loss_limits[3] IS NOT NULL THEN
        SELECT ARRAY[coalesce(sum(n.amount) FILTER (WHERE n.hour >= date_trunc('hour', v_now - interval '24 hours', 'UTC')), 0),
                     coalesce(sum(n.amount) FILTER (WHERE n.hour >= date_trunc('hour', v_now - interval '7 days', 'UTC')), 0),
                     coalesce(sum(n.amount), 0)]
          INTO v_lost
        FROM (SELECT sb.hour, sb.staked AS amount FROM betting.stake_buckets sb
              WHERE sb.account_id = p_account AND sb.currency = p_currency
                AND sb.hour >= date_trunc('hour', v_now - interval '30 days', 'UTC')
              UNION ALL
              SELECT r.hour, -r.returned FROM betting.bet_returns r
              WHERE r.account_id = p_account AND r.currency = p_currency
                AND r.hour >= date_trunc('hour', v_now - interval '30 days', 'UTC')) AS n;
        FOR i IN 1..3 LOOP
            IF v_loss_limits[i] IS NOT NULL AND v_lost[i] > v_loss_limits[i] THEN
                RAISE EXCEPTION 'net losses would exceed your limit' USING ERRCODE = 'LB006',
                    DETAIL = (i - 1)::text || ':' || v_loss_limits[i]::text || ':' || (v_lost[i] - p_stake)::text;
            END IF;
        END LOOP;
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

    RETURN QUERY SELECT 'placed'::text, p_bet_id, v_balance, v_now,
                        CASE WHEN p_status = 'accepted' THEN v_now END, p_digest;
END $$;
