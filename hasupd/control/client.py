"""The client side of the control socket (standard library only)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from hasupd.control import protocol
from hasupd.control.protocol import Exit


class ControlError(Exception):
    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


def socket_path(explicit: str | None = None) -> str:
    """Return the control socket path: --socket, else $HASUPD_SOCKET, else the default."""
    return explicit or os.environ.get("HASUPD_SOCKET") or protocol.DEFAULT_SOCKET


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ControlError(Exit.UNREACHABLE, f"hasupd is not running (nothing listens on {path})") from None
    except PermissionError:
        sock.close()
        raise ControlError(
            Exit.REFUSED, f"permission denied on {path}: hasupctl users must be in hasupd's socket group"
        ) from None
    except TimeoutError:
        sock.close()
        raise ControlError(Exit.UNREACHABLE, "hasupd did not accept the connection in time") from None
    return sock


def call(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = 600.0) -> Any:
    """Send one request and return the response's data. Raise ControlError with the exit code."""
    sock = _connect(path, timeout)
    try:
        sock.sendall(protocol.request(cmd, args))
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        size = 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > protocol.MAX_RESPONSE_BYTES:
                raise ControlError(Exit.FAILED, "response too large")
    except TimeoutError:
        raise ControlError(Exit.UNREACHABLE, f"hasupd did not answer within {timeout:g}s") from None
    except ConnectionResetError:
        raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection") from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    if not raw:
        raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection without an answer")
    try:
        reply = json.loads(raw)
    except json.JSONDecodeError:
        raise ControlError(Exit.FAILED, "unreadable answer from hasupd") from None
    if not reply.get("ok"):
        raise ControlError(Exit(reply.get("code", Exit.FAILED)), str(reply.get("error", "failed")))
    return reply.get("data")


def stream(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Iterator[Any]:
    """Send one request whose answer is a stream; yield its items as they come, until hasupd ends it.

    Raise ControlError with the exit code if the request fails, or if nothing (not even a heartbeat)
    arrives for ``timeout`` seconds.
    """
    sock = _connect(path, timeout)
    try:
        sock.sendall(protocol.request(cmd, args))
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as lines:
            header = lines.readline()
            if not header:
                raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection without an answer")
            try:
                reply = json.loads(header)
            except json.JSONDecodeError:
                raise ControlError(Exit.FAILED, "unreadable answer from hasupd") from None
            if not reply.get("ok"):
                raise ControlError(Exit(reply.get("code", Exit.FAILED)), str(reply.get("error", "failed")))
            if not reply.get("stream"):
                yield reply.get("data")
                return
            for line in lines:
                if line.strip():  # an empty line is a heartbeat
                    yield json.loads(line)
    except TimeoutError:
        raise ControlError(Exit.UNREACHABLE, f"hasupd sent nothing for {timeout:g}s") from None
    except ConnectionResetError:
        raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection") from None
    finally:
        sock.close()
