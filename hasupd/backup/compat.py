"""What differs between restic releases: feature gates, the exit-code table, error classification.

Every gate names the release that brought it and where that was read:

* ``--from-repo`` / ``RESTIC_FROM_REPOSITORY`` / ``RESTIC_FROM_PASSWORD_FILE`` for ``init`` and ``copy``
  replaced ``--repo2`` in 0.14.0 (CHANGELOG 0.14.0, Chg #3742); ``init --copy-chunker-params`` is in 0.14's
  ``init --help``. 0.14 is the floor hasupd supports, so neither needs a gate.
* ``--retry-lock``: 0.16.0 (CHANGELOG 0.16.0, Enh #719).
* ``--keep-* -1`` forgets snapshots on 0.14/0.15; negative values are refused from 0.16.0 (changelog
  0.16.0/issue-2565). hasupd validates every Keep value itself, whatever the version.
* ``restore --json``: 0.16.0 (changelog 0.16.0/issue-426: "JSON output is now also supported").
* Exit codes 10 (no repository) and 11 (lock failed): 0.17.0; 12 (wrong password): 0.17.1
  (doc/075_scripting.rst exit-code table; CHANGELOG 0.17.1, Enh #4959). Before that every error is 1.
* ``forget`` keeps the oldest snapshot of a group while a bucket has counts left: 0.17.0 (the sentence is
  in the 0.17.3 ``forget`` man page and absent from 0.16.4's; internal/restic/snapshot_policy.go).
* ``backup --stdin-from-command`` (restic runs the command and makes no snapshot when it exits non-zero
  or dies): 0.17.0 (CHANGELOG 0.17.0, Enh #4251). Seen here: 0.18.0 says "command failed: signal:
  killed" and exits 1 without a snapshot. ``--stdin-filename`` with a "/" in it fails on 0.18.0 ("open
  /dir: no such file or directory"): hasupd's names for streamed dumps have none.
* Fatal errors as a JSON ``exit_error`` line on stderr under ``--json``: 0.18.0 (Enh #4948).
* The backup summary's ``snapshot_id`` is the short id on 0.14 (seen on Debian 12's 0.14.0) and the full id
  on 0.18; the caller resolves a short one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

MIN_VERSION = (0, 14, 0)

_VERSION = re.compile(r"restic (\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int]:
    """Return (major, minor, patch) from ``restic version`` output. Raise ValueError if there is none."""
    m = _VERSION.search(text)
    if m is None:
        raise ValueError(f"cannot find a restic version in {text.strip()[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class Features:
    """What one restic binary can do, derived from its version."""

    version: tuple[int, int, int]

    @property
    def retry_lock(self) -> bool:
        return self.version >= (0, 16, 0)

    @property
    def restore_json(self) -> bool:
        return self.version >= (0, 16, 0)

    @property
    def exit_codes_10_11(self) -> bool:
        return self.version >= (0, 17, 0)

    @property
    def exit_code_12(self) -> bool:
        return self.version >= (0, 17, 1)

    @property
    def forget_keeps_oldest(self) -> bool:
        return self.version >= (0, 17, 0)

    @property
    def stdin_from_command(self) -> bool:
        return self.version >= (0, 17, 0)

    @property
    def json_exit_errors(self) -> bool:
        return self.version >= (0, 18, 0)


class ErrorKind(StrEnum):
    FATAL = "fatal"
    NO_REPOSITORY = "no-repository"
    LOCKED = "locked"
    WRONG_PASSWORD = "wrong-password"
    INTERRUPTED = "interrupted"
    PARTIAL = "partial"  # backup: some source files were not read; the snapshot exists
    TIMEOUT = "timeout"  # hasupd stopped restic (SIGINT, then SIGKILL) after its time ran out
    UNKNOWN = "unknown"  # an exit code this version of restic does not document: a failure


class ResticError(Exception):
    """restic failed. ``kind`` is what went wrong, ``code`` the exit code (None: did not exit normally
    or was never started), ``stderr_tail`` the end of what it said (JSON messages unwrapped)."""

    def __init__(self, kind: ErrorKind, code: int | None, stderr_tail: str, command: str = "") -> None:
        self.kind = kind
        self.code = code
        self.stderr_tail = stderr_tail
        self.command = command
        where = f"restic {command}" if command else "restic"
        status = f"exit code {code}" if code is not None else "no exit code"
        super().__init__(f"{where}: {kind} ({status}): {stderr_tail}")


def exit_code_table(features: Features, *, backup: bool) -> dict[int, ErrorKind | None]:
    """Return the documented exit codes of this version: None means success."""
    table: dict[int, ErrorKind | None] = {0: None, 1: ErrorKind.FATAL, 2: ErrorKind.FATAL}
    table[130] = ErrorKind.INTERRUPTED
    if backup:
        table[3] = ErrorKind.PARTIAL
    if features.exit_codes_10_11:
        table[10] = ErrorKind.NO_REPOSITORY
        table[11] = ErrorKind.LOCKED
    if features.exit_code_12:
        table[12] = ErrorKind.WRONG_PASSWORD
    return table


# Before 0.17 everything is exit code 1 and only the text tells; 0.17.0 still says 1 for a bad password.
_LOCKED = ("repository is already locked", "unable to create lock in backend")
_WRONG_PASSWORD = ("wrong password or no key found",)
_NO_REPO_HINT = "Is there a repository at the following location?"
# The hint is also printed when the server cannot be reached at all: only these say "absent".
_NO_REPO_CAUSE = ("does not exist", "no such file or directory", "404 not found")


def classify_text(stderr: str) -> ErrorKind:
    """Return the kind of a restic failure that exited 1, from what it printed."""
    lower = stderr.lower()
    if any(s in lower for s in _LOCKED):
        return ErrorKind.LOCKED
    if any(s in lower for s in _WRONG_PASSWORD):
        return ErrorKind.WRONG_PASSWORD
    if _NO_REPO_HINT.lower() in lower and any(s in lower for s in _NO_REPO_CAUSE):
        return ErrorKind.NO_REPOSITORY
    return ErrorKind.FATAL


def classify(code: int, stderr: str, features: Features, *, backup: bool = False) -> ErrorKind | None:
    """Return None if ``code`` means success, else the kind of failure (UNKNOWN for undocumented codes)."""
    table = exit_code_table(features, backup=backup)
    if code not in table:
        return ErrorKind.UNKNOWN
    kind = table[code]
    if kind is ErrorKind.FATAL and code == 1:
        return classify_text(stderr)
    return kind


def readable_stderr(stderr: bytes, limit: int = 2000) -> str:
    """Return the end of restic's stderr as text, with JSON messages (0.18 ``exit_error``, backup
    ``error`` lines) turned into their message text."""
    lines: list[str] = []
    for raw in stderr.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict):
                line = json_error_text(msg) or line
        lines.append(line)
    return "\n".join(lines)[-limit:]


def json_error_text(msg: Mapping[str, object]) -> str:
    """Return the text of a restic JSON error/exit_error message ("" if it is neither)."""
    kind = msg.get("message_type")
    if kind == "exit_error":
        return str(msg.get("message", ""))
    if kind != "error":
        return ""
    err = msg.get("error")
    item = str(msg.get("item", ""))
    if isinstance(err, dict):
        if "message" in err:  # 0.17+
            return str(err["message"])
        # 0.14 marshals Go's *os.PathError: {"Op": "open", "Path": "...", "Err": 13}
        errno = err.get("Err")
        reason = os.strerror(errno) if isinstance(errno, int) else str(errno)
        return f"{item}: {err.get('Op', 'access')} {err.get('Path', '')}: {reason}".strip()
    return f"{item}: {err}"
