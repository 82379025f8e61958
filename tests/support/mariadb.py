"""A throwaway MariaDB server for a test: ``mariadb-install-db`` and ``mariadbd`` as a temporary
unprivileged user, a unix socket only (``--skip-networking``), root without a password on that socket."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.users import temp_user, world_dir

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# MariaDB 11 (Debian 13) ships the mysql* names in a separate package; 10.11 (Debian 12) has both.
CLIENT = "mariadb" if shutil.which("mariadb", path=SYSTEM_PATH) else "mysql"


def require_mariadb() -> None:
    """Raise RuntimeError naming the fix when the MariaDB server or clients are missing."""
    for names in (
        ("mariadb-install-db",),
        ("mariadbd",),
        ("mariadb-dump", "mysqldump"),
        ("mariadb", "mysql"),
    ):
        if not any(shutil.which(n, path=SYSTEM_PATH) for n in names):
            raise RuntimeError(f"{names[0]} is missing: apt-get install -y mariadb-server mariadb-client")


@dataclass
class MariaDB:
    socket: Path

    def sql(self, sql: str, db: str = "mysql") -> str:
        done = subprocess.run(
            [CLIENT, f"--socket={self.socket}", "--user=root", "-N", "-B", "-e", sql, db],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"mysql {sql[:80]!r} failed: {done.stderr}")
        return done.stdout.strip()

    def spec(self, db: str) -> dict[str, object]:
        return {"mysql": db, "user": "root", "host": str(self.socket)}


@contextmanager
def mariadb_server() -> Iterator[MariaDB]:
    require_mariadb()
    with temp_user() as user, world_dir() as folder:
        data, sock, log, pid = folder / "data", folder / "sock", folder / "err.log", folder / "pid"
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            cwd=folder,
            capture_output=True,
            timeout=120,
            check=True,
            **ids,  # type: ignore[arg-type]
        )
        server = subprocess.Popen(
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                "--skip-networking",
                f"--pid-file={pid}",
                f"--log-error={log}",
                "--innodb-buffer-pool-size=32M",
            ],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **ids,  # type: ignore[arg-type]
        )
        try:
            db = MariaDB(sock)
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"mariadbd exited with {server.returncode}: {log.read_text()[-2000:]}")
                try:
                    db.sql("SELECT 1")
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield db
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            shutil.rmtree(folder, ignore_errors=True)
