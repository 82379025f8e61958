"""Shared pieces of the daemon-level backup tests: a prepared repository, data and config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import write_config

PASSWORD = "correct horse battery staple\n"


@pytest.fixture(scope="session")
def repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository, copied for each test (init costs seconds of key derivation)."""
    restic = shutil.which("restic")
    if restic is None:
        pytest.fail("restic is not installed: apt-get install -y restic")
    root = tmp_path_factory.mktemp("jobs-template")
    (root / "pw").write_text(PASSWORD)
    subprocess.run(
        [restic, "init", "-r", str(root / "repo"), "--password-file", str(root / "pw")],
        check=True,
        capture_output=True,
    )
    return root / "repo"


class Setup:
    def __init__(self, tmp: Path, template: Path) -> None:
        self.tmp = tmp
        self.pw = tmp / "restic.pass"
        self.pw.write_text(PASSWORD)
        self.repo = tmp / "hot"
        shutil.copytree(template, self.repo)
        self.data = tmp / "data"
        self.data.mkdir()
        (self.data / "a.txt").write_text("alpha\n")
        (self.data / "b.txt").write_text("bravo\n")
        self.bin = tmp / "bin"
        self.bin.mkdir()

    def restic(self, *args: str, repo: str | None = None) -> Any:
        out = subprocess.run(
            ["restic", "-r", repo or str(self.repo), "--password-file", str(self.pw), "--no-cache", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout) if "--json" in args else out.stdout

    def snapshots(self, repo: str | None = None) -> list[dict[str, Any]]:
        return sorted(self.restic("snapshots", "--json", repo=repo), key=lambda s: s["time"])

    def config(
        self,
        job: dict[str, Any],
        services: dict[str, Any] | None = None,
        cold: str | None = None,
        daemon: dict[str, Any] | None = None,
    ) -> Path:
        repos: dict[str, Any] = {"hot": {"url": str(self.repo), "password_file": str(self.pw)}}
        if cold:
            repos["cold"] = {"url": cold, "password_file": str(self.pw)}
        settings = {"backups": {"repositories": repos}, **(daemon or {})}
        etc = write_config(self.tmp / "etc", services or {}, daemon=settings)
        (etc / "backups.d").mkdir(exist_ok=True)
        (etc / "backups.d" / "app-data.yaml").write_text(
            json.dumps({"repository": "hot", "paths": [str(self.data)], **job})
        )
        return etc

    def wrapper(self, body: str) -> dict[str, str]:
        """Put a `restic` wrapper first on hasupd's PATH; return the env for the daemon."""
        real = shutil.which("restic")
        (self.bin / "restic").write_text(f'#!/bin/sh\nREAL={real}\n{body}\nexec $REAL "$@"\n')
        (self.bin / "restic").chmod(0o755)
        return {"PATH": f"{self.bin}:{os.environ['PATH']}"}


@pytest.fixture
def setup(tmp_path: Path, repo_template: Path) -> Iterator[Setup]:
    yield Setup(tmp_path, repo_template)


def stamp(work: Path, kind: str, when: datetime) -> None:
    path = work / "state" / "backup" / "app-data" / f"{kind}.last"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(when.isoformat() + "\n")


# Schedules far in the future once stamped: only what a test asks for runs.
QUIET = {"schedule": "@daily", "prune_schedule": "@monthly"}
