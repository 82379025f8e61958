"""Typed reading of composed YAML nodes, each problem reported at the line:col of its node.

A converter is ``(ctx, node, path) -> value | None``: it returns the model value, or reports every
problem it finds through ``ctx`` and returns None. A present node never converts to None otherwise.
Strings are read from the scalar's source text, so ``restart: no`` is the string "no" (not YAML 1.1's
False) and ``PORT: 8080`` in an environment is "8080".
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hasupd.config.issues import ConfigIssue
from hasupd.config.quantities import parse_duration, parse_signal, parse_size

NAME_PATTERN = "[a-z0-9][a-z0-9_.-]*"
_NAME = re.compile(NAME_PATTERN)
TAG = "tag:yaml.org,2002:"
_NULL = TAG + "null"
_CONSTRUCTOR = SafeConstructor()
_UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1

Converter = Callable[["Ctx", Node, str], Any]
E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True)
class Document:
    """One config file after YAML composition.

    ``path`` is the file as issues name it; ``name`` the file name without ".yaml". ``node`` is the root
    node, or None when the file is empty or could not be read or parsed; ``parsed`` is False in the last
    two cases, whose problem is already reported.
    """

    path: str
    name: str
    node: Node | None
    parsed: bool = True


MAX_ISSUES_PER_FILE = 100


class Ctx:
    """Collects the issues of one file into a shared list; ``count`` is how many it reported.

    Only the first ``MAX_ISSUES_PER_FILE`` are kept (a file of 5,000 unknown keys needs no 5,000
    lines); ``finish()`` adds one issue that counts the rest.
    """

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = issues
        self.count = 0
        # When a dict, saw() (called by read_mapping()) adds the keys each mapping accepts, by dotted
        # path: how the tests of the config reference (hasupd.config.reference) learn every key.
        self.keys_seen: dict[str, set[str]] | None = None

    def saw(self, path: str, keys: Iterable[str]) -> None:
        """Note that the mapping at ``path`` accepts ``keys`` (read_mapping does it for every mapping; a
        converter that reads keys another way, such as a reserved name among free names, calls it too)."""
        if self.keys_seen is not None:
            self.keys_seen.setdefault(path, set()).update(keys)

    @property
    def full(self) -> bool:
        """Whether further issues are only counted (callers may skip costly messages then)."""
        return self.count >= MAX_ISSUES_PER_FILE

    def error(self, node: Node | None, key: str, message: str) -> None:
        """Report ``message`` for ``key`` at ``node``'s start (at 1:1 when there is no node)."""
        if not self.full:
            mark = node.start_mark if node is not None else None
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            # A node merged in from a drop-in names its own file ("<...>": text not read from a file).
            named = mark is not None and isinstance(mark.name, str) and not mark.name.startswith("<")
            file = mark.name if named and mark is not None else self.file
            self.issues.append(ConfigIssue(file, line, col, key, message))
        self.count += 1

    def finish(self) -> None:
        """Report how many issues were left out, if any."""
        if self.count > MAX_ISSUES_PER_FILE:
            left_out = self.count - MAX_ISSUES_PER_FILE
            message = (
                f"{left_out} more problems in this file are not shown (the first {MAX_ISSUES_PER_FILE} are)"
            )
            self.issues.append(ConfigIssue(self.file, 1, 1, "", message))


def is_name(text: str) -> bool:
    """Return whether ``text`` is a valid service, job, channel or repository name."""
    return _NAME.fullmatch(text) is not None


def join(path: str, key: str | int) -> str:
    """Return the dotted path of ``key`` below ``path`` (``path`` itself for an empty key)."""
    if key == "":
        return path
    return f"{path}.{key}" if path else str(key)


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def describe(node: Node) -> str:
    """Return what ``node`` is, for "expected X, got Y" messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kinds = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "null": "null"}
    return kinds.get(node.tag.removeprefix(TAG), "a scalar")


def mapping_items(node: Node) -> dict[str, tuple[Node, Node]]:
    """Return ``{key: (key node, value node)}`` of a mapping node ({} for anything else)."""
    if not isinstance(node, MappingNode):
        return {}
    return {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}


def child(node: Node | None, *keys: str | int) -> Node | None:
    """Return the node at ``keys`` (mapping keys or list indexes) below ``node``, or None."""
    for key in keys:
        if isinstance(key, int) and isinstance(node, SequenceNode) and 0 <= key < len(node.value):
            node = node.value[key]
        elif isinstance(key, str) and node is not None and key in mapping_items(node):
            node = mapping_items(node)[key][1]
        else:
            return None
    return node


def name_items(node: Node | None) -> list[tuple[int, str, Node]]:
    """Return ``(index, text, node)`` for the non-null scalar items of a list node."""
    if not isinstance(node, SequenceNode):
        return []
    return [
        (i, item.value, item)
        for i, item in enumerate(node.value)
        if isinstance(item, ScalarNode) and not is_null(item)
    ]


def check_reference(ctx: Ctx, node: Node | None, path: str, known: Collection[str] | None, what: str) -> None:
    """Report ``node``'s name unless it is in ``known``; skip a missing node, an unknown set (None, its
    source is broken and already reported) and a malformed name (its converter reported it)."""
    if known is None or not isinstance(node, ScalarNode) or is_null(node) or not _NAME.fullmatch(node.value):
        return
    if node.value not in known:
        import difflib  # noqa: PLC0415  (only for a config with a mistake)

        close = difflib.get_close_matches(node.value, sorted(known), n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        ctx.error(node, path, f"unknown {what} {node.value!r}{hint}")


def unknown_key_message(key: str, allowed: Iterable[str]) -> str:
    """Return "unknown key 'x'" with a hint: the closest allowed key, or the short list of allowed keys."""
    allowed = list(allowed)
    import difflib  # noqa: PLC0415  (only for a config with a mistake)

    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key {key!r}, did you mean {close[0]!r}?"
    if len(allowed) <= 8:
        return f"unknown key {key!r}; expected one of: {', '.join(allowed)}"
    return f"unknown key {key!r}"


def read_mapping(
    ctx: Ctx, node: Node, path: str, fields: Mapping[str, Converter], required: Iterable[str] = ()
) -> dict[str, Any] | None:
    """Convert the keys of mapping ``node`` with ``fields``; report unknown, non-string and missing keys.

    Return ``{key: value}`` for the keys that converted, or None (reported) when ``node`` is not a mapping.
    """
    ctx.saw(path, fields)
    if not isinstance(node, MappingNode):
        ctx.error(node, path, f"expected a mapping, got {describe(node)}")
        return None
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or is_null(key_node):
            ctx.error(key_node, path, f"expected a string key, got {describe(key_node)}")
            continue
        key = key_node.value
        convert = fields.get(key)
        if convert is None:
            message = f"unknown key {key!r}" if ctx.full else unknown_key_message(key, fields)
            ctx.error(key_node, join(path, key), message)
            continue
        value = convert(ctx, value_node, join(path, key))
        if value is not None:
            values[key] = value
    present = mapping_items(node)
    for key in required:
        if key not in present:
            ctx.error(node, join(path, key), "required key is missing")
    return values


def record(
    cls: Callable[..., Any],
    fields: Mapping[str, Converter],
    required: Iterable[str] = (),
    renames: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Converter:
    """Return a converter from a mapping to ``cls(**values)``; YAML keys in ``renames`` name other fields."""
    renames = renames or {}

    def convert(ctx: Ctx, node: Node, path: str) -> Any:
        before = ctx.count
        values = read_mapping(ctx, node, path, fields, required)
        if values is None or ctx.count != before:
            return None
        kwargs = dict(defaults or {})
        kwargs.update({renames.get(key, key): value for key, value in values.items()})
        return cls(**kwargs)

    return convert


def seq_of(item: Converter, what: str, nonempty: bool = False) -> Converter:
    """Return a converter from a list to a tuple of ``item`` values; ``what`` names the list in errors."""

    def convert(ctx: Ctx, node: Node, path: str) -> tuple[Any, ...] | None:
        if not isinstance(node, SequenceNode):
            ctx.error(node, path, f"expected {what}, got {describe(node)}")
            return None
        if nonempty and not node.value:
            ctx.error(node, path, f"expected {what}, got an empty list")
            return None
        values = [item(ctx, element, join(path, i)) for i, element in enumerate(node.value)]
        if any(value is None for value in values):
            return None
        return tuple(values)

    return convert


def to_str(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return the source text of a non-null scalar."""
    if isinstance(node, ScalarNode) and not is_null(node):
        return str(node.value)
    ctx.error(node, path, f"expected a string, got {describe(node)}")
    return None


def to_nonempty_str(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_str(ctx, node, path)
    if value is not None and not value.strip():
        ctx.error(node, path, "must not be empty")
        return None
    return value


def to_name(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a name matching ``NAME_PATTERN``."""
    value = to_str(ctx, node, path)
    if value is not None and not _NAME.fullmatch(value):
        ctx.error(node, path, f"invalid name {value!r}: names match {NAME_PATTERN}")
        return None
    return value


def to_abs_path(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_str(ctx, node, path)
    if value is not None and not value.startswith("/"):
        ctx.error(node, path, f"expected an absolute path, got {value!r}")
        return None
    return value


def _constructed(node: ScalarNode, construct: Callable[[ScalarNode], Any]) -> Any:
    """Return YAML's value of ``node``, or None when its text does not make one.

    YAML 1.1 resolves "0x50", "0b101", "1:30" (base 60) and "1_000" as integers, and an explicit tag
    ("!!int abc", "!!float x", "!!bool maybe") makes any text claim a type it may not have.
    """
    try:
        return construct(node)
    except (ValueError, KeyError):  # int()/float() of bad text; an unknown boolean word
        return None


def to_bool(ctx: Ctx, node: Node, path: str) -> bool | None:
    if isinstance(node, ScalarNode) and node.tag == TAG + "bool":
        value = _constructed(node, _CONSTRUCTOR.construct_yaml_bool)
        if value is not None:
            return bool(value)
        ctx.error(node, path, f"expected true or false, got {node.value!r}")
        return None
    ctx.error(node, path, f"expected true or false, got {describe(node)}")
    return None


def to_int(minimum: int = 1, maximum: int = 1_000_000) -> Converter:
    """Return a converter to an integer in ``minimum..maximum`` (every count has a bound)."""
    wanted = f"an integer from {minimum} to {maximum}"

    def convert(ctx: Ctx, node: Node, path: str) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == TAG + "int"):
            ctx.error(node, path, f"expected {wanted}, got {describe(node)}")
            return None
        value = _constructed(node, _CONSTRUCTOR.construct_yaml_int)
        if value is None:
            ctx.error(node, path, f"expected {wanted}, got {node.value!r}")
            return None
        if not minimum <= value <= maximum:
            shown = value if len(node.value) <= 30 else f"{node.value[:20]}..."
            ctx.error(node, path, f"expected {wanted}, got {shown}")
            return None
        return int(value)

    return convert


def to_positive_number(maximum: float) -> Converter:
    """Return a converter to a number in (0, ``maximum``]."""
    wanted = f"a number > 0 and <= {maximum:g}"

    def convert(ctx: Ctx, node: Node, path: str) -> float | None:
        if not (isinstance(node, ScalarNode) and node.tag in (TAG + "int", TAG + "float")):
            ctx.error(node, path, f"expected {wanted}, got {describe(node)}")
            return None
        construct = (
            _CONSTRUCTOR.construct_yaml_int if node.tag == TAG + "int" else _CONSTRUCTOR.construct_yaml_float
        )
        value = _constructed(node, construct)
        if value is None:
            ctx.error(node, path, f"expected {wanted}, got {node.value!r}")
            return None
        if isinstance(value, int) and value > maximum:  # float() of a huge int raises OverflowError
            value = math.inf
        value = float(value)
        if math.isfinite(value) and 0 < value <= maximum:
            return value
        shown = node.value if len(node.value) <= 30 else f"{node.value[:20]}..."
        ctx.error(node, path, f"expected {wanted}, got {shown}")
        return None

    return convert


def to_duration(positive: bool = False) -> Converter:
    """Return a converter to float seconds (see ``parse_duration``); ``positive`` rejects 0."""

    def convert(ctx: Ctx, node: Node, path: str) -> float | None:
        if not isinstance(node, ScalarNode) or is_null(node):
            ctx.error(node, path, f"expected a duration such as 30s, got {describe(node)}")
            return None
        try:
            value = parse_duration(node.value)
        except ValueError as exc:
            ctx.error(node, path, str(exc))
            return None
        if positive and value <= 0:
            ctx.error(node, path, f"invalid duration {node.value!r}: must be greater than 0")
            return None
        return value

    return convert


def to_size(ctx: Ctx, node: Node, path: str) -> int | None:
    """Return a size > 0 in bytes (see ``parse_size``)."""
    if not isinstance(node, ScalarNode) or is_null(node):
        ctx.error(node, path, f"expected a size such as 512M, got {describe(node)}")
        return None
    try:
        value = parse_size(node.value)
    except ValueError as exc:
        ctx.error(node, path, str(exc))
        return None
    if value <= 0:
        ctx.error(node, path, f"invalid size {node.value!r}: must be greater than 0")
        return None
    return value


def to_signal(ctx: Ctx, node: Node, path: str) -> Any:
    """Return a ``signal.Signals`` (see ``parse_signal``)."""
    if not isinstance(node, ScalarNode) or is_null(node):
        ctx.error(node, path, f"expected a signal such as SIGTERM, got {describe(node)}")
        return None
    try:
        return parse_signal(node.value)
    except ValueError as exc:
        ctx.error(node, path, str(exc))
        return None


def to_enum(enum: type[E]) -> Converter:
    """Return a converter to a member of ``enum``, by value."""

    def convert(ctx: Ctx, node: Node, path: str) -> E | None:
        value = to_str(ctx, node, path)
        if value is None:
            return None
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            ctx.error(node, path, f"invalid value {value!r}: expected one of {allowed}")
            return None

    return convert


def to_argv(ctx: Ctx, node: Node, path: str) -> tuple[str, ...] | None:
    """Return an argv from a list of strings, or from one string split as a shell would (no shell runs)."""
    if isinstance(node, ScalarNode) and not is_null(node):
        try:
            argv: tuple[str, ...] | None = tuple(shlex.split(node.value))
        except ValueError as exc:
            ctx.error(node, path, f"cannot split the command line: {exc}")
            return None
    else:
        argv = seq_of(to_str, "a list of strings or a command line")(ctx, node, path)
    if argv is not None and (not argv or not argv[0]):
        ctx.error(node, path, "the command is empty")
        return None
    return argv


def _is_bracketed_ipv6(host: str) -> bool:
    if not (host.startswith("[") and host.endswith("]")):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def listen_problem(text: str, unix: bool) -> str | None:
    """Return why ``text`` is not "host:port", "[v6]:port" (or, with ``unix``, an absolute path), or None."""
    forms = (
        '"host:port", "[v6]:port" or an absolute unix socket path' if unix else '"host:port" or "[v6]:port"'
    )
    if text.startswith("/") and unix:
        if len(text.encode()) > _UNIX_PATH_MAX:
            return f"unix socket path is longer than {_UNIX_PATH_MAX} bytes"
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or any(c.isspace() for c in host):
        return f"invalid address {text!r}: expected {forms}"
    if host.startswith("[") or host.endswith("]"):
        if not _is_bracketed_ipv6(host):
            return f"invalid address {text!r}: {host} is not an IPv6 address in brackets"
    elif ":" in host:
        return f"invalid address {text!r}: write an IPv6 address in brackets, as in [::1]:8080"
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 1 <= int(port) <= 65535:
        return f"invalid port {port!r} in {text!r}: expected 1 to 65535"
    return None


def to_listen(unix: bool) -> Converter:
    """Return a converter to a checked listen address (see ``listen_problem``)."""

    def convert(ctx: Ctx, node: Node, path: str) -> str | None:
        value = to_str(ctx, node, path)
        problem = None if value is None else listen_problem(value, unix)
        if problem is not None:
            ctx.error(node, path, problem)
            return None
        return value

    return convert
