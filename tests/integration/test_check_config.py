"""`hasupd check-config` as an operator runs it."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.harness import REPO
from tests.unit.config.mutants import located_problems, nesting_mutant, special_mutants


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
