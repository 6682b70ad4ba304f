"""Migrations on a real PostgreSQL: applied once, even by replicas starting together; repeatable
definitions applied again when their content is new, never put back by an older replica."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from mesh.migrate import MigrationError, migrate
from tests.conftest import Server


@contextlib.asynccontextmanager
async def _replicas(url: str, n: int = 3) -> AsyncIterator[list[psycopg.AsyncConnection]]:
    """One connection per replica starting at once."""
    conns = [await psycopg.AsyncConnection.connect(url) for _ in range(n)]
    try:
        yield conns
    finally:
        for c in conns:
            await c.close()


async def test_migrations_apply_exactly_once_when_replicas_start_together(
    postgres_server: Server, tmp_path: Path
) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_schema.sql").write_text(f"CREATE SCHEMA {schema};")
    (tmp_path / "0002_table.sql").write_text(
        f"CREATE TABLE {schema}.t (id int PRIMARY KEY); INSERT INTO {schema}.t VALUES (1);"
    )
    async with _replicas(postgres_server.url) as conns:
        results = await asyncio.gather(*(migrate(c, schema, tmp_path) for c in conns))
        assert sorted(v for r in results for v in r) == ["0001_schema", "0002_table"]
        assert await migrate(conns[0], schema, tmp_path) == []
        cur = await conns[0].execute(f"SELECT count(*) FROM {schema}.t")
        assert await cur.fetchone() == (1,)


async def test_an_applied_migration_that_changed_is_refused(postgres_server: Server, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "0001_schema.sql"
    path.write_text(f"CREATE SCHEMA {schema};")
    async with await psycopg.AsyncConnection.connect(postgres_server.url) as conn:
        assert await migrate(conn, schema, tmp_path) == ["0001_schema"]
        path.write_text(f"CREATE SCHEMA {schema}; -- edited")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, schema, tmp_path)


async def test_a_failing_migration_leaves_nothing_half_applied(postgres_server: Server, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_bad.sql").write_text(f"CREATE SCHEMA {schema}; SELECT no_such_function();")
    async with await psycopg.AsyncConnection.connect(postgres_server.url) as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            await migrate(conn, schema, tmp_path)
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert await cur.fetchone() is None
        cur = await conn.execute("SELECT 1 FROM public.livebet_migrations WHERE component = %s", (schema,))
        assert await cur.fetchone() is None


async def _function_says(conn: psycopg.AsyncConnection, schema: str) -> str:
    cur = await conn.execute(f"SELECT {schema}.say()")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def test_a_repeatable_definition_is_applied_when_its_content_is_new(
    postgres_server: Server, tmp_path: Path
) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_schema.sql").write_text(f"CREATE SCHEMA {schema};")
    fn = tmp_path / "R_say.sql"

    def define(word: str) -> str:
        text = f"CREATE OR REPLACE FUNCTION {schema}.say() RETURNS text LANGUAGE sql AS $$ SELECT '{word}' $$;"
        fn.write_text(text)
        return text

    async with _replicas(postgres_server.url) as conns:
        first = define("one")  # after the versioned files (it needs their schema), once for three replicas
        results = await asyncio.gather(*(migrate(c, schema, tmp_path) for c in conns))
        assert sorted(v for r in results for v in r) == ["0001_schema", "R_say"]
        assert await migrate(conns[0], schema, tmp_path) == []
        assert await _function_says(conns[0], schema) == "one"

        define("two")  # edited in place: applied again, not refused
        assert await migrate(conns[1], schema, tmp_path) == ["R_say"]
        assert await _function_says(conns[0], schema) == "two"

        fn.write_text(first)  # a replica still on the older code starts: the newer definition stays
        assert await migrate(conns[2], schema, tmp_path) == []
        assert await _function_says(conns[0], schema) == "two"
        cur = await conns[0].execute("SELECT count(*) FROM public.livebet_repeatables WHERE component = %s", (schema,))
        assert await cur.fetchone() == (2,)


async def test_a_failing_repeatable_definition_is_not_recorded(postgres_server: Server, tmp_path: Path) -> None:
    schema = f"m_{uuid.uuid4().hex[:8]}"
    (tmp_path / "0001_schema.sql").write_text(f"CREATE SCHEMA {schema};")
    (tmp_path / "R_bad.sql").write_text(f"CREATE FUNCTION {schema}.f() RETURNS int LANGUAGE sql AS $$ SELECT x $$;")
    async with await psycopg.AsyncConnection.connect(postgres_server.url) as conn:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            await migrate(conn, schema, tmp_path)
        cur = await conn.execute("SELECT 1 FROM public.livebet_repeatables WHERE component = %s", (schema,))
        assert await cur.fetchone() is None
        (tmp_path / "R_bad.sql").write_text(f"CREATE FUNCTION {schema}.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;")
        assert await migrate(conn, schema, tmp_path) == ["R_bad"]  # the versioned file was kept meanwhile
