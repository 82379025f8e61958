"""`hasupd check-config` as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO


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
