"""Where a service's stdout and stderr go: journald stream sockets, a size-rotated file, or hasupd's own.

journal: the child writes straight into two sockets connected to journald's stdout stream (the
protocol of ``sd_journal_stream_fd``); hasupd copies no bytes. file: the child writes into a pipe and
hasupd moves the bytes into ``LOG_DIR/UNIT.log`` with ``splice`` (zero-copy), rotating by size.
inherit: the child gets hasupd's own stdout and stderr.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from hasupd.ports import SpawnError
from hasupd.states import OutputMode

DEFAULT_JOURNAL_DIR = Path("/run/systemd/journal")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5
_CHUNK = 64 * 1024
_CHUNKS_PER_WAKEUP = 16  # bounded work per callback keeps the loop fair to everything else
_JOURNAL_SNDBUF = 8 * 1024 * 1024  # as systemd does, so bursts do not block the service
PRIORITY_INFO = 6
PRIORITY_ERR = 3


PIPE_SIZE = 1024 * 1024  # output pipe for `output: file`


def journal_stream_available(journal_socket_dir: Path = DEFAULT_JOURNAL_DIR) -> bool:
    """Return True if journald accepts stream connections at ``journal_socket_dir/stdout`` (where a
    service's stdout and stderr go with ``output: journal``)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(journal_socket_dir / "stdout"))
    except OSError:
        return False
    return True


def journal_header(identifier: str, priority: int) -> bytes:
    """Return the stream header journald expects: identifier, unit id (empty), priority,
    level_prefix, forward_to_syslog, forward_to_kmsg, forward_to_console, one per line."""
    return f"{identifier}\n\n{priority}\n0\n0\n0\n0\n".encode()


def journal_stream(journal_socket_dir: Path, identifier: str, priority: int) -> socket.socket:
    """Return a socket connected to journald's stdout stream with the header sent.

    Raise OSError if journald is not reachable.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(journal_socket_dir / "stdout"))
        sock.shutdown(socket.SHUT_RD)
        with suppress(PermissionError):  # a cap, not a failure
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _JOURNAL_SNDBUF)
        sock.sendall(journal_header(identifier, priority))
    except OSError:
        sock.close()
        raise
    return sock


class LogFile:
    """``DIR/NAME.log`` rotated by size to ``NAME.log.1`` .. ``NAME.log.KEEP``.

    Shared by every pipe that writes to the same name (a restart may overlap with a leftover
    grandchild of the previous start), so there is one file offset. A file may exceed
    ``max_bytes`` by less than one chunk (64 KiB): splice moves bytes it does not look at, so a
    rotation happens before a chunk, not inside one.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        # A str, a Path on demand: one per service, and a Path keeps its parts parsed (~600 bytes).
        self._path = str(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.users = 0
        self.dropped = 0  # bytes that could not be written (disk full ...); the service never blocks
        self.error: str | None = None
        self._splice = True
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    @property
    def path(self) -> Path:
        return Path(self._path)

    def _open(self) -> int:
        # No O_APPEND: splice refuses files opened for appending; we are the only writer.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.lseek(fd, 0, os.SEEK_END)
        return fd

    def move_from(self, pipe_fd: int) -> int:
        """Move up to one chunk from the non-blocking pipe ``pipe_fd``; return the bytes moved, 0 at EOF.

        Raise BlockingIOError when the pipe is empty.
        """
        if self._size >= self.max_bytes:
            self._rotate()
        if self._splice:
            try:
                n = os.splice(pipe_fd, self._fd, _CHUNK, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                raise
            except OSError as e:  # EINVAL on file systems without splice, ENOSPC ...: copy instead
                self._splice = False
                self.error = f"splice: {e.strerror}"
            else:
                self._size += n
                return n
        data = os.read(pipe_fd, _CHUNK)
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as e:
                self.dropped += len(view)
                self.error = f"{self.path}: {e.strerror}"
                break
            self._size += written
            view = view[written:]
        return len(data)

    def _rotate(self) -> None:
        try:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.keep > 0:
                self.path.rename(self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink()
            fd = self._open()
        except OSError as e:  # keep writing to the current file rather than lose output
            self.error = f"rotate {self.path}: {e.strerror}"
            self._size = 0
            return
        os.close(self._fd)
        self._fd = fd
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Drain:
    """Moves what a child writes into a pipe to a LogFile, from a loop reader, until EOF.

    It outlives the process it was made for: grandchildren may still hold the pipe.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pipe_fd: int, log: LogFile, owner: LogFiles, unit: str = ""
    ) -> None:
        self._loop = loop
        self._unit = unit
        self._fd = pipe_fd
        self._log = log
        self._owner = owner
        # Futures of wait_closed, made only when someone waits (one per service: no asyncio.Event,
        # whose deque of waiters costs ~600 bytes).
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        os.set_blocking(pipe_fd, False)
        loop.add_reader(pipe_fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            for _ in range(_CHUNKS_PER_WAKEUP):
                try:
                    if self._log.move_from(self._fd) == 0:
                        self.close()
                        return
                except BlockingIOError:
                    return
        finally:
            # Once per wake-up, not per line: the reader of error groups reads the file later.
            if self._owner.on_output is not None:
                self._owner.on_output(self._unit)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fileno(self) -> int:
        """The pipe's read end (-1 once closed)."""
        return self._fd

    async def wait_closed(self) -> None:
        """Return once every writer closed the pipe and everything was written."""
        if self._closed:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def close(self) -> None:
        """Stop reading (at EOF, or when hasupd shuts down) and release the log file."""
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._closed = True
        self._owner.release(self._log)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class Output:
    """What one start's output is connected to."""

    mode: OutputMode  # the mode in effect (file when journal was asked for and is unreachable)
    stdout: int | None = None  # fd for the child; None: inherit hasupd's
    stderr: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # JOURNAL_STREAM
    note: str | None = None  # why ``mode`` is not the one asked for
    drain: Drain | None = None
    _parent_ends: list[socket.socket | int] = field(default_factory=list)

    def close_child_ends(self) -> None:
        """Close hasupd's copies of the child's ends (after the fork, or after a failed spawn)."""
        for end in self._parent_ends:
            if isinstance(end, int):
                os.close(end)
            else:
                end.close()
        self._parent_ends.clear()


class LogFiles:
    """Opens the outputs of starts; owns the shared LogFiles and the running Drains."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        log_dir: Path,
        journal_socket_dir: Path = DEFAULT_JOURNAL_DIR,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self._loop = loop
        self.log_dir = log_dir
        self._journal_dir = journal_socket_dir
        self._max_bytes = max_bytes
        self._keep = keep
        self._logs: dict[str, LogFile] = {}  # by path
        self._drains: set[Drain] = set()
        self.on_output: Callable[[str], None] | None = None  # told the unit whose log file grew

    def open(self, mode: OutputMode, unit: str) -> Output:
        """Return the output for one start of ``unit``.

        Raise SpawnError if the log file cannot be opened.
        """
        if mode == OutputMode.INHERIT:
            return Output(OutputMode.INHERIT)
        note = None
        if mode == OutputMode.JOURNAL:
            try:
                out = journal_stream(self._journal_dir, unit, PRIORITY_INFO)
            except OSError as e:
                note = f"journald is not reachable at {self._journal_dir}/stdout ({e.strerror})"
            else:
                try:
                    err = journal_stream(self._journal_dir, unit, PRIORITY_ERR)
                except OSError as e:
                    out.close()
                    note = f"journald is not reachable at {self._journal_dir}/stdout ({e.strerror})"
                else:
                    st = os.fstat(out.fileno())
                    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
                    return Output(OutputMode.JOURNAL, out.fileno(), err.fileno(), env, None, None, [out, err])
        log = self._acquire(unit)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        # A larger pipe means one loop wake-up per MiB instead of per 64 KiB for a chatty service
        # (bench: 605 -> 763 MB/s); an unprivileged hasupd may be capped lower, which is fine.
        with suppress(OSError):
            fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        drain = Drain(self._loop, read_end, log, self, unit)
        self._drains.add(drain)
        if note is not None:
            note += f"; output goes to {log.path}"
        return Output(OutputMode.FILE, write_end, write_end, {}, note, drain, [write_end])

    def adopt(self, unit: str, read_end: int) -> Output:
        """Return the output of a start whose pipe's read end ``read_end`` was kept across a re-exec:
        drained into the unit's log file again, from where the old image stopped reading."""
        os.set_inheritable(read_end, False)
        log = self._acquire(unit)
        drain = Drain(self._loop, read_end, log, self, unit)
        self._drains.add(drain)
        return Output(OutputMode.FILE, None, None, {}, None, drain, [])

    def _acquire(self, unit: str) -> LogFile:
        path = self.log_dir / f"{unit}.log"
        log = self._logs.get(str(path))
        if log is None:
            try:
                self.log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
                log = LogFile(path, self._max_bytes, self._keep)
            except OSError as e:
                raise SpawnError(f"cannot open the log file {path}: {e.strerror}") from e
            self._logs[str(path)] = log
        log.users += 1
        return log

    def release(self, log: LogFile) -> None:
        """Drop one user of ``log``; close it with the last."""
        log.users -= 1
        if log.users <= 0:
            log.close()
            self._logs.pop(str(log.path), None)
        self._drains = {d for d in self._drains if not d.closed}

    def close(self) -> None:
        """Stop every drain and close every log file (hasupd is shutting down)."""
        for drain in list(self._drains):
            drain.close()
        for log in list(self._logs.values()):
            log.close()
        self._logs.clear()


__all__ = [
    "DEFAULT_JOURNAL_DIR",
    "Drain",
    "LogFile",
    "LogFiles",
    "Output",
    "journal_header",
    "journal_stream",
    "journal_stream_available",
]
