"""Streaming a program's output into restic, and restic's output into a program, with both exit
statuses checked.

restic 0.17+ runs a dump program itself (``--stdin-from-command``) and makes no snapshot when it fails.
On older restic (Debian 12's 0.14) hasupd runs the program and relays its output into restic's stdin
through a thread: restic sees the end of its input only once the program has exited 0, so a program that
fails or is killed mid-stream is met with SIGINT to restic (which then makes no snapshot), never with an
end of file that restic would take for a complete dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hasupd.host.reaper import Reaper
from hasupd.runtimes.command import CommandResult, run_command

_CHUNK = 1 << 20
RESTIC_END_WAIT_SEC = 30.0


@dataclass(frozen=True)
class StreamCommand:
    """A program that writes a dump to stdout (or reads one from stdin): argv and its extra environment
    (passwords go here, never in argv)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


class StreamFailed(Exception):
    """The dump (or restore) program failed or was cut short: whatever restic made of it is not kept."""


def describe_failure(argv: tuple[str, ...], result: CommandResult) -> str:
    """Return e.g. "pg_dump ended with SIGKILL: <stderr tail>"."""
    program = os.path.basename(argv[0])
    tail = result.stderr[-800:].decode("utf-8", "replace").strip()
    return f"{program} ended with {result.describe()}" + (f": {tail}" if tail else "")


def _relay(src: int, dst: int) -> tuple[int, OSError | None]:
    """Copy ``src`` to ``dst`` until end of file; close ``src`` (not ``dst``). Return (bytes, error)."""
    copied = 0
    try:
        while True:
            chunk = os.read(src, _CHUNK)
            if not chunk:
                return copied, None
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst, view) :]
            copied += len(chunk)
    except OSError as error:  # restic went away (EPIPE): the caller asks restic why
        return copied, error
    finally:
        os.close(src)


async def _settle(*tasks: asyncio.Future[Any]) -> None:
    """Wait for ``tasks`` to end (cancelled or not) without raising what they raise."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending)


async def piped_backup(
    run_restic: Callable[[int], Awaitable[CommandResult]],
    command: StreamCommand,
    *,
    reaper: Reaper | None,
    timeout: float | None,
) -> CommandResult:
    """Run ``command`` with its stdout relayed into ``run_restic(stdin_fd)``; return restic's result.

    Raise StreamFailed when the command fails (restic is stopped with SIGINT before it sees an end of
    file, so it makes no snapshot); whatever ``run_restic`` raises when restic itself fails.
    """
    dump_r, dump_w = os.pipe()
    restic_r, restic_w = os.pipe()
    restic_task: asyncio.Future[CommandResult] = asyncio.ensure_future(run_restic(restic_r))
    dump_task = asyncio.ensure_future(
        run_command(
            command.argv,
            reaper=reaper,
            env=dict(command.env),
            timeout=timeout,
            stop_signal=signal.SIGTERM,
            parent_death_signal=signal.SIGKILL,
            stdout_fd=dump_w,
        )
    )
    relay = asyncio.ensure_future(asyncio.to_thread(_relay, dump_r, restic_w))
    try:
        try:
            dump = await dump_task
        except OSError as error:  # the program cannot be started
            restic_task.cancel()
            await _settle(relay, restic_task)
            raise StreamFailed(f"cannot run {command.argv[0]}: {error}") from error
        copied, broken = await relay
        if dump.ok and broken is None:
            os.close(restic_w)
            restic_w = -1
            return await restic_task
        if broken is None:
            restic_task.cancel()  # before restic sees an end of file: it makes no snapshot
        else:
            # restic closed its input: it has ended or is ending; its own error is the cause.
            await asyncio.wait([restic_task], timeout=RESTIC_END_WAIT_SEC)
            restic_task.cancel()
        await _settle(restic_task)
        if broken is not None and not restic_task.cancelled() and restic_task.exception() is not None:
            raise restic_task.exception()  # type: ignore[misc]  # restic failed first: the cause
        if dump.ok:
            raise StreamFailed(f"relaying the dump into restic failed after {copied} bytes: {broken}")
        raise StreamFailed(describe_failure(command.argv, dump) + f" (after {copied} bytes)")
    finally:
        for task in (dump_task, restic_task):
            task.cancel()
        await asyncio.shield(_settle(dump_task, restic_task, relay))
        if restic_w >= 0:
            os.close(restic_w)


async def piped_restore(
    run_restic: Callable[[int], Awaitable[CommandResult]],
    command: StreamCommand,
    *,
    reaper: Reaper | None,
    timeout: float | None,
) -> CommandResult:
    """Run ``run_restic(stdout_fd)`` (``restic dump``) into the stdin of ``command`` (pg_restore ...).

    Return the command's result. Raise StreamFailed if the command fails; whatever ``run_restic``
    raises if restic fails (the command then reads a short input and its result is not trusted).
    """
    read_end, write_end = os.pipe()
    restic_task: asyncio.Future[CommandResult] = asyncio.ensure_future(run_restic(write_end))
    try:
        try:
            result = await run_command(
                command.argv,
                reaper=reaper,
                env=dict(command.env),
                timeout=timeout,
                stdin_fd=read_end,
                parent_death_signal=signal.SIGKILL,
            )
        except OSError as error:
            raise StreamFailed(f"cannot run {command.argv[0]}: {error}") from error
        await _settle(restic_task)
        if not result.ok:
            raise StreamFailed(describe_failure(command.argv, result))
        restic_task.result()  # the command was content, but its input may have been cut short
        return result
    finally:
        restic_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(_settle(restic_task))
