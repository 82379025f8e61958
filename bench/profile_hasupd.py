"""Where hasupd's time goes when it spawns: wall-clock timers around the pieces of a spawn.

    bench/.env/bin/python bench/profile_hasupd.py startup 500     # start 500 services, time the pieces
    bench/.env/bin/python bench/profile_hasupd.py restart 100     # SIGKILL one service 100 times
    bench/.env/bin/python bench/profile_hasupd.py cgroup-write    # the kernel's cost of joining a cgroup
    ... --no-cgroup      # hasupd's process-group fallback instead of cgroups, for comparison
    ... --no-clone3      # hasupd's subprocess spawn path instead of clone3, for comparison
    ... --hasupd-src DIR # another copy of hasupd (default: this repository)

hasupd runs in a child process (``python bench/profile_hasupd.py --inside OUT run ...``) that wraps the
functions named in TIMED with timers before it runs ``hasupd run``; SIGUSR1 makes it write the totals.
A name that a refactor removed is reported as missing, not an error. Wall clock, not CPU: a spawn waits
for its child to exec, and that wait is most of it. cProfile shows the same and more, but slows every
call; py-spy loses samples in the deep recursion of Manager.start_all.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import ctypes
import functools
import importlib
import json
import os
import pstats
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from children import Programs
from procs import LineReader, kill_tree, make_subreaper
from supervisors import REPO, Hasupd, Policy, ServiceSpec

TIMED = [  # (module, attribute path, label)
    ("hasupd.manager", "Manager.start_all", "Manager.start_all (all initial starts)"),
    ("hasupd.service", "Service._on_exit", "Service._on_exit (exit -> restart scheduled)"),
    ("hasupd.service", "Service._on_restart_due", "Service._on_restart_due (timer -> spawned)"),
    ("hasupd.runtimes.exec", "ExecSpawner.spawn", "ExecSpawner.spawn (one whole spawn)"),
    ("hasupd.runtimes.exec", "popen", "  fallback.popen (fork, preexec, wait for exec)"),
    ("subprocess", "_fork_exec", "    _posixsubprocess.fork_exec (the fork itself)"),
    ("hasupd.host.clone", "CloneSpawner.spawn", "  clone.CloneSpawner.spawn (clone3 until exec)"),
    ("hasupd.host.clone", "_MODULE.spawn", "    _spawn.spawn (the C call)"),
    ("hasupd.runtimes.exec", "_identity", "  exec._identity (passwd lookups)"),
    ("hasupd.runtimes.exec", "_resolve", "  exec._resolve (PATH lookup)"),
    ("hasupd.runtimes.envfile", "load_environment_files", "  load_environment_files"),
    ("hasupd.host.containment", "Containment.scope", "  Containment.scope (new cgroup)"),
    ("hasupd.host.output", "LogFiles.open", "  LogFiles.open (pipe, log file)"),
    ("hasupd.host.containment", "CgroupScope.release", "CgroupScope.release (rmdir)"),
    ("hasupd.host.containment", "_kill_and_remove", "    containment._kill_and_remove (old cgroup)"),
    ("hasupd.runtimes.exec", "ExecSpawner._on_pidfd", "ExecSpawner._on_pidfd (exit seen -> on_exit done)"),
    ("hasupd.host.containment", "CgroupScope.signal_all", "CgroupScope.signal_all"),
    ("hasupd.host.reaper", "Reaper._sweep", "Reaper._sweep (/proc scan)"),
    ("logging", "StreamHandler.emit", "logging StreamHandler.emit (records)"),
    ("hasupd.daemon", "read_config", "read_config (YAML)"),
]


# --------------------------------------------------------------------------- inside hasupd's process


def _wrap(totals: dict[str, list[float]], module: str, path: str, label: str) -> bool:
    try:
        owner: Any = importlib.import_module(module)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        fn = getattr(owner, name)
    except (ImportError, AttributeError):
        return False

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = totals[label]
            entry[0] += 1
            entry[1] += time.perf_counter() - t

    setattr(owner, name, timed)
    return True


def inside(out: Path, argv: list[str]) -> None:
    """Wrap TIMED, then run hasupd with ``argv``; SIGUSR1 writes the totals to ``out``."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    missing = [label for module, path, label in TIMED if not _wrap(totals, module, path, label)]

    profiler = cProfile.Profile() if os.environ.get("PROFILE_CPROFILE") == "1" else None
    if profiler is not None:
        # cProfile around the restart path only (exit seen -> respawned), where calls are few.
        import hasupd.runtimes.exec as exec_module  # noqa: PLC0415 (after the timers wrapped it)

        for owner, name in ((exec_module.ExecSpawner, "_on_pidfd"), (exec_module.ExecSpawner, "spawn")):
            fn = getattr(owner, name)

            def profiled(*a: Any, _fn: Any = fn, **kw: Any) -> Any:
                return profiler.runcall(_fn, *a, **kw)

            setattr(owner, name, profiled)

    def dump(signum: int, frame: object) -> None:
        out.write_text(json.dumps({"totals": totals, "missing": missing}))
        if profiler is not None:
            profiler.dump_stats(str(out.with_suffix(".prof")))

    signal.signal(signal.SIGUSR1, dump)
    sys.setrecursionlimit(20_000)  # Manager.start_all recurses once per service
    sys.argv = ["hasupd", *argv]
    runpy.run_module("hasupd", run_name="__main__", alter_sys=True)


# --------------------------------------------------------------------------- the driver


def _run(args: argparse.Namespace, folder: Path, services: list[ServiceSpec], work: Any) -> None:
    sup = Hasupd(src=args.hasupd_src)
    argv = sup.prepare(folder, services)
    argv = argv[argv.index("run") :] + (["--no-cgroup"] if args.no_cgroup else [])
    argv += ["--no-clone3"] if args.no_clone3 else []
    out = folder / "timing.json"
    cmd = [sys.executable, __file__, "--inside", str(out), *argv]
    with open(folder / "hasupd.out", "wb") as log:
        proc = subprocess.Popen(cmd, env=sup.env(), cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        work(proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        kill_tree()
        sup.cleanup(folder, services)
    data = json.loads(out.read_text())
    for _, _, label in TIMED:
        if label in data["totals"]:
            n, seconds = data["totals"][label]
            print(f"{seconds * 1000:9.1f} ms {n:7d} calls {seconds / n * 1000:8.3f} ms/call  {label}")
    for label in data["missing"]:
        print(f"{'':9} (not found: {label.strip()})")
    if out.with_suffix(".prof").exists():
        pstats.Stats(str(out.with_suffix(".prof"))).sort_stats("cumulative").print_stats(45)


def startup(args: argparse.Namespace, folder: Path, programs: Programs) -> None:
    reader = LineReader(folder / "ready.fifo")
    names = [f"svc-{i:03d}" for i in range(args.n)]
    services = [ServiceSpec(n, programs.ready(n, reader.path)) for n in names]

    def work(proc: subprocess.Popen[bytes]) -> None:
        t0, seen = time.monotonic(), 0
        while seen < args.n and reader.next_line(60) is not None:
            seen += 1
        print(f"{seen} services running after {time.monotonic() - t0:.2f} s (launch included)")

    _run(args, folder, services, work)


def restart(args: argparse.Namespace, folder: Path, programs: Programs) -> None:
    reader = LineReader(folder / "stamp.fifo")
    services = [ServiceSpec("lat-sh", programs.stamp("sh", "lat-sh", reader.path), Policy.FAST)]

    def work(proc: subprocess.Popen[bytes]) -> None:
        line = reader.next_line(60)
        if line is None:
            raise SystemExit("hasupd did not start the service")
        pid, latencies = int(line.split()[1]), []
        for _ in range(args.n):
            time.sleep(0.03)
            t = time.time_ns()
            os.kill(pid, signal.SIGKILL)
            while (line := reader.next_line(15)) is not None and int(line.split()[1]) == pid:
                pass
            if line is None:
                raise SystemExit("no restart within 15 s")
            pid = int(line.split()[1])
            latencies.append((int(line.split()[2]) - t) / 1e6)
        latencies.sort()
        p = [latencies[int(len(latencies) * q)] for q in (0.5, 0.9)]
        print(f"kill -> first action: p50 {p[0]:.2f} ms, p90 {p[1]:.2f} ms, max {latencies[-1]:.2f} ms")

    _run(args, folder, services, work)


class _CloneArgs(ctypes.Structure):
    """struct clone_args of clone3(2), up to ``cgroup`` (Linux 5.7)."""

    _fields_: ClassVar[list[tuple[str, type[ctypes.c_uint64]]]] = [
        (name, ctypes.c_uint64)
        for name in (
            *("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack"),
            *("stack_size", "tls", "set_tid", "set_tid_size", "cgroup"),
        )
    ]


SYS_CLONE3 = 435  # x86_64 and aarch64
CLONE_INTO_CGROUP = 0x200000000


def _child_in_cgroup(path: Path, how: str) -> int:
    """Start a child that exits at once, in the cgroup ``path``; return its pid."""
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid
    if how == "fork + join":  # what hasupd does: the child writes "0" into cgroup.procs before exec
        fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.write(fd, b"0")
            os._exit(0)
        os.close(fd)
        return pid
    # clone3(CLONE_INTO_CGROUP): the child is born in the cgroup. Only safe here because the child
    # does nothing but _exit; a real spawner would exec at once (from C, or a small helper).
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=dfd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid = libc.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        os._exit(0)
    os.close(dfd)
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone3")
    return int(pid)


def cgroup_write(args: argparse.Namespace, folder: Path, programs: Programs) -> None:
    """The kernel's price of putting a new child into a new cgroup, 30 ms or 1 ms after the last."""
    mount = next(
        Path(line.split(" - ")[0].split()[4])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split(" - ")[1].startswith("cgroup2 ")
    )
    base = Path(tempfile.mkdtemp(prefix="bench-cgroup-", dir=mount))
    try:
        for how, gap in (("fork", 0.03), ("fork + join", 0.03), ("fork + join", 0.001), ("clone3", 0.03)):
            times = []
            for i in range(40):
                path = base / f"c{i}"
                path.mkdir()
                time.sleep(gap)
                t = time.perf_counter()
                os.waitpid(_child_in_cgroup(path, how), 0)
                times.append((time.perf_counter() - t) * 1000)
                path.rmdir()
            times.sort()
            label = {"fork": "fork, no cgroup", "clone3": "clone3(CLONE_INTO_CGROUP)"}.get(how, how)
            print(f"{label:26} {gap * 1000:3.0f} ms apart: p50 {times[20]:6.2f} ms, p90 {times[36]:6.2f} ms")
    finally:
        base.rmdir()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--inside":
        inside(Path(sys.argv[2]), sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["startup", "restart", "cgroup-write"])
    p.add_argument("n", type=int, nargs="?", default=100, help="services (startup) or kills (restart)")
    p.add_argument("--no-cgroup", action="store_true", help="hasupd's process-group fallback")
    p.add_argument("--no-clone3", action="store_true", help="hasupd's subprocess spawn path")
    p.add_argument("--hasupd-src", type=Path, default=REPO, help="folder holding the hasupd package")
    args = p.parse_args()
    args.hasupd_src = args.hasupd_src.resolve()
    make_subreaper()
    with tempfile.TemporaryDirectory(prefix="profile-", dir=Path(__file__).parent / ".work") as tmp:
        folder = Path(tmp)
        programs = Programs.write(folder / "programs")
        {"startup": startup, "restart": restart, "cgroup-write": cgroup_write}[args.what](
            args, folder, programs
        )


if __name__ == "__main__":
    main()
