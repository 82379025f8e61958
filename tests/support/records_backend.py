"""Runs hasupd with its records in a real journald, or in JSON-line files, behind one interface.

The record tests are written once and run against both: ``journal`` (hasupd inside the mount
namespace of a private systemd-journald, services' output to the journal too) and ``files`` (no
journald: JSON lines on stderr and under STATE_DIR/records, services' output to STATE_DIR/logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO, Hasupd
from tests.support.journald import Journald, running_journald

Record = dict[str, Any]


class Backend:
    def __init__(self, kind: str, work: Path, journald: Journald | None) -> None:
        self.kind = kind
        self.work = work
        self.journald = journald
        self.daemons: list[Hasupd] = []

    def start(self, config_dir: Path, extra_args: tuple[str, ...] = ()) -> Hasupd:
        """Start hasupd on ``config_dir`` and wait until it is ready."""
        if self.journald is not None:
            d = Hasupd(
                config_dir,
                self.work / f"work{len(self.daemons)}",
                argv_prefix=self.journald.prefix,
                extra_args=("--log-target", "journal", *extra_args),
            )
        else:
            d = Hasupd(config_dir, self.work / f"work{len(self.daemons)}", extra_args=extra_args)
        self.daemons.append(d)
        self.wait_for(d, "daemon.ready")
        return d

    def wait_for(
        self,
        d: Hasupd,
        event: str,
        count: int = 1,
        timeout: float = 15.0,
        where: Callable[[Record], bool] | None = None,
        **tags: Any,
    ) -> list[Record]:
        if self.journald is not None:
            return self.journald.wait_records(event, count, timeout, where, **tags)
        return d.wait_for(event, timeout=timeout, count=count, where=where, **tags)

    def close(self) -> None:
        for d in self.daemons:
            if d.proc.poll() is None:
                try:
                    d.stop(timeout=20)
                except subprocess.TimeoutExpired:
                    d.kill()
                    raise


@contextlib.contextmanager
def backend(kind: str, work: Path) -> Iterator[Backend]:
    if kind == "journal":
        with running_journald(work) as journald:
            b = Backend(kind, work, journald)
            try:
                yield b
            finally:
                b.close()  # hasupd first: it logs to this journald until it has stopped
    else:
        b = Backend(kind, work, None)
        try:
            yield b
        finally:
            b.close()


def ctl_json(d: Hasupd, *args: str) -> Any:
    done = d.ctl(*args, "--json")
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


class Follow:
    """``hasupctl logs -f --json`` running in the background; items are read with a deadline."""

    def __init__(self, d: Hasupd, *args: str) -> None:
        argv = ["/usr/bin/python3", "-m", "hasupd.cli.ctl", "--socket", str(d.socket), "--json", *args]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        )
        self.items: list[Record] = []
        self._partial = b""

    def wait_item(self, where: Callable[[Record], bool], timeout: float = 10.0) -> Record:
        """Return the first item (already read or still to come) for which ``where`` holds."""
        for item in self.items:
            if where(item):
                return item
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                assert self.proc.stderr is not None
                pytest.fail(f"hasupctl logs -f ended: {self.proc.wait()} {self.proc.stderr.read()!r}")
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            found = None
            for line in lines:
                item = json.loads(line)
                self.items.append(item)
                if found is None and where(item):
                    found = item
            if found is not None:
                return found
        pytest.fail(f"no such item within {timeout}s; got {self.items}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
