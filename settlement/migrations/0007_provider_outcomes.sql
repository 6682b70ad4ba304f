-- A provider's settlement of a market as it came (per outcome: result, void factor, dead-heat
-- factor), the latest certain enough one per market. It settles the legs open when it comes, and
-- is kept for legs that open again later: an accumulator whose cash-out a bet cancel annulled (its
-- leg on this market was not open then, the bet being cashed out), or bets a cancel voided until
-- the cancel is rolled back. Rolling the market's settlement back forgets it.
CREATE TABLE settlement.provider_outcomes (
    match_id    text NOT NULL,
    market_key  text NOT NULL,
    outcomes    jsonb NOT NULL,
    decided_at  timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (match_id, market_key)
);
