"""hasupd's own sd_notify towards systemd: READY, RELOADING, STOPPING, STATUS and watchdog pings.

The datagrams go out through the `sdnotify` package. Pings come from a task on the event loop, and
only while the loop answers promptly: a loop that is blocked or badly late sends nothing, so
systemd's watchdog catches a hung hasupd (sdnotify has no watchdog logic of its own).

Errors: sdnotify swallows every error unless ``debug=True``; hasupd sets it, so that nothing is lost
silently. A manager that is not (or no longer) listening (ECONNREFUSED, ENOENT) is not hasupd's
failure: that datagram is dropped, as sd_notify(3) does. Anything else (a datagram too long, a
permission error) is a bug and propagates.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import sdnotify

from hasupd import events as ev

# Variables systemd gives hasupd that must never reach a supervised child.
SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
)


class _Datagrams(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's notifier in debug mode, connected to ``address``: the address hasupd read from the
    environment it was given (sdnotify's own constructor reads ``os.environ`` itself), so only the
    connect differs from sdnotify's; ``notify()`` is sdnotify's.

    Raise OSError if the address cannot be connected to. ``notify()`` raises what went wrong.
    """

    def __init__(self, address: str) -> None:
        self.debug = True
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.socket.connect(address)
        except OSError:
            self.socket.close()
            raise

    def close(self) -> None:
        self.socket.close()


# The manager is not listening there (any more): the datagram is dropped.
_GONE = (ConnectionRefusedError, FileNotFoundError)


class SystemdNotifier:
    """Talks to the service manager that started hasupd, if any; every method is a no-op otherwise."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket (a leading NUL byte on the wire).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.enabled = bool(address)
        self._datagrams: _Datagrams | None = None
        self.watchdog_interval: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if self.enabled and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._last_status = ""

    def send(self, *lines: str) -> None:
        """Send one datagram with ``lines`` (e.g. "READY=1", "STATUS=..."); no-op without systemd.

        A manager that is not listening is not hasupd's failure: the datagram is dropped, and the
        next one connects afresh (so a socket that appears or is replaced later is found). Raise
        OSError for any other failure to send.
        """
        if not self.enabled:
            return
        # sdnotify encodes as Latin-1 (0.3); the protocol is UTF-8. Latin-1 maps each code point
        # below 256 to that byte, so the UTF-8 bytes pass through unchanged.
        state = "\n".join(lines).encode().decode("latin-1")
        # A connected socket whose peer was replaced refuses once: then connect again and retry.
        for _attempt in range(2):
            try:
                if self._datagrams is None:
                    self._datagrams = _Datagrams(self._address)
                self._datagrams.notify(state)
            except _GONE:
                self.close()
                continue
            return

    def close(self) -> None:
        if self._datagrams is not None:
            self._datagrams.close()
            self._datagrams = None

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping services")

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` unless it is what systemd already shows."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    async def run_watchdog(self, publish: Callable[[ev.Event], None]) -> None:
        """Ping ``WATCHDOG=1`` every half deadline while the loop is prompt; runs until cancelled."""
        interval = self.watchdog_interval
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        # A wake-up later than this means the loop was stuck; that ping is withheld.
        tolerance = max(interval / 2, 0.05)
        # At once: after a re-exec (same pid, systemd's deadline keeps running from the old image's
        # last ping) a first ping only one interval later could come after the deadline.
        self.send("WATCHDOG=1")
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            lag = loop.time() - due
            if lag > tolerance:
                publish(ev.WatchdogLate(lag_sec=round(lag, 3)))
                continue
            self.send("WATCHDOG=1")


# ------------------------------------------------------------------ fd store (sd_pid_notify_with_fds)

# sd_listen_fds(3): passed fds start at 3. systemd's fdname_is_valid(): at most 255 printable ASCII
# characters, no ":" (the separator of LISTEN_FDNAMES).
LISTEN_FDS_START = 3
FDNAME_MAX = 255
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def fdname_is_valid(name: str) -> bool:
    """Return True if systemd accepts ``name`` as an FDNAME= (as its fdname_is_valid() does)."""
    return 0 < len(name) <= FDNAME_MAX and all(" " <= c <= "~" and c != ":" for c in name)


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[str, int]]:
    """Return the (name, fd) pairs passed to process ``pid`` by the sd_listen_fds protocol.

    As sd_listen_fds(3): nothing unless LISTEN_PID is ``pid`` (the variables were meant for another
    process, e.g. inherited through a fork); LISTEN_FDS fds from 3 up; names from LISTEN_FDNAMES, or
    "unknown" where it is missing or short. The fds are not checked or touched here.
    """
    if environ.get("LISTEN_PID", "") != str(pid):
        return []
    count = environ.get("LISTEN_FDS", "")
    if not count.isdigit() or int(count) == 0:
        return []
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    return [
        (names[i] if i < len(names) and names[i] else "unknown", LISTEN_FDS_START + i)
        for i in range(int(count))
    ]


def take_listen_fds() -> list[tuple[str, int]]:
    """Return the fds systemd passed to this process (see ``listen_fds``), each made close-on-exec,
    and remove the LISTEN_* variables from ``os.environ`` (sd_listen_fds(unset_environment=1)): a
    later re-exec of hasupd must not take fds 3, 4, ... for these again.
    """
    passed = listen_fds(os.environ, os.getpid())
    for name in LISTEN_VARIABLES:
        os.environ.pop(name, None)
    for _name, fd in passed:
        os.set_inheritable(fd, False)
    return passed


class FdStoreChannel:
    """hasupd's side of systemd's file descriptor store (FDSTORE=1, FDSTOREREMOVE=1; see
    sd_pid_notify_with_fds(3)): fds kept there come back to the next hasupd of the same unit through
    LISTEN_FDS when systemd restarts it after a crash. Needs ``FileDescriptorStoreMax=`` in the unit
    (systemd drops stored fds otherwise). A no-op without NOTIFY_SOCKET.

    sdnotify cannot pass fds, so these datagrams go out through ``socket.sendmsg`` with SCM_RIGHTS.
    A manager that is not listening drops them (as ``SystemdNotifier.send``); any other error raises.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.enabled = bool(address)

    def store(self, name: str, fd: int) -> bool:
        """Keep ``fd`` in the store under FDNAME=``name``; return False if it was not sent (no
        systemd, or a name systemd would refuse)."""
        if not self.enabled or not fdname_is_valid(name):
            return False
        return self._send(f"FDSTORE=1\nFDNAME={name}", [fd])

    def remove(self, name: str) -> bool:
        """Drop every fd stored under ``name`` (systemd closes them); return False if not sent."""
        if not self.enabled or not fdname_is_valid(name):
            return False
        return self._send(f"FDSTOREREMOVE=1\nFDNAME={name}", [])

    def _send(self, text: str, fds: list[int]) -> bool:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendmsg([text.encode()], ancillary, 0, self._address)
            except _GONE:
                return False
        return True
