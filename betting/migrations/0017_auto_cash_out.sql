-- Automatic cash-out (betting/auto_cashout.py): the offer, in minor units, at which the bettor
-- wants the bet cashed out; NULL when there is none. Set by SetAutoCashOut while the bet is pending
-- or accepted (at most its potential payout, checked by the service), removed once the bet is
-- cashed out. Every betting process watches the accepted bets that have one (the partial index).
ALTER TABLE betting.bets ADD COLUMN auto_cash_out bigint CHECK (auto_cash_out > 0);
CREATE INDEX bets_auto_cash_out ON betting.bets (placed_at) WHERE auto_cash_out IS NOT NULL AND status = 'accepted';
