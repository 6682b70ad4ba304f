"""PostgreSQL schema migrations, applied on start by every service that owns tables.

Two kinds of file live in a service's ``migrations/`` folder:

- **Versioned**, ``NNNN_name.sql``: applied in order, each once, each in its own transaction,
  under a transaction-scoped advisory lock so that replicas starting together apply each file
  exactly once. Applied versions are recorded in ``public.livebet_migrations`` with the file's
  checksum; an applied file whose content changed is refused (write a new migration instead of
  editing an old one).
- **Repeatable**, ``R_name.sql``: the current definition of something that can be replaced whole
  (a function: ``CREATE OR REPLACE FUNCTION``), kept in one file and edited in place. After the
  versioned files, each repeatable file is applied when its content is new: never applied before
  under this name. Each content applied is recorded in ``public.livebet_repeatables``, so a
  replica still running older code (a rolling update) does not put the older definition back:
  the newest content to be applied stays. (To go back to an earlier definition, change the file
  again: a content applied once is not applied twice. The rule knows contents, not versions: an
  older replica's definition that this database never had, one from a release it skipped, would
  be applied.)

A version recorded in the database whose file is gone is left alone: that is how a versioned
file that only replaced a function becomes that function's repeatable file.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path

import psycopg

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_REPEATABLE = re.compile(r"^R_[a-z0-9_]+\.sql$")
_TABLE_LOCK = zlib.crc32(b"livebet-migrate")


class MigrationError(RuntimeError):
    """A migration file is malformed or was changed after it was applied."""


def discover(folder: Path) -> list[tuple[str, Path]]:
    """The migration files of a folder as ``(version, path)`` in order; bad names are an error."""
    found: list[tuple[str, Path]] = []
    for path in sorted(folder.glob("*.sql")):
        if _REPEATABLE.match(path.name):
            continue
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name must look like 0001_name.sql or R_name.sql: {path}")
        found.append((path.stem, path))
    versions = [v.split("_", 1)[0] for v, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {folder}")
    return found


def discover_repeatable(folder: Path) -> list[tuple[str, Path]]:
    """The repeatable files of a folder as ``(name, path)``, in name order."""
    return [(path.stem, path) for path in sorted(folder.glob("R_*.sql")) if _REPEATABLE.match(path.name)]


async def migrate(conn: psycopg.AsyncConnection, component: str, folder: Path) -> list[str]:
    """Apply the pending migrations of ``component``, then its new repeatable definitions;
    returns the versions and repeatable names applied now."""
    lock_key = zlib.crc32(f"livebet-migrate:{component}".encode())
    await conn.set_autocommit(True)
    async with conn.transaction():
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog: serialise it.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_TABLE_LOCK,))
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.livebet_migrations (
                   component text NOT NULL,
                   version text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.livebet_repeatables (
                   component text NOT NULL,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, name, checksum))"""
        )
    applied_now: list[str] = []
    files = [(v, p, False) for v, p in discover(folder)] + [(n, p, True) for n, p in discover_repeatable(folder)]
    for name, path, repeatable in files:
        sql = path.read_text()
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            if await _applied(conn, component, name, checksum, repeatable):
                continue
            await conn.execute(sql.encode())
            table = "livebet_repeatables (component, name," if repeatable else "livebet_migrations (component, version,"
            await conn.execute(f"INSERT INTO public.{table} checksum) VALUES (%s, %s, %s)", (component, name, checksum))
            applied_now.append(name)
    return applied_now


async def _applied(conn: psycopg.AsyncConnection, component: str, name: str, checksum: str, repeatable: bool) -> bool:
    """Whether this file is applied already: a repeatable one when this very content was; a
    versioned one when its version was (and then it must not have changed since)."""
    if repeatable:
        cur = await conn.execute(
            "SELECT 1 FROM public.livebet_repeatables WHERE component = %s AND name = %s AND checksum = %s",
            (component, name, checksum),
        )
        return await cur.fetchone() is not None
    cur = await conn.execute(
        "SELECT checksum FROM public.livebet_migrations WHERE component = %s AND version = %s", (component, name)
    )
    row = await cur.fetchone()
    if row is not None and row[0] != checksum:
        raise MigrationError(f"{component} migration {name} changed after it was applied")
    return row is not None
