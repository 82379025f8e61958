"""Names and reads of the backup state files (written whole or not at all by ``hasupd.files``)."""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it is a hasupd name (``[a-z0-9][a-z0-9_.-]*``), else raise ValueError.

    Names become file names under the state dir, so "..", "/" and the like must never get through.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"invalid {what} name {name!r}")
    return name


def read_text(path: Path) -> str | None:
    """Return the content of ``path``, or None if it does not exist. Raise OSError on other errors."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
