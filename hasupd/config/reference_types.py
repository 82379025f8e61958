"""The vocabulary of the configuration reference: value types and one documented key.

A ``Type`` says how a value is written, as the man pages show it and as JSON Schema checks it; a
``Key`` is one entry of the reference (``hasupd.config.reference``). Nothing here reads a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from hasupd.config.nodes import NAME_PATTERN


class Shape(Enum):
    """What a key holds: a plain value, a mapping of documented keys, a list of such mappings, or a
    mapping of free names (channels, repositories) to such mappings."""

    VALUE = "value"
    MAPPING = "mapping"
    LIST_OF_MAPPINGS = "list of mappings"
    NAMED_MAPPINGS = "named mappings"


@dataclass(frozen=True)
class Type:
    """How a value is written: ``text`` for people, ``schema`` (a JSON Schema fragment) for editors.

    ``alternatives`` are JSON Schema fragments a list item (LIST_OF_MAPPINGS) or a value may also be,
    such as the string ``rollback_config`` beside ``{exec: ...}`` in ``on_failure``.
    """

    text: str
    schema: dict[str, Any] = field(default_factory=dict)
    shape: Shape = Shape.VALUE
    alternatives: tuple[dict[str, Any], ...] = ()


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Key:
    """One documented key.

    ``path`` is dotted from the file's top: ``NAME`` stands for a free name (``alerts.NAME.coalesce_sec``)
    and ``[]`` for the items of a list (``health[].interval_sec``). ``default`` is a YAML value that means
    the same as leaving the key out (a test proves it), UNSET when leaving it out means something no
    value says (then ``default_text`` tells what). ``example`` is a small valid value of a mapping key,
    used to test the defaults of the keys below it.
    """

    path: str
    type: Type
    meaning: str
    default: Any = UNSET
    default_text: str | None = None
    required: bool = False
    example: Any = UNSET

    @property
    def parent(self) -> str:
        """Return the path of the mapping this key is in ("" at the top of the file)."""
        head, _, _ = self.path.rpartition(".")
        return head

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    def shown_default(self) -> str | None:
        """Return the default as the man page writes it, or None when there is none."""
        if self.default_text is not None:
            return self.default_text
        if self.default is UNSET:
            return None
        if self.default == "":
            return '""'
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, list | tuple):
            return "[" + ", ".join(str(item) for item in self.default) + "]"
        return str(self.default)


# --------------------------------------------------------------------------- the types

_SCALAR = {"type": ["string", "number", "boolean"]}  # a scalar is read as the text it is written with

STRING = Type("string", _SCALAR)
TEXT = Type("non-empty string", _SCALAR)
PATH = Type("absolute path", {"type": "string", "pattern": "^/"})
NAME = Type("name", {"type": "string", "pattern": f"^{NAME_PATTERN}$"})
BOOL = Type("boolean", {"type": "boolean"})
DURATION = Type("duration (250ms, 30s, 5m, 1h, 2d)", {"type": ["string", "number"]})
SIZE = Type("size (512K, 64M, 2G)", {"type": ["string", "integer"]})
SIGNAL = Type("signal name (SIGTERM, TERM) or number", {"type": ["string", "integer"]})
ARGV = Type(
    "command: a list of strings, or one string split as a shell would (no shell runs)",
    {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": _SCALAR, "minItems": 1}]},
)
LISTEN = Type('address "host:port" or "[v6]:port"', {"type": "string"})
LISTEN_OR_UNIX = Type('address "host:port", "[v6]:port" or an absolute unix socket path', {"type": "string"})
URL = Type("http:// or https:// URL", {"type": "string", "pattern": "^https?://"})
EMAIL = Type('email address ("ops@example.org" or "Ops <ops@example.org>")', {"type": "string"})
SCHEDULE = Type(
    "schedule: @hourly, @daily, @weekly, @monthly, @yearly or a cron expression of 5 fields",
    {"type": "string"},
)
ENVIRONMENT = Type(
    "mapping of variable names to strings",
    {
        "type": "object",
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "additionalProperties": _SCALAR,
    },
)
MAPPING = Type("mapping", shape=Shape.MAPPING)


def integer(minimum: int, maximum: int) -> Type:
    return Type(
        f"integer from {minimum} to {maximum}", {"type": "integer", "minimum": minimum, "maximum": maximum}
    )


def number(maximum: float) -> Type:
    return Type(
        f"number > 0 and <= {maximum:g}", {"type": "number", "exclusiveMinimum": 0, "maximum": maximum}
    )


def enum(values: type[StrEnum]) -> Type:
    choices = [member.value for member in values]
    return Type("one of " + ", ".join(choices), {"enum": choices})


def list_of(item: Type, text: str | None = None, nonempty: bool = False) -> Type:
    schema: dict[str, Any] = {"type": "array", "items": item.schema}
    if nonempty:
        schema["minItems"] = 1
    return Type(text or f"list of {item.text}s", schema)


def list_of_mappings(text: str, *alternatives: dict[str, Any]) -> Type:
    return Type(text, shape=Shape.LIST_OF_MAPPINGS, alternatives=alternatives)


def named_mappings(text: str) -> Type:
    return Type(text, shape=Shape.NAMED_MAPPINGS)
