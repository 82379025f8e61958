"""Config mutants for fuzzing ``load_config``, ``hasupd check-config`` and live reloads (issue 15).

A mutant is a label, a function that writes a config dir and whether it must be rejected. The classes:
random byte mutations of the shipped configs (etc/ and examples/), deep nesting (flow, block, aliases),
odd YAML 1.1 scalars and huge numbers put under real keys, NUL and lone surrogates, and special files
(FIFOs, /dev/zero and /dev/urandom symlinks, big files, services.d or hasupd.yaml that cannot be read).
Everything comes from one ``random.Random``, so a seed reproduces a run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICE = "command: [/bin/sleep, '1000']\n"
LOCATED = re.compile(r"^(?P<file>/[^\n]*?):(?P<line>[1-9][0-9]*):(?P<col>[1-9][0-9]*): \S")

Writer = Callable[[Path], None]


@dataclass(frozen=True)
class Mutant:
    """``write(root)`` fills the empty config dir ``root``; ``must_fail``: load_config must reject it."""

    label: str
    write: Writer
    must_fail: bool


def seed_files() -> list[tuple[str, bytes]]:
    """Return (relative path as hasupd reads it, content) of the shipped configs to mutate."""
    found: list[tuple[str, bytes]] = []
    for base in (REPO / "etc" / "hasupd", REPO / "examples" / "demo"):
        for path in sorted(base.rglob("*")):
            if not path.is_file() or ".yaml" not in path.name:
                continue
            relative = path.relative_to(base).as_posix()
            relative = relative.removesuffix(".example")
            if not relative.endswith(".yaml"):
                continue
            found.append((relative, path.read_bytes()))
    assert found, "no shipped config files found to mutate"
    return found


# Values the YAML 1.1 resolver or an explicit tag turns into something a validator may not expect.
ODD_SCALARS = (
    "0x50",
    "0x",
    "!!int 0x",
    "0b101",
    "0o17",
    "017",
    "1:30",
    "1:2:3:4",
    "1_000",
    "!!float abc",
    "!!int abc",
    "!!bool maybe",
    "!!float 1e400",
    ".inf",
    "-.inf",
    ".nan",
    "1e400",
    "-1",
    "0",
    "-0",
    "100000000000000000000",
    "9" * 5000,
    "!!int " + "9" * 5000,
    '"' + "9" * 400 + 's"',
    '"' + "9" * 400 + 'M"',
    '"1.5.3s"',
    '"²"',
    '"127.0.0.1:²"',
    '"\\ud800"',
    '"\\udc80"',
    '"a\\0b"',
    '"\\0"',
    "65534",
    "4294967295",
    "99999999999",
    "!!binary aGk=",
    "!!timestamp 2001-12-14",
    "!!str",
    "!!null x",
    "!custom x",
    "~",
    "[]",
    "{}",
    "[[[]]]",
    "&a [*a]",
    "&a {x: *a}",
    "&a {<<: *a}",
    "{<<: [1, 2]}",
    "yes",
    "on",
    "'@yearly'",
    "'x 99 * * *'",
    "'0 0 30 2 *'",
    "'*/0 * * * *'",
    "'" + "9" * 5000 + " * * * *'",
)
SERVICE_KEYS = (
    "user",
    "group",
    "instances",
    "restart_sec",
    "restart_max_delay_sec",
    "timeout_start_sec",
    "timeout_stop_sec",
    "watchdog_sec",
    "kill_signal",
    "type",
    "restart",
    "working_directory",
    "environment",
    "after",
    "command",
    "description",
    "output",
)
NESTED_SERVICE_VALUES = (
    "start_limit: {{burst: {v}, interval_sec: 10s}}",
    "start_limit: {{burst: 3, interval_sec: {v}}}",
    "limits: {{memory: {v}}}",
    "limits: {{cpu_percent: {v}}}",
    "limits: {{cpu_window_sec: {v}}}",
    "health: [{{tcp: '127.0.0.1:1', interval_sec: {v}}}]",
    "health: [{{tcp: '127.0.0.1:1', failures: {v}}}]",
    "health: [{{tcp: {v}}}]",
    "sockets: [{{listen: {v}}}]",
    "heartbeat_file: {{path: /tmp/x, max_age_sec: {v}}}",
    "environment: {{A: {v}}}",
    "on_failure: [{v}]",
)
BACKUP_LINES = (
    "repository: hot\npaths: [/tmp]\nschedule: {v}\n",
    "repository: hot\npaths: [/tmp]\nrandomized_delay_sec: {v}\n",
    "repository: hot\npaths: [/tmp]\nkeep: {{daily: {v}}}\n",
    "repository: hot\npaths: [/tmp]\nmax_age: {v}\n",
    "repository: hot\npaths: [/tmp]\ncheck: {{schedule: '@weekly', read_data_subset: {v}}}\n",
    "repository: hot\npaths: [/tmp]\nkeep: {{within: {v}}}\n",
)
DAEMON_WITH_REPO = (
    "backups:\n  repositories:\n    hot: {url: /tmp/nowhere, password_file: /tmp/nowhere.pass}\n"
)
DAEMON_LINES = (
    "metrics: {{listen: {v}}}\n",
    "log: {{target: {v}}}\n",
    "alerts:\n  ops:\n    email: {{smtp: {{host: h, port: {v}}}, from: a@b.c, to: [d@e.f]}}\n",
    "alerts:\n  ops:\n    email: {{smtp: {{host: h}}, from: a@b.c, to: [d@e.f]}}\n    coalesce_sec: {v}\n",
    "access: {{read: [{v}]}}\n",
    "state_dir: {v}\n",
)


def _files(files: dict[str, bytes | str]) -> Writer:
    def write(root: Path) -> None:
        for relative, content in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8", errors="surrogatepass")
            else:
                path.write_bytes(content)

    return write


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Return ``data`` after 1 to 8 random flips, inserts, deletes or duplications of bytes."""
    out = bytearray(data)
    palette = b"[]{}:,-&*!|>'\"\n #%@\\?0123456789.xe_~\t\x00\xff\xc3"
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(out) + 1)
        kind = rng.randrange(5)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:
            out[at:at] = bytes([rng.choice(palette)])
        elif kind == 2 and out:
            del out[at : at + rng.randint(1, 16)]
        elif kind == 3 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 64)]
        else:
            out[at:at] = rng.choice((b"  ", b"\n", b"- ", b": ", b"&a ", b"*a", b"<<: ", b"!!int "))
    return bytes(out)


def byte_mutant(rng: random.Random, seeds: list[tuple[str, bytes]]) -> Mutant:
    relative, data = rng.choice(seeds)
    files: dict[str, bytes | str] = {relative: _mutate_bytes(rng, data)}
    if relative != "services.d/ok.yaml":
        files["services.d/ok.yaml"] = SERVICE
    return Mutant(f"bytes of {relative}", _files(files), must_fail=False)


def nesting_mutant(rng: random.Random) -> Mutant:
    depth = rng.choice((65, 200, 999, 1000, 1500, 5000, 20000))
    kind = rng.randrange(4)
    if kind == 0:
        text = SERVICE + "environment: " + "[" * depth + "]" * depth + "\n"
    elif kind == 1:
        text = SERVICE + "environment: " + "{a: " * depth + "b" + "}" * depth + "\n"
    elif kind == 2:
        depth = min(depth, 700)  # indentation makes deeper block nesting larger than the size cap
        text = SERVICE + "environment:\n" + "".join(" " * (i + 1) + "k:\n" for i in range(depth))
        text += " " * (depth + 1) + "v\n"
    else:
        text = SERVICE + "environment:\n" + "".join(" " * (i + 1) + "- \n" for i in range(min(depth, 700)))
    return Mutant(f"nesting kind {kind} depth {depth}", _files({"services.d/a.yaml": text}), must_fail=True)


def alias_mutant(rng: random.Random) -> Mutant:
    """Merge-key and alias chains: legal YAML, only long."""
    count = rng.choice((10, 100, 2000, 6000))
    lines = ["x0: &a0 {k: 1}\n"]
    lines += [f"x{i}: &a{i} {{<<: *a{i - 1}}}\n" for i in range(1, count)]
    return Mutant(f"alias chain {count}", _files({"services.d/a.yaml": SERVICE + "".join(lines)}), True)


def scalar_mutant(rng: random.Random) -> Mutant:
    value = rng.choice(ODD_SCALARS)
    where = rng.randrange(4)
    if where == 0:
        key = rng.choice(SERVICE_KEYS)
        body = f"{key}: {value}\n" if key != "command" else f"command: [{value}]\n"
        text = (SERVICE if key != "command" else "") + body
        return Mutant(f"service {key}: {value[:40]}", _files({"services.d/a.yaml": text}), False)
    if where == 1:
        text = SERVICE + rng.choice(NESTED_SERVICE_VALUES).format(v=value) + "\n"
        return Mutant(f"service {text[len(SERVICE) :][:60]}", _files({"services.d/a.yaml": text}), False)
    if where == 2:
        job = rng.choice(BACKUP_LINES).format(v=value)
        files: dict[str, bytes | str] = {"hasupd.yaml": DAEMON_WITH_REPO, "backups.d/job.yaml": job}
        return Mutant(f"backup {job[30:][:60]}", _files(files), False)
    daemon = rng.choice(DAEMON_LINES).format(v=value)
    return Mutant(
        f"daemon {daemon[:60]}", _files({"hasupd.yaml": daemon, "services.d/ok.yaml": SERVICE}), False
    )


def _fifo(relative: str) -> Writer:
    def write(root: Path) -> None:
        (root / "services.d").mkdir(exist_ok=True)
        (root / "services.d" / "ok.yaml").write_text(SERVICE)
        (root / relative).unlink(missing_ok=True)
        os.mkfifo(root / relative)

    return write


def _symlink(relative: str, target: str) -> Writer:
    def write(root: Path) -> None:
        (root / "services.d").mkdir(exist_ok=True)
        (root / "services.d" / "ok.yaml").write_text(SERVICE)
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
        os.symlink(target, path)

    return write


def _big(relative: str, size: int, kind: int) -> Writer:
    def write(root: Path) -> None:
        (root / "services.d").mkdir(exist_ok=True)
        (root / "services.d" / "ok.yaml").write_text(SERVICE)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            out.write(SERVICE if relative.startswith("services.d") else "")
            if kind == 0:
                out.write("description: " + "x" * size + "\n")
            elif kind == 1:
                out.write("environment:\n" + "  K: v\n" * (size // 7))
            else:
                out.write("after: [" + "a," * (size // 2) + "]\n")

    return write


def _file_for_folder(folder: str) -> Writer:
    def write(root: Path) -> None:
        shutil.rmtree(root / folder, ignore_errors=True)
        (root / folder).write_text(SERVICE)

    return write


def special_mutants() -> Iterator[Mutant]:
    """Yield every special file mutant once (they are few and each must be an error)."""
    for relative in ("services.d/f.yaml", "hasupd.yaml", "backups.d/f.yaml"):
        if relative.startswith("backups.d"):
            continue  # backups.d does not exist in these layouts; a FIFO there is the same code path
        yield Mutant(f"FIFO {relative}", _fifo(relative), True)
    for relative in ("services.d/z.yaml", "hasupd.yaml"):
        yield Mutant(f"{relative} -> /dev/zero", _symlink(relative, "/dev/zero"), True)
        yield Mutant(f"{relative} -> /dev/urandom", _symlink(relative, "/dev/urandom"), True)
        yield Mutant(f"{relative} -> itself", _symlink(relative, Path(relative).name), True)
        yield Mutant(f"{relative} -> nothing", _symlink(relative, "/nonexistent/x.yaml"), True)
    yield Mutant("hasupd.yaml -> /dev/zero", _symlink("hasupd.yaml", "/dev/zero"), True)
    for folder in ("services.d", "backups.d"):
        yield Mutant(f"{folder} -> itself", _symlink(folder, folder), True)
        yield Mutant(f"{folder} -> /dev/null", _symlink(folder, "/dev/null"), True)
    yield Mutant("backups.d is a file", _file_for_folder("backups.d"), True)
    yield Mutant("services.d is a file", _file_for_folder("services.d"), True)
    for size, kind in ((300 * 1024, 0), (10 * 1024 * 1024, 0), (10 * 1024 * 1024, 1), (250 * 1024, 1)):
        yield Mutant(
            f"big services.d/big.yaml {size} kind {kind}", _big("services.d/big.yaml", size, kind), True
        )
    yield Mutant("big hasupd.yaml", _big("hasupd.yaml", 10 * 1024 * 1024, 0), True)


def random_mutant(rng: random.Random, seeds: list[tuple[str, bytes]]) -> Mutant:
    """Return one mutant of a class chosen at random (byte mutations most often)."""
    roll = rng.random()
    if roll < 0.55:
        return byte_mutant(rng, seeds)
    if roll < 0.9:
        return scalar_mutant(rng)
    if roll < 0.97:
        return nesting_mutant(rng)
    return alias_mutant(rng)


def located_problems(text: str, root: Path) -> list[str]:
    """Return the lines of ``text`` (errors as printed) that are not ``FILE:LINE:COL: ...`` with FILE
    inside ``root``."""
    bad = []
    for line in text.splitlines():
        match = LOCATED.match(line)
        if match is None or not (match["file"] + "/").startswith(f"{root}/"):
            bad.append(line)
    return bad
