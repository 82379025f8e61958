"""The control socket: identifies callers with SO_PEERCRED, checks roles, runs handlers, audits."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.config.model import AccessConfig
from hasupd.control import protocol
from hasupd.control.auth import Peer, peer_of, role_of
from hasupd.control.handlers import COMMANDS, CommandError, Context
from hasupd.control.protocol import Exit, ProtocolError

READ_TIMEOUT_SEC = 5.0
MAX_CONNECTIONS = 64
STREAM_SEND_TIMEOUT_SEC = 30.0  # a follower that reads nothing for this long is dropped


def _describe_request(cmd: str, args: dict[str, Any]) -> str:
    parts = [cmd]
    for key, value in sorted(args.items()):
        if isinstance(value, list):
            parts += [str(v) for v in value]
        elif value is True:
            parts.append("--" + key.replace("_", "-"))
        elif value not in (None, False):
            parts.append(f"--{key.replace('_', '-')}={value}")
    return " ".join(parts)[:500]


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
        self._active = 0
        self.malformed = 0
        self._streams: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start accepting."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.path), limit=protocol.MAX_REQUEST_BYTES + 1
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
        if self._active >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active += 1
        # In the daemon's TaskGroup: a bug in a handler stops hasupd instead of vanishing in a log line.
        self._spawn(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._respond(reader, writer)
            if isinstance(reply, protocol.Streaming):
                await self._stream(reply, writer)
            elif reply is not None:
                writer.write(reply)
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(writer.drain(), READ_TIMEOUT_SEC)
        except TimeoutError:
            pass  # a client that does not read its answer loses it
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

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

    async def _respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | protocol.Streaming | None:
        peer = peer_of(writer.get_extra_info("socket"))
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_SEC)
        except ValueError:  # longer than the limit
            self.malformed += 1
            return protocol.error(Exit.USAGE, f"request larger than {protocol.MAX_REQUEST_BYTES} bytes")
        except TimeoutError:
            self.malformed += 1
            return protocol.error(Exit.USAGE, f"no complete request within {READ_TIMEOUT_SEC:g}s")
        except ConnectionError:
            self.malformed += 1
            return None
        if not line.strip():
            return None  # connected and left
        try:
            cmd, args = protocol.decode_request(line)
        except ProtocolError as error:
            self.malformed += 1
            return protocol.error(Exit.USAGE, str(error))
        command = COMMANDS.get(cmd)
        if command is None:
            return protocol.error(
                Exit.USAGE, f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}"
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
                self._audit(peer, request, f"failed: {error}", role.name.lower())
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
