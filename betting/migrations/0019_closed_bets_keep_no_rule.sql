-- An automatic cash-out rule goes when its bet closes, however it closes: cashed out (as in 0017),
-- rejected in its delay, settled or voided. Before, a rejected or settled bet kept showing the rule
-- it can no longer act on (seen in `make run`). A bet reopened later (a settlement rolled back, a
-- cash-out annulled) comes back without one.
DROP TRIGGER bets_cashed_out_keep_no_rule ON betting.bets;
CREATE TRIGGER bets_closed_keep_no_rule BEFORE UPDATE OF status ON betting.bets
    FOR EACH ROW WHEN (NEW.status NOT IN ('pending', 'accepted') AND NEW.auto_cash_out IS NOT NULL)
    EXECUTE FUNCTION betting.clear_auto_cash_out();
UPDATE betting.bets SET auto_cash_out = NULL WHERE status NOT IN ('pending', 'accepted') AND auto_cash_out IS NOT NULL;
