"""hasupd towards systemd: a test NOTIFY_SOCKET stands in for systemd's."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sdnotify

from hasupd import events as ev
from hasupd.host.systemd import SystemdNotifier
from tests.support.harness import Hasupd, write_config
from tests.support.notify_socket import NotifySocket


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifySocket]:
    lst = NotifySocket(tmp_path / "notify.sock")
    yield lst
    lst.close()


def test_ready_status_watchdog_and_stopping(
    tmp_path: Path, hasupd: Callable[..., Hasupd], listener: NotifySocket
) -> None:
    config = write_config(tmp_path / "etc", {"a": {"command": ["/bin/sleep", "1000"]}})
    d = hasupd(config, env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"})
    listener.wait_for_line("READY=1")
    assert any(line.startswith("STATUS=") and "running" in line for line in listener.lines())
    time.sleep(1.0)
    pings = [t for t, m in listener.messages if "WATCHDOG=1" in m.split("\n")]
    assert len(pings) >= 7, pings  # every 100 ms
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.2
    assert d.stop() == 0
    listener.wait_for_line("STOPPING=1")


async def test_pings_stop_while_the_loop_is_blocked(listener: NotifySocket) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000"})
    late: list[ev.Event] = []
    task = asyncio.create_task(notifier.run_watchdog(late.append))
    await asyncio.sleep(0.5)
    before = len(listener.messages)
    assert before >= 6
    blocked_at = time.monotonic()
    time.sleep(0.6)  # the event loop is blocked: nothing may be sent meanwhile
    unblocked_at = time.monotonic()
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()
    during = [t for t, _ in listener.messages if blocked_at < t < unblocked_at]
    assert during == []
    assert late and isinstance(late[0], ev.WatchdogLate)  # the stall is recorded
    assert len(listener.messages) > before  # and pings resume once it answers again


def test_notify_socket_is_not_inherited_by_children(
    tmp_path: Path, hasupd: Callable[..., Hasupd], listener: NotifySocket
) -> None:
    out = tmp_path / "env"
    config = write_config(
        tmp_path / "etc",
        {
            "a": {"command": ["/bin/sh", "-c", f"env > {out}; sleep 1000"]},
        },
    )
    d = hasupd(
        config,
        env={
            "NOTIFY_SOCKET": str(listener.path),
            "WATCHDOG_USEC": "2000000",
            "WATCHDOG_PID": str(os.getpid()),
            "LISTEN_FDS": "1",
            "INVOCATION_ID": "x" * 32,
        },
    )
    d.wait_for("service.started", service="a")
    deadline = time.monotonic() + 5
    while not out.exists() or (not out.read_text() and time.monotonic() < deadline):
        time.sleep(0.02)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"):
        assert name not in env
    # The service has a NOTIFY_SOCKET of its own, never hasupd's.
    assert env["NOTIFY_SOCKET"] == str(d.runtime_dir / "notify" / "a.sock")
    assert env["INVOCATION_ID"] != "x" * 32
    assert d.stop() == 0


def receive(sock: socket.socket) -> str:
    sock.settimeout(2)
    return sock.recv(4096).decode()


def test_abstract_namespace_socket_as_systemd_gives_it() -> None:
    """systemd's NOTIFY_SOCKET is often abstract ("@/org/freedesktop/systemd1/notify/..."), and
    STATUS= text is UTF-8 on the wire (sdnotify itself would encode Latin-1 and fail on it)."""
    name = f"/hasupd-test/notify/{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("2 running, 1 failed: web→db ✓")
        assert receive(manager) == f"READY=1\nSTATUS=2 running, 1 failed: web→db ✓\nMAINPID={os.getpid()}"
        notifier.status("1 running")
        assert receive(manager) == "STATUS=1 running"
        notifier.close()


def test_a_manager_that_is_missing_or_replaced_costs_only_its_datagrams(tmp_path: Path) -> None:
    """No listener yet: the datagram is dropped quietly. A listener that appears, or is replaced at
    the same path (a re-executed manager), gets the next datagram."""
    path = tmp_path / "notify.sock"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    notifier.send("STATUS=nobody listens")  # no error
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as first:
        first.bind(str(path))
        notifier.send("STATUS=one")
        assert receive(first) == "STATUS=one"
    path.unlink()
    notifier.send("STATUS=gone again")  # no error
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
        second.bind(str(path))
        notifier.send("STATUS=two")
        assert receive(second) == "STATUS=two"
    notifier.close()


def test_other_send_errors_are_not_swallowed(tmp_path: Path) -> None:
    """sdnotify swallows every error unless debug=True; hasupd lets a real fault through."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        with pytest.raises(OSError, match="too long"):
            notifier.send("STATUS=" + "x" * 1_000_000)  # EMSGSIZE: larger than any datagram
        notifier.close()


def test_the_datagrams_go_through_sdnotify(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The declared dependency does the sending (issue 15: it sat unused in the dependency list)."""
    sent: list[str] = []
    original = sdnotify.SystemdNotifier.notify

    def spy(self: sdnotify.SystemdNotifier, state: str) -> None:
        sent.append(state)
        original(self, state)

    monkeypatch.setattr(sdnotify.SystemdNotifier, "notify", spy)
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        notifier.stopping()
        assert receive(manager) == "STOPPING=1\nSTATUS=stopping services"
        notifier.close()
    assert sent == ["STOPPING=1\nSTATUS=stopping services"]
