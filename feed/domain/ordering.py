"""Per-match ordering policy of the feed (pure).

Each (provider, match) has a cursor: the last sequence number seen and the production time of the
newest *state* event (match state, provider odds, danger signals, bet stops).

- **Gaps**: a sequence number more than one above the last is a gap of ``seq - last - 1`` events.
  The event is still published (with the gap size, so consumers can ask for a snapshot) and the
  gap is counted.
- **Out of order**: a sequence number below the last one, or a production time older than the
  newest state already published. A *state* event that is out of order is dropped (counted):
  **an older state update never overwrites a newer one**. Every other event (goals, cards, results,
  cancels, rollbacks, fixtures, liveness) is **never dropped**: it is published anyway.
- Events without a sequence number (0) are ordered by production time only. An event with the
  last sequence number again is let through: it is a retry, and JetStream's duplicate window
  (``Nats-Msg-Id``) stores it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: payloads that describe the current state: a newer one replaces an older one
STATE_KINDS = frozenset({"match_state", "provider_odds", "danger", "bet_stop"})


class Verdict(Enum):
    PUBLISH = "publish"
    DROP_STALE = "drop_stale"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    gap: int = 0  # events missing before this one
    out_of_order: bool = False


@dataclass
class Cursor:
    last_sequence: int = 0
    newest_state_ms: int = -1


class Sequencer:
    """Decides, per event, whether it is published, and keeps the cursors."""

    def __init__(self) -> None:
        self._cursors: dict[tuple[str, str], Cursor] = {}

    def cursor(self, provider: str, match_id: str) -> Cursor:
        return self._cursors.setdefault((provider, match_id), Cursor())

    def restore(self, provider: str, match_id: str, last_sequence: int, newest_state_ms: int) -> None:
        """Seed a cursor from what the stream already holds (after a restart)."""
        c = self.cursor(provider, match_id)
        c.last_sequence = max(c.last_sequence, last_sequence)
        c.newest_state_ms = max(c.newest_state_ms, newest_state_ms)

    def forget(self, provider: str, match_id: str) -> None:
        """Drop a finished match's cursor (see ``FeedCore.forget_finished``)."""
        self._cursors.pop((provider, match_id), None)

    def save(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Cursor | None]:
        """Copies of some cursors (None: not there yet), to :meth:`load` back if a batch is not
        published."""
        out: dict[tuple[str, str], Cursor | None] = {}
        for k in keys:
            c = self._cursors.get(k)
            out[k] = Cursor(c.last_sequence, c.newest_state_ms) if c else None
        return out

    def load(self, saved: dict[tuple[str, str], Cursor | None]) -> None:
        for key, cursor in saved.items():
            if cursor is None:
                self._cursors.pop(key, None)
            else:
                self._cursors[key] = cursor

    def decide(self, provider: str, match_id: str, kind: str, sequence: int, produced_ms: int) -> Decision:
        """The decision for one event; call :meth:`commit` once it is really published."""
        c = self.cursor(provider, match_id)
        gap = 0
        out_of_order = False
        if sequence > 0 and c.last_sequence > 0:
            if sequence < c.last_sequence:  # equal: a retry of the same event, JetStream dedupes it
                out_of_order = True
            elif sequence > c.last_sequence + 1:
                gap = sequence - c.last_sequence - 1
        if kind in STATE_KINDS and produced_ms >= 0 and produced_ms < c.newest_state_ms:
            out_of_order = True
        if out_of_order and kind in STATE_KINDS:
            return Decision(Verdict.DROP_STALE, 0, True)
        return Decision(Verdict.PUBLISH, gap, out_of_order)

    def commit(self, provider: str, match_id: str, kind: str, sequence: int, produced_ms: int) -> None:
        c = self.cursor(provider, match_id)
        if sequence > c.last_sequence:
            c.last_sequence = sequence
        if kind in STATE_KINDS and produced_ms > c.newest_state_ms:
            c.newest_state_ms = produced_ms
