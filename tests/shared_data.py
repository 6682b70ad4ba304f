"""The reference data beside the repository (``../shared/data``: UOF samples, football-data CSVs).

Tests that read it are marked with :func:`needs`: without the folder they are *skipped* and
pytest's summary (``-ra``) names each one, so a run without the data never passes silently as if
they had run. ``LIVEBET_REQUIRE_SHARED_DATA=1`` turns the skip into a failure, for a machine that is
known to have the data.
"""

from __future__ import annotations

import os

import pytest

from mesh.process import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
UOF = SHARED_DATA / "uof"
FOOTBALL_DATA = SHARED_DATA / "football-data"


def needs(path: object) -> pytest.MarkDecorator:
    """Skip (or, with LIVEBET_REQUIRE_SHARED_DATA=1, fail) when ``path`` is not there."""
    from pathlib import Path

    present = Path(str(path)).exists()
    if not present and os.environ.get("LIVEBET_REQUIRE_SHARED_DATA") == "1":
        raise FileNotFoundError(f"LIVEBET_REQUIRE_SHARED_DATA=1 but {path} is missing")
    return pytest.mark.skipif(not present, reason=f"needs {path} (../shared/data beside the repo)")
