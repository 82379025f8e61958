"""What a live database dump is for each engine: the program and arguments, the file name of the snapshot,
and the SQLite online backup. Nothing here stops a database: every dump reads a consistent snapshot while
the database keeps serving.

* PostgreSQL: ``pg_dump -Fc`` (one MVCC snapshot for the whole dump) per database; ``pg_dumpall
  --globals-only`` (roles, tablespaces) when ``globals: true``.
* MariaDB/MySQL: ``mysqldump --single-transaction`` (one consistent read view for InnoDB tables);
  MariaDB's own name ``mariadb-dump`` where it is installed.
* SQLite: Python's sqlite3 online backup API, in one step (``pages=-1``: a read transaction for the
  whole copy, so writers on another connection cannot force restarts), into a scratch file: the API
  writes a database file, which restic then reads as its stdin. The scratch file is removed afterwards.

Passwords come from ``password_file`` and reach the program through its environment (PGPASSWORD,
MYSQL_PWD), never its argv.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hasupd.backup.streams import StreamCommand
from hasupd.config.model import DatabaseKind, DatabaseSpec
from hasupd.host.procfs import DEFAULT_PATH

DB_TAG = "db:"
SQLITE_BUSY_TIMEOUT_SEC = 60.0


class DatabaseConfigError(Exception):
    """The dump cannot even be formulated (unreadable password file ...)."""


@dataclass(frozen=True)
class DumpItem:
    """One snapshot a database entry produces: ``/FILENAME`` tagged ``db:NAME``."""

    spec: DatabaseSpec
    name: str
    filename: str
    command: StreamCommand | None  # None: SQLite (online backup into a scratch file)

    @property
    def tag(self) -> str:
        return DB_TAG + self.name


# MariaDB's own names first: from MariaDB 11 on (Debian 13) the mysql* names are a separate package.
_MARIADB_NAMES = {"mysqldump": "mariadb-dump", "mysql": "mariadb"}


def program(spec: DatabaseSpec, name: str) -> str:
    """Return the path (or bare name, for PATH) of the program ``name`` for ``spec``.

    For ``mysqldump``/``mysql``, MariaDB's ``mariadb-dump``/``mariadb`` where it is installed.
    """
    path = spec.bin_dir or os.environ.get("PATH", DEFAULT_PATH)
    alternative = _MARIADB_NAMES.get(name)
    if alternative is not None and shutil.which(alternative, path=path) is not None:
        name = alternative
    return os.path.join(spec.bin_dir, name) if spec.bin_dir else name


def _password(spec: DatabaseSpec) -> str | None:
    if spec.password_file is None:
        return None
    try:
        return Path(spec.password_file).read_text(encoding="utf-8").rstrip("\n")
    except OSError as error:
        raise DatabaseConfigError(f"cannot read {spec.password_file}: {error.strerror}") from error
    except UnicodeDecodeError as error:  # else it escaped the job's task and ended hasupd
        raise DatabaseConfigError(f"cannot read {spec.password_file}: not UTF-8 ({error.reason})") from error


def pg_connection(spec: DatabaseSpec) -> tuple[list[str], dict[str, str]]:
    """Return the connection arguments and environment of the PostgreSQL client programs."""
    args = ["--no-password"]
    if spec.host:
        args += ["--host", spec.host]
    if spec.port:
        args += ["--port", str(spec.port)]
    if spec.user:
        args += ["--username", spec.user]
    password = _password(spec)
    return args, ({"PGPASSWORD": password} if password is not None else {})


def mysql_connection(spec: DatabaseSpec) -> tuple[list[str], dict[str, str]]:
    """Return the connection arguments and environment of mysqldump / mysql (MariaDB's too)."""
    args: list[str] = []
    if spec.host and spec.host.startswith("/"):
        args.append(f"--socket={spec.host}")
    elif spec.host:
        args.append(f"--host={spec.host}")
    if spec.port:
        args.append(f"--port={spec.port}")
    if spec.user:
        args.append(f"--user={spec.user}")
    password = _password(spec)
    return args, ({"MYSQL_PWD": password} if password is not None else {})


def dump_items(spec: DatabaseSpec, path_env: str) -> list[DumpItem]:
    """Return the snapshots ``spec`` makes, each with its dump command. Raise DatabaseConfigError."""
    base = {"PATH": path_env}
    match spec.kind:
        case DatabaseKind.POSTGRESQL:
            args, env = pg_connection(spec)
            env = {**base, **env}
            items = [
                DumpItem(
                    spec,
                    spec.name,
                    f"{spec.name}.pgdump",
                    StreamCommand(
                        (program(spec, "pg_dump"), "--format=custom", *args, "--dbname", spec.database), env
                    ),
                )
            ]
            if spec.globals:
                name = f"{spec.name}-globals"
                argv = (program(spec, "pg_dumpall"), "--globals-only", *args)
                items.append(DumpItem(spec, name, f"{name}.sql", StreamCommand(argv, env)))
            return items
        case DatabaseKind.MYSQL:
            args, env = mysql_connection(spec)
            argv = (
                program(spec, "mysqldump"),
                *args,  # --defaults-* options would have to come first; hasupd gives none
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                spec.database,
            )
            return [DumpItem(spec, spec.name, f"{spec.name}.sql", StreamCommand(argv, {**base, **env}))]
        case DatabaseKind.SQLITE:
            return [DumpItem(spec, spec.name, f"{spec.name}.sqlite", None)]


def sqlite_online_backup(source: str, scratch: Path) -> int:
    """Copy the live SQLite database ``source`` into ``scratch`` (a new file, mode 0600) with the online
    backup API, in one step; return its size. Blocking: run it in a worker thread.

    Raise sqlite3.Error (or OSError) when the source cannot be read; ``scratch`` is then removed.
    """
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source} does not exist")
    scratch.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch.unlink(missing_ok=True)
    os.close(os.open(scratch, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        # Read-only: a backup never creates the database nor takes a write lock on it.
        uri = f"file:{urllib.request.pathname2url(source)}?mode=ro"
        src = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_SEC)
        try:
            dst = sqlite3.connect(scratch)
            try:
                src.backup(dst, pages=-1)
                check = dst.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise sqlite3.DatabaseError(f"the copy of {source} fails quick_check: {check}")
            finally:
                dst.close()
        finally:
            src.close()
        return scratch.stat().st_size
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
