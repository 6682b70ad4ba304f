-- Bet cancels (UOF bet_cancel: "void the bets on these markets placed between start and end", e.g.
-- accepted after a goal the feed reported late). A cancelled leg is void (return 1) and marked
-- with the cancel that voided it; no later settlement of its market changes it, until the cancel
-- itself is rolled back (which clears the mark first). The settlement service voids the legs and
-- settles what that decides with betting.settle_market at version 0, the cancels' version.
ALTER TABLE betting.selections ADD COLUMN cancelled_by text;

CREATE FUNCTION betting.keep_cancelled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.cancelled_by IS NOT NULL AND NEW.cancelled_by IS NOT NULL THEN
        RETURN NULL;  -- a cancelled leg stays void
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER selections_keep_cancelled BEFORE UPDATE ON betting.selections
    FOR EACH ROW WHEN (OLD.cancelled_by IS NOT NULL) EXECUTE FUNCTION betting.keep_cancelled();
