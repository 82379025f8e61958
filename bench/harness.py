"""Benchmark hasupd against supervisord and circus on the same workloads; write results.json and
RESULTS.md. ``bench/run`` prepares the environment and calls this; ``--quick --only hasupd`` runs a
tiny version on any interpreter that can import hasupd (the smoke test does).

Every process the harness starts is killed when it ends, however it ends: the harness is a child
subreaper and kills its whole process tree by pid (plus hasupd's cgroups of the run) after each
supervisor run, after each scenario and on exit; each supervisor also dies with the harness
(PR_SET_PDEATHSIG) if the harness itself is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import report
import scenario_output
import scenario_probes
import scenario_stop
import scenarios
from children import Programs
from procs import CLK_TCK, kill_tree, make_subreaper
from runner import Context, Settings
from supervisors import ALL, REPO, Hasupd, Supervisor

BENCH = Path(__file__).resolve().parent
SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "restart_latency": scenarios.restart_latency,
    "crash_loop": scenarios.crash_loop,
    "startup_and_idle": scenarios.startup_and_idle,
    "output": scenario_output.output,
    "probes": scenario_probes.probes,
    "stop": scenario_stop.stop,
}
SCALED_NOTE = (
    "Scaled down to fit 15 minutes on 2 cores: supervisord gets {slow} kills per child kind instead of "
    "{kills} (each of its restarts takes about 1 s); idle cost is measured over {idle:g} s per run "
    "(one run per size and supervisor) instead of 60 s."
)
COMPARABLE = [
    "Comparable settings (see bench/supervisors.py):",
    '- minimum restart delay: hasupd `restart: always`, `restart_sec: "0"`, start limit 1,000,000/s; '
    "supervisord `startsecs=0`, `autorestart=true`; circus `respawn`, `max_retry=-1`, `check_delay=0.1` "
    "(circus sees a dead process only when it polls; its default is 1 s, 5 s from an ini file).",
    "- giving up after 5 starts, each with its default backoff: hasupd `start_limit: {burst: 5, "
    "interval_sec: 60s}` (restart_sec 100 ms, doubling); supervisord `startsecs=1`, `startretries=4` "
    "(waits 1, 2, 3, 4 s); "
    "circus `max_retry=5`, `check_delay=1` (circus counts only failed spawns against max_retry).",
    "- output to a file per service rotated at 10 MiB keeping 5 (hasupd's fixed rotation) for all three; "
    "hasupd `output: journal` goes to a real systemd-journald with rate limiting off.",
]


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        return f"? ({e.strerror})"
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0] if done.returncode == 0 else "?"


def _os_name() -> str:
    pretty = "?"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip('"')
    debian = Path("/etc/debian_version")
    return f"{pretty} (debian_version {debian.read_text().strip()})" if debian.exists() else pretty


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine(supervisors: list[Supervisor], programs: Programs, command: str) -> dict[str, Any]:
    versions = {sup.name: sup.version() for sup in supervisors}
    versions["systemd-journald"] = _first_line(["journalctl", "--version"])
    return {
        "command": command,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "child_python": f"{_first_line([programs.python, '-V'])} ({programs.python})",
        "versions": versions,
        "nofile": "{} soft / {} hard".format(*resource.getrlimit(resource.RLIMIT_NOFILE)),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "other_load": {},
    }


@dataclass(frozen=True)
class Load:
    """CPU time of the whole machine and of this process tree, to tell how busy others kept it."""

    wall: float
    machine: float  # busy CPU seconds of all cores (user, nice, system, irq, softirq)
    ours: float  # CPU seconds of the harness and every descendant it has reaped

    @classmethod
    def now(cls) -> Load:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
        return cls(time.monotonic(), busy / CLK_TCK, sum(os.times()[:4]))

    def others_since(self, before: Load) -> float:
        """Return the cores that processes outside this tree kept busy on average since ``before``.

        Exact once every process of the tree has been reaped (kill_tree does that after each scenario).
        """
        wall = self.wall - before.wall
        theirs = (self.machine - before.machine) - (self.ours - before.ours)
        return round(max(theirs, 0.0) / wall, 2) if wall > 0 else 0.0


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (seconds per scenario), for the smoke test"
    )
    p.add_argument(
        "--only",
        default="hasupd,supervisord,circus",
        help="comma-separated supervisors (default: the three; also hasupd-subprocess, --no-clone3)",
    )
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated scenarios (default: all)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="folder for results.json and RESULTS.md (default: bench/, bench/.work/quick with --quick)",
    )
    p.add_argument(
        "--work-dir", type=Path, default=BENCH / ".work", help="scratch space (a fresh folder per run)"
    )
    p.add_argument("--keep", action="store_true", help="keep the run's scratch folder")
    p.add_argument("--no-journal", action="store_true", help="skip hasupd output: journal (needs root)")
    p.add_argument(
        "--hasupd-src",
        type=Path,
        default=REPO,
        help="folder holding the hasupd package to run (default: this repository's working tree)",
    )
    p.add_argument("--hasupd-label", help="how --hasupd-src was made, for the report (e.g. a commit)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override one setting of runner.Settings, e.g. --set idle_window_sec=60",
    )
    p.add_argument("--invoked-as", help="the command line to record (bench/run passes its own)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = (Settings.quick() if args.quick else Settings()).with_overrides(args.set)
    names = [n for n in args.only.split(",") if n]
    chosen = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in ALL] + [n for n in chosen if n not in SCENARIOS]
    if unknown:
        print(f"unknown supervisor or scenario: {', '.join(unknown)}", file=sys.stderr)
        return 2
    supervisors = [
        ALL[n](src=args.hasupd_src.resolve(), label=args.hasupd_label)  # type: ignore[call-arg]
        if issubclass(ALL[n], Hasupd)
        else ALL[n]()
        for n in names
    ]
    for sup in supervisors:
        if isinstance(sup, Hasupd):
            sup.byte_compile()
    for sup in supervisors:
        exe = Path(sys.executable).parent / ("circusd" if sup.name == "circus" else sup.name)
        if not isinstance(sup, Hasupd) and not exe.exists():
            print(
                f"{exe} not found: run bench/run, which installs supervisor and circus in bench/.env",
                file=sys.stderr,
            )
            return 2
    out_dir = args.out or (BENCH / ".work" / "quick" if args.quick else BENCH)
    command = args.invoked_as or shlex.join([sys.executable, *sys.argv])

    make_subreaper()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    programs = Programs.write(root / "programs")
    ctx = Context(settings, supervisors, root, programs, journal_disabled=args.no_journal)
    results: dict[str, Any] = {
        "meta": machine(supervisors, programs, command),
        "settings": settings.as_dict(),
        "scenarios": {},
        "errors": {},
    }
    started = time.monotonic()
    try:
        for name in chosen:
            before = Load.now()
            try:
                results["scenarios"][name] = SCENARIOS[name](ctx)
            except Exception as e:  # noqa: BLE001  (one broken scenario must not lose the others' results)
                results["errors"][name] = f"{type(e).__name__}: {e}"
                ctx.log(f"{name} FAILED: {e}")
            finally:
                kill_tree()
            results["meta"]["other_load"][name] = Load.now().others_since(before)
    finally:
        kill_tree()
        for sup in supervisors:
            if sup.name == "hasupd":
                results["meta"]["hasupd_containment"] = sup.containment
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results["meta"]["duration_sec"] = round(time.monotonic() - started)
    results["meta"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    if not args.quick:
        results["meta"]["scaled_note"] = SCALED_NOTE.format(
            slow=settings.latency_kills_slow.get("supervisord"),
            kills=settings.latency_kills,
            idle=settings.idle_window_sec,
        )
    results["meta"]["comparable"] = COMPARABLE
    results["targets"] = report.targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "RESULTS.md").write_text(report.render(results))
    ctx.log(f"wrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
