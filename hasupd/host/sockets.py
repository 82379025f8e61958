"""Listening sockets held by hasupd and handed to a service with the sd_listen_fds protocol.

hasupd binds and listens itself, once, and keeps the sockets open while instances crash and restart:
connections that arrive meanwhile wait in the kernel's backlog instead of being refused. Every start
gets them as fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (set to the child's own pid
by the spawner), so programs written for systemd socket activation work unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass

from hasupd.config.model import SocketSpec
from hasupd.ports import SpawnError

BACKLOG = 4096  # capped by net.core.somaxconn


def address_of(listen: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """Return (family, address as getsockname gives it) for a ``listen`` string."""
    return _address(listen)


def _address(listen: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """Return (family, bind address) for "host:port", "[v6]:port" or "/unix/path" (validated already)."""
    if listen.startswith("/"):
        return socket.AF_UNIX, listen
    host, _, port = listen.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def _bind(spec: SocketSpec) -> socket.socket:
    family, address = _address(spec.listen)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            path = str(address)
            # A leftover socket file from an earlier run is replaced; anything else is not ours.
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        reason = "address already in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise SpawnError(f"cannot listen on {spec.listen}: {reason}") from error
    return sock


@dataclass
class _Held:
    spec: SocketSpec
    sock: socket.socket


class SocketSet:
    """The listening sockets of one service, shared by all its instances and kept across restarts."""

    def __init__(self, service: str, specs: tuple[SocketSpec, ...]) -> None:
        self.service = service
        self.specs = specs
        self._held: list[_Held] = []

    def fds(self) -> tuple[int, ...]:
        """Return the fds to pass, binding them on first use. Raise SpawnError if one cannot be bound
        (nothing stays bound then)."""
        if not self._held:
            held: list[_Held] = []
            try:
                for spec in self.specs:
                    held.append(_Held(spec, _bind(spec)))
            except SpawnError:
                for h in held:
                    h.sock.close()
                raise
            self._held = held
        return tuple(h.sock.fileno() for h in self._held)

    def environment(self) -> dict[str, str]:
        """Return LISTEN_FDS and LISTEN_FDNAMES for the fds of ``fds()`` (LISTEN_PID is the child's)."""
        names = [h.spec.name or self.service for h in self._held]
        return {"LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names)}

    def held(self) -> list[tuple[SocketSpec, socket.socket]]:
        """Return the bound sockets in ``specs`` order (empty before the first ``fds()``)."""
        return [(h.spec, h.sock) for h in self._held]

    def adopt(self, socks: list[socket.socket]) -> None:
        """Hold ``socks`` (one per spec, in order; kept across a re-exec or copied from a running
        instance) instead of binding new ones."""
        assert len(socks) == len(self.specs), (len(socks), len(self.specs))
        for h in self._held:
            h.sock.close()
        self._held = [_Held(spec, sock) for spec, sock in zip(self.specs, socks, strict=True)]

    def close(self) -> None:
        """Close every socket (the service is gone for good); unix socket files are removed."""
        for h in self._held:
            h.sock.close()
            if h.spec.listen.startswith("/"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(h.spec.listen)
        self._held = []
