"""A real systemd-journald for tests, in a private mount namespace (PID 1 need not be systemd).

``unshare -m --propagation private`` gives journald its own ``/run/systemd`` and ``/run/log`` (tmpfs), so
its sockets exist only in that namespace: processes that should log to it run there with
``nsenter -t PID -m --`` (``Journald.prefix``); the journal is read from outside with
``journalctl --directory=/proc/PID/root/run/log/journal``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import require

JOURNALD = "/lib/systemd/systemd-journald"
OPT_OUT = "HASUPD_TEST_NO_JOURNALD"
Entry = dict[str, Any]


class Journald:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log
        self.root = Path(f"/proc/{self.pid}/root")
        self.journal_dir = self.root / "run/log/journal"

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command in journald's mount namespace: ``[*journald.prefix, *argv]``."""
        return ("nsenter", "-t", str(self.pid), "-m", "--")

    def entries(self, *matches: str) -> list[Entry]:
        """Return the journal entries matching ``matches`` (journalctl syntax), oldest first."""
        done = subprocess.run(
            [
                "journalctl",
                f"--directory={self.journal_dir}",
                "--output=json",
                "--all",
                "--no-pager",
                *matches,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def wait_entries(self, *matches: str, count: int = 1, timeout: float = 15.0) -> list[Entry]:
        """Wait until ``count`` entries match (journald takes them in asynchronously); return them."""
        deadline = time.monotonic() + timeout
        while len(found := self.entries(*matches)) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"no {count} journal entries {matches} within {timeout}s: {self.log.read_text()}")
            time.sleep(0.05)
        return found

    def records(self, event: str, **tags: Any) -> list[dict[str, Any]]:
        """Return hasupd's records of ``event`` whose tags equal ``tags`` (parsed from MESSAGE)."""
        out = []
        for entry in self.entries("SYSLOG_IDENTIFIER=hasupd", f"HASUPD_EVENT={event}"):
            record = json.loads(entry["MESSAGE"])
            if all(record.get(k) == v for k, v in tags.items()):
                out.append(record)
        return out

    def wait_records(
        self,
        event: str,
        count: int = 1,
        timeout: float = 15.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **tags: Any,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` records of ``event`` match; return them. Fail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records(event, **tags) if where is None or where(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                tail = [e.get("MESSAGE") for e in self.entries("SYSLOG_IDENTIFIER=hasupd")[-20:]]
                pytest.fail(f"no {count} x {event} {tags} in the journal within {timeout}s; last: {tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def running_journald(folder: Path, timeout: float = 10.0) -> Iterator[Journald]:
    """Start journald in a private mount namespace; stop it at the end.

    Fail with the reason if it cannot be started, unless HASUPD_TEST_NO_JOURNALD=1 (then skip).
    """
    require(os.geteuid() == 0, "a private journald needs root (mount namespaces)", OPT_OUT)
    missing = [tool for tool in (JOURNALD, "unshare", "nsenter", "journalctl") if shutil.which(tool) is None]
    require(
        not missing,
        f"missing for the journald tests: {', '.join(missing)} (apt-get install systemd)",
        OPT_OUT,
    )
    log = folder / "journald.log"
    script = f"mount -t tmpfs tmpfs /run/systemd && mount -t tmpfs tmpfs /run/log && exec {JOURNALD}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    journald = Journald(proc, log)
    sockets = [journald.root / "run/systemd/journal" / name for name in ("socket", "stdout")]
    deadline = time.monotonic() + timeout
    try:
        while not all(s.exists() for s in sockets) or not journald.journal_dir.is_dir():
            if proc.poll() is not None or time.monotonic() > deadline:
                reason = f"systemd-journald did not start (exit {proc.poll()}): {log.read_text()[-2000:]}"
                require(False, reason, OPT_OUT)
            time.sleep(0.02)
        yield journald
    finally:
        journald.stop()
