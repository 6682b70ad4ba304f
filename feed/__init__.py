"""feed: provider adapters that normalise every provider's messages into livebet.feed.v1 events."""
