"""Plain programs as main processes: ``ExecSpawner`` implements ``hasupd.ports.Spawner``.

A child starts with a clean environment, stdin on /dev/null, in its own session, already inside its
scope's cgroup (so it cannot fork outside), with ``pass_fds`` at 3, 4, ... in the given order and the
service's process settings (limits, nice, ionice, umask, oom_score_adjust, groups, no_new_privileges)
applied before exec. Its exit is learned from a pidfd on the loop.

Two paths: ``hasupd.host.clone`` (clone3(CLONE_INTO_CGROUP), no Python in the child: the child is born
in its cgroup, no fork of hasupd's memory) when the C extension is built and the kernel has clone3;
else subprocess, where the child writes "0" into cgroup.procs and applies the settings in a preexec_fn
(a cgroup migration: it waits for an RCU grace period, ~15 ms).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

from hasupd.config.model import ServiceConfig
from hasupd.host.adoption import is_child
from hasupd.host.clone import (
    RLIMITS,
    ChildFailed,
    ChildSettings,
    CloneSpawner,
    Launch,
    Starting,
    ionice_value,
)
from hasupd.host.containment import Containment, ScopeImpl
from hasupd.host.output import DEFAULT_JOURNAL_DIR, DEFAULT_KEEP, DEFAULT_MAX_BYTES, LogFiles, Output
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.host.users import UnknownIdentity, lookup_group, lookup_user
from hasupd.ports import ExitStatus, SpawnError, SpawnSpec
from hasupd.runtimes.envfile import load_environment_files
from hasupd.runtimes.fallback import OWN_PID_VARIABLES, lift_fds, popen
from hasupd.states import OutputMode

log = logging.getLogger(__name__)

_FROM_HASUPD = ("LANG", "LC_ALL", "TZ")
# spawn_many: children made per group, and threads making them at once (each waits for its child's
# exec; more than the cores buys nothing, as the execs are CPU work).
_GROUP = 32
_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))


class ExecProcess:
    """A started main process; satisfies ``hasupd.ports.Process``."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | None,
        scope: ScopeImpl,
        pidfd: int,
        output: Output,
        *,
        pid: int | None = None,
        foreign: bool = False,
    ) -> None:
        self._popen = popen
        self._pid = popen.pid if popen is not None else pid
        assert self._pid is not None
        # Adopted after a crash of hasupd: not our child, so its exit status cannot be collected.
        self.foreign = foreign
        self._scope = scope
        self._pidfd = pidfd
        self._output = output
        self.exit_status: ExitStatus | None = None

    @property
    def pid(self) -> int:
        assert self._pid is not None
        return self._pid

    @property
    def scope(self) -> ScopeImpl:
        return self._scope

    @property
    def output_mode(self) -> OutputMode:
        """The output in effect: file when journal was asked for but journald was not reachable."""
        return self._output.mode

    @property
    def output_note(self) -> str | None:
        """Why ``output_mode`` differs from the mode asked for (for the caller to log), or None."""
        return self._output.note

    def send_signal(self, sig: int) -> None:
        """Signal only the main process; nothing happens if it is already gone.

        Goes through the pidfd, so a recycled pid can never be hit.
        """
        if self._pidfd < 0:
            return
        with suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, sig)

    async def wait_output_closed(self) -> None:
        """Return once the output pipe reached EOF and all of it is in the log file (file mode only)."""
        if self._output.drain is not None:
            await self._output.drain.wait_closed()

    def _reaped(self, status: ExitStatus) -> None:
        os.close(self._pidfd)
        self._pidfd = -1
        self.exit_status = status
        # Popen's own convention, so that it neither warns nor waits again when it is collected.
        if self._popen is not None:
            self._popen.returncode = -status.signal if status.signal is not None else status.code
        self._scope.detach()


@dataclass
class _Prepared:
    """One start between ``_prepare`` and ``_finish``: what was made for it, and how to undo it."""

    unit: str
    on_exit: Callable[[ExitStatus], None]
    pass_fds: tuple[int, ...]
    scope: ScopeImpl
    output: Output
    launch: Launch
    cgroup_fd: int | None
    always: ExitStack  # closed once the child exists (or never will): hasupd's copies of its ends
    on_failure: ExitStack  # closed only if there is no child: the scope, the output drain

    def abort(self) -> None:
        """Undo the preparation: there will be no child."""
        self.on_failure.close()
        self.always.close()


@dataclass
class _Group:
    """One group of ``spawn_many``: the outcomes known so far (failed preparations), the prepared
    starts by their index, and the children being made for them (None: not on the clone path)."""

    outcomes: list[ExecProcess | SpawnError | None]
    prepared: list[tuple[int, _Prepared]]
    starting: Starting | None


class ExecSpawner:
    """Starts plain programs. One per daemon, used from the event loop thread only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        containment: Containment,
        reaper: Reaper,
        state_dir: Path,
        journal_socket_dir: Path = DEFAULT_JOURNAL_DIR,
        *,
        log_max_bytes: int = DEFAULT_MAX_BYTES,
        log_keep: int = DEFAULT_KEEP,
        native: bool = True,
    ) -> None:
        self._loop = loop
        self._containment = containment
        self._reaper = reaper
        self._outputs = LogFiles(loop, state_dir / "logs", journal_socket_dir, log_max_bytes, log_keep)
        self._running: dict[int, ExecProcess] = {}
        # native=False: always the subprocess path (hasupd run --no-clone3, tests of the fallback).
        self._clone = CloneSpawner() if native else CloneSpawner.disabled("turned off (--no-clone3)")
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # every child's stdin
        # What every child takes from hasupd's own environment (os.environ's lookups are slow).
        self._from_hasupd = {k: os.environ[k] for k in _FROM_HASUPD if k in os.environ}

    def describe(self) -> str:
        """Return the spawn path in use, for the startup record."""
        return self._clone.describe(self._containment.kind == "cgroup")

    def watch_output(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(unit)`` whenever a unit's log file (``output: file``) grows; from the loop,
        once per drain wake-up. It must be cheap: it runs in the output's path."""
        self._outputs.on_output = callback

    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> ExecProcess:
        """Start the program and return at once; ``on_exit`` is called once from the loop after the
        main process was reaped.

        Raise SpawnError ("cannot start UNIT: ...") if it could not be started; then nothing is left
        running and no fd or cgroup is left behind.
        """
        unit = spec.unit_name or spec.service.name
        try:
            return self._spawn(spec, unit, on_exit)
        except SpawnError as e:
            raise SpawnError(f"cannot start {unit}: {e}") from e

    def adopt(
        self,
        unit: str,
        invocation_id: str,
        pid: int,
        on_exit: Callable[[ExitStatus], None],
        output_fd: int | None = None,
    ) -> ExecProcess:
        """Watch ``pid``, a main process started by an earlier image of hasupd (re-exec: still our child,
        perhaps a zombie by now) or an earlier hasupd (crash: not our child). ``output_fd``: the read end
        of its output pipe, kept across a re-exec. Its scope is adopted as it is (nothing is killed).

        ``on_exit`` is called once from the loop when it ends: with its real exit status when it is our
        child, else with an unknown status (``ExitStatus.unknown``). Raise SpawnError if it is gone.
        """
        child = is_child(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            if output_fd is not None:
                os.close(output_fd)
            raise SpawnError(f"cannot watch pid {pid} of {unit}: {e.strerror}") from e
        if child:
            self._reaper.track(pid)
        scope = self._containment.adopt(unit, invocation_id, pid)
        output = self._outputs.adopt(unit, output_fd) if output_fd is not None else Output(OutputMode.INHERIT)
        proc = ExecProcess(None, scope, pidfd, output, pid=pid, foreign=not child)
        self._running[pid] = proc
        self._loop.add_reader(pidfd, self._on_pidfd, proc, on_exit)
        return proc

    def kept_outputs(self) -> dict[int, int]:
        """Return main pid -> read end of its output pipe, for the processes whose output is drained
        into a file (to be kept across a re-exec)."""
        return {
            pid: proc._output.drain.fileno
            for pid, proc in self._running.items()
            if proc._output.drain is not None and not proc._output.drain.closed
        }

    def close(self) -> None:
        """Stop watching (hasupd exits): drop exit watchers, stop output drains. Kills nothing."""
        for proc in list(self._running.values()):
            self._loop.remove_reader(proc._pidfd)
            self._reaper.untrack(proc.pid)
            os.close(proc._pidfd)
            proc._pidfd = -1
        self._running.clear()
        self._outputs.close()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

    def spawn_many(
        self, requests: Sequence[tuple[SpawnSpec, Callable[[ExitStatus], None]]]
    ) -> list[ExecProcess | SpawnError]:
        """Start every request as ``spawn`` would; return, in order, each one's process or the
        SpawnError that ``spawn`` would have raised (not raised).

        For many starts at once (hasupd's start-up, a reload that adds services): requests go in
        groups of ``_GROUP``; while up to ``_THREADS`` threads of the C extension make one group's
        children (each thread waits for its own child's exec, so the execs run in parallel), hasupd
        prepares the next group.
        """
        outcomes: list[ExecProcess | SpawnError] = []
        under_way: _Group | None = None
        try:
            for first in range(0, len(requests), _GROUP):
                group = self._start_group(requests[first : first + _GROUP])
                if under_way is not None:
                    outcomes += self._finish_group(under_way)
                under_way = group
        finally:
            if under_way is not None:  # also when preparing a later group raised: none is left behind
                outcomes += self._finish_group(under_way)
        return outcomes

    def _start_group(self, requests: Sequence[tuple[SpawnSpec, Callable[[ExitStatus], None]]]) -> _Group:
        """Prepare ``requests`` and begin making their children on the extension's threads."""
        group = _Group([None] * len(requests), [], None)
        try:
            for index, (spec, on_exit) in enumerate(requests):
                unit = spec.unit_name or spec.service.name
                try:
                    group.prepared.append((index, self._prepare(spec, unit, on_exit)))
                except SpawnError as e:
                    group.outcomes[index] = SpawnError(f"cannot start {unit}: {e}")
            if self._clone.usable() and group.prepared:
                starts = [self._clone_args(p) for _, p in group.prepared]
                group.starting = self._clone.start_many(starts, _THREADS)
        except BaseException:  # a bug, not a failed start: undo what was prepared, make no child
            for _, p in group.prepared:
                p.abort()
            raise
        return group

    def _finish_group(self, group: _Group) -> list[ExecProcess | SpawnError]:
        """Wait for the group's children (if the clone path made them) and take each one over."""
        started: list[tuple[int, int] | Exception | None] = [None] * len(group.prepared)
        if group.starting is not None:
            started = list(group.starting.wait())
            if any(result is None for result in started):
                log.warning("clone3 cannot be used; starting through %s", self._clone.describe(True))
        for (index, p), result in zip(group.prepared, started, strict=True):
            try:
                group.outcomes[index] = self._finish(p, result)
            except SpawnError as e:
                group.outcomes[index] = SpawnError(f"cannot start {p.unit}: {e}")
        return [outcome for outcome in group.outcomes if outcome is not None]

    def _spawn(self, spec: SpawnSpec, unit: str, on_exit: Callable[[ExitStatus], None]) -> ExecProcess:
        p = self._prepare(spec, unit, on_exit)
        result: tuple[int, int] | Exception | None = None
        if self._clone.usable():
            try:
                result = self._clone.spawn(*self._clone_args(p))
            except (ChildFailed, OSError) as e:
                result = e
            except BaseException:
                p.abort()
                raise
            if result is None:
                log.warning("clone3 cannot be used; starting through %s", self._clone.describe(True))
        return self._finish(p, result)

    def _prepare(self, spec: SpawnSpec, unit: str, on_exit: Callable[[ExitStatus], None]) -> _Prepared:
        """Everything up to making the child: identity, environment, scope, output. Raise SpawnError
        (nothing is left behind) if the start cannot happen."""
        service = spec.service
        argv = list(spec.argv if spec.argv is not None else service.command)
        if not argv:
            raise SpawnError("no command to run")
        uid, gid, groups, user_env = _identity(service.user, service.group)
        cwd = service.working_directory or "/"
        if not os.path.isdir(cwd):
            raise SpawnError(f"working directory {cwd} does not exist")
        base = {"PATH": DEFAULT_PATH}
        base.update(self._from_hasupd)
        base.update(user_env)
        base["INVOCATION_ID"] = spec.invocation_id
        layers = [
            load_environment_files(service.environment_files),
            dict(service.environment),
            spec.extra_env,
        ]
        exe = _resolve(argv[0], cwd, _merge(base, layers)["PATH"])

        settings = child_settings(service)
        if service.supplementary_groups:
            if groups is None:
                raise SpawnError("cannot set supplementary_groups: hasupd is not running as root")
            groups = _with_supplementary(groups, service.supplementary_groups)

        always, on_failure = ExitStack(), ExitStack()
        try:
            scope = self._containment.scope(unit, spec.invocation_id)
            on_failure.callback(scope.release)
            output = self._outputs.open(spec.output, unit)
            always.callback(output.close_child_ends)
            if output.drain is not None:
                on_failure.callback(output.drain.close)
            env = _merge({**base, **output.env}, layers)
            launch = Launch(exe, argv, env, cwd, uid, gid, groups, settings)
            cgroup_fd = scope.open_dir_fd() if self._clone.usable() else None
            if cgroup_fd is not None:
                always.callback(os.close, cgroup_fd)
        except BaseException:
            on_failure.close()
            always.close()
            raise
        return _Prepared(unit, on_exit, spec.pass_fds, scope, output, launch, cgroup_fd, always, on_failure)

    def _clone_args(self, p: _Prepared) -> tuple[Launch, list[int], int | None, tuple[str, ...]]:
        """The arguments of ``CloneSpawner.spawn`` for ``p``: target fds 0, 1, 2, then pass_fds."""
        output = p.output
        fds = [self._devnull, 1 if output.stdout is None else output.stdout]
        fds += [2 if output.stderr is None else output.stderr, *p.pass_fds]
        own_pid = tuple(pid_var for var, pid_var in OWN_PID_VARIABLES.items() if var in p.launch.env)
        return p.launch, fds, p.cgroup_fd, own_pid

    def _finish(self, p: _Prepared, started: tuple[int, int] | Exception | None) -> ExecProcess:
        """Take the child that the clone path made (``started``: (pid, pidfd) or its failure), or start
        it through subprocess (``started`` None: the clone path is off, or the kernel just refused
        clone3). Raise SpawnError (nothing is left behind) if there is no child."""
        if isinstance(started, Exception):
            p.abort()
            raise _clone_error(started, p.launch)
        try:
            if started is not None:
                pid, pidfd, popen = started[0], started[1], None
                self._reaper.track(pid)  # before the loop can run a SIGCHLD callback
                p.scope.attach(pid)
            else:
                popen = self._popen_spawn(p.scope, p.launch, p.output, p.pass_fds, p.always)
                pid = popen.pid
                self._reaper.track(pid)  # before the loop can run a SIGCHLD callback
                p.scope.attach(pid)
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError as e:  # EMFILE: do not leave an unwatched process behind
                    p.scope.kill_all()
                    popen.kill()
                    popen.wait()
                    self._reaper.untrack(pid)
                    raise SpawnError(f"cannot watch the process: {e.strerror}") from e
        except BaseException:
            p.abort()
            raise
        p.on_failure.pop_all()
        p.always.close()
        proc = ExecProcess(popen, p.scope, pidfd, p.output, pid=pid)
        self._running[proc.pid] = proc
        self._loop.add_reader(pidfd, self._on_pidfd, proc, p.on_exit)
        return proc

    def _popen_spawn(
        self, scope: ScopeImpl, launch: Launch, output: Output, pass_fds: tuple[int, ...], always: ExitStack
    ) -> subprocess.Popen[bytes]:
        """The fallback: subprocess, joining the cgroup and applying settings in a preexec_fn."""
        procs_fd = scope.open_procs_fd()
        if procs_fd is not None:
            always.callback(os.close, procs_fd)
        fillers, copies = lift_fds(pass_fds)
        for fd in fillers + copies:
            always.callback(os.close, fd)
        env = launch.env
        exec_args = (launch.exe, launch.argv, env) if any(k in env for k in OWN_PID_VARIABLES) else None
        return popen(
            launch.argv,
            exe=launch.exe,
            cwd=launch.cwd,
            env=env,
            output=output,
            uid=launch.uid,
            gid=launch.gid,
            groups=launch.groups,
            procs_fd=procs_fd,
            copies=copies,
            exec_args=exec_args,
            settings=launch.settings,
        )

    def _on_pidfd(self, proc: ExecProcess, on_exit: Callable[[ExitStatus], None]) -> None:
        self._loop.remove_reader(proc._pidfd)
        if proc.foreign:
            # Its parent is init now: the exit status went there, and hasupd cannot learn it.
            status = ExitStatus(proc.pid, code=255, unknown=True)
        else:
            try:
                _, raw = os.waitpid(proc.pid, 0)  # a readable pidfd means it already exited
                status = ExitStatus.from_wait_status(proc.pid, raw)
            except ChildProcessError:
                # Someone else reaped a tracked pid: a bug elsewhere. Report as asyncio does.
                log.warning("pid %d was reaped by someone else; its exit status is lost", proc.pid)
                status = ExitStatus(proc.pid, code=255)
        proc._reaped(status)
        self._reaper.untrack(proc.pid)
        self._running.pop(proc.pid, None)
        on_exit(status)


def _clone_error(error: Exception, launch: Launch) -> SpawnError:
    """Return the SpawnError for a failure of the clone path (ChildFailed: a step in the child)."""
    exe, cwd = launch.exe, launch.cwd
    if isinstance(error, ChildFailed):
        if error.step == "exec" and error.errno == errno.ENOENT:
            return SpawnError(f"{exe} does not exist")
        if error.step == "exec" and error.errno == errno.EACCES:
            return SpawnError(f"permission denied executing {exe}")
        if error.step == "exec":
            return SpawnError(f"cannot execute {exe}: {os.strerror(error.errno)}")
        if error.step == "chdir" and error.errno == errno.ENOENT:
            return SpawnError(f"working directory {cwd} does not exist")
        return SpawnError(str(error))
    if isinstance(error, OSError):
        return SpawnError(f"cannot start a process: {error.strerror}")
    return SpawnError(f"cannot start a process: {error}")


def child_settings(service: ServiceConfig) -> ChildSettings:
    """Return the process settings of ``service`` as the child applies them."""
    rlimits = []
    for name, res in RLIMITS.items():
        value = getattr(service.limits, name)
        if value is not None:
            soft = -1 if value.soft is None else value.soft
            rlimits.append((res, soft, -1 if value.hard is None else value.hard))
    ionice = service.ionice
    return ChildSettings(
        rlimits=tuple(rlimits),
        umask=service.umask,
        nice=service.nice,
        ioprio=None if ionice is None else ionice_value(ionice.klass, ionice.level),
        oom_score_adj=service.oom_score_adjust,
        no_new_privs=service.no_new_privileges,
    )


def _with_supplementary(groups: list[int], names: tuple[str, ...]) -> list[int]:
    """Return ``groups`` plus the gids of ``names``. Raise SpawnError for an unknown group."""
    extra = [_gid(name) for name in names]
    return groups + [gid for gid in dict.fromkeys(extra) if gid not in groups]


def _merge(base: Mapping[str, str], layers: list[Mapping[str, str]]) -> dict[str, str]:
    env = dict(base)
    for layer in layers:
        env.update(layer)
    return env


def _identity(
    user: str | None, group: str | None
) -> tuple[int | None, int | None, list[int] | None, dict[str, str]]:
    """Return (uid, gid, supplementary groups) to switch to (None: keep hasupd's) and the user's
    USER/LOGNAME/HOME/SHELL. Raise SpawnError for an unknown user or group, or a switch we may not do."""
    root = os.geteuid() == 0
    gid = _gid(group) if group else None
    if user:
        try:
            entry = lookup_user(user)
        except UnknownIdentity:
            raise SpawnError(f"user {user!r} does not exist") from None
        gid = entry.gid if gid is None else gid
        env = {"USER": entry.name, "LOGNAME": entry.name, "HOME": entry.home, "SHELL": entry.shell}
        if root:
            return entry.uid, gid, os.getgrouplist(entry.name, gid), env
        if entry.uid == os.geteuid() and gid == os.getegid():
            return None, None, None, env
        raise SpawnError(f"cannot run as user {user!r}: hasupd is not running as root")
    if gid is not None and not root and gid != os.getegid():
        raise SpawnError(f"cannot run as group {group!r}: hasupd is not running as root")
    try:
        pw = pwd.getpwuid(os.geteuid())
    except KeyError:  # a uid without a passwd entry (containers): no USER/HOME then
        return None, gid if root else None, None, {}
    env = {"USER": pw.pw_name, "LOGNAME": pw.pw_name, "HOME": pw.pw_dir, "SHELL": pw.pw_shell}
    if root:
        # hasupd's own user, but that user's own groups: not the Group= systemd runs hasupd with
        # (group hasupd owns the control socket; a service must not inherit that).
        gid = pw.pw_gid if gid is None else gid
        return None, gid, os.getgrouplist(pw.pw_name, gid), env
    return None, None, None, env


def _gid(group: str) -> int:
    try:
        return lookup_group(group)
    except UnknownIdentity:
        raise SpawnError(f"group {group!r} does not exist") from None


def _resolve(cmd: str, cwd: str, path: str) -> str:
    """Return the file that will be executed for ``cmd``. Raise SpawnError if there is none."""
    if "/" in cmd:
        full = os.path.join(cwd, cmd)
        if not os.path.exists(full):
            raise SpawnError(f"{full} does not exist")
    else:
        found = shutil.which(cmd, path=path)
        if found is None:
            raise SpawnError(f"command {cmd!r} was not found in PATH={path}")
        full = found
    if os.path.isdir(full) or not os.access(full, os.X_OK):
        raise SpawnError(f"{full} is not an executable file")
    return full
