"""Read a config dir: YAML files composed into nodes that keep their line:col, then validated.

Layout of CONFIG_DIR: ``hasupd.yaml`` (optional), ``services.d/NAME.yaml`` (one service each) and
``backups.d/NAME.yaml`` (one backup job each). Only files ending in ".yaml" and not starting with "."
are read, so "web.yaml.example", "web.yaml~" and ".web.yaml.swp" are ignored.

Reading is bounded, so that no file can hang, exhaust or crash the daemon that reloads it: a config
file must be a regular file (after symlinks; a FIFO or a device is refused without blocking) of at most
``MAX_FILE_BYTES``, nested at most ``MAX_DEPTH`` levels, of at most ``MAX_NODES`` YAML nodes. Only a
part of the layout that does not exist is taken as empty; one that cannot be read (a folder that is a
file, a symlink loop, no permission) is an error, never "no services".
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from hasupd.config import fastyaml
from hasupd.config.issues import ConfigError, ConfigIssue
from hasupd.config.layout import compose_service, find_services
from hasupd.config.model import Config, DaemonConfig
from hasupd.config.nodes import Ctx, Document, join
from hasupd.config.validate import build_config
from hasupd.config.validate_daemon import validate_daemon
from hasupd.files import NotARegularFile, file_kind, read_regular_file

__all__ = ["ConfigError", "ConfigIssue", "load_config"]

DAEMON_FILE = "hasupd.yaml"
SERVICES_DIR = "services.d"
BACKUPS_DIR = "backups.d"
_SUFFIX = ".yaml"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Far above any real config file (the shipped ones are < 4 KiB and < 200 nodes), low enough that the
# pure-Python YAML parser is done with any one file in well under a second.
MAX_FILE_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_NODES = 10_000
_BAD_TEXT = re.compile("[\0\ud800-\udfff]")  # what no OS interface takes (see _KeyChecker._check_text)


class _LimitError(ComposerError):
    """A document beyond ``MAX_DEPTH`` or ``MAX_NODES``; raised while composing, at the node's mark."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose (recursive) composer stops at ``MAX_DEPTH`` levels and ``MAX_NODES``
    nodes, with a located error instead of a RecursionError or minutes of work."""

    def __init__(self, stream: bytes, name: str) -> None:
        super().__init__(stream)
        # Every mark (so every node) carries its file: merged drop-ins report errors at their own file.
        self.name = name
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _LimitError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            if self._nodes > MAX_NODES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _LimitError(None, None, f"more than {MAX_NODES} YAML nodes in one file", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _issue_at(path: str, mark: yaml.Mark | None, message: str) -> ConfigIssue:
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return ConfigIssue(path, line, col, "", message)


def _syntax_issue(path: str, exc: yaml.YAMLError) -> ConfigIssue:
    """Return the issue for a YAML syntax error, at the problem's line:col."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return _issue_at(path, None, f"YAML syntax error: {exc}")
    message = f"YAML syntax error: {exc.problem or exc.context}"
    if exc.problem and exc.context:
        where = (
            f" started at {exc.context_mark.line + 1}:{exc.context_mark.column + 1}"
            if exc.context_mark
            else ""
        )
        message += f" ({exc.context}{where})"
    return _issue_at(path, exc.problem_mark or exc.context_mark, message)


def _reader_issue(path: str, exc: ReaderError, data: bytes) -> ConfigIssue:
    """Return the issue for bytes that are not text YAML accepts, at their line:col."""
    if exc.encoding == "unicode":  # a control character in decoded text; position counts characters
        before = data.decode("utf-8", "replace")[: exc.position]
        message = f"YAML syntax error: character #x{exc.character:04x} is not allowed"
    else:  # undecodable bytes; position counts bytes
        before = data[: exc.position].decode("utf-8", "replace")
        message = f"not valid {exc.encoding} text: byte #x{exc.character:02x}: {exc.reason}"
    line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
    return ConfigIssue(path, line, col, "", message)


class _KeyChecker:
    """Rejects duplicate mapping keys (PyYAML keeps the last one silently) and resolves merge keys."""

    def __init__(self, path: str, issues: list[ConfigIssue]) -> None:
        self.path = path
        self.issues = issues
        self.seen: set[int] = set()  # node ids: aliases share nodes, and may form cycles
        self.bad_text = False  # a scalar with text no OS interface takes; the document is unusable
        self.constructor = SafeConstructor()

    def check(self, node: Node, key_path: str) -> None:
        """Report every duplicate key below ``node`` at its second occurrence and remove it from the tree."""
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        if isinstance(node, ScalarNode):
            self._check_text(node, key_path)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.check(item, join(key_path, index))
        elif isinstance(node, MappingNode):
            self._check_mapping(node, key_path)

    def _check_text(self, node: ScalarNode, key_path: str) -> None:
        """Report a scalar that no file name, argv, environment or user database can hold: a NUL, or a
        lone UTF-16 surrogate (a double-quoted "\\ud800" escape), which cannot even be encoded."""
        found = _BAD_TEXT.search(str(node.value))
        if found is None:
            return
        bad = found.group()
        what = (
            "a NUL character" if bad == "\0" else f"a lone surrogate \\u{ord(bad):04x} (half a UTF-16 pair)"
        )
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.issues.append(ConfigIssue(self.path, line, col, key_path, f"not valid text: {what}"))
        self.bad_text = True

    def _check_mapping(self, node: MappingNode, key_path: str) -> None:
        first: dict[str, Node] = {}
        kept: list[tuple[Node, Node]] = []
        merges = False
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges = True
                self.check(value_node, key_path)
                kept.append((key_node, value_node))
                continue
            if isinstance(key_node, ScalarNode):
                key = str(key_node.value)
                self._check_text(key_node, key_path)
                if key in first:
                    mark = first[key].start_mark
                    message = f"duplicate key {key!r} (first given at {mark.line + 1}:{mark.column + 1})"
                    line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    self.issues.append(ConfigIssue(self.path, line, col, join(key_path, key), message))
                    continue
                first[key] = key_node
            kept.append((key_node, value_node))
            self.check(
                value_node, join(key_path, key_node.value) if isinstance(key_node, ScalarNode) else key_path
            )
        node.value = kept
        if merges:
            self._merge(node)

    def _merge(self, node: MappingNode) -> None:
        """Resolve "<<" merge keys: keys of the mapping itself win, then the first merged mapping."""
        own_count = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        try:
            self.constructor.flatten_mapping(node)  # -> merged pairs + own pairs
        except yaml.MarkedYAMLError as exc:
            self.issues.append(_syntax_issue(self.path, exc))
            node.value = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
            return
        split = len(node.value) - own_count
        merged, own = node.value[:split], node.value[split:]
        taken = {str(k.value) for k, _ in own if isinstance(k, ScalarNode)}
        kept = []
        for key_node, value_node in merged:
            if isinstance(key_node, ScalarNode):
                if key_node.value in taken:
                    continue
                taken.add(key_node.value)
            kept.append((key_node, value_node))
        node.value = kept + own


class _Unreadable(Exception):
    """A config folder that cannot be listed as one; ``str()`` says why."""


def _compose(data: bytes, path: Path) -> Node | None:
    """Return the root node of ``data``: from libyaml's events when it is sure to be the node the
    pure-Python loader gives, else (and for every error, so that messages stay its own) from that one."""
    try:
        return fastyaml.compose(data, str(path), MAX_DEPTH, MAX_NODES)
    except fastyaml.Unsure:
        pass
    loader = _BoundedLoader(data, str(path))
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def read_document(path: Path, issues: list[ConfigIssue], name: str | None = None) -> Document:
    """Return the composed root node of ``path`` (as the unit ``name``, by default the file name
    without .yaml); report read and syntax errors, limits exceeded, text no OS interface takes (NUL,
    lone surrogates) and duplicate keys."""
    name = name if name is not None else path.name.removesuffix(_SUFFIX)
    unparsed = Document(str(path), name, None, parsed=False)
    try:
        data = read_regular_file(path, MAX_FILE_BYTES)
    except NotARegularFile as exc:
        issues.append(_issue_at(str(path), None, str(exc)))
        return unparsed
    except OSError as exc:
        issues.append(_issue_at(str(path), None, f"cannot read the file: {exc.strerror or exc}"))
        return unparsed
    try:
        node = _compose(data, path)
    except ReaderError as exc:
        issues.append(_reader_issue(str(path), exc, data))
        return unparsed
    except _LimitError as exc:
        issues.append(_issue_at(str(path), exc.problem_mark, f"too complex: {exc.problem}"))
        return unparsed
    except yaml.YAMLError as exc:
        issues.append(_syntax_issue(str(path), exc))
        return unparsed
    if node is not None:
        checker = _KeyChecker(str(path), issues)
        try:
            checker.check(node, "")
        except RecursionError:  # chains of aliases and merge keys deeper than MAX_DEPTH
            issues.append(_issue_at(str(path), None, "too complex: aliases or merge keys nest too deeply"))
            return unparsed
        if checker.bad_text:
            return unparsed
    return Document(str(path), name, node)


def _unit_files(folder: Path, issues: list[ConfigIssue]) -> list[Path]:
    """Return the NAME.yaml entries of ``folder`` in name order ([] when there is no such folder).

    Report a ``folder`` that exists but cannot be listed (a file, a symlink loop or to nothing, no
    permission): that is not an empty folder, whose services a reload would stop.
    """
    try:
        names = _list_folder(folder)
    except _Unreadable as exc:
        issues.append(_issue_at(str(folder), None, f"cannot read the folder: {exc}"))
        return []
    paths = [folder / name for name in names if name.endswith(_SUFFIX) and not name.startswith(".")]
    return sorted((path for path in paths if not _is_dir(path)), key=lambda p: p.name)


def _list_folder(folder: Path) -> list[str]:
    """Return the names in ``folder`` ([] when nothing is there). Raise _Unreadable if it is not a
    folder that can be listed."""
    try:
        info = os.stat(folder)
    except FileNotFoundError:
        if os.path.lexists(folder):
            raise _Unreadable("it is a symlink to nothing") from None
        return []
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise _Unreadable(f"not a folder: it is {file_kind(info.st_mode)}")
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None


def _is_dir(path: Path) -> bool:
    """Return whether ``path`` is a folder (after symlinks); a folder named x.yaml is no unit file."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False  # reading it reports the problem


def _read_unit(path: Path, name: str, issues: list[ConfigIssue]) -> Document:
    # A NAME@INSTANCE.yaml symlink to its template reads as the template: errors name the file
    # that holds the text.
    if "@" in name and path.is_symlink():
        target = Path(os.path.realpath(path))
        if target.name.endswith("@" + _SUFFIX) and target.is_file():
            path = target
    return read_document(path, issues, name)


def load_config(
    config_dir: str | Path,
    *,
    vendor_dir: str | Path | None = None,
    instances: Callable[[DaemonConfig], Iterable[str]] | None = None,
) -> Config:
    """Return the validated config of ``config_dir``.

    Raise ConfigError with every problem of every file (ordered by file, line, column) if there is any:
    a missing dir, unreadable files or folders, files that are not regular or too large or too deeply
    nested, YAML syntax errors, duplicate or unknown keys, bad values, and references between files
    that do not resolve. A syntax error in one file does not stop the others from being validated.
    Raise nothing else, whatever ``config_dir`` holds (an exception of ``instances`` propagates).

    Services come from ``vendor_dir``/services.d overridden file by file by ``config_dir``/services.d,
    with drop-ins and templates (see ``hasupd.config.layout``); ``instances(daemon settings)`` names
    the template instances enabled in the state dir.
    """
    root = Path(config_dir)
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise ConfigError([ConfigIssue(str(root), 1, 1, "", "the config directory is not a folder")])
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(str(root), 1, 1, "", "the config directory does not exist")]) from None
    except OSError as exc:
        message = f"cannot read the config directory: {exc.strerror or exc}"
        raise ConfigError([ConfigIssue(str(root), 1, 1, "", message)]) from None
    issues: list[ConfigIssue] = []
    daemon_path = root / DAEMON_FILE
    # lexists: a hasupd.yaml that is a symlink loop or to nothing is an error, not "use the defaults".
    daemon = read_document(daemon_path, issues) if os.path.lexists(daemon_path) else None
    folders = [Path(vendor_dir) / SERVICES_DIR] if vendor_dir is not None else []
    folders.append(root / SERVICES_DIR)
    for folder in folders:
        _unit_files(folder, issues)  # a folder that cannot be listed is an error, not "no services"
    enabled: Iterable[str] = ()
    if instances is not None:
        settings, _, _ = validate_daemon(Ctx(DAEMON_FILE, []), daemon)  # its issues are reported below
        enabled = instances(settings)
    services = [compose_service(sources, _read_unit, issues) for sources in find_services(folders, enabled)]
    backups = [read_document(path, issues) for path in _unit_files(root / BACKUPS_DIR, issues)]
    config = build_config(str(root), daemon, services, backups, issues)
    if issues:
        raise ConfigError(issues)
    return config
