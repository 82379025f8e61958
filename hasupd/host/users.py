"""Users and groups as a config names them: by name ("www-data") or by number ("33").

Stdlib only, so that every layer (config validation, spawning, notify sockets) resolves a ``user:`` or
``group:`` value the same way. A value made of ASCII digits only is an id (as systemd reads ``User=``);
anything else is a name. Either must have an entry in the user or group database (passwd/group through
NSS): hasupd needs a user's primary group, home and supplementary groups, and a group id nobody can name
is more likely a typo than an intent.
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass

MAX_ID = 4294967294  # (uid_t) -1 means "no change" to the kernel, so it is no id


class UnknownIdentity(LookupError):
    """A user or group that the database does not hold, or a value that cannot name one.

    ``str()`` is a message for operators ("unknown user 'x'", "no user has uid 1234").
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown user or group"


@dataclass(frozen=True)
class User:
    """One entry of the user database."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def _as_id(value: str, what: str) -> int | None:
    """Return ``value`` as an id if it is written as one (ASCII digits); None for a name."""
    if not (value.isascii() and value.isdigit()):
        return None
    number = int(value) if len(value) <= 10 else MAX_ID + 1
    if number > MAX_ID:
        raise UnknownIdentity(f"invalid {what} id {value}: ids go from 0 to {MAX_ID}")
    return number


def _usable_name(value: str, what: str) -> str:
    """Return ``value`` if the C library can be asked about it (no NUL, valid UTF-8 text)."""
    if not value or "\0" in value:
        raise UnknownIdentity(f"invalid {what} name {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise UnknownIdentity(f"invalid {what} name {value!r}: not valid text") from None
    return value


def lookup_user(value: str) -> User:
    """Return the user named or numbered by ``value``.

    Raise UnknownIdentity if there is no such user or ``value`` cannot name one.
    """
    uid = _as_id(value, "user")
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(_usable_name(value, "user"))
    except KeyError:
        raise UnknownIdentity(
            f"no user has uid {uid}" if uid is not None else f"unknown user {value!r}"
        ) from None
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


def lookup_group(value: str) -> int:
    """Return the gid of the group named or numbered by ``value``.

    Raise UnknownIdentity if there is no such group or ``value`` cannot name one.
    """
    gid = _as_id(value, "group")
    try:
        entry = grp.getgrgid(gid) if gid is not None else grp.getgrnam(_usable_name(value, "group"))
    except KeyError:
        raise UnknownIdentity(
            f"no group has gid {gid}" if gid is not None else f"unknown group {value!r}"
        ) from None
    return entry.gr_gid
