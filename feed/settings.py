"""The feed service's own settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mesh.settings import SettingsError


@dataclass(frozen=True)
class FeedSettings:
    #: a producer silent for longer than this is declared down
    provider_silence_seconds: float = 20.0
    #: append every accepted batch to this recording (empty: do not record)
    record_path: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FeedSettings:
        e = os.environ if env is None else env
        record = e.get("LIVEBET_FEED_RECORD", "")
        raw = e.get("LIVEBET_FEED_PROVIDER_SILENCE_SECONDS", "")
        if not raw:
            return cls(record_path=record)
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"LIVEBET_FEED_PROVIDER_SILENCE_SECONDS must be a number, got {raw!r}") from None
        if value <= 0:
            raise SettingsError("LIVEBET_FEED_PROVIDER_SILENCE_SECONDS must be positive")
        return cls(provider_silence_seconds=value, record_path=record)
