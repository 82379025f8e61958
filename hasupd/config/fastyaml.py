"""Compose a config file from libyaml's events: the node tree PyYAML's pure-Python loader gives, faster.

PyYAML's pure-Python scanner and parser are most of the time ``hasupd`` spends reading a config (issue
23). Here libyaml (PyYAML's C parser, ``CParser``) scans and parses, and PyYAML's own Python composer and
resolver build the nodes from its events, so nesting and node limits count exactly as in
``load._BoundedLoader`` and every mark carries the file name (``CParser`` takes it from the stream's
``name``).

libyaml and the pure parser do not accept the same language, nor mark it the same way: tabs as
separators, a BOM or a NEL / LS / PS line break anywhere, a comment right after a block scalar header
(``|#``), a ``?`` or ``:`` starting or inside a plain scalar in a flow collection and the empty values of
flow collections, tags (the two scan them differently). ``compose`` raises ``Unsure`` for every such
document and for *any* error, so that the pure loader reads it and reports its own error, word for word.
What remains differs in two ways that are mended here: libyaml puts the end of a file that does not end
with a line break at the start of a line after it (pure: at the end of the last line), and marks the
sequence of a block mapping's value at its key's indentation (``key:\\n- a``) as block style, where pure
gives no style. tests/unit/config/test_fastyaml.py compares both loaders on a corpus and random text.
"""

from __future__ import annotations

import re
from typing import Any

from yaml.composer import Composer
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:
    from yaml._yaml import CParser, Mark
except ImportError:  # PyYAML built without libyaml: the pure loader reads everything
    CParser = None  # type: ignore[assignment,misc]

__all__ = ["ENABLED", "Unsure", "compose"]

# False: every file is left to the pure loader (tests compare both paths).
ENABLED = CParser is not None

# Bytes that libyaml reads otherwise than the pure scanner (see the module's docstring).
# A directive (a line starting with %) too: libyaml takes "%YAML 1.1#", the pure scanner does not.
_UNSURE_BYTES = re.compile(rb"[\t\x00]|\xef\xbb\xbf|\xc2\x85|\xe2\x80[\xa8\xa9]|[|>][-+0-9]*#|(?:^|[\r\n])%")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Unsure(Exception):
    """The fast path cannot vouch for giving what the pure loader gives (or failed): use that one."""


class _Stream:
    """What CParser reads ``data`` from: a stream whose ``name`` every mark carries."""

    __slots__ = ("_data", "name")

    def __init__(self, data: bytes, name: str) -> None:
        self._data = data
        self.name = name

    def read(self, size: int = -1, /) -> bytes:
        data, self._data = self._data, b""  # CParser keeps what exceeds ``size`` for its next reads
        return data


if CParser is not None:

    class _Loader(Composer, CParser, Resolver):
        """Python's composer and resolver (first in the MRO, before CParser's own) on libyaml's events."""

        def __init__(self, data: bytes, name: str, max_depth: int, max_nodes: int) -> None:
            CParser.__init__(self, _Stream(data, name))
            Composer.__init__(self)
            Resolver.__init__(self)
            self._data = data
            self._text: str | None = None
            self._max_depth = max_depth
            self._max_nodes = max_nodes
            self._depth = 0
            self._nodes = 0
            self._flow = 0  # flow collections open around the current node
            if self.yaml_path_resolvers:  # none in PyYAML's Resolver: descend/ascend_resolver do nothing
                raise Unsure

        def compose_node(self, parent: Node | None, index: int) -> Node | None:
            """Composer.compose_node, the node limits of load._BoundedLoader counted the same way."""
            self._depth += 1
            self._nodes += 1
            try:
                if self._depth > self._max_depth or self._nodes > self._max_nodes:
                    raise Unsure  # the pure loader reports where
                event: Any = self.peek_event()
                kind = type(event)
                if kind is AliasEvent:
                    self.get_event()
                    if event.anchor not in self.anchors:
                        raise Unsure
                    return self.anchors[event.anchor]
                if event.tag is not None or (event.anchor is not None and event.anchor in self.anchors):
                    raise Unsure
                if kind is ScalarEvent:
                    return self._scalar(event)
                if kind is SequenceStartEvent:
                    return self._sequence(event)
                if kind is MappingStartEvent:
                    return self._mapping(event)
                raise Unsure  # no node where the pure composer expects one
            finally:
                self._depth -= 1

        def _scalar(self, event: Any) -> ScalarNode:
            self.get_event()
            value: str = event.value
            if self._flow and event.style == "" and (not value or "?" in value or value[0] == ":"):
                raise Unsure
            tag = self.resolve(ScalarNode, value, event.implicit)  # type: ignore[no-untyped-call]
            # libyaml gives a plain scalar the style "", pure None
            node = ScalarNode(tag, value, event.start_mark, event.end_mark, style=event.style or None)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            return node

        def _sequence(self, event: Any) -> SequenceNode:
            self.get_event()
            tag = self.resolve(SequenceNode, None, event.implicit)  # type: ignore[no-untyped-call]
            # A sequence at its key's indentation (key:\n- a) has no style in pure: libyaml's start
            # event ends after its first "-"; a block sequence's start event is empty, before it.
            style = event.flow_style
            if style is False and self._char_before(event.end_mark.index) == "-":
                style = None
            node = SequenceNode(tag, [], event.start_mark, None, flow_style=style)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            self._flow += style is True
            index = 0
            while not self.check_event(SequenceEndEvent):
                node.value.append(self.compose_node(node, index))
                index += 1
            self._flow -= style is True
            node.end_mark = self.get_event().end_mark  # type: ignore[union-attr]
            return node

        def _mapping(self, event: Any) -> MappingNode:
            self.get_event()
            tag = self.resolve(MappingNode, None, event.implicit)  # type: ignore[no-untyped-call]
            node = MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if event.anchor is not None:
                self.anchors[event.anchor] = node
            self._flow += event.flow_style is True
            while not self.check_event(MappingEndEvent):
                key = self.compose_node(node, None)  # type: ignore[arg-type]
                node.value.append((key, self.compose_node(node, key)))  # type: ignore[arg-type]
            self._flow -= event.flow_style is True
            node.end_mark = self.get_event().end_mark  # type: ignore[union-attr]
            return node

        def _char_before(self, index: int) -> str:
            """Return the character before libyaml's character ``index``."""
            if self._text is None:
                self._text = self._data.decode("utf-8", "replace")
            return self._text[index - 1 : index] if index > 0 else ""

else:  # pragma: no cover - PyYAML without libyaml
    _Loader = None  # type: ignore[assignment,misc]


def compose(data: bytes, name: str, max_depth: int, max_nodes: int) -> Node | None:
    """Return the root node (None for an empty document) of the YAML file ``data`` named ``name``, as
    ``load._BoundedLoader`` composes it. Raise Unsure if that cannot be vouched for: libyaml is missing,
    ``data`` holds what libyaml reads otherwise, is not a valid document or goes beyond the limits."""
    if not ENABLED or _Loader is None or data[:2] in _UTF16_BOMS or _UNSURE_BYTES.search(data):
        raise Unsure
    loader = _Loader(data, name, max_depth, max_nodes)
    try:
        node: Node | None = loader.get_single_node()
    except Exception as exc:
        raise Unsure from exc
    finally:
        loader.dispose()
    if node is not None and data[-1:] not in (b"\n", b"\r"):
        _mend_end_of_file(node, data)
    return node


def _mend_end_of_file(root: Node, data: bytes) -> None:
    """Move the marks libyaml puts at the start of the line after a last line without a line break to
    the end of that line, where the pure scanner puts them. Only the nodes that end the file (the
    last key and value of each last collection) can have such marks."""
    lines = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    tail = data[max(data.rfind(b"\n"), data.rfind(b"\r")) + 1 :]
    column = len(tail.decode("utf-8", "replace"))
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for attr in ("start_mark", "end_mark"):
            mark = getattr(node, attr)
            if mark.line == lines + 1 and mark.column == 0:
                setattr(node, attr, Mark(mark.name, mark.index, lines, column, None, None))
        if isinstance(node, SequenceNode) and node.value:
            todo.append(node.value[-1])
        elif isinstance(node, MappingNode) and node.value:
            todo.extend(node.value[-1])
