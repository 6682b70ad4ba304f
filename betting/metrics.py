"""The betting service's own Prometheus metrics (beside the RPC metrics every service has)."""

from __future__ import annotations

from livebet.betting.v1 import bet_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BetMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.bets = Counter(
            "livebet_bets_total",
            "Bets by what happened to them: placed (pending or accepted at once), refused at placement, "
            "accepted or rejected at the end of the in-play delay; with the reject reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.pending = Gauge("livebet_bets_pending", "Bets waiting out the in-play delay.", registry=registry)
        self.decide_failures = Counter(
            "livebet_bets_decide_failures_total",
            "Pending bets whose decision failed (logged with the bet id; tried again next round).",
            registry=registry,
        )
        self.outbox_failures = Counter(
            "livebet_bets_outbox_publish_failures_total",
            "Attempts to publish an outbox event that JetStream refused (each event is logged with its "
            "id and tried again 1 s later, doubling up to a minute; the others are not held up by it).",
            registry=registry,
        )
        self.cash_outs = Counter(
            "livebet_bets_cash_outs_total",
            "CashOut calls by what happened: cashed_out, or refused with the reject reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.builders = Counter(
            "livebet_bets_builders_total",
            "Bet builders: quoted (QuoteBetBuilder answered), quote_refused (with the reject reason), "
            "placed (a new bet builder written, pending or accepted).",
            ["outcome", "reason"],
            registry=registry,
        )
        self.auto_cash_outs = Counter(
            "livebet_bets_auto_cash_outs_total",
            "Automatic cash-outs tried, by what happened: cashed_out, exists (another replica did it), "
            "refused (the offer fell back or a market was suspended in the delay: the rule stays), "
            "bet_changed, failed.",
            ["outcome"],
            registry=registry,
        )
        self.auto_cash_out_rules = Gauge(
            "livebet_bets_auto_cash_out_rules",
            "Accepted bets with an automatic cash-out this process watches.",
            registry=registry,
        )
        self.offer_streams = Gauge(
            "livebet_bets_cash_out_offer_streams", "WatchCashOutOffers streams open.", registry=registry
        )
        self.odds_reads = Counter(
            "livebet_bets_odds_snapshot_reads_total",
            "Live odds snapshots a bet, a decision, a cash-out or an offer stream was checked against, by where "
            "they came from: cache (kept while Redis tracks it and says it has not changed) or redis (read).",
            ["source"],
            registry=registry,
        )
        self._odds_read = {s: self.odds_reads.labels(s) for s in ("cache", "redis")}
        self.batch = Histogram(
            "livebet_bets_placed_per_transaction",
            "New bets written per PostgreSQL transaction (group commit: the bets that arrive while one "
            "batch is written go together in the next).",
            buckets=(1, 2, 4, 8, 16, 32, 50),
            registry=registry,
        )

    def placed(self, bet: bet_pb2.Bet) -> None:
        outcome = "placed_pending" if bet.status == bet_pb2.BET_STATUS_PENDING else "placed_accepted"
        self.bets.labels(outcome, "").inc()
        if bet.bet_builder:
            self.builders.labels("placed", "").inc()

    def refused(self, reason: int) -> None:
        self.bets.labels("refused", bet_pb2.RejectReason.Name(reason)).inc()

    def decided(self, bet: bet_pb2.Bet) -> None:
        if bet.status == bet_pb2.BET_STATUS_REJECTED:
            self.bets.labels("rejected", bet_pb2.RejectReason.Name(bet.reject_reason)).inc()
        else:
            self.bets.labels("accepted", "").inc()

    def odds_read(self, source: str) -> None:
        self._odds_read[source].inc()
