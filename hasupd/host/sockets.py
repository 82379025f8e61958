"""Listening sockets held by hasupd and handed to a service with the sd_listen_fds protocol.

hasupd binds and listens itself, once, and keeps the sockets open while instances crash and restart:
connections that arrive meanwhile wait in the kernel's backlog instead of being refused. Every start
gets them as fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (set to the child's own pid
by the spawner), so programs written for systemd socket activation work unchanged.

Across a crash of hasupd itself (under systemd) the sockets are kept in systemd's fd store: each one
is handed over when it is bound, named ``<service>.<index>`` (index in the service's ``sockets:``
list), and comes back to the next hasupd through LISTEN_FDS. ``HeldSocketStore`` gives a received
socket to the service whose socket spec it still matches (the name, and the address it is bound to),
so the restarted hasupd keeps serving on the very socket the running instances accept on, instead of
failing to bind an address they still hold. A socket dropped by a reload leaves the store with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

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


def fd_name(service: str, index: int) -> str:
    """Return the fd store name of socket ``index`` of ``service`` (unique: service names have no
    ":" and the index is the last dot-separated part)."""
    return f"{service}.{index}"


def bound_to(sock: socket.socket, spec: SocketSpec) -> bool:
    """Return True if ``sock`` is a listening stream socket bound to the address of ``spec``."""
    family, address = _address(spec.listen)
    try:
        if sock.family != family or sock.type != socket.SOCK_STREAM:
            return False
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        name = sock.getsockname()
    except OSError:
        return False
    if family == socket.AF_UNIX:
        return bool(name == address)
    assert isinstance(address, tuple)
    host, port = address
    if name[1] != port:
        return False
    try:
        # The addresses bind() would have used for this host (a name, a literal, or "" for any).
        infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    return any(info[4][0] == name[0] for info in infos)


class FdChannel(Protocol):
    """Where held sockets are kept outside hasupd (``hasupd.host.systemd.FdStoreChannel``)."""

    def store(self, name: str, fd: int) -> bool: ...

    def remove(self, name: str) -> bool: ...


class HeldSocketStore:
    """The held sockets a previous hasupd left in systemd's fd store, and the channel to keep new ones.

    ``received`` are the (name, fd) pairs of LISTEN_FDS (``hasupd.host.systemd.take_listen_fds``);
    this store owns those fds from now on. Without systemd pass ``channel=None`` and nothing.
    """

    def __init__(self, channel: FdChannel | None = None, received: Iterable[tuple[str, int]] = ()) -> None:
        self._channel = channel
        self._received: list[tuple[str, socket.socket]] = []
        self._strays: list[str] = []  # names of received fds that are not sockets (closed at once)
        for name, fd in received:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                self._strays.append(name)
                continue
            self._received.append((name, sock))

    def take(self, name: str, spec: SocketSpec) -> socket.socket | None:
        """Return the received socket for ``spec``, or None: the one stored as ``name`` if it is still
        bound to the spec's address, else any received one bound there (the service was renamed or
        its sockets reordered; it is stored again under ``name``)."""
        for exact in (True, False):
            for i, (stored, sock) in enumerate(self._received):
                if (stored == name) == exact and bound_to(sock, spec):
                    del self._received[i]
                    if not exact:
                        self.drop(stored)
                        self.keep(name, sock)
                    return sock
        return None

    def keep(self, name: str, sock: socket.socket) -> None:
        """Hand a newly bound socket to the store (a no-op without systemd)."""
        if self._channel is not None:
            self._channel.store(name, sock.fileno())

    def drop(self, name: str) -> None:
        """Remove the socket stored as ``name`` (closed for good by a reload or a removal)."""
        if self._channel is not None:
            self._channel.remove(name)

    def release_unclaimed(self) -> list[str]:
        """Close every received fd no service took (its service or socket is gone from the config,
        or its address changed while hasupd was down), remove it from the store; return the names."""
        names = [name for name, _sock in self._received] + self._strays
        for _name, sock in self._received:
            sock.close()
        self._received = []
        self._strays = []
        for name in dict.fromkeys(names):
            self.drop(name)
        return names


@dataclass
class _Held:
    spec: SocketSpec
    sock: socket.socket


class SocketSet:
    """The listening sockets of one service, shared by all its instances and kept across restarts."""

    def __init__(
        self, service: str, specs: tuple[SocketSpec, ...], store: HeldSocketStore | None = None
    ) -> None:
        self.service = service
        self.specs = specs
        self._store = store
        self._held: list[_Held] = []
        # Sockets a previous hasupd left in the fd store, by index: used instead of binding anew.
        self._taken: dict[int, socket.socket] = {}
        if store is not None:
            for index, spec in enumerate(specs):
                sock = store.take(fd_name(service, index), spec)
                if sock is not None:
                    self._taken[index] = sock

    def fds(self) -> tuple[int, ...]:
        """Return the fds to pass, binding them on first use (or using the ones received from the fd
        store). Raise SpawnError if one cannot be bound (nothing newly bound stays bound then)."""
        if not self._held:
            held: list[_Held] = []
            fresh: list[int] = []
            try:
                for index, spec in enumerate(self.specs):
                    if index in self._taken:
                        held.append(_Held(spec, self._taken[index]))
                    else:
                        held.append(_Held(spec, _bind(spec)))
                        fresh.append(index)
            except SpawnError:
                for index, h in enumerate(held):
                    if index in fresh:
                        h.sock.close()
                raise
            self._held = held
            self._taken = {}
            if self._store is not None:
                for index in fresh:
                    self._store.keep(fd_name(self.service, index), held[index].sock)
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
        instance) instead of binding new ones, and keep them in the fd store."""
        assert len(socks) == len(self.specs), (len(socks), len(self.specs))
        for h in self._held:
            h.sock.close()
        # Copies of the same sockets, received from the fd store: one reference is enough.
        for sock in self._taken.values():
            sock.close()
        self._taken = {}
        self._held = [_Held(spec, sock) for spec, sock in zip(self.specs, socks, strict=True)]
        # (Re)store them: systemd ignores an fd it already holds, and a previous hasupd of a version
        # without the fd store (upgraded by re-exec) had not stored them.
        if self._store is not None:
            for index, h in enumerate(self._held):
                self._store.keep(fd_name(self.service, index), h.sock)

    def close(self) -> None:
        """Close every socket (the service is gone for good) and remove it from the fd store; unix
        socket files are removed."""
        held = self._held or [_Held(self.specs[i], sock) for i, sock in self._taken.items()]
        for h in held:
            h.sock.close()
            if h.spec.listen.startswith("/"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(h.spec.listen)
        if self._store is not None and held:
            for index in range(len(self.specs)):
                self._store.drop(fd_name(self.service, index))
        self._held = []
        self._taken = {}
