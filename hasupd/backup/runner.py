"""Running restic for one repository: environment, exit-code classification, lock waiting.

Each command is a plumbum command object (``local[restic][args].with_env(...)``: argv and the child's
whole environment); ``run_command`` runs what it formulates as an asyncio-driven subprocess (pidfd exit,
own process group, Reaper). Every restic child gets SIGINT when hasupd dies (PR_SET_PDEATHSIG), so none
runs on without its parent, and carries ``HASUPD_RESTIC_OWNER`` (the state dir) in its environment so a
later hasupd on the same state can find one that survived anyway (``leftovers.py``). Secrets
never reach argv: the repository URL and password file go in ``RESTIC_REPOSITORY``/``RESTIC_PASSWORD_FILE``
(``RESTIC_FROM_*`` for the source of ``copy``/``init``), the repository's ``environment_file`` (AWS_* keys
...) is merged into the child's environment. restic is stopped with SIGINT, never SIGTERM: 0.14 leaves a
stale lock on SIGTERM but cleans up and exits 130 on SIGINT. Version differences: ``compat.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from plumbum import CommandNotFound, local
from plumbum.commands.base import BaseCommand, BoundEnvCommand

from hasupd.backup.compat import (
    MIN_VERSION,
    ErrorKind,
    Features,
    ResticError,
    classify,
    parse_version,
    readable_stderr,
)
from hasupd.backup.kinds import OWNER_ENV
from hasupd.config.model import RepositoryConfig
from hasupd.host.procfs import stat, stop_group
from hasupd.host.reaper import Reaper
from hasupd.ports import SpawnError
from hasupd.runtimes.command import CommandResult, run_command
from hasupd.runtimes.envfile import load_environment_files

# Passed through from hasupd's own environment; nothing else is (no stray RESTIC_PASSWORD, NOTIFY_SOCKET).
_PASS_ENV = (
    *("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "SSL_CERT_FILE", "SSL_CERT_DIR"),
    *("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"),
)
# The repository and its password come from the config only.
_RESERVED_ENV = re.compile(r"RESTIC_(REPOSITORY|PASSWORD|FROM_)")

_MARKER = "HASUPD_RESTIC_RUN"

Accept = Callable[[ErrorKind, str], bool]
# Starts a task under the daemon's TaskGroup (``BackupUnits``' spawn_task).
SpawnTask = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


async def _or_oserror(coro: Coroutine[Any, Any, CommandResult]) -> CommandResult | OSError:
    """Return what ``coro`` returns, or the OSError it raised (restic could not be started): an
    expected failure, which the caller turns into a ResticError, not a bug that stops hasupd."""
    try:
        return await coro
    except OSError as error:
        return error


class ResticRunner:
    """Runs restic commands against one repository; ``Restic`` gives them meaning."""

    def __init__(
        self,
        repo: RepositoryConfig,
        *,
        reaper: Reaper | None,
        binary: str = "restic",
        cache_dir: Path | None = None,
        lock_wait_sec: float = 30.0,
        timeout_sec: float | None = None,
        quick_timeout_sec: float = 300.0,
        stop_grace_sec: float = 30.0,
        owner: str | None = None,
        spawn_task: SpawnTask | None = None,
    ) -> None:
        """``cache_dir`` None: restic's default cache. ``lock_wait_sec`` bounds waiting for a lock held by
        someone else; ``timeout_sec`` bounds backup/copy/check/prune/restore/ls, ``quick_timeout_sec`` the
        metadata commands (0.18 retries an unreachable server for ~15 minutes); ``stop_grace_sec`` is
        how long restic may clean up after SIGINT before SIGKILL. ``owner`` (the state dir) is put in
        every child's environment as ``HASUPD_RESTIC_OWNER`` to find leftovers after a crash.
        ``spawn_task`` owns each restic run (the daemon's TaskGroup: it outlives a cancelled caller
        until restic has cleaned up); None: plain tasks of the loop (tools, tests)."""
        self.repo = repo
        self._reaper = reaper
        self._binary = binary
        self._cache_dir = cache_dir
        self._lock_wait = lock_wait_sec
        self._timeout = timeout_sec
        self._quick = quick_timeout_sec
        self._grace = stop_grace_sec
        self._owner = owner
        self._spawn_task = spawn_task
        self._features: Features | None = None

    async def version(self) -> tuple[int, int, int]:
        """Return restic's version (cached). Raise ResticError if it cannot run or is older than 0.14."""
        return (await self.features()).version

    async def features(self) -> Features:
        """Return the feature gates of this binary (cached). Raise ResticError like ``version``."""
        if self._features is None:
            result = await self._exec(self._command(["version"], self._base_env()), self._quick, "version")
            if not result.ok:
                raise ResticError(ErrorKind.FATAL, result.status.code, result.tail(), "version")
            try:
                version = parse_version(result.stdout.decode("utf-8", "replace"))
            except ValueError as e:
                raise ResticError(ErrorKind.FATAL, 0, str(e), "version") from e
            if version < MIN_VERSION:
                found = ".".join(map(str, version))
                raise ResticError(ErrorKind.FATAL, 0, f"restic {found} is older than 0.14.0", "version")
            self._features = Features(version)
        return self._features

    def environment(self) -> dict[str, str]:
        """Return the child environment: pass-through basics, the environment file, then the repository.

        Raise ResticError if the environment file is missing, malformed or sets RESTIC_REPOSITORY*,
        RESTIC_PASSWORD* or RESTIC_FROM_*.
        """
        env = self._base_env()
        env.update(self._env_file())
        env["RESTIC_REPOSITORY"] = self.repo.url
        env["RESTIC_PASSWORD_FILE"] = self.repo.password_file
        if self._cache_dir is not None:
            env["RESTIC_CACHE_DIR"] = str(self._cache_dir)
        return env

    def source_env_for(self, target: ResticRunner) -> dict[str, str]:
        """Return what ``target`` needs to read this repository as ``--from-repo`` (copy, init).

        Raise ResticError if both environment files set one variable to different values: restic reads
        both repositories with one environment, so it cannot use two sets of keys.
        """
        mine, theirs = self._env_file(), target._env_file()
        clash = sorted(k for k in mine if k in theirs and mine[k] != theirs[k])
        if clash:
            raise ResticError(
                ErrorKind.FATAL,
                None,
                f"the environment files of {self.repo.name} and {target.repo.name} "
                f"give different values for {', '.join(clash)}",
            )
        return {
            **mine,
            "RESTIC_FROM_REPOSITORY": self.repo.url,
            "RESTIC_FROM_PASSWORD_FILE": self.repo.password_file,
        }

    def _base_env(self) -> dict[str, str]:
        return {k: os.environ[k] for k in _PASS_ENV if k in os.environ}

    def _env_file(self) -> dict[str, str]:
        if not self.repo.environment_file:
            return {}
        try:
            values = load_environment_files([self.repo.environment_file])
        except SpawnError as e:
            raise ResticError(ErrorKind.FATAL, None, str(e)) from e
        bad = sorted(k for k in values if _RESERVED_ENV.match(k))
        if bad:
            message = f"{self.repo.environment_file} must not set {', '.join(bad)}"
            raise ResticError(ErrorKind.FATAL, None, message)
        return values

    def _command(self, args: Sequence[str], env: Mapping[str, str]) -> BaseCommand:
        """Return ``restic ARGS`` as a plumbum command carrying the child's whole environment.

        Raise ResticError if the binary cannot be found.
        """
        try:
            restic = local[self._binary]
        except CommandNotFound as e:
            raise ResticError(ErrorKind.FATAL, None, f"restic binary {self._binary!r} not found") from e
        owner = {OWNER_ENV: self._owner} if self._owner is not None else {}
        return restic[list(args)].with_env(**{**env, **owner})

    async def _exec(
        self,
        restic: BaseCommand,
        timeout: float | None,
        command: str,
        on_line: Callable[[bytes], None] | None = None,
        *,
        stdin_fd: int | None = None,
        stdout_fd: int | None = None,
    ) -> CommandResult:
        """Run restic; on cancellation stop it with SIGINT and let it clean up before re-raising.
        ``stdin_fd``/``stdout_fd``: see run_command (they are closed here).

        Only the command's own environment reaches restic (not hasupd's, which plumbum's ``popen``
        would merge in). The stop is ``stop_group`` (SIGINT, SIGKILL after the grace), as run_command's
        own, but run_command here is a task of its own that the caller's cancellation never reaches:
        a cancelled run_command closes restic's pipes once its stop is done or cancelled again, and
        restic (0.14 and 0.18 alike) dies of SIGPIPE if it is still writing "cleaning up" before it
        removes its lock. So the pipes stay drained until restic exits.
        """
        argv = tuple(restic.formulate())
        marker = uuid.uuid4().hex  # finds this very process among hasupd's children
        run: asyncio.Future[CommandResult | OSError] = self._own(
            _or_oserror(
                run_command(
                    argv,
                    reaper=self._reaper,
                    env={**_env_of(restic), _MARKER: marker},
                    timeout=timeout,
                    stop_signal=signal.SIGINT,
                    kill_after=self._grace,
                    on_stdout_line=on_line,
                    # SIGINT, not SIGKILL: restic removes its lock on SIGINT (0.14 leaves it on SIGTERM).
                    parent_death_signal=signal.SIGINT,
                    stdin_fd=stdin_fd,
                    stdout_fd=stdout_fd,
                )
            )
        )
        try:
            result = await asyncio.shield(run)
        except asyncio.CancelledError:
            await self._stop(run, marker)
            raise
        if isinstance(result, OSError):
            raise ResticError(ErrorKind.FATAL, None, f"cannot run {argv[0]}: {result}", command) from result
        return result

    def _own(
        self, coro: Coroutine[Any, Any, CommandResult | OSError]
    ) -> asyncio.Future[CommandResult | OSError]:
        if self._spawn_task is not None:
            task: asyncio.Task[CommandResult | OSError] = self._spawn_task(coro)
            return task
        return asyncio.ensure_future(coro)

    async def _stop(self, run: asyncio.Future[CommandResult | OSError], marker: str) -> None:
        pid = _child_with_marker(marker)
        if pid is None:  # not started yet (or already gone): nothing holds a lock
            run.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run), self._grace)
        else:
            # run_command starts each command in its own session: the group id is the pid.
            await stop_group(pid, run, stop_signal=signal.SIGINT, kill_after=self._grace)
        with contextlib.suppress(asyncio.CancelledError):
            await run

    async def _run(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        timeout: float | None,
        global_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        accept: Accept | None = None,
        on_line: Callable[[bytes], None] | None = None,
        stdin_fd: int | None = None,
        stdout_fd: int | None = None,
    ) -> CommandResult:
        """Run ``restic GLOBAL COMMAND ARGS`` once. Return the result if restic succeeded or ``accept``
        takes the failure; raise ResticError otherwise. ``stdin_fd``/``stdout_fd`` are restic's stdin and
        stdout (closed here, whatever happens)."""
        try:
            features = await self.features()
            env = self.environment()
            env.update(extra_env or {})
            restic = self._command([*global_args, command, *args], env)
        except BaseException:
            for fd in (stdin_fd, stdout_fd):
                if fd is not None:
                    os.close(fd)
            raise
        result = await self._exec(restic, timeout, command, on_line, stdin_fd=stdin_fd, stdout_fd=stdout_fd)
        tail = readable_stderr(result.stderr)
        code = result.status.code
        if result.timed_out:
            raise ResticError(ErrorKind.TIMEOUT, code, f"timed out after {timeout}s; {tail}", command)
        if code is None:
            raise ResticError(ErrorKind.INTERRUPTED, None, f"{result.status.describe()}; {tail}", command)
        stderr = result.stderr.decode("utf-8", "replace")
        kind = classify(code, stderr, features, backup=command == "backup")
        if kind is None or (accept is not None and accept(kind, stderr)):
            return result
        raise ResticError(kind, code, tail, command)

    async def _run_locked(
        self,
        command: str,
        args: Sequence[str],
        *,
        exclusive: bool,
        timeout: float | None,
        also_unlock: Iterable[ResticRunner] = (),
        **kw: Any,
    ) -> CommandResult:
        """Run a command that takes a repository lock, waiting at most ``lock_wait_sec`` for it.

        Before an exclusive command, and after every "locked" failure, a plain ``unlock`` removes stale
        locks (their process is gone); a live lock stays and is waited for: by ``--retry-lock`` where
        restic has it (>= 0.16), else by retrying with doubling delays (1, 2, 4 ... seconds).
        """
        features = await self.features()
        others = tuple(also_unlock)
        if exclusive:
            await self.unlock()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_wait
        delay = 1.0
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            wait = ["--retry-lock", f"{int(remaining)}s"] if features.retry_lock and attempt > 1 else []
            try:
                return await self._run(command, args, timeout=timeout, global_args=wait, **kw)
            except ResticError as e:
                remaining = deadline - loop.time()
                if e.kind is not ErrorKind.LOCKED or remaining < 1 or (features.retry_lock and attempt > 1):
                    raise
            for repo in (self, *others):
                await repo.unlock()
            if not features.retry_lock:
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay *= 2

    async def unlock(self) -> None:
        """Remove stale locks (plain ``unlock``; never ``--remove-all``, which would break a live run)."""
        await self._run("unlock", timeout=self._quick)


def _env_of(command: BaseCommand) -> dict[str, str]:
    """Return the environment a plumbum command carries (``with_env`` of nothing adds none)."""
    return dict(command.env) if isinstance(command, BoundEnvCommand) else {}


def _child_with_marker(marker: str) -> int | None:
    """Return the pid of hasupd's child whose environment holds ``_MARKER=marker``, or None."""
    me = os.getpid()
    needle = f"{_MARKER}={marker}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = stat(name)
            if st is None or st.ppid != me:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    return int(name)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return None
