"""Scenario 5: one service writes a lot of output as fast as it can, under each supervisor (file), and
under hasupd with ``output: journal`` into a real journald. Runs alternate as in scenarios.py."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import journal
from procs import cpu_seconds, descendants
from runner import START_TIMEOUT_SEC, Context, summary
from supervisors import Policy, ServiceSpec, Supervisor


def output(ctx: Context) -> dict[str, Any]:
    """One service writes ``output_bytes`` of 100-byte lines as fast as it can."""
    s = ctx.settings
    hasupd = next((sup for sup in ctx.supervisors if sup.name == "hasupd"), None)
    journal_note = journal.unavailable() if hasupd is not None else "hasupd not selected"
    if ctx.journal_disabled:
        journal_note = "disabled with --no-journal"
    variants = [(sup, "file") for sup in ctx.supervisors]
    if hasupd is not None and journal_note is None:
        variants.append((hasupd, "journal"))
        ctx.journald = journal.Journald(ctx.root / "journald")
    direct: list[dict[str, Any]] = []
    to_file: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {f"{sup.name}/{mode}": [] for sup, mode in variants}
    try:
        for r in range(s.output_rounds):
            ctx.log(f"output round {r + 1}/{s.output_rounds}: writer -> /dev/null, writer -> a file")
            direct.append(_writer_direct(ctx, f"null-{r}", Path(os.devnull)))
            to_file.append(_writer_direct(ctx, f"file-{r}", ctx.root / f"writer-direct-{r}.log"))
            for sup, mode in variants:
                ctx.log(f"output round {r + 1}/{s.output_rounds}: {sup.name} {mode}")
                runs[f"{sup.name}/{mode}"].append(_writer_supervised(ctx, sup, mode, r))
    finally:
        if ctx.journald is not None:
            ctx.journald.stop()
            ctx.journald = None
    floor = statistics.median(d["writer_sec"] for d in direct)
    for values in runs.values():
        for v in values:
            v["writer_slowdown"] = round(v["writer_sec"] / floor, 2)
    keys = ("throughput_mb_s", "writer_sec", "writer_slowdown", "supervisor_cpu_sec_per_100mb")
    return {
        "bytes": s.output_bytes,
        "journal": journal_note or "real systemd-journald in a private mount namespace",
        "direct_devnull": {"writer_sec": summary([d["writer_sec"] for d in direct], 4), "runs": direct},
        "direct_file": {
            "writer_sec": summary([d["writer_sec"] for d in to_file], 4),
            "throughput_mb_s": summary([d["throughput_mb_s"] for d in to_file], 1),
            "runs": to_file,
        },
        "variants": {
            name: {
                **{k: summary([v[k] for v in values]) for k in keys},
                **(
                    {
                        "journald_cpu_sec_per_100mb": summary(
                            [v["journald_cpu_sec_per_100mb"] for v in values]
                        ),
                        "readback_cpu_sec_per_100mb": summary(
                            [v["readback_cpu_sec_per_100mb"] for v in values]
                        ),
                    }
                    if name.endswith("/journal")
                    else {}
                ),
                "runs": values,
            }
            for name, values in runs.items()
        },
    }


def _open_go(go: Path, timeout: float, check: Callable[[], None]) -> int:
    """Open the writer's go FIFO once the writer waits on it; return the fd.

    ``check`` raises if whatever should start the writer has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(go, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # ENXIO: no reader yet
            check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the writer did not start within {timeout:g}s") from None
            time.sleep(0.01)


def _check_alive(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        raise RuntimeError(f"the writer exited with status {child.returncode} before it was told to start")


def _writer_paths(ctx: Context, label: str) -> tuple[Path, Path, str]:
    go = ctx.root / f"{label}.go"
    os.mkfifo(go)
    return go, ctx.root / f"{label}.json", f"END-{uuid.uuid4().hex}"


def _writer_direct(ctx: Context, label: str, target: Path) -> dict[str, Any]:
    """The writer with its stdout on ``target`` (/dev/null, or a file), no supervisor."""
    go, result, marker = _writer_paths(ctx, f"writer-direct-{label}")
    argv = ctx.programs.writer(ctx.settings.output_bytes, go, result, marker)
    with open(target, "wb") as out:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, start_new_session=True)
    try:
        fd = _open_go(go, 60, lambda: _check_alive(child))
        os.write(fd, b"g")
        os.close(fd)
        child.wait(600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if target != Path(os.devnull):
            target.unlink()
    res = json.loads(result.read_text())
    seconds = (res["end_ns"] - res["start_ns"]) / 1e9
    return {"writer_sec": round(seconds, 6), "throughput_mb_s": round(res["bytes"] / 1e6 / seconds, 1)}


def _tail_has(path: Path, marker: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return marker.encode() in f.read()
    except FileNotFoundError:
        return False


def _writer_supervised(ctx: Context, sup: Supervisor, mode: str, r: int) -> dict[str, Any]:
    nbytes = ctx.settings.output_bytes
    go, result, marker = _writer_paths(ctx, f"writer-{sup.name}-{mode}-{r}")
    spec = ServiceSpec("writer", ctx.programs.writer(nbytes, go, result, marker), Policy.ONCE, output=mode)
    journald = ctx.journald if mode == "journal" else None
    with ctx.running(sup, f"output-{mode}", [spec], in_journal_ns=journald is not None) as run:
        fd = _open_go(go, START_TIMEOUT_SEC, run.check)
        cpu0 = cpu_seconds(run.pid)
        jd0 = cpu_seconds(journald.pid) if journald is not None else 0.0
        rb0 = _readback_cpu(run.pid) if journald is not None else {}
        os.write(fd, b"g")
        os.close(fd)
        if not run.wait(result.exists, 600, 0.01):
            raise RuntimeError(f"{sup.name}: the writer did not finish:\n{run.tail()}")
        res = json.loads(result.read_text())
        if journald is None:
            out = sup.output_file(run.folder, "writer")
            if not run.wait(lambda: _tail_has(out, marker), 120, 0.01):
                raise RuntimeError(f"{sup.name}: the end marker never reached {out}:\n{run.tail()}")
            end_ns = time.time_ns()
        else:
            end_ns = res["end_ns"]  # journald, not hasupd, carries the bytes from here
        cpu = cpu_seconds(run.pid) - cpu0
        jd = _settled_cpu(journald.pid) - jd0 if journald is not None else None
        rb = None
        if journald is not None:  # reading the journal back (error groups), once it has caught up
            time.sleep(2.0)
            rb = sum(now - rb0.get(pid, 0.0) for pid, now in _readback_cpu(run.pid).items())
    seconds = (end_ns - res["start_ns"]) / 1e9
    per_100mb = 1e8 / res["bytes"]
    row: dict[str, Any] = {
        "throughput_mb_s": round(res["bytes"] / 1e6 / seconds, 1),
        "writer_sec": round((res["end_ns"] - res["start_ns"]) / 1e9, 6),
        "supervisor_cpu_sec": round(cpu, 2),
        "supervisor_cpu_sec_per_100mb": round(cpu * per_100mb, 3),
    }
    if jd is not None:
        row["journald_cpu_sec_per_100mb"] = round(jd * per_100mb, 3)
    if rb is not None:
        row["readback_cpu_sec_per_100mb"] = round(rb * per_100mb, 3)
    return row


def _readback_cpu(root: int) -> dict[int, float]:
    """CPU seconds by pid of the processes below ``root`` that read the journal back for hasupd's error
    groups (its journal filter and the journalctl under it), not counted as the supervisor's own."""
    out: dict[int, float] = {}
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"hasupd.observe.journal_filter" in cmdline or cmdline.startswith(b"journalctl"):
                out[pid] = cpu_seconds(pid)
        except (OSError, ProcessLookupError):
            continue
    return out


def _settled_cpu(pid: int, cap_sec: float = 120.0) -> float:
    """Return the CPU time of ``pid`` once it stopped growing (journald has stored what it received)."""
    deadline = time.monotonic() + cap_sec
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now == last:
            return now
        last = now
    return last
