"""betting: bet acceptance (PlaceBet, in-play delay, limits) and the double-entry wallet."""
