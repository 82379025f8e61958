"""Template filters: durations, ages, sizes and times as people read them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

NONE = "\N{EN DASH}"  # what a table cell shows for "nothing"


def duration(seconds: float | None) -> str:
    """Return ``seconds`` as "2d 3h", "5m 10s", "12s" or "200ms" (``NONE`` for None)."""
    if seconds is None:
        return NONE
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"  # probe intervals, restart delays
    s = int(max(seconds, 0))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit} {rest}{sub}" if rest else f"{s // size}{unit}"
    return f"{s}s"


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def when(value: Any) -> str:
    """Return a time (Unix time or ISO text) as local "YYYY-MM-DD HH:MM:SS" (``NONE`` when absent)."""
    ts = _timestamp(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts is not None else NONE


def precise(value: Any) -> str:
    """Return a time as local "YYYY-MM-DD HH:MM:SS.mmm", for events that follow each other closely."""
    ts = _timestamp(value)
    if ts is None:
        return NONE
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def ago(value: Any) -> str:
    """Return how long ago a time (Unix time or ISO text) was: "5m 10s ago"."""
    ts = _timestamp(value)
    return f"{duration(time.time() - ts)} ago" if ts is not None else "never"


def size(value: Any) -> str:
    """Return a byte count as "12.3 MiB"."""
    if not isinstance(value, int | float):
        return NONE
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


GIST_MAX = 160  # characters of a sample shown in a table cell


def gist(text: Any, kind: Any = None) -> str:
    """Return one line of an error's sample for a table cell: a Python traceback's last line (its
    exception), otherwise the first; cut at ``GIST_MAX`` characters with "…"."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not lines:
        return NONE
    line = lines[-1] if kind == "python" else lines[0]
    return line if len(line) <= GIST_MAX else line[: GIST_MAX - 1] + "\N{HORIZONTAL ELLIPSIS}"


FILTERS: dict[str, Callable[..., str]] = {
    "duration": duration,
    "when": when,
    "precise": precise,
    "ago": ago,
    "size": size,
    "gist": gist,
}
