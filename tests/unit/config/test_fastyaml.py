"""The libyaml path of config reading (hasupd/config/fastyaml.py, issue 23) gives what the pure-Python
loader gives: the same node trees (tags, values, styles, marks with their file name, line and column,
shared alias nodes) for what it accepts, and for everything else, errors and limits included, it leaves
the file to the pure loader, so messages and their positions stay the same.

The random tests print their seed; HASUPD_FUZZ_SEED=N replays a run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hasupd.config import fastyaml, load
from hasupd.config.issues import ConfigIssue
from tests.support.mutants import REPO, seed_files

pytestmark = pytest.mark.skipif(
    not fastyaml.ENABLED and os.environ.get("HASUPD_ALLOW_NO_LIBYAML") == "1",
    reason="PyYAML without libyaml, allowed by HASUPD_ALLOW_NO_LIBYAML=1",
)

NAME = "/etc/hasupd/services.d/web.yaml"


def shape(node: Node | None, ids: dict[int, int] | None = None) -> object:
    """Return everything of a node tree as plain data: node types, tags, values, styles, start and end
    marks (file, line, column) and which nodes are one (aliases; cycles end there)."""
    if node is None:
        return None
    ids = {} if ids is None else ids
    if id(node) in ids:
        return ("same node as", ids[id(node)])
    ids[id(node)] = len(ids)
    start, end = node.start_mark, node.end_mark
    base = (
        type(node).__name__,
        node.tag,
        (start.name, start.line, start.column),
        (end.name, end.line, end.column),
    )
    if isinstance(node, ScalarNode):
        return (*base, node.value, node.style)
    if isinstance(node, SequenceNode):
        return (*base, node.flow_style, [shape(item, ids) for item in node.value])
    assert isinstance(node, MappingNode)
    return (*base, node.flow_style, [(shape(k, ids), shape(v, ids)) for k, v in node.value])


def pure(data: bytes, name: str = NAME) -> object:
    """Return ("ok", tree) or ("error", exception type, text) of the pure-Python loader (as before)."""
    loader = load._BoundedLoader(data, name)
    try:
        return ("ok", shape(loader.get_single_node()))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))
    finally:
        loader.dispose()


def fast(data: bytes, name: str = NAME) -> object:
    """Return ("ok", tree) of the libyaml path, or ("unsure",) when it leaves ``data`` to the pure one."""
    try:
        return ("ok", shape(fastyaml.compose(data, name, load.MAX_DEPTH, load.MAX_NODES)))
    except fastyaml.Unsure:
        return ("unsure",)


def agree(data: bytes) -> bool:
    """Return whether the libyaml path gave a tree (asserting it is the pure loader's), else False."""
    got = fast(data)
    if got == ("unsure",):
        return False
    assert got == pure(data), data
    return True


def read_both(tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """Return (tree, issues) of read_document for ``data``: with the libyaml path, then without it."""
    path = tmp_path / "services.d" / "web.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(fastyaml, "ENABLED", enabled)
        issues: list[ConfigIssue] = []
        doc = load.read_document(path, issues)
        results.append((shape(doc.node), doc.parsed, [str(issue) for issue in issues]))
    return results[0], results[1]


def test_libyaml_is_there() -> None:
    # The Debian package depends on python3-yaml, which has libyaml: without it every file is read by
    # the pure loader, correct but slow (HASUPD_ALLOW_NO_LIBYAML=1 skips this module there).
    assert fastyaml.ENABLED


# --------------------------------------------------------------------------- the same trees

# Valid documents the libyaml path must read itself, with the pure loader's tree.
CORPUS = [
    "",
    "# only a comment\n",
    "command: [/bin/sleep, '1000']\n",
    '{"command":["/bin/sleep","infinity"],"output":"file","timeout_stop_sec":"1s"}',
    "a: 1",  # no line break at the end: libyaml ends the mapping on the line after, pure on this one
    "a:\n  b:\n    - x\n    - y",
    "a:\n- x\n- y\nb: 2\n",  # a sequence at its key's indentation: pure gives it no style
    "a:\n  - x\n  -\n  - - y\n    - z\n",
    "- a\n- b: 1\n  c: 2\n-\n",
    "a:\nb: ~\nc: null\nd: \n",
    "a: |\n  line 1\n  line 2\nb: >-\n  folded\n  text\n\n  more\nc: |+\n  keep\n\n",
    "a: |2\n    indented\nb: >\n x\n",
    "a: 'single ''quoted'''\nb: \"double \\\"quoted\\\" \\u00e9 \\x41 \\n \\t \\/ \\N\"\nc: \"a\\\n  b\"\n",
    "a: 'multi\n  line'\nb: \"multi\n\n  line\"\nc: plain\n  continued\n",
    "a: yes\nb: No\nc: 0x1f\nd: 0o17\ne: 1_000\nf: 1e3\ng: .inf\nh: 2001-12-14\ni: 1:20\nj: ~\nk: =\n",
    "base: &base {user: app, nice: 5}\nweb:\n  <<: *base\n  nice: 0\n",
    "a: &x [1, 2]\nb: *x\nc: &y\n  k: v\nd: *y\n",
    "merge:\n  <<: [&a {x: 1}, &b {y: 2}]\n  z: 3\n",
    "a: [b, {c: d}, [e, f]]\ng: {h: [i], j: {k: l}}\n",
    "a: [b,\n  c,\n  d]\n",
    "? complex key\n: value\n? [a, b]\n: c\n",
    "[a, b]: c\n{d: e}: f\n",
    "a: b # comment\n# comment\nc: d  # comment\n",
    "a: b\r\nc: d\r\n",  # CRLF
    "a: b\rc: d\r",
    "---\na: 1\n",
    "--- \na: 1\n...\n",
    'description: café ☕ 😀\ncommand: [/bin/echo, "ü"]\n',
    "'key with: colon': \"value # not a comment\"\n",
    "a: -1\nc: -x\nd: ?x\ne: :x\nf: x:y\ng: 'x: y'\n",
    "a: [a:b, 'c', \"d\", e f]\n",
    '{"a":1, "b": [1,2]}\n',
    "  a: 1\n  b: 2\n",
    "a:\n\n\n  b: 1\n\n",
    "x" * 1000 + ": long key\n",
    "a: " + "y" * 5000 + "\n",
    "list:\n" + "".join(f"  - item{i}\n" for i in range(500)),
    "a: [\n]\nb: {\n}\n",
    "a: 1\n# trailing comment without a line break",
    "- a\n- b",
    "a:\n  - b",
    "? a",
    "&a x: *a\n",
    "a: b\n  - c\n",  # a plain scalar "b - c"
    "a:",
    "---",
]


@pytest.mark.parametrize("text", CORPUS)
def test_valid_documents_give_the_pure_loaders_tree(text: str) -> None:
    assert agree(text.encode()), "left to the pure loader"


def test_shipped_and_example_configs_give_the_pure_loaders_tree() -> None:
    files = [path for base in ("etc", "examples") for path in sorted((REPO / base).rglob("*.yaml*"))]
    assert len(files) >= 5
    for path in files:
        assert agree(path.read_bytes()), path


def test_marks_carry_the_file_name() -> None:
    # Errors of merged drop-ins are reported at the file of their node (config/nodes.py reads the name).
    node = fastyaml.compose(b"a:\n  b: [c]\n", NAME, load.MAX_DEPTH, load.MAX_NODES)
    assert isinstance(node, MappingNode)
    inner = node.value[0][1].value[0][1].value[0]
    assert (inner.start_mark.name, inner.start_mark.line, inner.start_mark.column) == (NAME, 1, 6)


# --------------------------------------------------------------------------- what libyaml reads otherwise

# Documents libyaml accepts (or marks otherwise) where the pure loader rejects them (or gives another
# tree): the libyaml path must leave them to the pure loader.
DIFFERENT = [
    "a:\tb\n",  # pure: found character '\t' that cannot start any token
    "a: b\tc\n",
    "[a,\tb]\n",
    "\ufeffa: 1\n",  # a BOM
    "a: \ufeffb\n",  # a BOM inside: pure does not count its column
    "a: b\x85c: d\n",  # NEL, LS, PS line breaks
    "a: b\u2028c: d\n",
    "a: b\u2029c: d\n",
    "a: |#c\n  x\n",  # pure: expected chomping or indentation indicators, but found '#'
    "a: >-#c\n  x\n",
    "{f? ormat: text}\n",  # pure ends a flow plain scalar at "?"
    "[a?b]\n",
    "{a: }\n",  # pure marks the empty value after ":", libyaml at "}"
    "[? a]\n",
    "{a:, b}\n",
    "!_a*b! x\n",  # pure: expected '!'; libyaml: the tag "!_a*b!"
    "a: !!str 1\n",  # tags: scanned otherwise
    "a: ! x\n",
    "a: !e!x 1\n",
    "%TAG !e! tag:e,2000:\n---\na: !e!x 1\n",
    "a: &x 1\nb: &x 2\n",  # duplicate anchor: an error of the pure loader
    "a: *undefined\n",
    "%YAML 1.3\n---\na: 1\n",  # pure accepts any 1.x, libyaml 1.1 and 1.2 only
    # Every directive goes to the pure loader: libyaml takes "%YAML 1.1#", the pure scanner refuses it.
    "%YAML 1.1\n---\na: 1\n",
    "%YAML 1.2\n---\na: 1\n",
    "%YAML 1.1#\n---\na: 1\n",
    'a: "\\ud800"\n',  # libyaml rejects a lone surrogate escape, pure reports it as bad text
    "a: 1\n---\nb: 2\n",  # two documents
    "\ufeffa: 1\n".encode("utf-16-le").decode("latin-1"),  # UTF-16 (with a BOM)
]


@pytest.mark.parametrize("text", DIFFERENT)
def test_what_libyaml_reads_otherwise_is_left_to_the_pure_loader(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = text.encode("latin-1") if text.startswith("\xff\xfe") else text.encode("utf-8", "surrogatepass")
    assert fast(data) == ("unsure",)
    with_libyaml, without = read_both(tmp_path, data, monkeypatch)
    assert with_libyaml == without


INVALID = [
    b"a: [b\n",
    b"a: b: c\n",
    b"a:\n  - b\n c: d\n",
    b"a: 'unclosed\n",
    b'a: "bad \\q escape"\n',
    b"- a\nb: c\n",
    b"a: \x07\n",  # control characters, invalid UTF-8, UTF-16
    b"a: \x7f\n",
    b"a: \xc2\x80\n",
    b"a: \xff\n",
    b"a: \xed\xa0\x80\n",  # a UTF-8 encoded surrogate
    b"a: \xef\xbf\xbf\n",
    b"a: \x00\n",
    b'a: "\\0"\n',  # a NUL escape: valid YAML, text no OS interface takes
    b"%YAML 2.0\n---\na: 1\n",
    b"%YAML 1.1\n%YAML 1.1\n---\na: 1\n",
    b"k" * 1100 + b": v\n",  # a simple key longer than 1024 characters
    b"a: 1\na: 2\n",  # duplicate keys, merge errors: reported by load's key checker on both trees
    b"a:\n  <<: 1\n",
    b"a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n  b: 3\n",
    b"a: |0\n x\n",
    b"...\n",
    b"\n\n   - a\n  - b\n",
]


@pytest.mark.parametrize("data", INVALID)
def test_invalid_documents_give_the_pure_loaders_issues(
    data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_libyaml, without = read_both(tmp_path, data, monkeypatch)
    assert with_libyaml == without
    assert with_libyaml[2], "no issue"


# --------------------------------------------------------------------------- limits


def _deep_flow(depth: int) -> bytes:
    return b"a: " + b"[" * depth + b"x" + b"]" * depth + b"\n"


def _deep_block(depth: int) -> bytes:
    return b"".join(b"  " * level + b"k:\n" for level in range(depth)) + b"  " * depth + b"v\n"


def _many_nodes(count: int) -> bytes:
    return b"a: [" + b", ".join(b"x" for _ in range(count)) + b"]\n"


def _many_block_nodes(count: int) -> bytes:
    return b"a:\n" + b"".join(b"- {b: c}\n" for _ in range(count // 3))


DEEP = "too complex: nested more than 64 levels deep"
MANY = "too complex: more than 10000 YAML nodes in one file"


@pytest.mark.parametrize(
    ("data", "issue"),
    [
        (_deep_flow(load.MAX_DEPTH), f"1:67: {DEEP}"),
        (_deep_block(load.MAX_DEPTH), f"64:127: {DEEP}"),
        (_many_nodes(load.MAX_NODES), f"1:29996: {MANY}"),
        (_many_block_nodes(load.MAX_NODES), f"3334:4: {MANY}"),
    ],
)
def test_limits_give_the_same_located_errors(
    data: bytes, issue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fast(data) == ("unsure",)
    with_libyaml, without = read_both(tmp_path, data, monkeypatch)
    assert with_libyaml == without
    assert with_libyaml[2] == [f"{tmp_path}/services.d/web.yaml:{issue}"]


def test_documents_just_within_the_limits_are_read_by_libyaml() -> None:
    assert agree(_deep_flow(load.MAX_DEPTH - 2))
    assert agree(_deep_block(load.MAX_DEPTH - 2))
    assert agree(_many_nodes(load.MAX_NODES - 3))


# --------------------------------------------------------------------------- random documents


def _seed() -> int:
    seed = int(os.environ.get("HASUPD_FUZZ_SEED", random.randrange(2**32)))
    print(f"HASUPD_FUZZ_SEED={seed}")
    return seed


KEYS = [
    "a",
    "key",
    "k k",
    "'q'",
    '"d"',
    "<<",
    "-x",
    "a:b",
    "&a k",
    "*a",
    "[a, b]",
    "{a: 1}",
    "é",
    "1",
    "~",
    "?",
]
VALUES = [
    "",
    "v",
    "1",
    "'s'",
    '"d\\n"',
    "[a, b]",
    "{a: 1, b}",
    "[a:b]",
    '{"a":1}',
    "[a: b]",
    "*a",
    "&a v",
    "|\n  x\n  y",
    "|-\n  x\n\n",
    ">\n  a\n\n  b",
    "|2\n   x",
    "- x",
    "\n- x\n- y",
    "\n  - x\n  - - y",
    "\n  a: 1\n  b: 2",
    "<<: *a",
    "x # c",
    "x#c",
    "a\n  b",
    "'a\n  b'",
    '"a\\\n  b"',
    "? a\n: b",
    "@x",
    "- - x",
    ": x",
    "0x_1",
    "2001-12-14t21:59:43.10-05:00",
    "x\r\ny",
    "😀",
    "!!str x",
    "\tx",
    "|#",
]


def _document(rng: random.Random) -> bytes:
    """Return YAML-ish text: mostly valid documents of random structure, with odd corners."""
    lines = []
    for _ in range(rng.randint(1, 8)):
        indent = " " * rng.choice([0, 0, 0, 1, 2, 4])
        sep = rng.choice([": ", ":", " : ", ":\n  ", ": \n", "- ", "\n", ": "])
        lines.append(indent + rng.choice(KEYS) + sep + rng.choice(VALUES))
    head = rng.choice(["", "", "---\n", "--- ", "%YAML 1.1\n---\n", "\ufeff", "# c\n"])
    tail = rng.choice(["", "\n", "\n...\n", " ", "\r\n", "\n#c", "\n\n"])
    return (head + "\n".join(lines) + tail).encode()


def _mutant(rng: random.Random, data: bytes) -> bytes:
    """Return ``data`` with a few random bytes, YAML indicators or copied pieces inserted or deleted."""
    out = bytearray(data)
    pieces = [
        b":",
        b"- ",
        b"\n",
        b"  ",
        b"&a ",
        b"*a",
        b"{",
        b"[",
        b"'",
        b'"',
        b"#",
        b"|",
        b"? ",
        b"\r",
        b"\\",
        b"\t",
    ]
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(4), rng.randrange(len(out) + 1)
        if op == 0:
            del out[at : at + rng.randint(1, 8)]
        elif op == 1:
            out[at:at] = bytes([rng.randrange(256)])
        elif op == 2:
            out[at:at] = rng.choice(pieces)
        elif out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 40)]
    return bytes(out)


BUDGET_SEC = 6.0


def test_random_documents_give_the_pure_loaders_tree_or_are_left_to_it() -> None:
    rng = random.Random(_seed())
    seeds = [data for _, data in seed_files()] + [text.encode() for text in CORPUS]
    counts = {"libyaml": 0, "pure": 0}
    deadline = time.monotonic() + BUDGET_SEC
    while time.monotonic() < deadline and sum(counts.values()) < 20_000:
        kind = rng.randrange(3)
        if kind == 0:
            data = _document(rng)
        elif kind == 1:
            data = _mutant(rng, rng.choice(seeds))
        else:
            data = _mutant(rng, _document(rng))
        counts["libyaml" if agree(data) else "pure"] += 1
    # Both kinds are exercised (a path that always gave up would pass the comparison above).
    assert counts["libyaml"] > 200 and counts["pure"] > 200, counts


def test_random_documents_give_the_same_issues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole of read_document (limits, key checks, messages): the same with and without libyaml.
    rng = random.Random(_seed())
    seeds = [data for _, data in seed_files()]
    for _ in range(300):
        data = _mutant(rng, rng.choice(seeds)) if rng.randrange(2) else _document(rng)
        with_libyaml, without = read_both(tmp_path, data, monkeypatch)
        assert with_libyaml == without, data


# --------------------------------------------------------------------------- without libyaml


def test_config_loads_the_same_without_libyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text("command: [/bin/sleep, '1000']\nrestart: always\n")
    (tmp_path / "services.d" / "b.yaml").write_text("command: [/bin/sleep, '1000']\nrestart: often\n")
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(fastyaml, "ENABLED", enabled)
        try:
            load.load_config(tmp_path)
        except load.ConfigError as exc:
            results.append([str(issue) for issue in exc.issues])
    assert len(results) == 2 and results[0] == results[1]
    assert "restart" in results[0][0]


def test_pyyaml_without_libyaml_reads_with_the_pure_loader(tmp_path: Path) -> None:
    # A PyYAML built without libyaml has no yaml._yaml: hasupd imports and reads configs all the same.
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text("command: [/bin/sleep, '1000']\nnice: [1]\n")
    script = (
        "import sys; sys.modules['yaml._yaml'] = None\n"
        "from hasupd.config import fastyaml, load\n"
        "assert not fastyaml.ENABLED\n"
        "try:\n"
        f"    load.load_config({str(tmp_path)!r})\n"
        "except load.ConfigError as exc:\n"
        "    print(*exc.issues, sep='\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert (
        out.stdout
        == f"{tmp_path}/services.d/a.yaml:2:7: nice: expected an integer from -20 to 19, got a list\n"
    )
