"""Exponential backoff with full jitter, shared by reconnect loops and the supervisor."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``; ``jitter`` spreads them by up to ±50 %."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: bool = True
    attempts: int = field(default=0, init=False)

    def next(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        if self.jitter:
            delay *= random.uniform(0.5, 1.5)
        return min(delay, self.maximum)

    def reset(self) -> None:
        self.attempts = 0
