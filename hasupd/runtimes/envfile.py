"""systemd ``EnvironmentFile=`` syntax, for a service's ``environment_files``.

``KEY=VALUE`` per line; blank lines and lines starting with ``#`` or ``;`` are ignored; an
``export`` prefix is tolerated. Values may be quoted: single quotes are literal, double quotes
understand ``\\" \\\\ \\$ \\```; both may span lines. Outside quotes a backslash escapes the next
character, a trailing backslash continues the value on the next line, and trailing blanks are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hasupd.files import NotARegularFile, read_regular_file
from hasupd.ports import SpawnError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ENVIRONMENT_FILE_BYTES = 1 << 20


def load_environment_files(specs: Iterable[str]) -> dict[str, str]:
    """Return the variables of the files in order (a later file wins).

    A path starting with "-" may be missing. Raise SpawnError naming the file if a required file is
    missing or unreadable, if a file is no regular file (a FIFO, a device) or larger than
    ``MAX_ENVIRONMENT_FILE_BYTES``, and "FILE:LINE: ..." for a malformed line.
    """
    env: dict[str, str] = {}
    for spec in specs:
        optional = spec.startswith("-")
        path = spec[1:] if optional else spec
        try:
            # Read on the event loop at every start: a FIFO or /dev/zero must not hang or fill it.
            text = read_regular_file(path, MAX_ENVIRONMENT_FILE_BYTES).decode("utf-8")
        except FileNotFoundError as e:
            if optional:
                continue
            raise SpawnError(f"environment file {path} does not exist") from e
        except OSError as e:
            raise SpawnError(f"cannot read environment file {path}: {e.strerror}") from e
        except NotARegularFile as e:
            raise SpawnError(f"cannot read environment file {path}: {e}") from e
        except UnicodeDecodeError as e:
            raise SpawnError(f"environment file {path} is not UTF-8 text") from e
        env.update(parse_environment(text, path))
    return env


def parse_environment(text: str, source: str) -> dict[str, str]:
    """Return the variables in ``text``. Raise SpawnError "SOURCE:LINE: ..." for a malformed line."""
    env: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        key, eq, rest = line.partition("=")
        key = key.rstrip()
        if not eq:
            raise SpawnError(f"{source}:{lineno}: expected KEY=VALUE")
        if not _KEY.match(key):
            raise SpawnError(f"{source}:{lineno}: {key!r} is not a valid variable name")
        value, i = _value(rest.lstrip(), lines, i, source, lineno)
        env[key] = value
    return env


def _value(s: str, lines: list[str], i: int, source: str, lineno: int) -> tuple[str, int]:
    """Return the value starting at ``s`` and the index of the next unread line."""
    out: list[str] = []
    kept = 0  # out[:kept] is quoted or escaped text, which keeps its trailing blanks
    quote = ""
    pos = 0
    while True:
        if pos >= len(s):
            if not quote:
                break
            if i >= len(lines):
                raise SpawnError(f"{source}:{lineno}: unterminated {quote} quote")
            s, i = s + "\n" + lines[i], i + 1
            continue
        c = s[pos]
        pos += 1
        if c == "\\" and quote != "'":
            if pos >= len(s):  # line continuation
                if i >= len(lines):
                    break
                s, i = s + lines[i], i + 1
                continue
            nxt = s[pos]
            pos += 1
            out.append(nxt if not quote or nxt in '"\\`$' else "\\" + nxt)
            kept = len(out)
        elif quote:
            if c == quote:
                quote = ""
            else:
                out.append(c)
            kept = len(out)
        elif c in "'\"":
            quote = c
        else:
            out.append(c)
    return "".join(out[:kept]) + "".join(out[kept:]).rstrip(), i
