"""Scenarios 1-4: restart latency, crash loop, start-up and idle cost. Each runs every supervisor in
turn, round after round (A B C A B C ...), so that drift of the machine hits all of them alike, and
returns plain data for results.json. (5 and 6: scenario_output.py, scenario_probes.py.)"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from procs import LineReader, count_descendants, cpu_seconds, rss_mb
from runner import START_TIMEOUT_SEC, Context, Running, SupervisorDied, split, summary
from supervisors import Policy, ServiceSpec, Supervisor

KINDS = ("sh", "python")


# --------------------------------------------------------------------------- 1. restart latency


def restart_latency(ctx: Context) -> dict[str, Any]:
    """SIGKILL the main process; measure kill -> the new process's first action (its own time stamp)."""
    s = ctx.settings
    rng = random.Random(1)
    samples: dict[str, dict[str, list[float]]] = {sup.name: {k: [] for k in KINDS} for sup in ctx.supervisors}
    failures = dict.fromkeys(samples, 0)
    direct: dict[str, list[float]] = {k: [] for k in KINDS}
    plans = {
        sup.name: split(s.latency_kills_slow.get(sup.name, s.latency_kills), s.latency_rounds)
        for sup in ctx.supervisors
    }
    direct_plan = split(s.latency_baseline, s.latency_rounds)
    for r in range(s.latency_rounds):
        _direct_spawns(ctx, direct_plan[r], direct, rng)
        for sup in ctx.supervisors:
            kills = plans[sup.name][r]
            ctx.log(f"restart latency round {r + 1}/{s.latency_rounds}: {sup.name}, {kills} kills each")
            failures[sup.name] += _kill_round(ctx, sup, f"{sup.name}-{r}", kills, samples[sup.name], rng=rng)
    return {
        "unit": "ms",
        "direct_spawn": {k: summary(v) for k, v in direct.items()},
        "supervisors": {
            name: {
                **{k: {**summary(v), "samples": [round(x, 3) for x in v]} for k, v in kinds.items()},
                "failures": failures[name],
            }
            for name, kinds in samples.items()
        },
    }


def _parse_stamp(line: bytes) -> tuple[str, int, int]:
    name, pid, stamp = line.decode().split()
    return name, int(pid), int(stamp)


def _direct_spawns(ctx: Context, n: int, out: dict[str, list[float]], rng: random.Random) -> None:
    """The floor: the harness itself forks and execs the same child."""
    reader = LineReader(ctx.root / "direct.fifo")
    try:
        for _ in range(n):
            for kind in KINDS:
                time.sleep(ctx.settings.kill_settle_sec * (1 + rng.random()))
                argv = ctx.programs.stamp(kind, f"direct-{kind}", reader.path)
                t = time.time_ns()
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
                line = reader.next_line(10)
                child.kill()
                child.wait()
                if line is not None:
                    out[kind].append((_parse_stamp(line)[2] - t) / 1e6)
    finally:
        reader.close()


def _kill_round(
    ctx: Context, sup: Supervisor, label: str, kills: int, out: dict[str, list[float]], *, rng: random.Random
) -> int:
    """Run ``kills`` kills of each child kind under one supervisor; return how many got no restart."""
    reader = LineReader(ctx.root / f"latency-{label}.fifo")
    services = [
        ServiceSpec(f"lat-{k}", ctx.programs.stamp(k, f"lat-{k}", reader.path), Policy.FAST) for k in KINDS
    ]
    failures = 0
    try:
        with ctx.running(sup, "latency", services) as run:
            pids: dict[str, int] = {}
            deadline = time.monotonic() + START_TIMEOUT_SEC
            while len(pids) < len(services) and (line := run.read(reader, deadline - time.monotonic())):
                name, pid, _ = _parse_stamp(line)
                pids[name] = pid
            if len(pids) < len(services):
                raise RuntimeError(f"{sup.name}: the latency services did not start:\n{run.tail()}")
            for _ in range(kills):
                for kind in KINDS:
                    time.sleep(ctx.settings.kill_settle_sec * (1 + rng.random()))
                    name = f"lat-{kind}"
                    old = pids[name]
                    t = time.time_ns()
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(old, signal.SIGKILL)
                    stamp = _wait_restart(run, reader, pids, name, old)
                    if stamp is None:
                        failures += 1
                        if name not in pids or pids[name] == old:
                            raise RuntimeError(f"{sup.name}: {name} was not restarted:\n{run.tail()}")
                        continue
                    out[kind].append((stamp - t) / 1e6)
    finally:
        reader.close()
    return failures


def _wait_restart(run: Running, reader: LineReader, pids: dict[str, int], name: str, old: int) -> int | None:
    """Wait for the stamp of a new ``name`` process; return its time, None after 15 s."""
    deadline = time.monotonic() + 15
    while (left := deadline - time.monotonic()) > 0:
        line = run.read(reader, left)
        if line is None:
            return None
        got, pid, stamp = _parse_stamp(line)
        pids[got] = pid
        if got == name and pid != old:
            return stamp
    return None


# --------------------------------------------------------------------------- 2. crash loop


def _starts(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def crash_loop(ctx: Context) -> dict[str, Any]:
    """A program that exits 1 at once: restarts per second at the minimum delay, and when (whether)
    each supervisor gives up with a limit of 5 starts."""
    s = ctx.settings
    rate: dict[str, dict[str, list[float]]] = {
        sup.name: {"restarts_per_sec": [], "cpu_percent": []} for sup in ctx.supervisors
    }
    for r in range(s.crash_rounds):
        for sup in ctx.supervisors:
            ctx.log(f"crash loop rate round {r + 1}/{s.crash_rounds}: {sup.name}")
            counter = ctx.root / f"crash-{sup.name}-{r}.starts"
            spec = ServiceSpec("crash", ctx.programs.crash(counter), Policy.FAST)
            with ctx.running(sup, "crash-rate", [spec]) as run:
                if not run.wait(counter.exists, START_TIMEOUT_SEC):  # the first start creates it
                    raise RuntimeError(f"{sup.name}: the crashing service never started:\n{run.tail()}")
                n1, c1, t1 = len(_starts(counter)), cpu_seconds(run.pid), time.monotonic()
                time.sleep(s.crash_window_sec)
                n2, c2, t2 = len(_starts(counter)), cpu_seconds(run.pid), time.monotonic()
            rate[sup.name]["restarts_per_sec"].append(round((n2 - n1) / (t2 - t1), 2))
            rate[sup.name]["cpu_percent"].append(round(100 * (c2 - c1) / (t2 - t1), 1))
    give_up: dict[str, list[dict[str, Any]]] = {sup.name: [] for sup in ctx.supervisors}
    for r in range(s.give_up_rounds):
        for sup in ctx.supervisors:
            ctx.log(f"crash loop give-up round {r + 1}/{s.give_up_rounds}: {sup.name}")
            give_up[sup.name].append(_give_up_run(ctx, sup, r))
    return {
        "window_sec": s.crash_window_sec,
        "give_up_cap_sec": s.give_up_cap_sec,
        "rate": {
            name: {key: {**summary(v, 2), "values": v} for key, v in values.items()}
            for name, values in rate.items()
        },
        "give_up": give_up,
    }


def _give_up_run(ctx: Context, sup: Supervisor, r: int) -> dict[str, Any]:
    counter = ctx.root / f"give-up-{sup.name}-{r}.starts"
    spec = ServiceSpec("crash", ctx.programs.crash(counter), Policy.LIMITED)
    with ctx.running(sup, "give-up", [spec]) as run:
        log = sup.log_file(run.folder)
        marker = sup.give_up_marker

        def gave_up() -> bool:
            with contextlib.suppress(FileNotFoundError):
                return marker is not None and marker in log.read_text(errors="replace")
            return False

        seen = run.wait(gave_up, ctx.settings.give_up_cap_sec)
        detected = time.time_ns()
        starts = _starts(counter)
    if not starts:
        raise RuntimeError(f"{sup.name}: the crashing service never started")
    return {
        "gave_up": seen,
        "starts": len(starts),
        "seconds_to_give_up": round((detected - starts[0]) / 1e9, 2) if seen else None,
        "last_start_after_sec": round((starts[-1] - starts[0]) / 1e9, 2),
    }


# --------------------------------------------------------------------------- 3 + 4. start-up and idle


def startup_and_idle(ctx: Context) -> dict[str, Any]:
    """Launch with N services whose programs report once running; time until all N did. The first
    round of each size then leaves them idle (``sleep infinity``) and measures the supervisor.

    A supervisor that crashes is recorded as such; if it has a workaround (hasupd's recursion limit)
    the run is repeated with it and the result is marked.
    """
    s = ctx.settings
    startup: dict[str, dict[str, list[float]]] = {}
    idle: dict[str, dict[str, list[dict[str, Any]]]] = {}
    crashes: dict[str, dict[str, dict[str, str]]] = {}
    for size in sorted(set(s.idle_sizes) | set(s.startup_sizes)):
        key = str(size)
        if size in s.startup_sizes:
            startup[key] = {sup.name: [] for sup in ctx.supervisors}
        if size in s.idle_sizes:
            idle[key] = {sup.name: [] for sup in ctx.supervisors}
        rounds = s.startup_rounds if size in s.startup_sizes else 1
        for r in range(rounds):
            for sup in ctx.supervisors:
                measure_idle = r == 0 and size in s.idle_sizes
                ctx.log(
                    f"start-up{' + idle' if measure_idle else ''} {size} services round {r + 1}: {sup.name}"
                )
                try:
                    seconds, quiet = _startup_run(ctx, sup, size, f"{r}", measure_idle)
                except SupervisorDied as died:
                    alternative = sup.workaround()
                    if alternative is None:
                        raise
                    variant, change = alternative
                    crashes.setdefault(key, {})[sup.name] = {"error": died.last_line, "workaround": change}
                    ctx.log(f"{sup.name} crashed ({died.last_line}); again with: {change}")
                    seconds, quiet = _startup_run(ctx, variant, size, f"{r}-workaround", measure_idle)
                if size in s.startup_sizes:
                    startup[key][sup.name].append(round(seconds, 3))
                if quiet is not None:
                    idle[key][sup.name].append(quiet)
    return {
        "startup_sec": {
            size: {name: {**summary(v), "values": v} for name, v in per.items()}
            for size, per in startup.items()
        },
        "idle_window_sec": s.idle_window_sec,
        "idle": idle,
        "crashes": crashes,
    }


def _startup_run(
    ctx: Context, sup: Supervisor, size: int, label: str, measure_idle: bool
) -> tuple[float, dict[str, Any] | None]:
    """Return the seconds until ``size`` services ran, and the idle measurement if asked for."""
    reader = LineReader(ctx.root / f"ready-{size}-{sup.name}-{label}.fifo")
    names = [f"svc-{i:03d}" for i in range(size)]
    services = [ServiceSpec(n, ctx.programs.ready(n, reader.path)) for n in names]
    try:
        with ctx.running(sup, f"startup-{size}", services) as run:
            seconds = run.wait_ready(reader, size)
            return seconds, _idle(ctx, run, size) if measure_idle else None
    finally:
        reader.close()


def _idle(ctx: Context, run: Running, size: int) -> dict[str, Any]:
    s = ctx.settings
    time.sleep(s.idle_settle_sec)
    c0, t0 = cpu_seconds(run.pid), time.monotonic()
    rss = [rss_mb(run.pid)]
    while (left := t0 + s.idle_window_sec - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        rss.append(rss_mb(run.pid))
    c1, t1 = cpu_seconds(run.pid), time.monotonic()
    return {
        "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 3),
        "rss_mb_max": round(max(rss), 1),
        "rss_mb_end": round(rss[-1], 1),
        "children_running": count_descendants(os.getpid(), "sleep"),
        "services": size,
    }
