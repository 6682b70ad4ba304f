"""PostgreSQL schema migrations, applied on start by every service that owns tables.

A migration is a file ``NNNN_name.sql`` in the service's ``migrations/`` folder. Files are applied
in order, each in its own transaction, under a transaction-scoped advisory lock so that replicas
starting together apply each file exactly once. Applied versions are recorded in
``public.livebet_migrations`` with the file's checksum; an applied file whose content changed is
refused (write a new migration instead of editing an old one).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path

import psycopg

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_TABLE_LOCK = zlib.crc32(b"livebet-migrate")


class MigrationError(RuntimeError):
    """A migration file is malformed or was changed after it was applied."""


def discover(folder: Path) -> list[tuple[str, Path]]:
    """The migration files of a folder as ``(version, path)`` in order; bad names are an error."""
    found: list[tuple[str, Path]] = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path}")
        found.append((path.stem, path))
    versions = [v.split("_", 1)[0] for v, _ in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {folder}")
    return found


async def migrate(conn: psycopg.AsyncConnection, component: str, folder: Path) -> list[str]:
    """Apply the pending migrations of ``component``; returns the versions applied now."""
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
    applied_now: list[str] = []
    for version, path in discover(folder):
        sql = path.read_text()
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            cur = await conn.execute(
                "SELECT checksum FROM public.livebet_migrations WHERE component = %s AND version = %s",
                (component, version),
            )
            row = await cur.fetchone()
            if row is not None:
                if row[0] != checksum:
                    raise MigrationError(f"{component} migration {version} changed after it was applied")
                continue
            await conn.execute(sql.encode())
            await conn.execute(
                "INSERT INTO public.livebet_migrations (component, version, checksum) VALUES (%s, %s, %s)",
                (component, version, checksum),
            )
            applied_now.append(version)
    return applied_now
