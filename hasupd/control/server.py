"""The control socket: identifies callers with SO_PEERCRED, checks roles, runs handlers, audits."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.config.model import AccessConfig
from hasupd.control import protocol
from hasupd.control.auth import Peer, Role, peer_credentials, peer_of, role_of
from hasupd.control.commands import COMMANDS
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit, ProtocolError

READ_TIMEOUT_SEC = 5.0  # for the whole request line
FIRST_BYTE_TIMEOUT_SEC = 2.0  # a caller that connects and says nothing gives its slot back soon
# Connections are counted after the caller is identified (SO_PEERCRED), so a socket-group member holding
# connections open cannot lock out an admin: one uid holds at most MAX_PER_UID, and callers without the
# admin role together at most MAX_CONNECTIONS - ADMIN_RESERVE.
MAX_CONNECTIONS = 64
ADMIN_RESERVE = 16
MAX_PER_UID = 8
BACKLOG = 512  # connections the kernel queues before accept; hasupctl retries while it is full
REFUSAL_RECORD_EVERY_SEC = 10.0  # refused connections: one audit record per uid in this time, with a count
STREAM_SEND_TIMEOUT_SEC = 30.0  # a follower that reads nothing for this long is dropped


def _printable(text: str) -> str:
    """Return ``text`` with lone surrogates (valid in JSON, not in UTF-8) spelled as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe_request(cmd: str, args: dict[str, Any]) -> str:
    parts = [cmd]
    for key, value in sorted(args.items()):
        if isinstance(value, list):
            parts += [str(v) for v in value]
        elif value is True:
            parts.append("--" + key.replace("_", "-"))
        elif value not in (None, False):
            parts.append(f"--{key.replace('_', '-')}={value}")
    return _printable(" ".join(parts)[:500])


class ControlServer:
    """Serves one request per connection on a unix socket (mode 0660, group ``access.socket_group``)."""

    def __init__(
        self,
        path: Path,
        context: Context,
        access: Callable[[], AccessConfig],
        publish: Callable[[ev.Event], None],
        spawn: Callable[[Any], object],
    ) -> None:
        self.path = path
        self._context = context
        self._access = access
        self._publish = publish
        self._spawn = spawn  # runs a coroutine in the daemon's TaskGroup
        self._server: asyncio.Server | None = None
        self._active = 0  # connections being served
        self._unprivileged = 0  # of those, callers without the admin role
        self._per_uid: dict[int, int] = {}  # callers without the admin role, per uid
        self._refusals: dict[int, tuple[float, int]] = {}  # uid -> (time of the last record, refused since)
        self.malformed = 0
        self.refused = 0
        self.failed = 0
        self._streams: set[asyncio.Task[Any]] = set()

    def listening_fd(self) -> int | None:
        """Return the listening socket's fd (kept open across a re-exec), or None before ``start``."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].fileno())

    async def start(self, inherited_fd: int | None = None) -> None:
        """Bind the socket (replacing a stale one) and start accepting; with ``inherited_fd`` (the
        listening socket kept open across a re-exec) accept on that one instead: no caller was refused
        while hasupd re-executed, they waited in its backlog."""
        if inherited_fd is not None:
            sock = socket.socket(fileno=inherited_fd)
            sock.set_inheritable(False)
            self._server = await asyncio.start_unix_server(
                self._accept, sock=sock, limit=protocol.MAX_REQUEST_BYTES + 1, backlog=BACKLOG
            )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.path), limit=protocol.MAX_REQUEST_BYTES + 1, backlog=BACKLOG
        )
        os.chmod(self.path, 0o660)
        try:
            gid = grp.getgrnam(self._access().socket_group).gr_gid
        except KeyError:
            return  # no such group: only hasupd's own user and root can connect
        with contextlib.suppress(PermissionError):
            os.chown(self.path, -1, gid)

    async def close(self) -> None:
        for task in self._streams:  # followers would otherwise keep hasupd from stopping
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_credentials(sock)[1]
            if self._per_uid.get(uid, 0) >= MAX_PER_UID:
                # Only callers without the admin role are counted per uid: this one is refused before
                # the slower /proc and group lookups, so a caller connecting in a loop costs little.
                self._refuse(uid, sock, writer, self._over_uid_cap(uid))
                return
            peer = peer_of(sock)
        except OSError:  # gone before it could be identified
            writer.close()
            return
        admin = role_of(peer, self._access()) is Role.ADMIN
        refusal = self._refusal(peer.uid, admin)
        if refusal is not None:
            self._refuse(peer.uid, sock, writer, refusal)
            return
        self._active += 1
        if not admin:
            self._unprivileged += 1
            self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        # In the daemon's TaskGroup, so that stopping hasupd ends it; _serve lets nothing but
        # cancellation out, so a bad request cannot stop hasupd.
        self._spawn(self._serve(peer, admin, reader, writer))

    @staticmethod
    def _over_uid_cap(uid: int) -> str:
        return f"too many connections: uid {uid} holds {MAX_PER_UID} already (the most one user may)"

    def _refusal(self, uid: int, admin: bool) -> str | None:
        """Return why a new connection of ``uid`` gets no slot, or None if it gets one."""
        if self._active >= MAX_CONNECTIONS:
            return f"hasupd is busy: it serves {MAX_CONNECTIONS} connections already; try again"
        if admin:
            return None
        if self._per_uid.get(uid, 0) >= MAX_PER_UID:
            return self._over_uid_cap(uid)
        if self._unprivileged >= MAX_CONNECTIONS - ADMIN_RESERVE:
            return (
                f"hasupd is busy: {MAX_CONNECTIONS - ADMIN_RESERVE} connections are open, "
                f"the remaining {ADMIN_RESERVE} are kept for admins; try again"
            )
        return None

    def _refuse(self, uid: int, sock: Any, writer: asyncio.StreamWriter, reason: str) -> None:
        """Answer a caller that gets no slot with an error (not a silent close), at once, and record it
        (at most once per uid every REFUSAL_RECORD_EVERY_SEC, with the count since the last record)."""
        self.refused += 1
        with contextlib.suppress(ConnectionError):
            writer.write(protocol.error(Exit.UNREACHABLE, reason))
        now = time.monotonic()
        last, count = self._refusals.get(uid, (float("-inf"), 0))
        if now - last < REFUSAL_RECORD_EVERY_SEC:
            self._refusals[uid] = (last, count + 1)
        else:
            self._refusals[uid] = (now, 0)
            more = f" (and {count} more since the last record)" if count else ""
            with contextlib.suppress(OSError):  # identified before the socket closes
                self._audit(peer_of(sock), "(connection)", f"refused: {reason}{more}", None)
        writer.close()  # the transport sends what was written, then closes

    async def _serve(
        self, peer: Peer, admin: bool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = "(unread)"
        answered = False
        reply: bytes | protocol.Streaming | None
        try:
            line, reply = await self._read_request(reader)
            if line is not None:
                request = _printable(line[:200].decode("utf-8", "replace"))
                reply = await self._respond(peer, line)
            answered = True
            if isinstance(reply, protocol.Streaming):
                await self._stream(reply, writer)
            elif reply is not None:
                writer.write(reply)
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(writer.drain(), READ_TIMEOUT_SEC)
        except TimeoutError:
            pass  # a client that does not read its answer loses it
        except Exception as error:  # noqa: BLE001 - per connection: a bad request must not stop hasupd
            self._failed(peer, request, error)
            if not answered:
                with contextlib.suppress(ConnectionError):
                    writer.write(
                        protocol.error(
                            Exit.FAILED,
                            f"hasupd could not handle this request ({type(error).__name__}); "
                            "it is recorded as a control.error record",
                        )
                    )
        finally:
            self._active -= 1
            if not admin:
                self._unprivileged -= 1
                left = self._per_uid.pop(peer.uid) - 1
                if left:
                    self._per_uid[peer.uid] = left
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _failed(self, peer: Peer, request: str, error: Exception) -> None:
        self.failed += 1
        self._publish(
            ev.ControlFailed(
                uid=peer.uid,
                user=peer.user,
                pid=peer.pid,
                request=request,
                error=_printable(f"{type(error).__name__}: {error}"[:500]),
                traceback=_printable("".join(traceback.format_exception(error))[-4000:]),
            )
        )

    async def _stream(self, streaming: protocol.Streaming, writer: asyncio.StreamWriter) -> None:
        """Send a streamed answer until it ends, the client goes, or the server closes."""

        async def send(item: Any) -> bool:
            writer.write(b"\n" if item is None else protocol.encode(item))
            try:
                await asyncio.wait_for(writer.drain(), STREAM_SEND_TIMEOUT_SEC)
            except (ConnectionError, TimeoutError):
                return False
            return not writer.is_closing()

        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            writer.write(protocol.stream_start())
            await streaming.run(send)
        finally:
            self._streams.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes | None, bytes | None]:
        """Return (the request line, None), or (None, the error reply) for a caller that sent none
        (no reply either if it left)."""
        try:
            first = await asyncio.wait_for(reader.read(1), FIRST_BYTE_TIMEOUT_SEC)
        except TimeoutError:
            self.malformed += 1
            return None, protocol.error(
                Exit.USAGE, f"no request within {FIRST_BYTE_TIMEOUT_SEC:g}s of connecting"
            )
        except ConnectionError:
            return None, None
        if first in (b"", b"\n"):
            return None, None  # connected and left
        try:
            line = first + await asyncio.wait_for(reader.readline(), READ_TIMEOUT_SEC)
        except ValueError:  # longer than the limit
            self.malformed += 1
            return None, protocol.error(Exit.USAGE, f"request larger than {protocol.MAX_REQUEST_BYTES} bytes")
        except TimeoutError:
            self.malformed += 1
            return None, protocol.error(Exit.USAGE, f"no complete request within {READ_TIMEOUT_SEC:g}s")
        except ConnectionError:
            self.malformed += 1
            return None, None
        return line, None

    async def _respond(self, peer: Peer, line: bytes) -> bytes | protocol.Streaming | None:
        if not line.strip():
            return None
        try:
            cmd, args = protocol.decode_request(line)
        except ProtocolError as error:
            self.malformed += 1
            return protocol.error(Exit.USAGE, str(error))
        command = COMMANDS.get(cmd)
        if command is None:
            shown = cmd if len(cmd) <= 60 else cmd[:57] + "..."
            return protocol.error(
                Exit.USAGE, f"unknown command {shown!r}; known: {', '.join(sorted(COMMANDS))}"
            )
        request = _describe_request(cmd, args)
        role = role_of(peer, self._access())
        if role is None or role < command.role:
            held = role.name.lower() if role else "no role"
            reason = f"refused: {cmd} needs the {command.role.name.lower()} role, {peer.user} has {held}"
            self._audit(peer, request, reason, role.name.lower() if role else None)
            return protocol.error(Exit.REFUSED, reason)
        try:
            data = await command.handler(self._context, {**args, "_user": peer.user})
        except CommandError as error:
            if command.changes_state:
                self._audit(peer, request, _printable(f"failed: {error}"), role.name.lower())
            return protocol.error(error.code, str(error))
        if command.changes_state:
            self._audit(peer, request, "ok", role.name.lower())
        return data if isinstance(data, protocol.Streaming) else protocol.ok(data)

    def _audit(self, peer: Peer, request: str, outcome: str, role: str | None) -> None:
        self._publish(
            ev.Audit(
                uid=peer.uid,
                user=peer.user,
                pid=peer.pid,
                cmdline=peer.cmdline,
                request=request,
                outcome=outcome,
                role=role,
            )
        )
