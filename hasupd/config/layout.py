"""Where a service's configuration comes from: the vendor folder, /etc, drop-ins and templates.

- ``VENDOR/services.d/NAME.yaml`` (packages, ``/usr/lib/hasupd``) is overridden file by file by
  ``CONFIG/services.d/NAME.yaml`` (``/etc/hasupd``): a file of the same name hides the vendor's whole.
- Drop-ins ``services.d/NAME.d/*.yaml`` (in either folder; one of the same file name in /etc hides the
  vendor's) are merged over the service in file-name order: a mapping is merged key by key, any other
  value (a scalar, a list) replaces the one before it. Every node keeps the file, line and column it
  was read from, so an error in a value a drop-in set names the drop-in.
- ``NAME@.yaml`` is a template: it is no service itself. ``NAME@INSTANCE.yaml`` (usually a symlink to
  the template) or ``hasupctl enable NAME@INSTANCE`` makes the service ``NAME@INSTANCE``, with
  ``{instance_name}`` replaced by INSTANCE in every value. Drop-ins of ``NAME@.d`` apply to every
  instance, then those of ``NAME@INSTANCE.d``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hasupd.config.issues import ConfigIssue
from hasupd.config.nodes import Document

SUFFIX = ".yaml"
DROPIN_SUFFIX = ".d"
INSTANCE_NAME = "{instance_name}"

# Reads one file into a Document named ``name`` (load.read_document), reporting into ``issues``.
Reader = Callable[[Path, str, list[ConfigIssue]], Document]


@dataclass(frozen=True)
class ServiceSources:
    """The files one service is made of, lowest priority first.

    ``main`` is the service file (for a template instance without its own file: the template);
    ``hidden`` the vendor files of the same name that ``main`` overrides; ``dropins`` in merge order;
    ``instance`` the INSTANCE of a template instance (None otherwise).
    """

    name: str
    main: Path
    hidden: tuple[Path, ...] = ()
    dropins: tuple[Path, ...] = ()
    instance: str | None = None


def _yaml_entries(folder: Path) -> dict[str, Path]:
    """Return {file name: path} of the NAME.yaml files of ``folder`` ({} if it cannot be listed)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    out = {}
    for name in names:
        path = folder / name
        if name.endswith(SUFFIX) and not name.startswith(".") and not path.is_dir():
            out[name] = path
    return out


def _dropins(folders: Sequence[Path], names: Sequence[str]) -> tuple[Path, ...]:
    """Return the drop-ins of ``names`` (least specific first) in ``folders`` (lowest priority first):
    one per file name, the last one found winning, ordered by file name."""
    chosen: dict[str, Path] = {}
    for name in names:
        for folder in folders:
            chosen.update(_yaml_entries(folder / f"{name}{DROPIN_SUFFIX}"))
    return tuple(chosen[key] for key in sorted(chosen))


def find_services(folders: Sequence[Path], instances: Iterable[str] = ()) -> list[ServiceSources]:
    """Return the services defined by the ``services.d`` ``folders`` (lowest priority first, e.g.
    vendor then /etc) and by the enabled template ``instances`` (NAME@INSTANCE), ordered by name.

    An enabled instance whose template is gone is left out (enabling it checked that it existed).
    """
    files: dict[str, Path] = {}
    hidden: dict[str, list[Path]] = {}
    for folder in folders:
        for file_name, path in sorted(_yaml_entries(folder).items()):
            if file_name in files:
                hidden.setdefault(file_name, []).append(files[file_name])
            files[file_name] = path
    templates = {n.removesuffix(SUFFIX): p for n, p in files.items() if n.endswith("@" + SUFFIX)}
    found: dict[str, ServiceSources] = {}
    for file_name, path in files.items():
        name = file_name.removesuffix(SUFFIX)
        if name in templates:
            continue
        base, at, instance = name.partition("@")
        found[name] = ServiceSources(
            name=name,
            main=path,
            hidden=tuple(hidden.get(file_name, ())),
            dropins=_dropins(folders, [f"{base}@", name] if at else [name]),
            instance=instance if at else None,
        )
    for name in instances:
        base, at, instance = name.partition("@")
        template = templates.get(f"{base}@")
        if at and instance and name not in found and template is not None:
            found[name] = ServiceSources(
                name=name,
                main=template,
                hidden=tuple(hidden.get(f"{base}@{SUFFIX}", ())),
                dropins=_dropins(folders, [f"{base}@", name]),
                instance=instance,
            )
    return [found[name] for name in sorted(found)]


def templates(folders: Sequence[Path]) -> set[str]:
    """Return the template names (NAME@) the ``folders`` define."""
    return {
        name.removesuffix(SUFFIX)
        for folder in folders
        for name in _yaml_entries(folder)
        if name.endswith("@" + SUFFIX)
    }


def merge(base: Node, over: Node) -> Node:
    """Return ``over`` merged over ``base``: mappings key by key (recursively), anything else replaced.
    Neither input is changed; the nodes of the result keep their own marks (file, line, column)."""
    if not (isinstance(base, MappingNode) and isinstance(over, MappingNode)):
        return over
    pairs = list(base.value)
    index = {k.value: i for i, (k, _) in enumerate(pairs) if isinstance(k, ScalarNode)}
    for key_node, value_node in over.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else None
        if key is not None and key in index:
            i = index[key]
            pairs[i] = (key_node, merge(pairs[i][1], value_node))
        else:
            if key is not None:
                index[key] = len(pairs)
            pairs.append((key_node, value_node))
    return MappingNode(base.tag, pairs, base.start_mark, base.end_mark, base.flow_style)


def instantiate(node: Node, instance: str) -> Node:
    """Return a copy of ``node`` with ``{instance_name}`` replaced by ``instance`` in every scalar value."""
    node = copy.deepcopy(node)
    seen: set[int] = set()

    def walk(current: Node) -> None:
        if id(current) in seen:
            return
        seen.add(id(current))
        if isinstance(current, ScalarNode):
            if isinstance(current.value, str):
                current.value = current.value.replace(INSTANCE_NAME, instance)
        elif isinstance(current, SequenceNode):
            for item in current.value:
                walk(item)
        elif isinstance(current, MappingNode):
            for _, value in current.value:
                walk(value)

    walk(node)
    return node


def compose_service(sources: ServiceSources, read: Reader, issues: list[ConfigIssue]) -> Document:
    """Return the service document of ``sources``: the main file, the template instance filled in,
    the drop-ins merged over it. Problems of any of its files are appended to ``issues``."""
    main = read(sources.main, sources.name, issues)
    node = main.node
    parsed = main.parsed
    if node is not None and sources.instance is not None:
        node = instantiate(node, sources.instance)
    for path in sources.dropins:
        dropin = read(path, sources.name, issues)
        parsed = parsed and dropin.parsed
        if dropin.node is None:
            continue
        if not isinstance(dropin.node, MappingNode):
            mark = dropin.node.start_mark
            message = "a drop-in must be a mapping of service keys"
            issues.append(ConfigIssue(str(path), mark.line + 1, mark.column + 1, "", message))
            parsed = False
            continue
        over = instantiate(dropin.node, sources.instance) if sources.instance else dropin.node
        node = over if node is None else merge(node, over)
    if not parsed:
        node = None
    return Document(str(sources.main), sources.name, node, parsed=parsed)


def _where(node: Node) -> str:
    mark = node.start_mark
    return f"{mark.name}:{mark.line + 1}"


def _flow(node: Node) -> str:
    """Return ``node`` as one line of YAML."""
    node = copy.deepcopy(node)
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, MappingNode | SequenceNode):
            current.flow_style = True
            items = (
                current.value
                if isinstance(current, SequenceNode)
                else [v for kv in current.value for v in kv]
            )
            stack.extend(items)
    text: str = yaml.serialize(node, width=1_000_000)
    return text.strip().removesuffix("...").strip()


HIDDEN = "(hidden)"  # what hasupctl cat and show print for an environment value
SECRET_KEYS = frozenset({"environment"})  # a service's keys whose values never leave hasupd


def annotate(node: Node, indent: str = "", hide: bool = False) -> list[str]:
    """Return the lines of mapping ``node`` as YAML, each key with the file:line that set it. The values
    of ``environment`` (top level) are shown as ``(hidden)``: they may hold secrets and a file an admin
    made unreadable must not leak through the read role; ``hide`` hides every value below ``node``."""
    if not isinstance(node, MappingNode):
        return [f"{indent}{HIDDEN if hide else _flow(node)}  # {_where(node)}"]
    lines = []
    for key_node, value_node in node.value:
        key = _flow(key_node)
        secret = hide or (not indent and key in SECRET_KEYS)
        if isinstance(value_node, MappingNode) and value_node.value:
            lines.append(f"{indent}{key}:")
            lines += annotate(value_node, indent + "  ", secret)
        else:
            lines.append(f"{indent}{key}: {HIDDEN if secret else _flow(value_node)}  # {_where(value_node)}")
    return lines


def describe_sources(sources: ServiceSources) -> list[str]:
    """Return comment lines naming the files of a service, in the order they apply."""
    lines = [f"# {sources.name}"]
    what = f"template for instance {sources.instance!r}" if sources.main.name.endswith("@.yaml") else "file"
    lines.append(f"# {what}: {sources.main}")
    lines += [f"#   (overrides {path})" for path in sources.hidden]
    lines += [f"# drop-in: {path}" for path in sources.dropins]
    return lines
