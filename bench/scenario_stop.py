"""Scenario 7: stopping many services. ``stop_services`` services run ``sleep infinity``; the harness
sends the supervisor SIGTERM (the graceful shutdown of all three) and times until the supervisor has
exited and none of the services' processes is left (zombies count as gone)."""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Any

from procs import LineReader, descendants
from runner import Context, summary, wait_until
from supervisors import ServiceSpec, Supervisor

STOP_TIMEOUT_SEC = 60.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def stop(ctx: Context) -> dict[str, Any]:
    """Time SIGTERM -> supervisor exited and every service process gone, ``stop_rounds`` times."""
    s = ctx.settings
    times: dict[str, list[float]] = {sup.name: [] for sup in ctx.supervisors}
    for r in range(s.stop_rounds):
        for sup in ctx.supervisors:
            ctx.log(f"stop {s.stop_services} services round {r + 1}: {sup.name}")
            times[sup.name].append(round(_stop_run(ctx, sup, s.stop_services, r), 4))
    return {
        "services": s.stop_services,
        "stop_sec": {name: {**summary(v, 4), "values": v} for name, v in times.items()},
    }


def _stop_run(ctx: Context, sup: Supervisor, size: int, r: int) -> float:
    reader = LineReader(ctx.root / f"stop-{size}-{sup.name}-{r}.fifo")
    names = [f"svc-{i:03d}" for i in range(size)]
    services = [ServiceSpec(n, ctx.programs.ready(n, reader.path)) for n in names]
    try:
        with ctx.running(sup, f"stop-{size}", services) as run:
            run.wait_ready(reader, size)
            time.sleep(ctx.settings.idle_settle_sec)
            tree = descendants(run.pid)
            # A pidfd, not Popen.wait(timeout): that one polls in steps of up to 50 ms.
            pidfd = os.pidfd_open(run.pid)
            try:
                t0 = time.monotonic()
                os.kill(run.pid, signal.SIGTERM)
                if not select.select([pidfd], [], [], STOP_TIMEOUT_SEC)[0]:
                    raise RuntimeError(f"{sup.name} still running {STOP_TIMEOUT_SEC:g}s after SIGTERM")
            finally:
                os.close(pidfd)
            if not wait_until(lambda: not any(_alive(p) for p in tree), STOP_TIMEOUT_SEC, 0.001):
                raise RuntimeError(f"{sup.name}: services still running {STOP_TIMEOUT_SEC:g}s after SIGTERM")
            return time.monotonic() - t0
    finally:
        reader.close()
