"""The feed service's own settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.settings import seconds


@dataclass(frozen=True)
class FeedSettings:
    #: a producer silent for longer than this is declared down
    provider_silence_seconds: float = 20.0
    #: append every accepted batch to this recording (empty: do not record)
    record_path: str = ""
    #: a match in play with no event for longer than this gets a bet_stop (its markets suspended)
    match_silence_seconds: float = 30.0
    #: the same in a break (half time, before and in extra time's break)
    break_silence_seconds: float = 1200.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FeedSettings:
        e = os.environ if env is None else env
        return cls(
            provider_silence_seconds=seconds(e, "LIVEBET_FEED_PROVIDER_SILENCE_SECONDS", cls.provider_silence_seconds),
            record_path=e.get("LIVEBET_FEED_RECORD", ""),
            match_silence_seconds=seconds(e, "LIVEBET_FEED_MATCH_SILENCE_SECONDS", cls.match_silence_seconds),
            break_silence_seconds=seconds(e, "LIVEBET_FEED_BREAK_SILENCE_SECONDS", cls.break_silence_seconds),
        )
