"""The package's import graph: no circles, and imports run one way down the layout (see README, Layout).

Every import counts: module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-only import
is still a design tie). The graph is read with ``ast`` from the source, so nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hasupd"

# The core: the state machine and what it sees the world through.
CORE = ("states", "restart", "ports", "service", "manager", "recovery", "events")
# The top: lifecycle and wiring.
TOP = ("daemon", "build", "cli")
# The observers of the bus.
OBSERVERS = ("watch", "observe", "alerts", "backup", "control", "fleet", "web")
# OS mechanisms and the runtimes built on them.
LOW = ("host", "runtimes")

# layer -> the layers its modules must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{low: (*TOP, "service", "manager", "recovery", "restart", *OBSERVERS) for low in LOW},
    **{core: (*TOP, *OBSERVERS) for core in CORE},
    # The config is read by everyone: it reaches into no observer, no core module with behaviour, no top.
    "config": (*TOP, "service", "manager", "recovery", "events", *OBSERVERS),
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: Collection[str]) -> str:
    """Return the longest prefix of dotted ``name`` that is one of ``modules`` ("" if none is)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph(root: Path) -> dict[str, set[str]]:
    """Return module -> the package modules it imports (any import anywhere in it), for package ``root``.

    ``from pkg.a import b`` counts as an import of ``pkg.a.b`` when that is a module, else of ``pkg.a``
    (a package's ``__init__`` too: its submodules run it first, so it can close a circle).
    """
    mods = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                    source = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # "from pkg.a import b": pkg.a.b if that is a module, else pkg.a (resolved below).
                targets = [f"{source}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in targets:
                target = _resolve(name, mods.keys())
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    """Return the layout folder or top-level module a module belongs to (``hasupd.host.reaper`` -> host)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Return "a -> b" for every import of a layer that a module's layer must not import."""
    bad = []
    for mod, targets in sorted(graph.items()):
        forbidden = FORBIDDEN.get(layer(mod), ())
        bad += [f"{mod} -> {t}" for t in sorted(targets) if layer(t) in forbidden]
    return bad


def test_no_import_cycles() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_imports_run_one_way_down_the_layout() -> None:
    assert wrong_way(import_graph(PACKAGE)) == []


def test_every_layer_named_in_the_rules_exists() -> None:
    layers = {layer(m) for m in import_graph(PACKAGE)}
    assert {*CORE, *LOW, *OBSERVERS, "daemon", "build", "cli"} <= layers


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "hasupd"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


@pytest.mark.parametrize(
    "files",
    [
        # a function-level import closing a circle
        {"__init__.py": "", "a.py": "import hasupd.b\n", "b.py": "def f():\n    from hasupd import a\n"},
        # a TYPE_CHECKING import closing a circle through a subpackage
        {
            "__init__.py": "",
            "x/__init__.py": "",
            "x/one.py": "from hasupd.x.two import T\n",
            "x/two.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hasupd.x import one\n",
        },
        # a relative import
        {
            "__init__.py": "",
            "p/__init__.py": "",
            "p/a.py": "from . import b\n",
            "p/b.py": "from .a import X\n",
        },
    ],
)
def test_a_circle_is_found(tmp_path: Path, files: dict[str, str]) -> None:
    assert len(cycles(import_graph(_write(tmp_path, files)))) == 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"__init__.py": "", "host/__init__.py": "", "host/x.py": "from hasupd.service import S\n"},
            ["hasupd.host.x -> hasupd.service"],
        ),
        (
            {"__init__.py": "", "service.py": "def f():\n    from hasupd.alerts.policy import A\n"},
            ["hasupd.service -> hasupd.alerts.policy"],
        ),
        (
            {"__init__.py": "", "runtimes/__init__.py": "", "runtimes/y.py": "import hasupd.watch.probes\n"},
            ["hasupd.runtimes.y -> hasupd.watch.probes"],
        ),
        (
            {
                "__init__.py": "",
                "config/__init__.py": "",
                "config/v.py": "from hasupd.backup.schedule import p\n",
            },
            ["hasupd.config.v -> hasupd.backup.schedule"],
        ),
    ],
)
def test_a_wrong_way_import_is_found(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    pkg = _write(tmp_path, files)
    # The imported modules exist, so that the imports resolve to them.
    for target in (
        "service.py",
        "alerts/__init__.py",
        "alerts/policy.py",
        "watch/__init__.py",
        "watch/probes.py",
        "backup/__init__.py",
        "backup/schedule.py",
    ):
        (pkg / target).parent.mkdir(parents=True, exist_ok=True)
        (pkg / target).touch(exist_ok=True)
    assert wrong_way(import_graph(pkg)) == expected
