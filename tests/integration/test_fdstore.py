"""Held sockets go to systemd's fd store: a test NOTIFY_SOCKET stands in for systemd's and receives
the datagrams with their fds (SCM_RIGHTS). The way back (LISTEN_FDS after a crash) is tested under
the real systemd in tests/system/test_zero_blip.py."""

from __future__ import annotations

import array
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, write_config


class FdStore:
    """Collects sd_notify datagrams with the addresses of the sockets they carry."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = path
        self.received: list[tuple[str, list[str]]] = []  # (text, getsockname of each fd)
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            names = []
            for level, kind, payload in ancdata:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        with socket.socket(fileno=fd) as passed:
                            names.append(str(passed.getsockname()))
            self.received.append((data.decode(), names))

    def wait_for(self, text: str, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got, names in list(self.received):
                if got == text:
                    return names
            time.sleep(0.02)
        pytest.fail(f"no {text!r} in {self.received}")

    def close(self) -> None:
        self._done = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FdStore]:
    s = FdStore(tmp_path / "notify.sock")
    yield s
    s.close()


def test_held_sockets_are_stored_and_removed_when_a_reload_drops_them(
    tmp_path: Path, hasupd: Callable[..., Hasupd], store: FdStore
) -> None:
    first, second = tmp_path / "a.sock", tmp_path / "b.sock"
    body = {"command": ["/bin/sleep", "1000"], "instances": 2, "sockets": [{"listen": str(first)}]}
    config = write_config(tmp_path / "etc", {"web": body})
    d = hasupd(config, env={"NOTIFY_SOCKET": str(store.path)})
    d.wait_ready()
    # Bound once for both instances, stored once under <service>.<index>, with the fd.
    assert store.wait_for("FDSTORE=1\nFDNAME=web.0") == [str(first)]
    assert [text for text, _ in store.received].count("FDSTORE=1\nFDNAME=web.0") == 1

    write_config(tmp_path / "etc", {"web": {**body, "sockets": [{"listen": str(second)}]}})
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("config.applied", timeout=20)
    assert store.wait_for("FDSTOREREMOVE=1\nFDNAME=web.0") == []
    deadline = time.monotonic() + 20
    while [t for t, _ in store.received].count("FDSTORE=1\nFDNAME=web.0") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    texts = [text for text, _ in store.received]
    removed = texts.index("FDSTOREREMOVE=1\nFDNAME=web.0")
    stored = [i for i, t in enumerate(texts) if t == "FDSTORE=1\nFDNAME=web.0"]
    assert len(stored) == 2 and stored[0] < removed < stored[1], texts
    assert store.received[stored[1]][1] == [str(second)]
    assert d.stop() == 0
