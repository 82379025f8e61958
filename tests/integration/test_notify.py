"""NotifyEndpoint against real senders: the sdnotify package, systemd-notify, raw datagrams."""

from __future__ import annotations

import array
import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from hasupd.host.notify import NOTIFY_BUFFER_MAX, NotifyEndpoint, NotifyMessage
from hasupd.runtimes.command import run_command
from tests.support.users import temp_user

VENV_PYTHON = sys.executable
SEND = "import socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto({data!r}, {path!r})"


def anyone(pid: int) -> bool:
    # A sender that already exited (and was reaped) cannot be looked up any more, so tests that
    # check the pid compare it after the fact instead of in ``allowed``.
    return True


class Collector:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[NotifyMessage] = asyncio.Queue()

    def __call__(self, message: NotifyMessage) -> None:
        self.queue.put_nowait(message)

    async def next(self, timeout: float = 5.0) -> NotifyMessage:
        return await asyncio.wait_for(self.queue.get(), timeout)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="hn", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_endpoint(short_dir: Path) -> Iterator[Callable[..., tuple[NotifyEndpoint, Collector]]]:
    opened: list[NotifyEndpoint] = []

    def make(
        allowed: Callable[[int], bool] = anyone, name: str = "svc.sock"
    ) -> tuple[NotifyEndpoint, Collector]:
        collector = Collector()
        endpoint = NotifyEndpoint(short_dir / "notify" / name, collector, allowed)
        endpoint.open(asyncio.get_running_loop())
        opened.append(endpoint)
        return endpoint, collector

    yield make
    for endpoint in opened:
        endpoint.close()


@pytest.fixture
async def endpoint(
    make_endpoint: Callable[..., tuple[NotifyEndpoint, Collector]],
) -> AsyncIterator[tuple[NotifyEndpoint, Collector]]:
    yield make_endpoint()


def send_raw(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, str(path))


async def test_socket_file_and_directory(endpoint: tuple[NotifyEndpoint, Collector]) -> None:
    ep, _ = endpoint
    st = os.stat(ep.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(ep.path.parent).st_mode) == 0o755
    assert ep.environment == {"NOTIFY_SOCKET": str(ep.path)}
    ep.close()
    assert not ep.path.exists()
    ep.close()  # twice is fine


async def test_sdnotify_package(endpoint: tuple[NotifyEndpoint, Collector]) -> None:
    ep, got = endpoint
    script = (
        "import sdnotify\n"
        "n = sdnotify.SystemdNotifier()\n"
        "n.notify('READY=1\\nSTATUS=serving')\n"
        "n.notify('WATCHDOG=1')\n"
        "n.notify('STOPPING=1')\n"
    )
    result = await run_command(
        [VENV_PYTHON, "-c", script], reaper=None, env={**os.environ, **ep.environment}, timeout=30
    )
    assert result.ok, result.tail()
    first, second, third = await got.next(), await got.next(), await got.next()
    assert first.pid == result.status.pid
    assert first.ready and first.status == "serving" and not first.watchdog
    assert second.watchdog and not second.ready and second.status is None
    assert third.stopping
    assert (ep.received, ep.dropped, ep.malformed) == (3, 0, 0)


async def test_systemd_notify_tool(endpoint: tuple[NotifyEndpoint, Collector]) -> None:
    """systemd-notify (systemd 252) works without systemd as PID 1: it sends the state with the
    credentials of its parent (allowed for root), then BARRIER=1 with a pipe fd and waits until the
    receiver closes it (sd_notify_barrier). The endpoint closes fds at once, so it returns."""
    ep, got = endpoint
    result = await run_command(
        ["systemd-notify", "--ready", "--status=x"],
        reaper=None,
        env={**os.environ, **ep.environment},
        timeout=30,
    )
    assert result.ok, result.tail()
    assert result.duration_sec < 3  # the barrier was answered, not timed out
    message = await got.next()
    assert message.ready and message.status == "x"
    assert message.pid in (os.getpid(), result.status.pid)
    assert ep.barriers == 1 and ep.fds_closed == 0 and ep.dropped == 0

    result = await run_command(
        ["systemd-notify", f"--pid={os.getpid()}", "WATCHDOG=trigger", "EXTEND_TIMEOUT_USEC=5000000"],
        reaper=None,
        env={**os.environ, **ep.environment},
        timeout=30,
    )
    assert result.ok, result.tail()
    message = await got.next()
    assert message.watchdog_trigger and not message.watchdog
    assert message.extend_timeout_usec == 5_000_000
    assert message.mainpid == os.getpid()
    assert ep.barriers == 2


async def test_raw_multi_field_datagram(endpoint: tuple[NotifyEndpoint, Collector]) -> None:
    ep, got = endpoint
    send_raw(
        ep.path,
        b"READY=1\nRELOADING=1\nSTATUS=a=b c\nWATCHDOG_USEC=2000000\nMAINPID=42\nERRNO=5\n"
        b"X_CUSTOM=1\nSTATUS=last wins\n",
    )
    m = await got.next()
    assert m.pid == os.getpid()
    assert m.ready and m.reloading and not m.stopping
    assert m.status == "last wins"
    assert m.watchdog_usec == 2_000_000 and m.mainpid == 42 and m.errno == 5
    assert m.get("X_CUSTOM") == "1"
    assert m.fields[2] == ("STATUS", "a=b c")
    assert len(m.fields) == 8

    send_raw(ep.path, b"WATCHDOG_USEC=soon\nMAINPID=0\nREADY=0")  # fields systemd would ignore
    m = await got.next()
    assert m.watchdog_usec is None and m.mainpid is None and not m.ready


async def test_refused_pid_is_dropped_and_counted(
    make_endpoint: Callable[..., tuple[NotifyEndpoint, Collector]],
) -> None:
    me = os.getpid()
    ep, got = make_endpoint(allowed=lambda pid: pid != me)
    send_raw(ep.path, b"READY=1\nSTATUS=from the wrong pid")
    # A child is allowed; its datagram arrives after the refused one.
    script = SEND.format(data=b"STATUS=child", path=str(ep.path))
    result = await run_command([sys.executable, "-c", script], reaper=None, timeout=30)
    assert result.ok, result.tail()
    m = await got.next()
    assert m.status == "child" and m.pid == result.status.pid
    assert ep.dropped == 1 and ep.received == 2
    assert got.queue.empty()


async def test_malformed_datagrams_are_dropped(endpoint: tuple[NotifyEndpoint, Collector]) -> None:
    ep, got = endpoint
    bad = [
        b"\xff\xfeREADY=1",  # not UTF-8
        b"READY=1\nno equals sign",
        b"=value",
        b"",
        b"\n\n",
        b"READY=1\0STATUS=x",
        b"STATUS=" + b"x" * NOTIFY_BUFFER_MAX,  # longer than systemd accepts
    ]
    for data in bad:
        send_raw(ep.path, data)
    send_raw(ep.path, b"STATUS=" + b"y" * (NOTIFY_BUFFER_MAX - 7))  # exactly the maximum
    m = await got.next()
    assert m.status == "y" * (NOTIFY_BUFFER_MAX - 7)
    assert ep.malformed == len(bad)
    assert got.queue.empty()


async def test_fds_are_closed_and_counted(endpoint: tuple[NotifyEndpoint, Collector]) -> None:
    ep, got = endpoint
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # socket.send_fds ignores its address argument in 3.11: sendmsg it is.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))]
            s.sendmsg([b"FDSTORE=1\nFDNAME=db"], rights, 0, str(ep.path))
        os.close(w)
        m = await got.next()
        assert m.get("FDSTORE") == "1"
        assert ep.fds_closed == 1
        # EOF (not EAGAIN): no copy of the write end is left open in the endpoint.
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""
    finally:
        os.close(r)


async def test_stale_socket_file_is_replaced(
    short_dir: Path, make_endpoint: Callable[..., tuple[NotifyEndpoint, Collector]]
) -> None:
    path = short_dir / "notify" / "svc.sock"
    path.parent.mkdir()
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(str(path))
    old.close()  # the file stays: what a crashed hasupd leaves
    ep, got = make_endpoint()
    send_raw(ep.path, b"READY=1")
    assert (await got.next()).ready


async def test_something_else_in_the_way_is_not_deleted(short_dir: Path) -> None:
    path = short_dir / "svc.sock"
    path.write_text("operator's file")
    ep = NotifyEndpoint(path, lambda m: None, lambda pid: True)
    with pytest.raises(FileExistsError):
        ep.open(asyncio.get_running_loop())
    assert path.read_text() == "operator's file"
    with pytest.raises(ValueError, match="AF_UNIX"):
        NotifyEndpoint(short_dir / ("x" * 120), lambda m: None, lambda pid: True).open(
            asyncio.get_running_loop()
        )


@pytest.mark.root
async def test_chown_lets_only_the_service_user_send(
    endpoint: tuple[NotifyEndpoint, Collector],
) -> None:
    ep, got = endpoint
    send = SEND.format(data=b"READY=1", path=str(ep.path))

    def send_as(uid: int, gid: int) -> subprocess.CompletedProcess[str]:
        # Debian's python: the sender needs nothing from the venv (which other users may not read).
        argv = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            send,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    with temp_user() as user:
        ep.chown(user.pw_uid, user.pw_gid)
        refused = send_as(65534, 65534)  # nobody
        assert refused.returncode != 0 and "PermissionError" in refused.stderr
        allowed = send_as(user.pw_uid, user.pw_gid)
        assert allowed.returncode == 0, allowed.stderr
    m = await got.next()
    assert m.ready
    assert ep.received == 1
