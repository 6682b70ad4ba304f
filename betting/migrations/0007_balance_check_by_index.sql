-- The statement-level balance check, looking the inserted transactions up by index: with the
-- transition table in an IN (...) the planner could not know how few rows it holds and scanned
-- every posting, so each bet got slower as the ledger grew.
CREATE OR REPLACE FUNCTION betting.check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    bad uuid;
BEGIN
    SELECT array_agg(DISTINCT transaction_id) INTO ids FROM inserted;
    SELECT p.transaction_id INTO bad FROM betting.postings p
     WHERE p.transaction_id = ANY(ids)
     GROUP BY p.transaction_id HAVING sum(p.amount) <> 0 LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', bad USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
