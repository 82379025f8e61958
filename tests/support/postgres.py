"""A throwaway PostgreSQL 15 cluster for a test: initdb and pg_ctl as a temporary unprivileged user
(the server refuses to run as root), listening only on a unix socket in a private folder, trust auth
on that socket. ``psql`` runs as root against it (trust: no password)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.users import temp_user, world_dir


def _server_bin() -> Path:
    """Return the server binaries: $HASUPD_TEST_PG_BIN, else the newest /usr/lib/postgresql/N/bin
    (15 on Debian 12, 17 on Debian 13)."""
    if os.environ.get("HASUPD_TEST_PG_BIN"):
        return Path(os.environ["HASUPD_TEST_PG_BIN"])
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


BIN = _server_bin()


def require_postgres() -> None:
    """Raise RuntimeError naming the fix when the PostgreSQL 15 server binaries are missing."""
    for name in ("initdb", "pg_ctl", "postgres", "pg_dump", "pg_restore", "psql"):
        if not (BIN / name).exists():
            raise RuntimeError(f"{BIN / name} is missing: apt-get install -y postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    socket_dir: Path
    port: int
    data: Path
    uid: int
    gid: int
    log: Path

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> str:
        """Run ``sql`` (one command or several); return the unaligned, tuples-only output."""
        done = subprocess.run(
            [str(BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", *self.conn(), "-d", db, "-c", sql],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"psql {sql[:80]!r} failed: {done.stderr}")
        return done.stdout.strip()

    def conn(self) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres"]

    def spec(self, db: str) -> dict[str, object]:
        """Return a ``databases:`` entry for ``db`` of this cluster."""
        return {
            "postgresql": db,
            "user": "postgres",
            "host": str(self.socket_dir),
            "port": self.port,
            "bin_dir": str(BIN),
        }

    def databases(self) -> list[str]:
        return self.psql("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1").split()


@contextmanager
def pg_cluster() -> Iterator[Cluster]:
    """Start a fresh cluster; stop it (immediate) and remove everything at the end."""
    require_postgres()
    with temp_user() as user, world_dir() as folder:
        data, sock = folder / "data", folder / "sock"
        sock.mkdir()
        os.chown(sock, user.pw_uid, user.pw_gid)
        log = folder / "postgres.log"

        def as_user(*argv: str) -> None:
            done = subprocess.run(
                list(argv),
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}{tail}")

        as_user(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        port = free_port()
        options = f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off"
        as_user(str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        try:
            yield Cluster(sock, port, data, user.pw_uid, user.pw_gid, log)
        finally:
            subprocess.run(
                [str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                capture_output=True,
                timeout=60,
                check=False,
            )
            shutil.rmtree(folder, ignore_errors=True)
