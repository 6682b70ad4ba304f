"""Recording and replay of provider messages.

A recording is a file of JSON lines, one per ingested batch, exactly as the provider sent it:
``{"at": <ms since epoch>, "provider": "...", "events": [<base64 FeedEvent>], "raw": [[<format>,
<base64 payload>]]}``. The feed service records every batch it accepted when
``LIVEBET_FEED_RECORD`` names a file.

    python -m feed.replay FILE... --target 127.0.0.1:50100 [--speed 10 | --fast] [--provider NAME]

pushes recordings through ingestion again, at ``--speed`` times the recorded pace or as fast as
possible; ``.xml`` files are sent as one UOF message each (files from a provider's archive).
Replaying is idempotent: every event keeps its id, so what is already in the stream is stored once
(within the stream's duplicate window; ordering drops older state updates after it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from google.protobuf.message import DecodeError
from livebet.feed.v1 import event_pb2 as ev
from livebet.feed.v1 import feed_service_pb2 as fs
from livebet.feed.v1 import feed_service_pb2_grpc

from mesh import access


class FileRecorder:
    """Appends each accepted batch to a recording (flushed per batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def record(self, provider: str, events: Sequence[ev.FeedEvent], raw: Sequence[fs.RawMessage]) -> None:
        line = {
            "at": int(time.time() * 1000),
            "provider": provider,
            "events": [base64.b64encode(e.SerializeToString()).decode() for e in events],
            "raw": [[r.format, base64.b64encode(r.payload).decode()] for r in raw],
        }
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class Record:
    at_ms: int
    request: fs.PublishBatchRequest


def read(path: Path, provider: str = "uof") -> Iterator[Record]:
    """Records of a recording, or one raw-message record per file for UOF ``.xml`` files."""
    if path.suffix == ".xml":
        request = fs.PublishBatchRequest(
            provider=provider, raw_messages=[fs.RawMessage(format=fs.RAW_FORMAT_UOF_XML, payload=path.read_bytes())]
        )
        yield Record(int(path.stat().st_mtime * 1000), request)
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                request = fs.PublishBatchRequest(
                    provider=d["provider"],
                    events=[ev.FeedEvent.FromString(base64.b64decode(x, validate=True)) for x in d.get("events", [])],
                    raw_messages=[
                        fs.RawMessage(format=fs.RawFormat.Name(int(fmt)), payload=base64.b64decode(p, validate=True))
                        for fmt, p in d.get("raw", [])
                    ],
                )
                yield Record(int(d["at"]), request)
            except (ValueError, KeyError, TypeError, DecodeError) as exc:
                raise ValueError(f"{path}:{n}: not a recording line ({exc})") from None


async def play(paths: list[Path], target: str, speed: float | None, provider: str = "uof") -> tuple[int, int, int]:
    """Returns (batches, accepted, duplicates)."""
    batches = accepted = duplicates = 0
    async with access.aio_channel(target, "svc:replay", [access.FEED]) as channel:
        stub = feed_service_pb2_grpc.FeedServiceStub(channel)
        first_at: int | None = None
        records = [r for path in paths for r in read(path, provider)]  # a corrupt line stops it before any send
        started = time.monotonic()
        for rec in records:
            if speed is not None:
                first_at = rec.at_ms if first_at is None else first_at
                due = started + (rec.at_ms - first_at) / 1000.0 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            r = await stub.PublishBatch(rec.request, timeout=30)
            batches += 1
            accepted += r.accepted
            duplicates += r.duplicates
    return batches, accepted, duplicates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feed.replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", type=Path, nargs="+", help="recordings, or UOF XML files (one message each)")
    parser.add_argument("--provider", default="uof", help="provider name for UOF XML files (default uof)")
    parser.add_argument("--target", default="127.0.0.1:50100")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="times the recorded pace (default 1)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    args = parser.parse_args(argv)
    for f in args.files:
        if not f.exists():
            parser.error(f"no such file: {f}")
    if not args.fast and args.speed <= 0:
        parser.error("--speed must be positive")
    try:
        speed = None if args.fast else args.speed
        batches, accepted, duplicates = asyncio.run(play(args.files, args.target, speed, args.provider))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"error: the feed refused a batch: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"replayed {batches} batches: {accepted} events stored, {duplicates} already there")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
