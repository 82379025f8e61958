"""The client side of the control socket (standard library only)."""

from __future__ import annotations

import json
import os
import socket
import time
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


# A full listen queue (a burst of callers, or a flood) makes connect() fail at once with EAGAIN on a
# socket with a timeout; hasupd empties the queue quickly, so hasupctl tries again for this long.
CONNECT_RETRY_SEC = 10.0


def _connect(path: str, timeout: float | None) -> socket.socket:
    deadline = time.monotonic() + min(CONNECT_RETRY_SEC, timeout or CONNECT_RETRY_SEC)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise ControlError(
                    Exit.UNREACHABLE, f"hasupd's connection queue stayed full on {path}; try again"
                ) from None
            time.sleep(0.02)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise ControlError(
                Exit.UNREACHABLE, f"hasupd is not running (nothing listens on {path})"
            ) from None
        except PermissionError:
            sock.close()
            raise ControlError(
                Exit.REFUSED, f"permission denied on {path}: hasupctl users must be in hasupd's socket group"
            ) from None
        except TimeoutError:
            sock.close()
            raise ControlError(Exit.UNREACHABLE, "hasupd did not accept the connection in time") from None


def _send(sock: socket.socket, data: bytes) -> None:
    """Send the request. A server that already closed (it refused the connection) may have answered:
    that answer is still read, so a failed send is not an error here."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass


def call(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = 600.0) -> Any:
    """Send one request and return the response's data. Raise ControlError with the exit code."""
    sock = _connect(path, timeout)
    chunks: list[bytes] = []
    try:
        _send(sock, protocol.request(cmd, args))
        size = 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > protocol.MAX_RESPONSE_BYTES:
                raise ControlError(Exit.FAILED, "response too large")
    except TimeoutError:
        raise ControlError(Exit.UNREACHABLE, f"hasupd did not answer within {timeout:g}s") from None
    except ConnectionResetError:
        # hasupd answered and closed before reading the whole request (a refusal, a request too
        # large): the kernel reports a reset after the answer; a complete answer line still counts.
        if not b"".join(chunks).endswith(b"\n"):
            raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection") from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    if not raw:
        raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection without an answer")
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlError(Exit.FAILED, "unreadable answer from hasupd") from None
    if not isinstance(reply, dict):
        raise ControlError(Exit.FAILED, "unreadable answer from hasupd")
    if not reply.get("ok"):
        raise ControlError(_exit_code(reply.get("code")), str(reply.get("error", "failed")))
    return reply.get("data")


def _exit_code(code: Any) -> Exit:
    try:
        return Exit(code)
    except ValueError:
        return Exit.FAILED


def stream(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Iterator[Any]:
    """Send one request whose answer is a stream; yield its items as they come, until hasupd ends it.

    Raise ControlError with the exit code if the request fails, or if nothing (not even a heartbeat)
    arrives for ``timeout`` seconds.
    """
    sock = _connect(path, timeout)
    try:
        _send(sock, protocol.request(cmd, args))
        with sock.makefile("rb") as lines:
            header = lines.readline()
            if not header:
                raise ControlError(Exit.UNREACHABLE, "hasupd closed the connection without an answer")
            try:
                reply = json.loads(header)
            except json.JSONDecodeError:
                raise ControlError(Exit.FAILED, "unreadable answer from hasupd") from None
            if not reply.get("ok"):
                raise ControlError(_exit_code(reply.get("code")), str(reply.get("error", "failed")))
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
