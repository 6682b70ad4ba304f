"""Provider (producer) liveness (pure).

Each producer is *up*, *down* or *recovering*. Any message from it counts as a sign of life; a
producer silent for longer than ``threshold`` seconds goes **down** (a ``provider_down`` event is
published, and pricing suspends all of its matches). When it is heard again it is *recovering*: its
markets stay suspended until its recovery ends with ``snapshot_complete``, which makes it **up**
again (and lets pricing reopen them). A producer seen for the first time is up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Status(Enum):
    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"


@dataclass(frozen=True)
class Transition:
    producer: str
    status: Status
    last_seen: float


@dataclass
class _Producer:
    last_seen: float
    status: Status = Status.UP


class Liveness:
    def __init__(self, threshold: float = 20.0) -> None:
        if threshold <= 0:
            raise ValueError("the silence threshold must be positive")
        self.threshold = threshold
        self._producers: dict[str, _Producer] = {}

    def status(self, producer: str) -> Status | None:
        p = self._producers.get(producer)
        return p.status if p else None

    def heard(self, producer: str, now: float, snapshot_complete: bool = False) -> Transition | None:
        """A message from ``producer`` arrived; returns the transition it caused, if any."""
        p = self._producers.get(producer)
        if p is None:
            self._producers[producer] = _Producer(now)
            return None
        p.last_seen = max(p.last_seen, now)
        if p.status is Status.DOWN:
            p.status = Status.RECOVERING
            if not snapshot_complete:
                return Transition(producer, Status.RECOVERING, now)
        if p.status is Status.RECOVERING and snapshot_complete:
            p.status = Status.UP
            return Transition(producer, Status.UP, now)
        return None

    def went_down(self, producer: str, last_seen: float) -> None:
        """``producer`` was declared down (by another feed replica, or read back from the stream)
        for a silence that began at ``last_seen``: down here too, unless heard of since."""
        p = self._producers.get(producer)
        if p is None:
            self._producers[producer] = _Producer(last_seen, Status.DOWN)
        elif p.last_seen <= last_seen:
            p.status = Status.DOWN

    def tick(self, now: float) -> list[Transition]:
        """Producers silent for longer than the threshold go down (once)."""
        out = []
        for name, p in self._producers.items():
            if p.status is not Status.DOWN and now - p.last_seen > self.threshold:
                p.status = Status.DOWN
                out.append(Transition(name, Status.DOWN, p.last_seen))
        return out
