"""`hasupd check-config` as an operator runs it."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hasupd.states import ServiceType
from tests.support.harness import REPO
from tests.support.mutants import located_problems, nesting_mutant, special_mutants


def check(config_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasupd", "check-config", "--config-dir", str(config_dir)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_three_errors_in_two_files_are_printed_exactly(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    a = tmp_path / "services.d" / "a.yaml"
    a.write_text("command: [/bin/sleep, '10']\nrestart_sec: 10 parsecs\nrestrat: always\n")
    b = tmp_path / "services.d" / "b.yaml"
    b.write_text("command: [/bin/sleep, '10']\nkill_signal: SIGNOPE\n")
    result = check(tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith(f"{a}:2:14: restart_sec: ")
    assert lines[1].startswith(f"{a}:3:1: restrat: ")
    assert "did you mean 'restart'?" in lines[1]
    assert lines[2].startswith(f"{b}:2:14: kill_signal: ")
    assert result.stdout == ""


def test_a_valid_config_exits_0_quietly(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text("command: [/bin/sleep, '10']\n")
    result = check(tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_shipped_configs_are_valid() -> None:
    for folder in (REPO / "etc" / "hasupd", REPO / "examples" / "demo"):
        result = check(folder)
        assert (result.returncode, result.stderr) == (0, ""), folder


# Commented-out keys that name another service, which the examples do not define.
NAMES_ANOTHER_SERVICE = ("after", "quiesce")


def uncomment(text: str, skip: tuple[str, ...] = ()) -> str:
    """Return ``text`` with every commented-out key (``#key: ...``, and the ``#  ...`` lines that
    continue its block) made live, except the keys in ``skip``; prose comments (``# ...``) stay."""
    out = []
    in_block = False
    for line in text.splitlines():
        key = re.match(r"#([a-z_]+):", line)
        if key and key.group(1) not in skip:
            in_block = True
            out.append(line[1:])
        elif in_block and line.startswith("#  "):
            out.append(line[1:])
        else:
            in_block = False
            out.append(line)
    return "\n".join(out) + "\n"


def test_the_shipped_examples_are_valid_when_enabled(tmp_path: Path) -> None:
    """What an operator does with /etc/hasupd: rename an example to .yaml and uncomment what they
    want. Every example file, with everything in it uncommented (and hasupd.yaml's commented
    settings, which define the repositories the backup example names), passes check-config."""
    etc = REPO / "etc" / "hasupd"
    shutil.copytree(etc, tmp_path / "hasupd")
    (tmp_path / "hasupd" / "hasupd.yaml").write_text(uncomment((etc / "hasupd.yaml").read_text()))
    examples = sorted(etc.glob("*/*.yaml.example"))
    assert {path.parent.name for path in examples} == {"services.d", "backups.d"}, examples
    for example in examples:
        live = tmp_path / "hasupd" / example.parent.name / example.name.removesuffix(".example")
        live.write_text(uncomment(example.read_text(), skip=NAMES_ANOTHER_SERVICE))
        (live.parent / example.name).unlink()
    result = check(tmp_path / "hasupd")
    assert (result.returncode, result.stderr) == (0, "")
    # As shipped (only renamed) they are valid as well.
    for example in examples:
        (tmp_path / "hasupd" / example.parent.name / example.name.removesuffix(".example")).write_text(
            example.read_text()
        )
    result = check(tmp_path / "hasupd")
    assert (result.returncode, result.stderr) == (0, "")


def test_the_service_example_names_every_type() -> None:
    """The `type:` line of the service example lists every type hasupd accepts."""
    text = (REPO / "etc" / "hasupd" / "services.d" / "web.yaml.example").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("type:")]
    # "simple | notify (...) | oneshot": the first word of each alternative.
    listed = {alternative.split()[0] for alternative in line.partition("#")[2].split("|")}
    assert listed == {str(t) for t in ServiceType}, line


def test_a_runtime_dir_too_long_for_unix_sockets_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text("command: [/bin/sleep, '10']\n")
    long_dir = tmp_path / ("r" * 120)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hasupd",
            "run",
            "--config-dir",
            str(tmp_path),
            "--state-dir",
            str(tmp_path / "state"),
            "--runtime-dir",
            str(long_dir),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1
    assert "runtime_dir is too long for unix sockets" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_files_of_issue_15_are_located_errors_without_a_hang(tmp_path: Path) -> None:
    """The real CLI on the special mutants (FIFO, /dev/zero, 10 MB, symlink loops, deep nesting, odd
    scalars): exit 1 within seconds, every line FILE:LINE:COL, no traceback."""
    chosen = list(special_mutants())
    rng = random.Random(15)
    chosen += [nesting_mutant(rng) for _ in range(3)]
    for index, mutant in enumerate(chosen):
        root = tmp_path / f"m{index}"
        root.mkdir()
        mutant.write(root)
        started = time.monotonic()
        result = check(root)
        took = time.monotonic() - started
        assert result.returncode == 1, (mutant.label, result.stderr)
        assert "Traceback" not in result.stderr, (mutant.label, result.stderr)
        assert result.stderr.strip(), mutant.label
        assert located_problems(result.stderr, root) == [], (mutant.label, result.stderr)
        assert took < 20, (mutant.label, took)


def test_a_numeric_user_passes_check_config(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text(
        "command: [/bin/sleep, '10']\nuser: 65534\ngroup: 65534\n"
    )
    result = check(tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
