-- Trace context for outbox events: the relay continues the trace of whatever wrote the event (a
-- PlaceBet call, a settlement) when it publishes to JetStream. Writers set the transaction-local
-- setting livebet.traceparent (only when tracing is on); every outbox row inserted in that
-- transaction - by betting.place_bet or betting.settle_market alike - takes it by default.
ALTER TABLE betting.outbox
    ADD COLUMN traceparent text DEFAULT nullif(current_setting('livebet.traceparent', true), '');
