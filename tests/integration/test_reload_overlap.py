"""``hasupctl reload NAME`` never drops or doubles a reload silently: a service named twice reloads
once, and a service already reloading (asked by someone else meanwhile) is reported as not reloaded
by this request (exit 1), not as reloaded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import Hasupd, write_config

# A notify service whose reload takes argv[2] seconds; it notes each SIGHUP in the file argv[1].
RELOADER = r"""
import os, signal, socket, sys, time
log, seconds = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(text):
    sock.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
pending = []
def hup(sig, frame):
    with open(log, "a") as f:
        f.write("SIGHUP\n")
    pending.append(1)
signal.signal(signal.SIGHUP, hup)
send("READY=1")
for _ in range(100000):
    if pending:
        pending.clear()
        send("RELOADING=1")
        time.sleep(seconds)
        send("READY=1")
    time.sleep(0.05)
"""


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _hups(log: Path) -> int:
    return log.read_text().count("SIGHUP") if log.exists() else 0


def test_overlapping_and_repeated_reloads_are_reported_not_dropped_or_doubled(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    script = tmp_path / "reloader.py"
    script.write_text(RELOADER)
    logs = {name: tmp_path / f"{name}.hups" for name in ("a", "b")}
    seconds = {"a": "2", "b": "5"}
    config = write_config(
        tmp_path / "etc",
        {
            name: {
                "command": ["/usr/bin/python3", str(script), str(logs[name]), seconds[name]],
                "type": "notify",
                "reload_signal": "SIGHUP",
                "timeout_start_sec": "20s",
            }
            for name in ("a", "b")
        },
    )
    d = hasupd(config)
    d.wait_for("service.ready", service="a")
    d.wait_for("service.ready", service="b")
    # Named twice: one reload, not two.
    twice = d.ctl("reload", "a", "a")
    assert twice.returncode == 0, twice.stderr
    time.sleep(0.5)
    assert _hups(logs["a"]) == 1
    # One request reloads a then b; while it waits for a, another reloads b.
    answers: list[tuple[int, str]] = []

    def ask() -> None:
        out = d.ctl("reload", "a", "b")
        answers.append((out.returncode, out.stderr))

    first = threading.Thread(target=ask)
    first.start()
    _wait(lambda: d.ctl("is-active", "a").stdout.strip() == "reloading", "a reloading")
    second = d.ctl("reload", "b")  # b is running: this one reloads it (5 s)
    first.join(30)
    assert second.returncode == 0, second.stderr
    # The first request reached b while b's other reload was under way: b was not reloaded by it, and
    # it says so instead of claiming b's reload as its own.
    assert answers and answers[0][0] == 1, answers
    assert "b: not reloaded: a reload was already under way" in answers[0][1], answers
    assert _hups(logs["b"]) == 1
    assert _hups(logs["a"]) == 2
    # Asking while b still reloads (if it does) is refused the same way, exit 1.
    if d.ctl("is-active", "b").stdout.strip() == "reloading":
        busy = d.ctl("reload", "b")
        assert busy.returncode == 1 and "already under way" in busy.stderr, busy
    _wait(lambda: d.ctl("is-active", "b").stdout.strip() == "active", "b running again", 20)
    assert d.stop() == 0
