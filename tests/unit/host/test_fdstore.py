"""Held sockets in systemd's fd store: the sd_listen_fds side, the FDSTORE datagrams (real sockets,
SCM_RIGHTS), and which received socket a service takes back after a crash of hasupd."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasupd.config.model import SocketSpec
from hasupd.host.sockets import HeldSocketStore, SocketSet, fd_name
from hasupd.host.systemd import FdStoreChannel, fdname_is_valid, listen_fds


class Channel:
    """Records what would be sent to systemd's fd store."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def store(self, name: str, fd: int) -> bool:
        self.calls.append(("store", name))
        return True

    def remove(self, name: str) -> bool:
        self.calls.append(("remove", name))
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ports() -> Iterator[list[int]]:
    yield [free_port(), free_port()]


def crash(sets: list[SocketSet]) -> list[tuple[str, int]]:
    """What systemd hands the next hasupd: a duplicate of every held fd, by its store name (the old
    hasupd's copies stay open, as a running instance's would)."""
    received = []
    for s in sets:
        for index, fd in enumerate(s.fds()):
            received.append((fd_name(s.service, index), os.dup(fd)))
    return received


def test_listen_fds_follows_sd_listen_fds() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web.0:web.1"}
    assert listen_fds(env, 42) == [("web.0", 3), ("web.1", 4), ("unknown", 5)]
    assert listen_fds(env, 43) == []  # meant for another process
    assert listen_fds({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == [("unknown", 3)]
    assert listen_fds({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, 42) == []


def test_fd_names_are_what_systemd_accepts() -> None:
    assert fd_name("web.api", 1) == "web.api.1"
    assert fdname_is_valid("web.api.1")
    assert not fdname_is_valid("a:b")
    assert not fdname_is_valid("")
    assert not fdname_is_valid("x" * 256)
    assert not fdname_is_valid("tab\there")


def test_fdstore_datagrams_carry_the_fd(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager, socket.socket() as held:
        manager.bind(address)
        held.bind(("127.0.0.1", 0))
        held.listen()
        channel = FdStoreChannel({"NOTIFY_SOCKET": address})
        assert channel.store("web.0", held.fileno())
        data, ancdata, _flags, _addr = manager.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
        assert data == b"FDSTORE=1\nFDNAME=web.0"
        level, kind, payload = ancdata[0]
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds = array.array("i")
        fds.frombytes(payload)
        with socket.socket(fileno=fds[0]) as passed:
            assert passed.getsockname() == held.getsockname()
        assert channel.remove("web.0")
        data, ancdata, _flags, _addr = manager.recvmsg(4096, socket.CMSG_SPACE(4))
        assert (data, ancdata) == (b"FDSTOREREMOVE=1\nFDNAME=web.0", [])
    # Nobody listening any more: dropped, as sd_notify does; without NOTIFY_SOCKET: not sent.
    assert not channel.remove("web.0")
    assert not FdStoreChannel({}).store("web.0", 0)


def test_bound_sockets_go_to_the_store_and_come_back_after_a_crash(ports: list[int], tmp_path: Path) -> None:
    specs = (SocketSpec(f"127.0.0.1:{ports[0]}"), SocketSpec(str(tmp_path / "web.sock"), name="admin"))
    channel = Channel()
    first = SocketSet("web", specs, HeldSocketStore(channel))
    old = first.fds()
    assert channel.calls == [("store", "web.0"), ("store", "web.1")]

    again = Channel()
    store = HeldSocketStore(again, crash([first]))
    second = SocketSet("web", specs, store)
    assert store.release_unclaimed() == []
    # Binding anew would fail: the old sockets (an instance's, here the first hasupd's) hold the address.
    new = second.fds()
    assert [os.fstat(fd).st_ino for fd in new] == [os.fstat(fd).st_ino for fd in old]
    assert again.calls == []  # already in the store
    second.close()
    assert again.calls == [("remove", "web.0"), ("remove", "web.1")]
    first.close()


def test_a_socket_whose_address_changed_while_hasupd_was_down_is_released(ports: list[int]) -> None:
    first = SocketSet("web", (SocketSpec(f"127.0.0.1:{ports[0]}"),), HeldSocketStore(Channel()))
    received = crash([first])
    first.close()
    channel = Channel()
    store = HeldSocketStore(channel, received)
    second = SocketSet("web", (SocketSpec(f"127.0.0.1:{ports[1]}"),), store)
    assert store.release_unclaimed() == ["web.0"]
    assert channel.calls == [("remove", "web.0")]
    second.fds()
    assert channel.calls[-1] == ("store", "web.0")
    with socket.create_connection(("127.0.0.1", ports[1]), timeout=2):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=2)
    second.close()


def test_a_renamed_service_takes_its_socket_by_address(ports: list[int]) -> None:
    spec = SocketSpec(f"127.0.0.1:{ports[0]}")
    first = SocketSet("web", (spec,), HeldSocketStore(Channel()))
    received = crash([first])
    channel = Channel()
    store = HeldSocketStore(channel, received)
    second = SocketSet("www", (spec,), store)
    assert store.release_unclaimed() == []
    assert channel.calls == [("remove", "web.0"), ("store", "www.0")]
    assert os.fstat(second.fds()[0]).st_ino == os.fstat(first.fds()[0]).st_ino
    second.close()
    first.close()


def test_a_received_fd_that_is_no_socket_is_closed_and_removed(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    channel = Channel()
    store = HeldSocketStore(channel, [("odd.0", fd)])
    assert store.release_unclaimed() == ["odd.0"]
    assert channel.calls == [("remove", "odd.0")]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_reload_that_drops_a_socket_removes_it_from_the_store(ports: list[int]) -> None:
    channel = Channel()
    store = HeldSocketStore(channel)
    held = SocketSet("web", (SocketSpec(f"127.0.0.1:{ports[0]}"),), store)
    held.fds()
    held.close()  # what Manager.apply does with the sockets of a changed or removed service
    assert channel.calls == [("store", "web.0"), ("remove", "web.0")]
    unused = SocketSet("idle", (SocketSpec(f"127.0.0.1:{ports[1]}"),), store)
    unused.close()  # never bound: nothing was stored
    assert channel.calls == [("store", "web.0"), ("remove", "web.0")]
