"""Durations, sizes and signals as operators write them in systemd unit files.

Every parser takes what YAML gave (a string or a number) and returns the model's unit: float seconds,
int bytes, ``signal.Signals``. Every parser raises ``ValueError`` whose message names the bad value and
lists what is accepted, so the validator can show it as is.
"""

from __future__ import annotations

import math
import re
import signal

# systemd's time units (systemd.time(7)); they are case-sensitive: "m" is a minute, "M" a month.
_MINUTE = 60.0
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "usec": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": _MINUTE,
    "min": _MINUTE,
    "minute": _MINUTE,
    "minutes": _MINUTE,
    "h": _HOUR,
    "hr": _HOUR,
    "hour": _HOUR,
    "hours": _HOUR,
    "d": _DAY,
    "day": _DAY,
    "days": _DAY,
    "w": 7 * _DAY,
    "week": 7 * _DAY,
    "weeks": 7 * _DAY,
    "M": 30.44 * _DAY,
    "month": 30.44 * _DAY,
    "months": 30.44 * _DAY,
    "y": 365.25 * _DAY,
    "year": 365.25 * _DAY,
    "years": 365.25 * _DAY,
}
# Bounds for what has no sensible larger value: a duration up to 10 years (asyncio timers and
# datetime arithmetic stay exact far below their limits), a size up to 1E (fits a signed 64-bit number,
# as cgroup and engine limits are).
MAX_DURATION = 10 * 365.25 * _DAY
MAX_DURATION_TEXT = "10y"
MAX_SIZE = 1 << 60
MAX_SIZE_TEXT = "1E"
_MAX_DIGITS = 30  # longer numbers exceed every maximum; int() of 4300+ digits even raises
_DURATION_HELP = (
    "expected a number with a unit (us, ms, s, min, h, d, w, M, y) such as 250ms, 30s, 5min, 1h 30min"
)
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Zµ]*)\s*")

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "P": 1 << 50,
    "E": 1 << 60,
}
_SIZE_HELP = (
    "expected a number of bytes with an optional suffix K, M, G, T, P or E (powers of 1024) such as 512K"
)
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:([KMGTPEkmgtpe])(?:i?B)?|B)?\s*")


def parse_duration(value: str | float) -> float:
    """Return ``value`` in seconds.

    Accept a non-negative number (seconds) or a string of one or more ``NUMBER[UNIT]`` parts as systemd
    writes them: ``"250ms"``, ``"30s"``, ``"5m"``, ``"5min"``, ``"1h 30min"``, ``"2d"``, ``"1w"``; a part
    without a unit is seconds. Raise ValueError for anything else (negative, empty, unknown unit, infinity).
    """
    if isinstance(value, bool):
        value = str(value)  # YAML's true/false is no number
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
        if value > MAX_DURATION:
            raise ValueError(f"invalid duration {value!r}: at most {MAX_DURATION_TEXT}")
        return float(value)
    text = value.strip()
    if not text:
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
        number, unit = match.groups()
        if unit not in _DURATION_UNITS:
            raise ValueError(f"invalid duration {value!r}: unknown unit {unit!r}; {_DURATION_HELP}")
        pos = match.end()
        if not unit and pos < len(text):
            # "1.5.3s" or "30 5s": a part without a unit is only allowed last
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
        if len(number) > _MAX_DIGITS:
            raise ValueError(f"invalid duration {value!r}: at most {MAX_DURATION_TEXT}")
        total += float(number) * _DURATION_UNITS[unit]
    if total > MAX_DURATION:
        raise ValueError(f"invalid duration {value!r}: at most {MAX_DURATION_TEXT}")
    return total


def parse_size(value: str | int) -> int:
    """Return ``value`` in bytes.

    Accept a non-negative integer (bytes) or a string ``NUMBER[SUFFIX]`` where the suffix is one of
    K, M, G, T, P, E (powers of 1024, case-insensitive, optionally followed by "B" or "iB") or "B".
    A fraction is allowed with a suffix ("1.5G"); the result is rounded down to whole bytes.
    Raise ValueError for anything else, and for more than ``MAX_SIZE``.
    """
    if isinstance(value, bool):
        value = str(value)  # YAML's true/false is no number
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must be >= 0")
        if value > MAX_SIZE:
            raise ValueError(f"invalid size {value!r}: at most {MAX_SIZE_TEXT}")
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HELP}")
    number, suffix = match.group(1), (match.group(2) or "").upper()
    if not suffix and "." in number:
        raise ValueError(f"invalid size {value!r}: a size without a suffix is whole bytes")
    if len(number) > _MAX_DIGITS:
        raise ValueError(f"invalid size {value!r}: at most {MAX_SIZE_TEXT}")
    size = int(float(number) * _SIZE_UNITS[suffix]) if "." in number else int(number) * _SIZE_UNITS[suffix]
    if size > MAX_SIZE:
        raise ValueError(f"invalid size {value!r}: at most {MAX_SIZE_TEXT}")
    return size


def _signal_names() -> str:
    names = sorted(signal.Signals, key=lambda s: s.value)
    return ", ".join(s.name for s in names)


def parse_signal(value: str | int) -> signal.Signals:
    """Return the signal named or numbered by ``value``.

    Accept ``"SIGTERM"``, ``"TERM"``, ``"sigterm"``, ``"15"`` or ``15``. Raise ValueError, listing the
    known names, for anything else.
    """
    if isinstance(value, bool):
        value = str(value)  # YAML's true/false is no number
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, int) or (text.isascii() and text.isdigit()):
        number = int(text) if isinstance(text, int) or len(text) <= _MAX_DIGITS else -1
        try:
            return signal.Signals(number)
        except ValueError:
            shown = number if number >= 0 else "that"
            raise ValueError(f"invalid signal {value!r}: no signal has number {shown}") from None
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    member = signal.Signals.__members__.get(name)
    if member is None:
        raise ValueError(f"invalid signal {value!r}: expected one of {_signal_names()} or a number")
    return member
