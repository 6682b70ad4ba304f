"""The feed service's core: validate, order, publish, and keep the match projection.

Every batch, from any adapter (gRPC push, raw UOF, simulator, replay), goes through
:meth:`FeedCore.ingest`:

1. raw messages are normalised (UOF), every event is validated (see :func:`validate`);
   with ``strict`` a bad item fails the whole batch before anything is published (PublishBatch),
   otherwise it is counted as skipped (the Ingest stream);
2. the ordering policy (:mod:`feed.domain.ordering`) drops stale state updates and marks gaps;
3. the batch is published to JetStream and acknowledged only once every event is stored;
4. the projection (fixtures and latest state per match) and provider liveness are updated.

A producer silent for longer than the threshold makes :meth:`FeedCore.check_liveness` publish a
``provider_down`` event, whose id is deterministic so that two feed replicas store it once.

A match in play with no event of its own for longer than ``match_silence`` (its producer still
alive: the producer's silence is ``provider_down``'s) gets a ``bet_stop`` from the feed itself:
its prices no longer follow the match, so the engine suspends its markets until its next state
update. In a break (half time, before or in extra time's break) the limit is ``break_silence``,
since a feed may send nothing for a match then. A match not started ``match_silence`` past its
scheduled kick-off, and silent as long, gets one too: it may be under way without the feed
knowing, and pre-match prices on a match being played are the past-posting a bookmaker fears.
Its id is deterministic too (the match's last event), so it is stored once, and once per silence.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs

from feed.adapters import uof
from feed.adapters.jetstream import MAX_AGE_S, PublishResult
from feed.domain.liveness import Liveness, Status
from feed.domain.ordering import Sequencer, Verdict

log = logging.getLogger("feed")

MAX_BATCH = 5000
FORGET_AFTER_S = MAX_AGE_S  # a finished match is kept as long as the stream keeps its events
FINISHED = {ev.MATCH_STATUS_ENDED, ev.MATCH_STATUS_CLOSED, ev.MATCH_STATUS_ABANDONED, ev.MATCH_STATUS_CANCELLED}
MAX_EVENT_ID = 256
MAX_FUTURE_S = 300.0
#: periods of a live match in which a feed may well send nothing for a while
BREAKS = {ev.PERIOD_HALFTIME, ev.PERIOD_AWAITING_EXTRA_TIME, ev.PERIOD_EXTRA_TIME_HALFTIME}
SILENT = ":silent:"  # in the id of the bet_stop the feed publishes for a silent match
MATCH_SCOPED = {
    "match_state",
    "goal",
    "card",
    "penalty",
    "var_check",
    "danger",
    "bet_stop",
    "provider_odds",
    "bet_settlement",
    "bet_cancel",
    "rollback_bet_settlement",
    "rollback_bet_cancel",
    "fixture_change",
}


class FeedError(ValueError):
    """Bad input; ``code`` names the gRPC status the API answers with."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


class Recorder(Protocol):
    def record(self, provider: str, events: Sequence[ev.FeedEvent], raw: Sequence[fs.RawMessage]) -> None: ...


class Publisher(Protocol):
    async def publish(self, events: list[tuple[ev.FeedEvent, int]]) -> PublishResult: ...


@dataclass
class MatchRecord:
    fixture: ev.Fixture
    state: ev.MatchState
    sequence: int = 0
    provider: str = ""
    updated_s: float = 0.0  # when its last fixture or state event was received
    heard_s: float = 0.0  # when its last event of any kind was received
    stopped_s: float = -1.0  # the heard_s of the silence a bet_stop was published for


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    skipped: int = 0
    stale: int = 0
    gaps: int = 0
    last_stream_sequence: int = 0
    errors: list[str] = field(default_factory=list)


def validate(e: ev.FeedEvent, provider: str, now: float, known: Callable[[str], bool]) -> None:
    """Raise :class:`FeedError` saying what is wrong with ``e``."""
    kind = e.WhichOneof("payload")
    if kind is None:
        raise FeedError(f"event {e.event_id or '?'} has no payload")
    if not e.event_id or len(e.event_id) > MAX_EVENT_ID:
        raise FeedError(f"event_id is required and at most {MAX_EVENT_ID} characters")
    if e.provider and e.provider != provider and not e.provider.startswith(provider + ":"):
        raise FeedError(
            f"event {e.event_id} claims provider {e.provider!r} in a batch from {provider!r}", "PERMISSION_DENIED"
        )
    if kind in MATCH_SCOPED and not e.match_id:
        raise FeedError(f"event {e.event_id} ({kind}) needs a match_id")
    if e.HasField("produced_at") and e.produced_at.ToMilliseconds() / 1000.0 > now + MAX_FUTURE_S:
        raise FeedError(
            f"event {e.event_id} was produced {e.produced_at.ToJsonString()}, "
            f"more than {MAX_FUTURE_S:.0f}s in the future"
        )
    if kind in MATCH_SCOPED and kind != "fixture_change" and not known(e.match_id):
        raise FeedError(f"unknown match id {e.match_id!r}: send its fixture_change first", "FAILED_PRECONDITION")
    if kind == "fixture_change" and e.fixture_change.fixture.match_id not in ("", e.match_id):
        raise FeedError(
            f"event {e.event_id}: fixture {e.fixture_change.fixture.match_id!r} is not match {e.match_id!r}"
        )


class FeedCore:
    def __init__(
        self,
        publisher: Publisher,
        liveness_threshold: float = 20.0,
        clock: Callable[[], float] = time.time,
        match_silence: float = 30.0,
        break_silence: float = 1200.0,
    ) -> None:
        self.publisher = publisher
        self.clock = clock
        self.match_silence, self.break_silence = match_silence, break_silence
        # what this replica heard since it last told the others (see take_heard)
        self._heard_providers: dict[str, float] = {}
        self._heard_matches: dict[str, float] = {}
        self.sequencer = Sequencer()
        self.liveness = Liveness(liveness_threshold)
        self.matches: dict[str, MatchRecord] = {}
        self.counters = {"skipped": 0, "stale": 0, "gaps": 0, "unknown_markets": 0}
        self.listeners: list[Callable[[ev.FeedEvent], None]] = []
        self.recorder: Recorder | None = None
        #: told of every ingested batch once it is stored: (provider, result, events, time) - metrics
        self.observers: list[Callable[[str, IngestResult, list[ev.FeedEvent], float], None]] = []

    # --- projection ----------------------------------------------------------------------------
    def known(self, match_id: str) -> bool:
        return match_id in self.matches

    def apply(self, e: ev.FeedEvent, ordered: bool = False, heard: bool = False) -> None:
        """Update the projection and liveness with a stored event (also used to rebuild).
        ``ordered``/``heard``: the cursor and the provider's liveness were already updated."""
        kind = e.WhichOneof("payload")
        ours = kind == "provider_down" or (kind == "bet_stop" and SILENT in e.event_id)  # not a sign of life
        if kind == "provider_down":
            self.liveness.went_down(e.provider, e.provider_down.last_seen.ToMilliseconds() / 1000.0)
        elif e.provider and not ours and (not heard or kind == "snapshot_complete"):
            now = e.received_at.ToMilliseconds() / 1000.0 if e.HasField("received_at") else self.clock()
            self.liveness.heard(e.provider, now, snapshot_complete=kind == "snapshot_complete")
        if e.match_id and kind and not ordered:
            produced = e.produced_at.ToMilliseconds() if e.HasField("produced_at") else -1
            self.sequencer.commit(e.provider, e.match_id, kind, e.sequence, produced)
        if kind in ("fixture_change", "match_state") or e.match_id in self.matches:
            at = e.received_at.ToMilliseconds() / 1000.0 if e.HasField("received_at") else self.clock()
        known = self.matches.get(e.match_id)
        if known is not None:
            if ours:
                known.stopped_s = known.heard_s  # ours (seen again in a rebuild): not news from the match
            else:
                known.heard_s = max(known.heard_s, at)
        if kind == "fixture_change":
            rec = self.matches.get(e.match_id)
            fixture = ev.Fixture()
            fixture.CopyFrom(e.fixture_change.fixture)
            fixture.match_id = e.match_id
            if rec is None:
                state = ev.MatchState(match_id=e.match_id, status=ev.MATCH_STATUS_NOT_STARTED)
                self.matches[e.match_id] = MatchRecord(fixture, state, e.sequence, e.provider, at, at)
            else:
                rec.fixture.MergeFrom(fixture)
                rec.updated_s = at
        elif kind == "match_state" and e.match_id in self.matches:
            rec = self.matches[e.match_id]
            rec.state = e.match_state.state  # a stored event is not changed again: no copy
            if not rec.state.match_id:
                rec.state.match_id = e.match_id
            rec.sequence = max(rec.sequence, e.sequence)
            rec.updated_s = at
        for listener in self.listeners:
            listener(e)

    def forget_finished(self, now_s: float, after_s: float = FORGET_AFTER_S) -> int:
        """Drop the matches that finished (ended, closed, abandoned, cancelled) and had no fixture
        or state event for ``after_s``, with their ordering cursors; how many. The default is the
        FEED stream's retention: a feed that runs for months holds what a restarted one rebuilds
        from the stream, not every match it ever saw."""
        gone = [
            (m, r.provider)
            for m, r in self.matches.items()
            if r.state.status in FINISHED and now_s - r.updated_s >= after_s
        ]
        for match_id, provider in gone:
            del self.matches[match_id]
            self.sequencer.forget(provider, match_id)
        return len(gone)

    # --- ingestion -----------------------------------------------------------------------------
    def normalise(
        self,
        provider: str,
        events: Sequence[ev.FeedEvent],
        raw: Sequence[fs.RawMessage],
        strict: bool,
        result: IngestResult,
    ) -> list[ev.FeedEvent]:
        out: list[ev.FeedEvent] = []
        now = self.clock()
        pending_fixtures: set[str] = set()

        def known(match_id: str) -> bool:
            return self.known(match_id) or match_id in pending_fixtures

        def reject(message: str, exc: FeedError | None = None) -> None:
            if strict:
                raise exc or FeedError(message)
            result.skipped += 1
            result.errors.append(message)

        candidates: list[ev.FeedEvent] = list(events)
        for r in raw:
            if r.format != fs.RAW_FORMAT_UOF_XML:
                reject(f"raw message format {fs.RawFormat.Name(r.format)} is not supported; use RAW_FORMAT_UOF_XML")
                continue
            try:
                parsed = uof.parse(r.payload, provider)
            except uof.UofError as exc:
                reject(f"UOF message rejected: {exc}", FeedError(f"UOF message rejected: {exc}"))
                continue
            self.counters["unknown_markets"] += parsed.skipped_markets
            if parsed.skipped_message:
                result.skipped += 1
            candidates.extend(parsed.events)
        for e in candidates:
            if not e.provider:
                e.provider = provider
            try:
                validate(e, provider, now, known)
            except FeedError as exc:
                reject(str(exc), exc)
                continue
            e.received_at.FromMilliseconds(int(now * 1000))
            if e.WhichOneof("payload") == "fixture_change":
                pending_fixtures.add(e.match_id)
            out.append(e)
        return out

    async def ingest(
        self, provider: str, events: Sequence[ev.FeedEvent] = (), raw: Sequence[fs.RawMessage] = (), strict: bool = True
    ) -> IngestResult:
        if not provider:
            raise FeedError("provider is required")
        if len(events) + len(raw) > MAX_BATCH:
            raise FeedError(
                f"a batch holds at most {MAX_BATCH} items, got {len(events) + len(raw)}", "RESOURCE_EXHAUSTED"
            )
        result = IngestResult()
        normalised = self.normalise(provider, events, raw, strict, result)
        to_publish: list[tuple[ev.FeedEvent, int]] = []
        seen_ids: set[str] = set()
        saved = self.sequencer.save({(e.provider, e.match_id) for e in normalised if e.match_id})
        for e in normalised:
            if e.event_id in seen_ids:
                result.duplicates += 1
                continue
            seen_ids.add(e.event_id)
            kind = e.WhichOneof("payload") or ""
            produced = e.produced_at.ToMilliseconds() if e.HasField("produced_at") else -1
            decision = self.sequencer.decide(e.provider, e.match_id, kind, e.sequence, produced) if e.match_id else None
            if decision is not None and decision.verdict is Verdict.DROP_STALE:
                result.stale += 1
                continue
            gap = decision.gap if decision else 0
            result.gaps += 1 if gap else 0
            to_publish.append((e, gap))
            if e.match_id:  # later events of the same batch are ordered after this one
                self.sequencer.commit(e.provider, e.match_id, kind, e.sequence, produced)
        try:
            published = await self.publisher.publish(to_publish)
            if self.recorder is not None:
                self.recorder.record(provider, events, raw)
        except Exception:
            self.sequencer.load(saved)  # nothing acknowledged: a retry must be judged afresh
            raise
        result.accepted += published.accepted
        result.duplicates += published.duplicates
        result.last_stream_sequence = published.last_stream_sequence
        now = self.clock()
        for p in {e.provider for e, _ in to_publish if e.provider}:
            self.liveness.heard(p, now)
            self._heard_providers[p] = now
        for e, _ in to_publish:
            self.apply(e, ordered=True, heard=True)
            rec = self.matches.get(e.match_id) if e.match_id else None
            if rec is not None:
                self._heard_matches[e.match_id] = rec.heard_s
        for key in ("skipped", "stale", "gaps"):
            self.counters[key] += getattr(result, key)
        for observe in self.observers:
            observe(provider, result, [e for e, _ in to_publish], now)
        return result

    # --- liveness shared between feed replicas -------------------------------------------------
    def take_heard(self) -> dict[str, dict[str, float]]:
        """The producers and matches this replica heard from since the last call, and when: for
        the other feed replicas (:meth:`merge_heard`), which a provider's batches may not reach.
        Without it a replica that is not sent a provider's batches would declare the provider
        down, and its matches silent."""
        out = {"providers": self._heard_providers, "matches": self._heard_matches}
        self._heard_providers, self._heard_matches = {}, {}
        return out

    def merge_heard(self, heard: dict[str, dict[str, float]]) -> None:
        """What another feed replica heard (:meth:`take_heard`): signs of life here too."""
        for producer, at in heard.get("providers", {}).items():
            self.liveness.heard(producer, float(at))
        for match_id, at in heard.get("matches", {}).items():
            rec = self.matches.get(match_id)
            if rec is not None:
                rec.heard_s = max(rec.heard_s, float(at))

    async def check_liveness(self) -> list[ev.FeedEvent]:
        """Publish ``provider_down`` for every producer silent for longer than the threshold, and
        a ``bet_stop`` for every silent match (:meth:`silent_matches`); returns what it published."""
        events = []
        for t in self.liveness.tick(self.clock()):
            if t.status is not Status.DOWN:
                continue
            e = ev.FeedEvent(event_id=f"{t.producer}:provider_down:{int(t.last_seen * 1000)}", provider=t.producer)
            e.provider_down.last_seen.FromMilliseconds(int(t.last_seen * 1000))
            e.provider_down.reason = f"no message for more than {self.liveness.threshold:.0f}s"
            e.received_at.FromMilliseconds(int(self.clock() * 1000))
            events.append(e)
            log.warning("provider down", extra={"provider": t.producer})
        silent = self.silent_matches()
        events += [e for e, _ in silent]
        if events:
            try:
                await self.publisher.publish([(e, 0) for e in events])
            except Exception:
                for _, rec in silent:  # not stored: tried again at the next check
                    rec.stopped_s = -1.0
                raise
        return events

    def silent_matches(self) -> list[tuple[ev.FeedEvent, MatchRecord]]:
        """A ``bet_stop`` for each match in play silent for too long (see the module's doc), once
        per silence, with the match's record (marked as stopped)."""
        now = self.clock()
        out = []
        for match_id, rec in self.matches.items():
            if rec.stopped_s == rec.heard_s:
                continue
            if rec.state.status == ev.MATCH_STATUS_LIVE:
                limit = self.break_silence if rec.state.period in BREAKS else self.match_silence
                reason = f"no event for this match for more than {limit:.0f}s"
            elif rec.state.status == ev.MATCH_STATUS_NOT_STARTED and rec.fixture.HasField("start_time"):
                # pre-match prices past the kick-off: the match may be under way unreported
                limit, due = self.match_silence, rec.fixture.start_time.ToMilliseconds() / 1000.0
                if now - due <= limit:
                    continue
                reason = f"kick-off was due {now - due:.0f}s ago and the match has not started"
            else:
                continue
            if now - rec.heard_s <= limit or self.liveness.status(rec.provider) is Status.DOWN:
                continue
            rec.stopped_s = rec.heard_s
            heard_ms = int(rec.heard_s * 1000)
            e = ev.FeedEvent(event_id=f"{rec.provider}:{match_id}{SILENT}{heard_ms}", provider=rec.provider)
            e.match_id = match_id
            e.bet_stop.reason = reason
            e.received_at.FromMilliseconds(int(now * 1000))
            out.append((e, rec))
        if out:
            ids = [e.match_id for e, _ in out]
            log.warning(
                "silent matches: betting stopped",
                extra={"matches": len(ids), "match_ids": ids[:20], "reason": out[0][0].bet_stop.reason},
            )
        return out

    # --- queries -------------------------------------------------------------------------------
    def list_matches(self, page_size: int, page_token: str, status: int) -> tuple[list[MatchRecord], str]:
        if page_size < 0:
            raise FeedError("page_size cannot be negative")
        size = min(page_size or 50, 500)
        after = ""
        if page_token:
            try:
                decoded = base64.b64decode(page_token.encode(), altchars=b"-_", validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if not decoded.startswith("after:"):
                raise FeedError("page_token is not one this service issued")
            after = decoded.removeprefix("after:")
        ids = sorted(m for m, r in self.matches.items() if m > after and (not status or r.state.status == status))
        page = [self.matches[m] for m in ids[:size]]
        token = base64.b64encode(f"after:{ids[size - 1]}".encode(), altchars=b"-_").decode() if len(ids) > size else ""
        return page, token
