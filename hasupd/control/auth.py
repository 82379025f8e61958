"""Who is calling: SO_PEERCRED identity, unix groups, and the role they map to."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from hasupd.config.model import AccessConfig


class Role(IntEnum):
    """Roles in increasing power; each includes the ones below it."""

    READ = 1
    OPERATE = 2
    ADMIN = 3


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int
    groups: frozenset[int]
    user: str
    cmdline: str


def _proc_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    return " ".join(part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0"))


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """Return (pid, uid, gid) of the process at the other end of a unix stream socket, from the kernel
    (SO_PEERCRED, as they were at connect()): cheap, and cannot be forged. Raise OSError if the socket
    is unusable."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def peer_of(sock: socket.socket) -> Peer:
    """Return the identity of the process at the other end of a unix stream socket.

    uid, gid and pid come from the kernel (SO_PEERCRED), so they cannot be forged; the supplementary
    groups and the command line are read from /proc for that pid.
    """
    pid, uid, gid = peer_credentials(sock)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Peer(uid=uid, gid=gid, pid=pid, groups=_proc_groups(pid) | {gid}, user=user, cmdline=_cmdline(pid))


def _gids(names: tuple[str, ...]) -> set[int]:
    out = set()
    for name in names:
        try:
            out.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue  # a group that does not exist grants nothing
    return out


def role_of(peer: Peer, access: AccessConfig) -> Role | None:
    """Return the strongest role ``peer`` holds, or None. root (and hasupd's own user) is admin."""
    if peer.uid in (0, os.geteuid()):
        return Role.ADMIN
    for role, names in ((Role.ADMIN, access.admin), (Role.OPERATE, access.operate), (Role.READ, access.read)):
        if peer.groups & _gids(names):
            return role
    return None
