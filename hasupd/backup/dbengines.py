"""What a database restore does to each engine: load a dump into a new database, run a check query,
swap two databases by renaming, drop a database hasupd created.

* PostgreSQL: ``CREATE DATABASE``, ``pg_restore --exit-on-error`` from restic's stream; the swap is two
  ``ALTER DATABASE ... RENAME`` in one transaction (atomic), after ending the sessions still connected.
* SQLite: the "database" is a file: the dump is written next to the live file, checked with
  ``PRAGMA integrity_check``, and the swap is two renames in one folder.
* MariaDB/MySQL: ``CREATE DATABASE`` and ``mysql`` from the stream; there is no rename of a database, so
  no in-place swap (``--target-db`` only).

Every program is run with a checked exit status; a failure raises EngineError with its message.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from hasupd.backup.databases import mysql_connection, pg_connection, program
from hasupd.backup.streams import StreamCommand, describe_failure
from hasupd.config.model import DatabaseKind, DatabaseSpec
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.runtimes.command import run_command

# Feeds a dump into a command's stdin (``Restic.dump_into`` of one snapshot file).
Feed = Callable[[StreamCommand], Awaitable[None]]
QUERY_TIMEOUT_SEC = 600.0


class EngineError(Exception):
    """A database program failed (message says which and why)."""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _mysql_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "f", "false", "null")


class Engine:
    """The restore operations of one ``databases:`` entry."""

    def __init__(self, spec: DatabaseSpec, reaper: Reaper | None) -> None:
        self.spec = spec
        self._reaper = reaper
        self._path = os.environ.get("PATH", DEFAULT_PATH)

    @property
    def swappable(self) -> bool:
        return self.spec.kind is not DatabaseKind.MYSQL

    async def _run(self, argv: list[str], env: dict[str, str]) -> str:
        result = await run_command(
            argv, reaper=self._reaper, env={"PATH": self._path, **env}, timeout=QUERY_TIMEOUT_SEC
        )
        if not result.ok:
            raise EngineError(describe_failure(tuple(argv), result))
        return result.stdout.decode("utf-8", "replace")

    async def _sql(self, sql: str, database: str) -> str:
        """Run ``sql`` in ``database``; return the unaligned output (first column of each row)."""
        if self.spec.kind is DatabaseKind.POSTGRESQL:
            args, env = pg_connection(self.spec)
            argv = [program(self.spec, "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", *args, "-d", database]
            return await self._run([*argv, "-c", sql], env)
        args, env = mysql_connection(self.spec)
        return await self._run([program(self.spec, "mysql"), *args, "-N", "-B", "-e", sql, database], env)

    async def exists(self, name: str) -> bool:
        """Return whether database ``name`` (a file for SQLite) exists."""
        if self.spec.kind is DatabaseKind.SQLITE:
            return os.path.lexists(name)
        if self.spec.kind is DatabaseKind.POSTGRESQL:
            query = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"  # name matched a strict pattern
            return (await self._sql(query, "postgres")).strip() == "1"
        return (await self._sql(f"SHOW DATABASES LIKE '{name}'", "mysql")).strip() == name

    async def load(self, name: str, feed: Feed) -> None:
        """Create database ``name`` (must not exist) and load the dump into it. Raise EngineError."""
        spec = self.spec
        match spec.kind:
            case DatabaseKind.POSTGRESQL:
                await self._sql(f"CREATE DATABASE {_ident(name)}", "postgres")
                args, env = pg_connection(spec)
                argv = (program(spec, "pg_restore"), "--exit-on-error", *args, "--dbname", name)
                await feed(StreamCommand(argv, {"PATH": self._path, **env}))
            case DatabaseKind.MYSQL:
                await self._sql(f"CREATE DATABASE {_mysql_ident(name)}", "mysql")
                args, env = mysql_connection(spec)
                argv = (program(spec, "mysql"), *args, name)
                await feed(StreamCommand(argv, {"PATH": self._path, **env}))
            case DatabaseKind.SQLITE:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
                # A plain copy of the stream: `dd` writes it without a shell.
                await feed(StreamCommand(("dd", f"of={name}", "conv=notrunc", "status=none"), {}))
                await asyncio.to_thread(_sqlite_integrity, name)

    async def check(self, name: str, query: str | None) -> str:
        """Run the check query on database ``name``; return its first value. Raise EngineError when it
        fails or its first value is empty, 0 or false (a query that proves nothing is a failure)."""
        if query is None:
            return "no check query"
        if self.spec.kind is DatabaseKind.SQLITE:
            value = await asyncio.to_thread(_sqlite_query, name, query)
        else:
            value = (await self._sql(query, name)).split("\n", 1)[0]
        if not _truthy(value):
            raise EngineError(f"check query {query!r} returned {value.strip() or 'no row'!r}")
        return f"check query returned {value.strip()}"

    async def swap(self, live: str, staged: str, kept: str) -> None:
        """Rename ``live`` to ``kept`` and ``staged`` to ``live`` (both or neither, for PostgreSQL)."""
        match self.spec.kind:
            case DatabaseKind.POSTGRESQL:
                names = ", ".join(f"'{n}'" for n in (live, staged))
                await self._sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE datname IN ({names}) AND pid <> pg_backend_pid();"
                    f"BEGIN; ALTER DATABASE {_ident(live)} RENAME TO {_ident(kept)};"
                    f"ALTER DATABASE {_ident(staged)} RENAME TO {_ident(live)}; COMMIT;",
                    "postgres",
                )
            case DatabaseKind.SQLITE:
                for suffix in ("-wal", "-shm", "-journal"):  # belong to the live file, now stopped
                    if os.path.exists(live + suffix):
                        os.rename(live + suffix, kept + suffix)
                os.rename(live, kept)
                os.rename(staged, live)
            case DatabaseKind.MYSQL:
                raise EngineError("MariaDB/MySQL cannot rename a database: restore with --target-db")

    async def drop(self, name: str) -> None:
        """Remove database ``name`` (only ever one this restore created)."""
        match self.spec.kind:
            case DatabaseKind.POSTGRESQL:
                await self._sql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)", "postgres")
            case DatabaseKind.MYSQL:
                await self._sql(f"DROP DATABASE IF EXISTS {_mysql_ident(name)}", "mysql")
            case DatabaseKind.SQLITE:
                Path(name).unlink(missing_ok=True)


def _sqlite_integrity(path: str) -> None:
    con = sqlite3.connect(f"file:{urllib.request.pathname2url(path)}?mode=ro", uri=True)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as error:
        raise EngineError(f"{path}: {error}") from error
    finally:
        con.close()
    if rows != [("ok",)]:
        raise EngineError(f"{path} fails PRAGMA integrity_check: {rows[:5]}")


def _sqlite_query(path: str, query: str) -> str:
    con = sqlite3.connect(f"file:{urllib.request.pathname2url(path)}?mode=ro", uri=True)
    try:
        row = con.execute(query).fetchone()
    except sqlite3.Error as error:
        raise EngineError(f"check query {query!r} failed: {error}") from error
    finally:
        con.close()
    return "" if row is None or row[0] is None else str(row[0])
