"""settlement: results into money exactly once, rollbacks by compensating entries, reports."""
