"""A stand-in for systemd's NOTIFY_SOCKET: a datagram socket that collects hasupd's sd_notify messages,
with their arrival times and the sockets they carry (SCM_RIGHTS, as for FDSTORE=1)."""

from __future__ import annotations

import array
import socket
import threading
import time
from pathlib import Path

import pytest


class NotifySocket:
    """Collects sd_notify datagrams: ``messages`` (arrival time, text) and ``received`` (text, the
    getsockname() of each passed fd)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self.received: list[tuple[str, list[str]]] = []
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
            text = data.decode()
            self.received.append((text, names))
            self.messages.append((time.monotonic(), text))

    def lines(self) -> list[str]:
        return [line for _, m in self.messages for line in m.split("\n")]

    def wait_for_line(self, line_prefix: str, timeout: float = 10.0) -> None:
        """Wait until a line of some message starts with ``line_prefix``; fail on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(line_prefix) for line in self.lines()):
                return
            time.sleep(0.02)
        pytest.fail(f"no {line_prefix!r} in {self.lines()}")

    def wait_for_message(self, text: str, timeout: float = 10.0) -> list[str]:
        """Wait for a message that is exactly ``text``; return the names of the sockets it carried."""
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
