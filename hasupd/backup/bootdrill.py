"""Boot drills (``drill: {boot: true}``): prove the application starts on its backup, not only that the
files come back.

1. The latest snapshot of the job's paths is restored under ``SCRATCH/files`` (and verified as in a plain
   drill); each database's latest dump is loaded into a drill copy: a new database ``NAME_drill_STAMP`` in
   the same server (PostgreSQL, MariaDB), a file ``SCRATCH/db/FILE`` (SQLite).
2. Each service of the job's ``quiesce`` list is started once more as a *shadow instance*: its command
   and health probes with the substitutions below, in a private network namespace (``unshare --net``,
   loopback up), so that it can bind its usual ports and reach nothing of the live instance over TCP.
3. The service's own health probes run inside that namespace (``nsenter --net``) until each passes once,
   within the service's ``timeout_start_sec`` (at most ``BOOT_TIMEOUT_SEC``); a service without probes
   must stay up for ``NO_PROBE_UP_SEC``. The first probe that does not pass, with its own output, and the
   end of the shadow's output make the failure record.
4. Everything is torn down: the shadow's process group, the drill databases, the scratch folder.

Substitutions, in every argv element, environment value and working directory of the service and in
its exec probes: a job path (``paths:``) or a SQLite file of ``databases:`` is replaced by its restored
copy wherever it appears (longest first); an argv element or environment value that *is* a PostgreSQL
or MariaDB database name of the job, or ends with ``/NAME`` or ``=NAME`` (a URL, ``dbname=NAME``), gets
the drill database's name. The shadow also gets ``HASUPD_DRILL=1`` and ``HASUPD_DRILL_ROOT=SCRATCH/files``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from hasupd.backup.databases import dump_items
from hasupd.backup.dbengines import Engine, EngineError
from hasupd.backup.restore import RestoreError, RestoreSource, database_of, file_snapshots, verify_tree
from hasupd.backup.streams import StreamCommand, StreamFailed
from hasupd.config.model import DatabaseKind, HealthProbe, ProbeKind, ServiceConfig
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.runtimes.command import run_command

BOOT_TIMEOUT_SEC = 120.0
NO_PROBE_UP_SEC = 3.0
STOP_GRACE_SEC = 5.0
_TAIL = 1500
# tcp and http probes, run by hasupd's own Python inside the shadow's network namespace.
_TCP_PROBE = (
    "import socket, sys\n"
    "socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()\n"
)
_HTTP_PROBE = (
    "import sys, urllib.request\n"
    "r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))\n"
    "sys.exit(0 if r.status < 400 else 1)\n"
)

ServiceLookup = Callable[[str], ServiceConfig | None]


@dataclass
class Substitution:
    """Where the shadow instance finds the restored copy of each live thing."""

    paths: dict[str, str] = field(default_factory=dict)  # live path -> restored path
    databases: dict[str, str] = field(default_factory=dict)  # live db name -> drill db name

    def text(self, value: str) -> str:
        for live in sorted(self.paths, key=len, reverse=True):
            value = value.replace(live, self.paths[live])
        for live, drill in self.databases.items():
            if value == live:
                return drill
            for sep in ("/", "="):
                if value.endswith(sep + live):
                    return value[: -len(live)] + drill
        return value

    def argv(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.text(a) for a in argv)


@dataclass
class BootDrillResult:
    snapshot_time: datetime  # the oldest of the snapshots that booted: "restorable as of"
    detail: str


class BootDrill:
    """One boot drill of one job (see the module docstring)."""

    def __init__(
        self, job: RestoreSource, scratch: Path, services: ServiceLookup, reaper: Reaper | None
    ) -> None:
        self.job = job
        self.scratch = scratch
        self.services = services
        self.reaper = reaper
        self.sub = Substitution()
        self._drill_dbs: list[tuple[Engine, str]] = []
        self._times: list[datetime] = []

    async def run(self, boot: bool = True) -> BootDrillResult:
        """Restore, boot (unless ``boot`` is False: a plain drill that also loads and checks each
        database dump), probe, tear down. Raise RestoreError (ResticError) saying what failed."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, mode=0o700)
        try:
            restored = await self._restore_files()
            restored += await self._restore_databases()
            if not self._times:
                raise RestoreError("there is no snapshot to drill")
            when = min(self._times)
            if not boot:
                return BootDrillResult(when, "; ".join(restored))
            names = self.job.config.quiesce
            if not names:
                raise RestoreError("a boot drill starts the job's quiesce services: the job names none")
            booted = [await self._boot(name) for name in names]
            return BootDrillResult(when, f"{'; '.join(restored)}; {'; '.join(booted)}")
        finally:
            await self._teardown()

    async def _restore_files(self) -> list[str]:
        if not self.job.config.paths:
            return []
        snapshots = file_snapshots(await self.job.hot.snapshots(self.job.tags))
        if not snapshots:
            raise RestoreError("there is no snapshot of the job's paths")
        latest = snapshots[-1]
        root = self.scratch / "files"
        await self.job.hot.restore(latest.id, root, include_paths=latest.paths)
        checked = verify_tree(await self.job.hot.ls(latest.id), root, latest.paths)
        if checked.problems:
            raise RestoreError("restored files do not match: " + "; ".join(checked.problems[:5]))
        for path in self.job.config.paths:
            self.sub.paths[path.rstrip("/") or "/"] = str(root / path.lstrip("/"))
        self._times.append(latest.time)
        return [f"snapshot {latest.short_id}: {checked.files} files restored"]

    async def _restore_databases(self) -> list[str]:
        out: list[str] = []
        snapshots = await self.job.hot.snapshots(self.job.tags)
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        loaded: set[tuple[object, ...]] = set()
        for spec in self.job.config.databases:
            live = (spec.kind, spec.host, spec.port, spec.database)
            if live in loaded:  # the same database dumped twice (other checks): one copy serves
                continue
            loaded.add(live)
            item = dump_items(spec, os.environ.get("PATH", DEFAULT_PATH))[0]
            mine = [s for s in snapshots if database_of(s) == item.name]
            if not mine:
                raise RestoreError(f"database {item.name} has no snapshot")
            latest = mine[-1]
            engine = Engine(spec, self.reaper)
            if spec.kind is DatabaseKind.SQLITE:
                (self.scratch / "db").mkdir(exist_ok=True)
                drill = str(self.scratch / "db" / os.path.basename(spec.database))
            else:
                drill = f"{spec.database[:40]}_drill_{stamp}"
            self._drill_dbs.append((engine, drill))

            async def feed(command: StreamCommand, sid: str = latest.id, name: str = item.filename) -> None:
                await self.job.hot.dump_into(sid, name, command)

            try:
                await engine.load(drill, feed)
                await engine.check(drill, spec.check_query)
            except (EngineError, StreamFailed, OSError) as error:
                raise RestoreError(
                    f"database {item.name} from snapshot {latest.short_id}: {error}"
                ) from error
            if spec.kind is DatabaseKind.SQLITE:
                self.sub.paths[spec.database] = drill
            else:
                self.sub.databases[spec.database] = drill
            self._times.append(latest.time)
            out.append(f"database {item.name} (snapshot {latest.short_id}) loaded as {drill}")
        return out

    async def _boot(self, name: str) -> str:
        config = self.services(name)
        if config is None:
            raise RestoreError(f"service {name} is not configured")
        if config.container is not None or not config.command:
            raise RestoreError(f"service {name}: a boot drill starts a command, not a container")
        shadow = _Shadow(config, self.sub, self.scratch / f"{name}.log", self.scratch / "files")
        await shadow.start()
        try:
            return f"{name}: {await self._probe(config, shadow)}"
        finally:
            await shadow.stop()

    async def _probe(self, config: ServiceConfig, shadow: _Shadow) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(config.timeout_start_sec, BOOT_TIMEOUT_SEC)
        if not config.health:
            await asyncio.sleep(NO_PROBE_UP_SEC)
            if not shadow.alive():
                raise RestoreError(f"{config.name} exited on the restored data: {shadow.tail()}")
            return f"up for {NO_PROBE_UP_SEC:g}s on the restored data (no health probes)"
        passed = []
        for configured in config.health:
            probe = replace(configured, argv=self.sub.argv(configured.argv))
            error = ""
            while True:
                error = await self._probe_once(probe, shadow)
                if not error:
                    passed.append(str(probe.kind))
                    break
                if not shadow.alive() or loop.time() >= deadline:
                    state = "it exited" if not shadow.alive() else "it runs"
                    raise RestoreError(
                        f"{config.name} on the restored data: {probe.kind} probe failed: {error} "
                        f"({state}; its output: {shadow.tail()})"
                    )
                await asyncio.sleep(min(probe.interval_sec, 1.0))
        if not shadow.alive():  # a probe that passed without it reached something else
            raise RestoreError(f"{config.name} exited on the restored data: {shadow.tail()}")
        return f"healthy on the restored data (probes passed: {', '.join(passed)})"

    async def _probe_once(self, probe: HealthProbe, shadow: _Shadow) -> str:
        """Run ``probe`` inside the shadow's network namespace; return "" if it passes, else the error."""
        match probe.kind:
            case ProbeKind.EXEC:
                argv = probe.argv
            case ProbeKind.TCP:
                host, _, port = probe.target.rpartition(":")
                code = _TCP_PROBE
                argv = (sys.executable, "-c", code, host.strip("[]"), port, str(probe.timeout_sec))
            case ProbeKind.HTTP:
                code = _HTTP_PROBE
                argv = (sys.executable, "-c", code, probe.target, str(probe.timeout_sec))
        pid = shadow.pid
        # The shadow's namespace; once it has exited, a fresh empty one: the probe still says why.
        enter = ("nsenter", f"--net=/proc/{pid}/ns/net") if pid is not None else ("unshare", "--net")
        try:
            result = await run_command(
                (*enter, "--", *argv),
                reaper=self.reaper,
                env={"PATH": DEFAULT_PATH, **shadow.env},
                timeout=probe.timeout_sec + 1,
            )
        except OSError as error:
            return f"cannot run the probe: {error}"
        if result.ok:
            return ""
        out = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
        return f"{result.describe()}: {out[-_TAIL:]}" if out else result.describe()

    async def _teardown(self) -> None:
        for engine, name in self._drill_dbs:
            with contextlib.suppress(EngineError, OSError):
                await engine.drop(name)
        shutil.rmtree(self.scratch, ignore_errors=True)


class _Shadow:
    """The shadow instance: the service's command in a private network namespace."""

    def __init__(self, config: ServiceConfig, sub: Substitution, log: Path, root: Path) -> None:
        self.config = config
        self.argv = sub.argv(config.command)
        self.env = {k: sub.text(v) for k, v in config.environment}
        self.env.update(HASUPD_DRILL="1", HASUPD_DRILL_ROOT=str(root))
        self.cwd = sub.text(config.working_directory) if config.working_directory else None
        self.log = log
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        # unshare execs sh, which brings loopback up and execs the service: one pid throughout.
        script = 'ip link set lo up && exec "$@"'
        argv = ("unshare", "--net", "--", "/bin/sh", "-c", script, "sh", *self.argv)
        with open(self.log, "wb") as out:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env={"PATH": DEFAULT_PATH, **self.env},
                    cwd=self.cwd,
                    start_new_session=True,
                    user=self.config.user,
                    group=self.config.group,
                )
            except OSError as error:
                raise RestoreError(f"cannot start a shadow of {self.config.name}: {error}") from error

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def tail(self) -> str:
        try:
            text = self.log.read_bytes()[-_TAIL:].decode("utf-8", "replace").strip()
        except OSError:
            return "(no output)"
        return re.sub(r"\s+", " ", text) or "(no output)"

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            if proc is not None:
                await proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_SEC)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def run_boot_drill(
    job: RestoreSource, scratch: Path, services: ServiceLookup, reaper: Reaper | None, *, boot: bool = True
) -> BootDrillResult:
    """Run one boot drill (``boot`` False: restore files and databases and check them, start nothing);
    raise RestoreError or ResticError when it fails (see the module doc)."""
    return await BootDrill(job, scratch, services, reaper).run(boot)
