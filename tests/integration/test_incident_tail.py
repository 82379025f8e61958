"""An incident's output tail against the real daemon: a service whose last words are one enormous
line (1 MiB, or 32 MiB without a newline) still leaves them in ``incident.output``, cut and saying so."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, write_config

PY = sys.executable


@pytest.mark.parametrize(
    ("size", "newline"),
    [(1024 * 1024, True), (32 * 1024 * 1024, False)],
    ids=["1MiB-line", "32MiB-no-newline"],
)
def test_a_huge_last_line_is_kept_cut_to_its_end(
    size: int, newline: bool, tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    end = "\\n" if newline else ""
    program = (
        "import sys\n"
        "print('starting', flush=True)\n"
        f"sys.stdout.write('x' * {size} + 'fatal: disk on fire{end}')\n"
        "sys.stdout.flush()\n"
        "sys.exit(3)\n"
    )
    config = write_config(
        tmp_path / "etc",
        {"talker": {"command": [PY, "-c", program], "output": "file", "restart": "no"}},
    )
    d = hasupd(config)
    output = d.wait_for("incident.output", service="talker", timeout=30)[0]
    lines = output["lines"]
    assert lines, output
    last = lines[-1]
    cut = size + len("fatal: disk on fire") - 8192
    assert last.startswith(f"[cut: {cut} bytes] ") and last.endswith("fatal: disk on fire")
    assert len(last) < 8300
