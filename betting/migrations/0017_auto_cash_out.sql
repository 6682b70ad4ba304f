-- Automatic cash-out (betting/auto_cashout.py): the offer, in minor units, at which the bettor
-- wants the bet cashed out; NULL when there is none. Set by SetAutoCashOut while the bet is pending
-- or accepted (at most its potential payout, checked by the service), removed once the bet is
-- cashed out. Every betting process watches the accepted bets that have one (the partial index).
ALTER TABLE betting.bets ADD COLUMN auto_cash_out bigint CHECK (auto_cash_out > 0);
CREATE INDEX bets_auto_cash_out ON betting.bets (placed_at) WHERE auto_cash_out IS NOT NULL AND status = 'accepted';

-- a bet cashed out (by its rule, by hand, or a cash-out restored) keeps no rule: cleared in the
-- cash-out's own statement, so taking a rule costs no second transaction
CREATE FUNCTION betting.clear_auto_cash_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.auto_cash_out := NULL;
    RETURN NEW;
END $$;
CREATE TRIGGER bets_cashed_out_keep_no_rule BEFORE UPDATE OF status ON betting.bets
    FOR EACH ROW WHEN (NEW.status = 'cashed_out' AND NEW.auto_cash_out IS NOT NULL)
    EXECUTE FUNCTION betting.clear_auto_cash_out();
