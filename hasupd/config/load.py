"""Read a config dir: YAML files composed into nodes that keep their line:col, then validated.

Layout of CONFIG_DIR: ``hasupd.yaml`` (optional), ``services.d/NAME.yaml`` (one service each) and
``backups.d/NAME.yaml`` (one backup job each). Only files ending in ".yaml" and not starting with "."
are read, so "web.yaml.example", "web.yaml~" and ".web.yaml.swp" are ignored.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from hasupd.config.issues import ConfigError, ConfigIssue
from hasupd.config.model import Config
from hasupd.config.nodes import Document, join
from hasupd.config.validate import build_config

__all__ = ["ConfigError", "ConfigIssue", "load_config"]

DAEMON_FILE = "hasupd.yaml"
SERVICES_DIR = "services.d"
BACKUPS_DIR = "backups.d"
_SUFFIX = ".yaml"
_MERGE_TAG = "tag:yaml.org,2002:merge"


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
        self.constructor = SafeConstructor()

    def check(self, node: Node, key_path: str) -> None:
        """Report every duplicate key below ``node`` at its second occurrence and remove it from the tree."""
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.check(item, join(key_path, index))
        elif isinstance(node, MappingNode):
            self._check_mapping(node, key_path)

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


def read_document(path: Path, issues: list[ConfigIssue]) -> Document:
    """Return the composed root node of ``path``; report read and syntax errors and duplicate keys."""
    name = path.name.removesuffix(_SUFFIX)
    try:
        data = path.read_bytes()
    except OSError as exc:
        issues.append(_issue_at(str(path), None, f"cannot read the file: {exc.strerror or exc}"))
        return Document(str(path), name, None, parsed=False)
    try:
        node = yaml.compose(data, Loader=yaml.SafeLoader)
    except ReaderError as exc:
        issues.append(_reader_issue(str(path), exc, data))
        return Document(str(path), name, None, parsed=False)
    except yaml.YAMLError as exc:
        issues.append(_syntax_issue(str(path), exc))
        return Document(str(path), name, None, parsed=False)
    if node is not None:
        _KeyChecker(str(path), issues).check(node, "")
    return Document(str(path), name, node)


def _unit_files(folder: Path) -> list[Path]:
    """Return the NAME.yaml entries of ``folder`` in name order ([] when there is no such folder)."""
    if not folder.is_dir():
        return []
    entries = (p for p in folder.iterdir() if p.name.endswith(_SUFFIX) and not p.name.startswith("."))
    return sorted((p for p in entries if not p.is_dir()), key=lambda p: p.name)


def load_config(config_dir: str | Path) -> Config:
    """Return the validated config of ``config_dir``.

    Raise ConfigError with every problem of every file (ordered by file, line, column) if there is any:
    a missing dir, unreadable files, YAML syntax errors, duplicate or unknown keys, bad values, and
    references between files that do not resolve. A syntax error in one file does not stop the others
    from being validated.
    """
    root = Path(config_dir)
    if not root.is_dir():
        raise ConfigError([ConfigIssue(str(root), 1, 1, "", "the config directory does not exist")])
    issues: list[ConfigIssue] = []
    daemon_path = root / DAEMON_FILE
    daemon = read_document(daemon_path, issues) if daemon_path.exists() else None
    services = [read_document(path, issues) for path in _unit_files(root / SERVICES_DIR)]
    backups = [read_document(path, issues) for path in _unit_files(root / BACKUPS_DIR)]
    config = build_config(str(root), daemon, services, backups, issues)
    if issues:
        raise ConfigError(issues)
    return config
