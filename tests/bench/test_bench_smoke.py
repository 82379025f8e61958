"""The benchmark harness in its tiny mode, for hasupd only: it runs, and its results are sane.

Uses this interpreter and the repository's hasupd (no supervisord, circus or PyPI needed; or the
copy named by HASUPD_BENCH_SRC). The
``output: journal`` part needs root (a private mount namespace for a real journald); without root
it is skipped only when HASUPD_TEST_NO_ROOT=1 says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.harness import require

REPO = Path(__file__).resolve().parents[2]


def run_quick(tmp_path: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(REPO / "bench" / "harness.py"),
        "--quick",
        "--only",
        "hasupd",
        "--out",
        str(tmp_path / "out"),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    if os.environ.get("HASUPD_BENCH_SRC"):  # another copy of hasupd (bench/run --hasupd-ref makes one)
        argv += ["--hasupd-src", os.environ["HASUPD_BENCH_SRC"]]
    if os.geteuid() != 0:
        require(False, "the output: journal scenario needs root", "HASUPD_TEST_NO_ROOT")
        argv.append("--no-journal")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, cwd=REPO)
    assert done.returncode == 0, f"harness failed:\n{done.stderr[-4000:]}"
    assert (tmp_path / "out" / "RESULTS.md").read_text().startswith("# hasupd vs supervisord vs circus")
    results: dict[str, Any] = json.loads((tmp_path / "out" / "results.json").read_text())
    return results


def test_quick_benchmark_of_hasupd(tmp_path: Path) -> None:
    results = run_quick(tmp_path)
    assert results["errors"] == {}
    assert set(results["scenarios"]) == {
        "restart_latency",
        "crash_loop",
        "startup_and_idle",
        "output",
        "probes",
        "stop",
    }
    assert results["meta"]["versions"]["hasupd"].startswith("0.")
    sc = results["scenarios"]

    latency = sc["restart_latency"]["supervisors"]["hasupd"]
    assert latency["failures"] == 0
    for kind in ("sh", "python"):
        assert latency[kind]["n"] == 10
        assert 0 < latency[kind]["min"] <= latency[kind]["median"] <= latency[kind]["max"] < 5000

    crash = sc["crash_loop"]
    assert crash["rate"]["hasupd"]["restarts_per_sec"]["median"] > 1
    (give_up,) = crash["give_up"]["hasupd"]
    assert give_up["gave_up"] is True
    assert give_up["starts"] == 5
    assert 0 < give_up["seconds_to_give_up"] < 15

    (idle,) = sc["startup_and_idle"]["idle"]["10"]["hasupd"]
    assert idle["children_running"] == idle["services"] == 10
    assert 0 <= idle["cpu_percent"] < 50
    assert 5 < idle["rss_mb_max"] < 500
    assert 0 < sc["startup_and_idle"]["startup_sec"]["10"]["hasupd"]["median"] < 60

    variants = sc["output"]["variants"]
    assert variants["hasupd/file"]["throughput_mb_s"]["median"] > 1
    if os.geteuid() == 0:
        journal = variants["hasupd/journal"]
        assert journal["throughput_mb_s"]["median"] > 0.1
        assert journal["journald_cpu_sec_per_100mb"]["median"] > 0  # journald, not hasupd, did the work

    probes = sc["probes"]["hasupd"]
    assert probes["measured"] or probes["reason"]

    stop = sc["stop"]
    assert stop["services"] == 10
    assert 0 < stop["stop_sec"]["hasupd"]["median"] < 30

    assert {t["target"] for t in results["targets"]} >= {
        "restart latency at zero delay, /bin/sh child",
        "restart latency at zero delay, Python child",
        "stop, 10 services",
    }
