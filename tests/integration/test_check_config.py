"""`hasupd check-config` as an operator runs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from hasupd.states import ServiceType
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
