"""The control protocol: one JSON request line, one JSON response line, then the connection closes.

Request:  {"v": 1, "cmd": "stop", "args": {"names": ["web"]}}
Response: {"v": 1, "ok": true, "data": ...}  or  {"v": 1, "ok": false, "code": 4, "error": "..."}

A streamed response (``logs -f``) starts with {"v": 1, "ok": true, "stream": true} and goes on with one
JSON value per line until either side closes the connection; an empty line is a heartbeat, which is how
the server learns that a quiet follower has gone.

``code`` is the exit code hasupctl returns (the table below). Standard library only: hasupctl runs
on any python3 without hasupd's dependencies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
# Real requests nest 3 deep ({"args": {"names": [...]}}). json.loads recurses once per level, so a
# request nested ~1,000 deep would raise RecursionError; anything deeper than this is refused unparsed.
MAX_REQUEST_DEPTH = 32
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_SOCKET = "/run/hasupd/control.sock"


class Exit(IntEnum):
    """hasupctl exit codes."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    UNREACHABLE = 5


class ProtocolError(Exception):
    """A request or response that does not follow the protocol."""


def encode(message: dict[str, Any]) -> bytes:
    """Return ``message`` as one JSON line."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def request(cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return encode({"v": VERSION, "cmd": cmd, "args": args or {}})


def ok(data: Any = None) -> bytes:
    return encode({"v": VERSION, "ok": True, "data": data})


def error(code: Exit, message: str) -> bytes:
    return encode({"v": VERSION, "ok": False, "code": int(code), "error": message})


def stream_start() -> bytes:
    return encode({"v": VERSION, "ok": True, "stream": True})


# Sends one item of a stream (None: a heartbeat); returns False once the client has gone.
StreamSend = Callable[[Any], Awaitable[bool]]


@dataclass(frozen=True)
class Streaming:
    """A handler's answer that is a stream: ``run(send)`` sends items until it returns or send fails."""

    run: Callable[[StreamSend], Awaitable[None]]


# The characters that open or close a JSON container or string, and the rest of a string after its
# opening quote (escapes included). Linear: every character is looked at once.
_STRUCTURE_RE = re.compile(r'[\[\]{}"]')
_STRING_REST_RE = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_exceeds(text: str, limit: int) -> bool:
    """Return True if the JSON ``text`` opens more than ``limit`` arrays or objects inside each other.

    Brackets inside strings do not count. Stops at the first level past ``limit``; an unterminated
    string or unbalanced brackets end the scan (json.loads then rejects the text without deep recursion).
    """
    depth = 0
    pos = 0
    while (match := _STRUCTURE_RE.search(text, pos)) is not None:
        char = match.group()
        if char == '"':
            rest = _STRING_REST_RE.match(text, match.end())
            if rest is None:
                return False
            pos = rest.end()
            continue
        pos = match.end()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Return (cmd, args) of a request line. Raise ProtocolError saying what is wrong.

    The line must be UTF-8 JSON nested at most MAX_REQUEST_DEPTH deep; nothing about it (size, depth,
    numbers, odd unicode) makes this raise anything but ProtocolError.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"request is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if nesting_exceeds(text, MAX_REQUEST_DEPTH):
        raise ProtocolError(f"request nested deeper than {MAX_REQUEST_DEPTH} levels")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"request is not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4,300 digits
        raise ProtocolError(f"request is not usable JSON: {str(exc)[:200]}") from None
    if not isinstance(message, dict):
        raise ProtocolError("request must be a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {_shorten(message.get('v'))} (this hasupd speaks {VERSION})"
        )
    cmd, args = message.get("cmd"), message.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError("request needs a 'cmd' string")
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object")
    return cmd, args
