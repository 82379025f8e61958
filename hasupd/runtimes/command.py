"""Run a short-lived command (a probe, restic, a hook) from the event loop without blocking it.

Like ``asyncio.create_subprocess_exec`` but with no child-watcher thread: the exit is learned from a
pidfd, the pid is tracked by the Reaper (so the subreaper never steals it), the command runs in its own
process group, and a timeout stops the whole group politely, then with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hasupd.host.procfs import parent_death_signal as parent_death_signal_preexec
from hasupd.host.procfs import signal_group, stop_group
from hasupd.host.reaper import Reaper
from hasupd.ports import ExitStatus

_READ_CHUNK = 65536


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    status: ExitStatus
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_sec: float

    @property
    def ok(self) -> bool:
        return self.status.code == 0 and not self.timed_out

    def describe(self) -> str:
        """Return e.g. "exit code 2", "SIGKILL", or "timed out after 5s (SIGKILL)"."""
        if self.timed_out:
            return f"timed out after {self.duration_sec:.1f}s ({self.status.describe()})"
        return self.status.describe()

    def tail(self, limit: int = 2000) -> str:
        """Return the end of stderr (or stdout when stderr is empty) as text, for records."""
        data = self.stderr or self.stdout
        return data[-limit:].decode("utf-8", "replace").strip()


class _Buffer:
    """Collects one pipe; keeps at most ``limit`` bytes (the head) and calls ``on_line`` per line."""

    def __init__(self, limit: int, on_line: Callable[[bytes], None] | None) -> None:
        self.data = bytearray()
        self.limit = limit
        self.on_line = on_line
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        if len(self.data) < self.limit:
            self.data += chunk[: self.limit - len(self.data)]
        if self.on_line is not None:
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                self.on_line(line)

    def close(self) -> None:
        if self.on_line is not None and self._partial:
            self.on_line(self._partial)
            self._partial = b""


async def run_command(
    argv: tuple[str, ...] | list[str],
    *,
    reaper: Reaper | None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    stop_signal: int = signal.SIGTERM,
    kill_after: float = 5.0,
    stdin: bytes | None = None,
    max_output: int = 16 * 1024 * 1024,
    on_stdout_line: Callable[[bytes], None] | None = None,
    parent_death_signal: int | None = None,
    stdin_fd: int | None = None,
    stdout_fd: int | None = None,
) -> CommandResult:
    """Run ``argv`` and return how it ended with its output.

    ``stdin_fd`` / ``stdout_fd``: file descriptors (a pipe end, an open file) the command reads from /
    writes to instead of /dev/null / a captured pipe (the result's stdout is then empty). Ownership
    passes to this call: both are closed here once the command has started, or failed to start.

    On timeout (or cancellation) the process group gets ``stop_signal``, then SIGKILL after
    ``kill_after`` seconds; the result says ``timed_out``. ``parent_death_signal``: the signal the
    command gets when hasupd dies (even by SIGKILL), so that it does not run on without its parent.
    Raise OSError (FileNotFoundError, PermissionError ...) if it cannot be started.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        proc = _popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            parent_death_signal=parent_death_signal,
            stdin_fd=stdin_fd,
            stdout_fd=stdout_fd,
        )
    finally:
        for fd in (stdin_fd, stdout_fd):
            if fd is not None:
                os.close(fd)
    pid = proc.pid
    if reaper is not None:
        reaper.track(pid)
    pidfd = os.pidfd_open(pid)
    assert proc.stderr is not None
    out = _Buffer(max_output, on_stdout_line)
    err = _Buffer(max_output, None)
    exited: asyncio.Future[ExitStatus] = loop.create_future()
    pipes_done: dict[int, asyncio.Future[None]] = {}

    def watch_pipe(fd: int, buffer: _Buffer) -> None:
        os.set_blocking(fd, False)
        done: asyncio.Future[None] = loop.create_future()
        pipes_done[fd] = done

        def readable() -> None:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if chunk:
                buffer.feed(chunk)
                return
            loop.remove_reader(fd)
            buffer.close()
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        _, status = os.waitpid(pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if not exited.done():
            exited.set_result(ExitStatus.from_wait_status(pid, status))

    if proc.stdout is not None:
        watch_pipe(proc.stdout.fileno(), out)
    watch_pipe(proc.stderr.fileno(), err)
    loop.add_reader(pidfd, on_exit)
    if stdin is not None and proc.stdin is not None:
        # Small inputs only (passwords, scripts): written before anything is awaited.
        with proc.stdin:
            proc.stdin.write(stdin)

    async def stop_and_wait() -> ExitStatus:
        await stop_group(pid, exited, stop_signal=stop_signal, kill_after=kill_after)
        return exited.result()

    async def drain_pipes() -> None:
        # The group may hold children that keep the pipes open; they go with the command.
        try:
            await asyncio.wait_for(asyncio.gather(*pipes_done.values()), 2.0)
        except TimeoutError:
            signal_group(pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*pipes_done.values()), 5.0)

    timed_out = False
    try:
        try:
            status = await asyncio.wait_for(asyncio.shield(exited), timeout)
        except TimeoutError:
            timed_out = True
            status = await stop_and_wait()
        await drain_pipes()
    except asyncio.CancelledError:
        # Cancelled: the command is stopped exactly as on a timeout, shielded from the cancellation,
        # before the cancellation goes on.
        cleanup = asyncio.ensure_future(stop_and_wait())
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(cleanup)
        if cleanup.done() and not cleanup.cancelled():
            with contextlib.suppress(TimeoutError):
                await asyncio.shield(drain_pipes())
        raise
    finally:
        for fd in (*([proc.stdout.fileno()] if proc.stdout else []), proc.stderr.fileno(), pidfd):
            loop.remove_reader(fd)
        if reaper is not None:
            # Reaped by on_exit; or, when cancelled first, by the Reaper's sweep once it has died.
            reaper.untrack(pid)
        os.close(pidfd)
        if proc.stdout is not None:
            proc.stdout.close()
        proc.stderr.close()
        if proc.returncode is None:
            proc.returncode = -1  # reaped elsewhere; keeps Popen from warning
    return CommandResult(
        argv=tuple(argv),
        status=status,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        timed_out=timed_out,
        duration_sec=time.monotonic() - started,
    )


def _popen(
    argv: tuple[str, ...] | list[str],
    *,
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdin: bytes | None,
    parent_death_signal: int | None,
    stdin_fd: int | None,
    stdout_fd: int | None,
) -> subprocess.Popen[bytes]:
    if stdin_fd is not None:
        child_stdin: int = stdin_fd
    else:
        child_stdin = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
    return subprocess.Popen(
        list(argv),
        stdin=child_stdin,
        stdout=stdout_fd if stdout_fd is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
        # Safe beside threads: the function makes two system calls through a libc handle loaded
        # before the fork, and takes no lock another thread could hold.
        preexec_fn=None if parent_death_signal is None else parent_death_signal_preexec(parent_death_signal),  # noqa: PLW1509
    )
