"""Per-service ``NOTIFY_SOCKET`` endpoints: the sd_notify protocol spoken by supervised children.

A service gets its own datagram socket (``/run/hasupd/notify/NAME.sock``) so that a message can only
come from that service's socket path, and every datagram carries the kernel-verified sender pid
(``SO_PASSCRED`` -> ``SCM_CREDENTIALS``). The owner decides which pids may talk (systemd's
``NotifyAccess=``) through the ``allowed`` callback (hasupd's services: ``Scope.holds``, which the
kernel's facts decide, never an environment variable); everything else is dropped and counted.

Protocol as in sd_notify(3) and systemd's ``manager_dispatch_notify_fd``: a datagram is a
newline-separated list of ``KEY=VALUE`` lines (a trailing newline is optional), at most
``NOTIFY_BUFFER_MAX`` bytes. File descriptors sent along are closed at once: hasupd has no fd store,
and closing is exactly the answer ``sd_notify_barrier()`` waits for, so a ``BARRIER=1`` datagram
(which ``systemd-notify`` sends after every message) is answered and not delivered.

Work happens per datagram, from a loop reader: an idle endpoint costs nothing.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# systemd's NOTIFY_BUFFER_MAX (PIPE_BUF): longer datagrams are refused by systemd too.
NOTIFY_BUFFER_MAX = 4096
# systemd raises the receive buffer so that bursts of messages are not lost; the kernel caps it at
# net.core.rmem_max without complaint.
_RCVBUF = 8 * 1024 * 1024
# The kernel passes at most SCM_MAX_FD (253) descriptors per message.
_SCM_MAX_FD = 253
_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(_SCM_MAX_FD * 4)
# Bound the work done per reader wake-up, so one chatty service cannot starve the loop.
_MAX_PER_WAKEUP = 64
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the terminating NUL


@dataclass(frozen=True)
class NotifyMessage:
    """One accepted datagram.

    Flags are True only for the exact value systemd acts on ("READY=1"; "WATCHDOG=1" versus
    "WATCHDOG=trigger"). Numbers that do not parse are None (systemd logs and ignores those fields
    too); the raw pairs, in order, are always in ``fields``. Repeated keys: the last one wins.
    """

    pid: int
    ready: bool = False
    reloading: bool = False
    stopping: bool = False
    status: str | None = None
    watchdog: bool = False
    watchdog_trigger: bool = False
    watchdog_usec: int | None = None
    extend_timeout_usec: int | None = None
    mainpid: int | None = None
    errno: int | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        """Return the last value sent for ``key``, or None."""
        return next((v for k, v in reversed(self.fields) if k == key), None)


class MalformedMessage(ValueError):
    """The datagram is not a list of KEY=VALUE lines in UTF-8."""


def parse_message(pid: int, data: bytes) -> NotifyMessage:
    """Return the NotifyMessage for datagram ``data`` from ``pid``.

    Raise MalformedMessage if it is empty, not UTF-8, holds a NUL byte, or has a non-empty line
    without "=" or with an empty key.
    """
    if b"\0" in data:
        raise MalformedMessage("embedded NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedMessage(f"not UTF-8: {e.reason}") from e
    pairs: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if not line:
            continue  # the trailing newline, or blank separators
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise MalformedMessage(f"line without KEY=: {line[:40]!r}")
        pairs.append((key, value))
    if not pairs:
        raise MalformedMessage("empty datagram")
    last = dict(pairs)
    watchdog = last.get("WATCHDOG")
    return NotifyMessage(
        pid=pid,
        ready=last.get("READY") == "1",
        reloading=last.get("RELOADING") == "1",
        stopping=last.get("STOPPING") == "1",
        status=last.get("STATUS"),
        watchdog=watchdog == "1",
        watchdog_trigger=watchdog == "trigger",
        watchdog_usec=_unsigned(last.get("WATCHDOG_USEC")),
        extend_timeout_usec=_unsigned(last.get("EXTEND_TIMEOUT_USEC")),
        mainpid=_positive(last.get("MAINPID")),
        errno=_unsigned(last.get("ERRNO")),
        fields=tuple(pairs),
    )


def _unsigned(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _positive(value: str | None) -> int | None:
    number = _unsigned(value)
    return number if number is not None and number > 0 else None


class NotifyEndpoint:
    """A service's NOTIFY_SOCKET: receives datagrams on the event loop and hands on the good ones.

    ``on_message`` is called from the loop for each datagram whose sender ``allowed(pid)`` accepts.
    Counters (read them for status views and tests): ``received`` datagrams, ``dropped`` (pid refused
    or no credentials), ``malformed`` (bad text, too long), ``fds_closed`` (descriptors refused: no fd
    store), ``barriers`` (BARRIER=1 answered).
    """

    def __init__(
        self,
        path: Path,
        on_message: Callable[[NotifyMessage], None],
        allowed: Callable[[int], bool],
    ) -> None:
        # A str, a Path on demand: one per service, and a Path keeps its parts parsed (~600 bytes).
        self._path = str(path)
        self._on_message = on_message
        self._allowed = allowed
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0
        self.dropped = 0
        self.malformed = 0
        self.fds_closed = 0
        self.barriers = 0

    @property
    def path(self) -> Path:
        return Path(self._path)

    @property
    def environment(self) -> dict[str, str]:
        """Return the variables to give the service: ``{"NOTIFY_SOCKET": path}``."""
        return {"NOTIFY_SOCKET": self._path}

    def fileno(self) -> int | None:
        """Return the socket's fd while open (kept across a re-exec), else None."""
        return self._sock.fileno() if self._sock is not None else None

    def open_inherited(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Receive on ``fd``, this endpoint's socket kept open across a re-exec of hasupd: still bound
        at ``path``, so no datagram sent meanwhile was refused or lost. Raise OSError if ``fd`` is not
        an AF_UNIX datagram socket bound at ``path``."""
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM:
            sock.detach()
            raise OSError(f"fd {fd} is not a datagram unix socket")
        if os.fsdecode(sock.getsockname()) != str(self.path):
            sock.detach()
            raise OSError(f"fd {fd} is bound at {sock.getsockname()!r}, not {self.path}")
        try:
            sock.set_inheritable(False)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.detach()
            raise
        self._sock = sock
        self._loop = loop

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the socket at ``path`` and start receiving on ``loop``.

        The parent directory is created (0755) if missing; a leftover socket file at ``path`` is
        replaced. The socket file is mode 0660, owned by hasupd's user until ``chown``: only its owner, group
        and root can send. Raise ValueError if the path is too long for AF_UNIX, FileExistsError if
        something other than a socket is in the way, OSError if binding fails.
        """
        path = self._path  # a str: made into a Path only where needed (start-up opens hundreds)
        if self._sock is not None:
            raise RuntimeError(f"{path} is already open")
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ValueError(f"{path}: longer than the {_SUN_PATH_MAX} bytes AF_UNIX allows")
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                # A previous hasupd (or this one before a crash) left it; nobody receives on it.
                os.unlink(path)
            else:
                raise FileExistsError(f"{path} exists and is not a socket")
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            # Before bind: no datagram may ever arrive without its sender's credentials.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind(os.fsencode(path))
            # The umask decides the mode at bind time; fix it before any child knows the path.
            os.chmod(path, 0o660)
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            Path(path).unlink(missing_ok=True)
            raise
        self._sock = sock
        self._loop = loop

    def chown(self, uid: int, gid: int) -> None:
        """Let the service's user and group send: give them the socket file. Raise OSError."""
        os.chown(self._path, uid, gid)

    def close(self) -> None:
        """Stop receiving, close the socket and remove its file. Safe to call more than once."""
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        self._loop = None
        self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ receiving

    def drain(self) -> None:
        """Deliver every datagram already queued, now (before a watchdog deadline is judged)."""
        self._on_readable()

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(_MAX_PER_WAKEUP):
            if sock is None or sock is not self._sock:  # closed by a callback
                return
            try:
                data, ancdata, flags, _ = sock.recvmsg(NOTIFY_BUFFER_MAX, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            self._handle(data, ancdata, flags)

    def _handle(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> None:
        self.received += 1
        pid = 0
        n_fds = 0
        for level, kind, payload in ancdata:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                pid = _UCRED.unpack_from(payload)[0]
            elif kind == socket.SCM_RIGHTS:
                n_fds += _close_fds(payload)
        if flags & socket.MSG_TRUNC:
            self.malformed += 1  # longer than NOTIFY_BUFFER_MAX: systemd ignores these as well
            self.fds_closed += n_fds
            return
        if pid <= 0 or not self._allowed(pid):
            self.dropped += 1
            self.fds_closed += n_fds
            return
        try:
            message = parse_message(pid, data)
        except MalformedMessage:
            self.malformed += 1
            self.fds_closed += n_fds
            return
        if n_fds == 1 and message.fields == (("BARRIER", "1"),):
            self.barriers += 1  # its fd is closed above, which is the whole answer
            return
        self.fds_closed += n_fds
        self._on_message(message)


def _close_fds(payload: bytes) -> int:
    """Close every descriptor in an SCM_RIGHTS payload; return how many there were."""
    fds = array.array("i")
    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    for fd in fds:
        os.close(fd)
    return len(fds)
