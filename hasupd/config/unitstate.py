"""What ``hasupctl enable/disable/mask/unmask`` set: kept in ``STATE_DIR/units.json``.

A file on disk, written whole or not at all: it survives a restart of hasupd, a re-exec and a reboot.

- enabled (the default of every service in services.d): started at boot and by a reload that adds it;
- disabled: not started at boot or by a reload, but ``hasupctl start`` starts it;
- masked: cannot be started at all (neither by hand nor by its schedule) until unmasked;
- a template instance NAME@INSTANCE exists while it is enabled here (or has its own file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from hasupd.config.nodes import is_name
from hasupd.files import atomic_write_text

FILE_NAME = "units.json"
_KEYS = ("disabled", "masked", "instances")
# A unit name becomes file names: NAME.service (its cgroup), NAME.yaml, NAME.d, NAME.last (its timer
# stamp), NAME.log.1; one name of a folder holds at most 255 bytes (names are ASCII: one byte each).
MAX_UNIT_NAME = 255 - len(".service")


def is_unit_name(text: str) -> bool:
    """Return whether ``text`` names a service: NAME, or NAME@INSTANCE (a template instance)."""
    base, at, instance = text.partition("@")
    return is_name(base) and (not at or is_name(instance))


def unit_name_problem(text: str) -> str | None:
    """Return why ``text`` cannot name a unit (shown with the name shortened), or None if it can."""
    if len(text) > MAX_UNIT_NAME:
        return f"{text[:40]}... ({len(text)} characters, longer than {MAX_UNIT_NAME})"
    if not is_unit_name(text):
        return text
    return None


class UnitFileState(StrEnum):
    """What ``hasupctl is-enabled`` prints (systemctl's words)."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    MASKED = "masked"


class UnreadableState(Exception):
    """units.json exists but is not what hasupd writes; ``str()`` says why."""


@dataclass
class UnitStates:
    """The persistent enable/disable/mask marks of one state dir."""

    path: Path
    disabled: set[str] = field(default_factory=set)
    masked: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)  # enabled template instances

    @classmethod
    def load(cls, state_dir: str | Path) -> UnitStates:
        """Return the marks of ``state_dir`` (none when there is no file yet).

        Raise UnreadableState if the file cannot be read or parsed: guessing would start services an
        operator disabled, or refuse ones they unmasked.
        """
        path = Path(state_dir) / FILE_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as error:
            raise UnreadableState(f"{path}: {error.strerror or error}") from None
        try:
            data = json.loads(raw)  # bytes that are not UTF-8 too (UnicodeDecodeError is a ValueError)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            raise UnreadableState(f"{path}: not JSON: {str(error)[:200]}") from None
        parts = {key: data.get(key, []) for key in _KEYS} if isinstance(data, dict) else {}
        if not parts or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in parts.values()
        ):
            raise UnreadableState(f"{path}: not an object of lists of names ({', '.join(_KEYS)})")
        # A name hasupd would not write (hand-edited) is reported here, at the file it is in: as an
        # instance it would otherwise read as an error of the template's file, and hasupd not start.
        bad = sorted({p for v in parts.values() for n in v if (p := unit_name_problem(n)) is not None})
        bad += sorted(n for n in parts["instances"] if "@" not in n and is_unit_name(n))
        if bad:
            raise UnreadableState(f"{path}: not a service or template instance name: {', '.join(bad)}")
        return cls(path, set(parts["disabled"]), set(parts["masked"]), set(parts["instances"]))

    def save(self) -> None:
        """Write the marks atomically and durably. Raise OSError if the state dir is unwritable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "disabled": sorted(self.disabled),
            "masked": sorted(self.masked),
            "instances": sorted(self.instances),
        }
        atomic_write_text(self.path, json.dumps(body, indent=1) + "\n")

    def state(self, name: str) -> UnitFileState:
        """Return the state of service ``name`` (masked wins over disabled)."""
        if name in self.masked:
            return UnitFileState.MASKED
        if name in self.disabled:
            return UnitFileState.DISABLED
        return UnitFileState.ENABLED

    def starts_at_boot(self, name: str) -> bool:
        """Return whether ``name`` is started at boot and by a reload that adds it."""
        return name not in self.masked and name not in self.disabled
