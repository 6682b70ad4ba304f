-- Group commit for PlaceBet: several bets placed in one transaction and one round trip.
--
-- Under load much of a bet's cost was not its own work but the transaction around it: a round
-- trip, a statement to bind and run, a commit and its WAL flush. betting.adapters.store sends the
-- bets that arrive while a batch is being written together in the next batch, through this
-- function. Each bet still runs betting.place_bet, in its own subtransaction: a bet that fails (no
-- funds, a limit, a deadlock) rolls back alone and is returned with its SQLSTATE and message; the
-- other bets of the batch are written. A batch of one is one bet in one transaction, as before.
--
-- p_bets is a JSON array with one object per bet, in the order the bets are to be placed (the
-- caller sorts them by the liability rows they lock, so that two batches in flight take those
-- locks in the same order). Its keys are place_bet's parameters without the "p_"; byte strings
-- are hex. One JSON document is far cheaper for the service to send than nineteen arrays.
CREATE FUNCTION betting.place_bets(p_bets jsonb)
RETURNS TABLE (ord integer, outcome text, request_digest bytea, error_state text, error_message text,
               error_detail text)
LANGUAGE plpgsql AS $$
DECLARE
    b jsonb;
    r record;
BEGIN
    ord := 0;
    FOR b IN SELECT value FROM jsonb_array_elements(p_bets) LOOP
        ord := ord + 1;
        BEGIN
            SELECT pb.outcome, pb.request_digest INTO r
            FROM betting.place_bet((b->>'bet_id')::uuid, b->>'account', b->>'request_id',
                                   decode(b->>'digest', 'hex'), (b->>'currency')::char(3),
                                   (b->>'stake')::bigint, (b->>'policy')::smallint, b->>'status',
                                   (b->>'odds')::numeric, (b->>'payout')::bigint, (b->>'in_play')::boolean,
                                   (b->>'delay')::float8, b->'legs', (b->>'max_liability')::bigint,
                                   (b->>'max_daily')::bigint, (b->>'now')::timestamptz, b->>'subject',
                                   b->>'msg_id', decode(b->>'event', 'hex')) pb;
            outcome := r.outcome;
            request_digest := r.request_digest;
            error_state := NULL;
            error_message := NULL;
            error_detail := NULL;
        EXCEPTION WHEN OTHERS THEN
            outcome := 'failed';
            request_digest := NULL;
            GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT,
                                    error_detail = PG_EXCEPTION_DETAIL;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
