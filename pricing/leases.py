"""Which engine replica prices which matches: leases on the FEED stream's partitions.

The matches are hashed into ``PARTITIONS`` shares by the FEED stream itself (see
:mod:`feed.adapters.jetstream`). A replica prices a share only while it holds that share's
**lease**, a key ``p.<k>`` in the NATS key-value bucket ``pricing-leases`` whose value is the
replica's instance id. The bucket's keys live ``LEASE_TTL`` seconds; the holder renews its leases
every ``RENEW_EVERY`` seconds with a compare-and-set on the key's revision, so

- at most one replica holds a share at a time (creating a lease is a compare-and-set too);
- a replica that dies stops renewing and its shares are free ``LEASE_TTL`` s later, when the
  others take them (worst case ``LEASE_TTL + RENEW_EVERY`` plus the share's rebuild);
- a replica that cannot renew (NATS slow, process paused) stops pricing the share at once.

Each replica also keeps a ``member.<instance>`` key alive; the replicas balance the shares between
the live members (:func:`plan`): a replica above its fair share gives the extra ones back, so a
replica that joins gets work without anyone restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections import Counter
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from feed.adapters.jetstream import key_value

BUCKET = "pricing-leases"
LEASE_TTL = 2.5
RENEW_EVERY = 0.75


@dataclass(frozen=True)
class Lease:
    partition: int
    holder: str
    revision: int


def plan(me: str, partitions: int, holders: dict[int, str], members: set[str]) -> tuple[list[int], list[int]]:
    """The shares ``me`` should try to take and the ones it should give back (pure).

    Fair share = ceil(partitions / live members). Free shares are tried in an order that depends
    on the replica, so replicas starting together mostly try different ones."""
    n = len(members | {me})
    fair = math.ceil(partitions / n)
    mine = sorted(k for k, h in holders.items() if h == me)
    if len(mine) > fair:
        return [], mine[fair:]
    free = sorted(
        (k for k in range(partitions) if k not in holders),
        key=lambda k: hashlib.sha256(f"{me}:{k}".encode()).digest(),
    )
    return free[: fair - len(mine)], []


def settled(me: str, partitions: int, holders: dict[int, str], members: set[str]) -> bool:
    """Whether the shares are where they will stay (pure): no replica holds more than its fair
    part (nobody is about to give one back) and ``me`` has no free share to take. A replica that
    starts while another holds every share is not settled until it got its part."""
    fair = math.ceil(partitions / len(members | {me}))
    held = Counter(holders.values())
    return all(n <= fair for n in held.values()) and not plan(me, partitions, holders, members)[0]


async def lease_store(js: JetStreamContext) -> KeyValue:
    return await key_value(js, BUCKET, ttl=LEASE_TTL)


class Leases:
    """The lease table seen from one replica (all I/O on the key-value bucket)."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, me: str, partitions: int) -> None:
        self.kv, self.js, self.me, self.partitions = kv, js, me, partitions
        self.held: dict[int, int] = {}  # partition -> revision of our lease

    async def heartbeat(self) -> None:
        await self.kv.put(f"member.{self.me}", b"1")

    async def members(self) -> set[str]:
        info = await self.js.stream_info(f"KV_{BUCKET}", subjects_filter=f"$KV.{BUCKET}.member.>")
        subjects = info.state.subjects or {}
        return {s.rsplit(".", 1)[1] for s in subjects}

    async def holders(self) -> dict[int, str]:
        """Who holds each share: the keys read at once, not one round trip after another (a
        replica busy replaying must still get through its lease round well within a lease's life)."""

        async def holder(k: int) -> str | None:
            try:
                entry = await self.kv.get(f"p.{k}")
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
            return entry.value.decode() if entry.value else None

        found = await asyncio.gather(*(holder(k) for k in range(self.partitions)))
        return {k: h for k, h in enumerate(found) if h is not None}

    async def renew(self, k: int) -> bool:
        """Extend our lease on ``k``; False when it is no longer ours."""
        try:
            self.held[k] = await self.kv.update(f"p.{k}", self.me.encode(), last=self.held[k])
            return True
        except (KeyError, nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            self.held.pop(k, None)
            return False

    async def take(self, k: int) -> bool:
        try:
            self.held[k] = await self.kv.create(f"p.{k}", self.me.encode())
            return True
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            return False

    async def give(self, k: int) -> None:
        rev = self.held.pop(k, None)
        if rev is not None:
            with contextlib.suppress(nats.js.errors.APIError):  # expired or taken: nothing of ours
                await self.kv.delete(f"p.{k}", last=rev)
