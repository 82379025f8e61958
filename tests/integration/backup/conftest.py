"""Real restic (both versions, see tests/support/restic_versions.py), a local hot repository and a REST "cold"
repository served by ``rclone serve restic``."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hasupd.backup.restic import Restic
from hasupd.config.model import RepositoryConfig
from hasupd.host.reaper import Reaper
from tests.integration.backup import jobsupport
from tests.support import restic_versions

# The parametrized fixture (system restic, then the other Debian release's), for every test here.
restic_binary = restic_versions.restic_binary
# The daemon-level tests' prepared repository and setup (system restic only).
repo_template = jobsupport.repo_template
setup = jobsupport.setup

PASSWORD = "correct horse battery staple\n"


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    r = Reaper(asyncio.get_running_loop())
    yield r
    r.close()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "restic.pass"
    path.write_text(PASSWORD)
    path.chmod(0o600)
    return path


@pytest.fixture
def make_restic(
    tmp_path: Path,
    restic_binary: Path,
    reaper: Reaper,
    password_file: Path,
) -> Callable[..., Restic]:
    """Return a factory: make_restic(url, name=..., password_file=..., binary=..., **Restic kwargs)."""

    def make(url: str | Path, *, name: str = "hot", password: Path | None = None, **kw: Any) -> Restic:
        repo = RepositoryConfig(
            name=name,
            url=str(url),
            password_file=str(password or password_file),
            environment_file=kw.pop("environment_file", None),
        )
        kw.setdefault("binary", str(restic_binary))
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("lock_wait_sec", 10.0)
        kw.setdefault("timeout_sec", 120.0)
        kw.setdefault("quick_timeout_sec", 60.0)
        return Restic(repo, reaper=reaper, **kw)

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RestServer:
    url: str
    root: Path

    def repo_url(self) -> str:
        """Return the URL of a fresh (not yet created) repository on the server."""
        return f"rest:{self.url}/{uuid.uuid4().hex[:12]}/"


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    """``rclone serve restic`` on a free port: the "cheaper storage". Fails if rclone is missing."""
    if shutil.which("rclone") is None:
        pytest.fail("rclone is not installed: apt-get install -y rclone")
    root = tmp_path_factory.mktemp("rest")
    port = _free_port()
    log = open(root.parent / "rclone.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        ["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"rclone serve restic exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("rclone serve restic did not start listening within 15s")
                time.sleep(0.05)
        yield RestServer(url=f"http://127.0.0.1:{port}", root=root)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ------------------------------------------------------------------------------------------ history

# Snapshots at 03:00 UTC over 40 days (2025-01-01 .. 2025-02-09): sparse in January, daily in the last
# week, and one more at 01:00 on the last day. (Each restic run costs ~0.5 s of key derivation: 20 runs.)
DAYS = [(1, d) for d in (1, 5, 10, 12, 15, 19, 22, 25, 26, 29, 31)] + [(2, d) for d in range(1, 10)]
EXTRA = datetime(2025, 2, 9, 1, 0, tzinfo=UTC)


def history_times() -> list[datetime]:
    return [datetime(2025, m, d, 3, 0, tzinfo=UTC) for m, d in DAYS] + [EXTRA]


@dataclass
class History:
    repo: Path  # a private copy for the test
    source: Path


def restic_env(binary: Path, repo: Path | str, password_file: Path, cache: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD_FILE": str(password_file),
        "RESTIC_CACHE_DIR": str(cache),
        "TZ": "UTC",
    }


@pytest.fixture(scope="session")
def history_template(
    restic_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, Path]:
    """Build once per restic version a repository holding the back-dated history (scaffolding: raw
    restic, not the code under test). Return (repo, source dir, password file)."""
    base = tmp_path_factory.mktemp("history")
    source = base / "src"
    source.mkdir()
    (source / "data.txt").write_text("history\n")
    password = base / "pass"
    password.write_text(PASSWORD)
    repo = base / "repo"
    env = restic_env(restic_binary, repo, password, base / "cache")
    subprocess.run([str(restic_binary), "init", "-q"], env=env, check=True, capture_output=True)

    def one(when: datetime) -> None:
        stamp = when.strftime("%Y-%m-%d %H:%M:%S")
        subprocess.run(
            [str(restic_binary), "backup", "-q", "--time", stamp, str(source)],
            env=env,
            check=True,
            capture_output=True,
        )

    # Backups may run side by side (non-exclusive locks); 4 at a time keeps this under ~10 s on 0.18.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, history_times()))
    return repo, source, password


@pytest.fixture
def history(history_template: tuple[Path, Path, Path], tmp_path: Path, password_file: Path) -> History:
    """A private copy of the history repository (same password as ``password_file``)."""
    template, source, _ = history_template
    repo = tmp_path / "hot"
    shutil.copytree(template, repo)
    return History(repo=repo, source=source)


@pytest.fixture(scope="session")
def empty_template(restic_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized, empty repository per restic version (``init`` costs seconds: key derivation is
    calibrated there), copied by ``fresh_repo``."""
    base = tmp_path_factory.mktemp("empty")
    password = base / "pass"
    password.write_text(PASSWORD)
    env = restic_env(restic_binary, base / "repo", password, base / "cache")
    subprocess.run([str(restic_binary), "init", "-q"], env=env, check=True, capture_output=True)
    return base / "repo"


@pytest.fixture
def fresh_repo(empty_template: Path, tmp_path: Path) -> Path:
    """A private initialized, empty repository (same password as ``password_file``)."""
    repo = tmp_path / "repo"
    shutil.copytree(empty_template, repo)
    return repo
