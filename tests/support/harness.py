"""Run the real hasupd daemon in a subprocess and follow its JSON records."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
Record = dict[str, Any]


def require(condition: bool, reason: str, opt_out: str) -> None:
    """Fail with ``reason`` unless the developer opted out with the environment variable ``opt_out``."""
    if condition:
        return
    if os.environ.get(opt_out) == "1":
        pytest.skip(f"{reason} (skipped: {opt_out}=1)")
    pytest.fail(f"{reason}; set {opt_out}=1 to skip this explicitly")


def require_root() -> None:
    require(os.geteuid() == 0, "this test needs root (other users, cgroups)", "HASUPD_TEST_NO_ROOT")


def write_config(
    folder: Path, services: Mapping[str, Mapping[str, Any]], daemon: Mapping[str, Any] | None = None
) -> Path:
    """Write hasupd.yaml and one services.d file per service; return the config dir."""
    (folder / "services.d").mkdir(parents=True, exist_ok=True)
    (folder / "hasupd.yaml").write_text(yaml.safe_dump(dict(daemon or {})))
    for name, body in services.items():
        (folder / "services.d" / f"{name}.yaml").write_text(yaml.safe_dump(dict(body)))
    return folder


def record_time(record: Record) -> float:
    """Return a record's wall-clock time in seconds."""
    return datetime.fromisoformat(record["time"]).timestamp()


class Hasupd:
    """hasupd running in the foreground with JSON records on stderr, collected by a reader thread."""

    def __init__(
        self,
        config_dir: Path,
        work: Path,
        *,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        runtime_dir: Path | None = None,
        argv_prefix: tuple[str, ...] = (),
        state_dir: Path | None = None,
    ) -> None:
        """``argv_prefix`` runs hasupd under another command, e.g. ``nsenter -t PID -m --`` to run it
        in the mount namespace of a test journald."""
        self.runtime_dir = runtime_dir or work / "run"
        self.state_dir = state_dir or work / "state"  # given: a restarted hasupd on the same state
        self.socket = self.runtime_dir / "control.sock"
        self.records: list[Record] = []
        self.lines: list[str] = []
        self._lock = threading.Condition()
        argv = [
            *argv_prefix,
            sys.executable,
            "-m",
            "hasupd",
            "run",
            "--config-dir",
            str(config_dir),
            "--state-dir",
            str(self.state_dir),
            "--runtime-dir",
            str(self.runtime_dir),
            "--log-target",
            "stderr",
            "--log-format",
            "json",
            *extra_args,
        ]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
                with contextlib.suppress(json.JSONDecodeError):
                    self.records.append(json.loads(line))
                self._lock.notify_all()

    def find(self, event: str, **tags: Any) -> list[Record]:
        """Return the records of ``event`` whose tags equal ``tags``."""
        with self._lock:
            return [
                r
                for r in self.records
                if r.get("event") == event and all(r.get(k) == v for k, v in tags.items())
            ]

    def wait_for(
        self,
        event: str,
        timeout: float = 10.0,
        count: int = 1,
        where: Callable[[Record], bool] | None = None,
        **tags: Any,
    ) -> list[Record]:
        """Wait until at least ``count`` matching records exist; return them. Fail on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.find_locked(event, tags) if where is None or where(r)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-30:])
                    pytest.fail(f"no {count} x {event} {tags} within {timeout}s; last output:\n{tail}")
                self._lock.wait(min(left, 0.05))

    def find_locked(self, event: str, tags: Mapping[str, Any]) -> list[Record]:
        return [
            r for r in self.records if r.get("event") == event and all(r.get(k) == v for k, v in tags.items())
        ]

    def ctl(
        self, *args: str, user: str | None = None, pythonpath: Path = REPO, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run hasupctl (on Debian's python3: it needs nothing but the standard library).

        ``pythonpath`` must be readable by ``user``.
        """
        argv = ["/usr/bin/python3", "-m", "hasupd.cli.ctl", "--socket", str(self.socket), *args]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(pythonpath)}
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.wait_for("daemon.ready", timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM hasupd and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
