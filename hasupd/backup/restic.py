"""What the restic commands mean for hasupd: init, backup, snapshots, retention, copy, check, restore, ls.

How restic is run (environment, SIGINT, exit codes, lock waiting) is ``runner.py``; what differs between
restic versions is ``compat.py``. Every method raises ResticError when restic fails.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hasupd.backup.compat import ErrorKind, ResticError, json_error_text
from hasupd.backup.models import (
    BackupSummary,
    CheckResult,
    LsEntry,
    ParseError,
    RestoreResult,
    RetentionPlan,
    Snapshot,
    UnreadableItem,
    parse_backup_summary,
    parse_forget,
    parse_ls,
    parse_restore,
    parse_snapshots,
    summary_from_json,
)
from hasupd.backup.retention import keep_args, validate_group_by
from hasupd.backup.runner import ResticRunner
from hasupd.backup.streams import StreamCommand, StreamFailed, piped_backup, piped_restore
from hasupd.config.model import Keep

_FULL_ID = re.compile(r"[0-9a-f]{64}\Z")
_SNAPSHOT_REF = re.compile(r"(?:[0-9a-f]{8,64}|latest)\Z")
_STDIN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_COMMAND_FAILED = "command failed"
_SUBSET = re.compile(r"(?:(\d+)/(\d+)|\d+(?:\.\d+)?%)\Z")
_CHECK_DAMAGE = "repository contains errors"
T = TypeVar("T")


class Restic(ResticRunner):
    """One restic repository (``Restic(repo, reaper=..., binary=..., cache_dir=...)``, see ResticRunner)."""

    async def config(self) -> dict[str, Any]:
        """Return the repository config (``cat config``: version, id, chunker_polynomial)."""
        result = await self._run("cat", ["config"], timeout=self._quick)
        try:
            data = _json(result.stdout)
        except ParseError as e:
            raise ResticError(ErrorKind.FATAL, 0, str(e), "cat") from e
        if not isinstance(data, dict):
            raise ResticError(ErrorKind.FATAL, 0, "cat config printed no object", "cat")
        return data

    async def init_if_absent(self, copy_chunker_params_from: Restic | None = None) -> bool:
        """Create the repository unless it exists; return True if this call created it.

        ``copy_chunker_params_from``: a repository whose chunker parameters the new one takes, so that
        ``copy`` from it deduplicates. Raise ResticError if the repository cannot be opened for another
        reason than its absence (wrong password, unreachable) or cannot be created.
        """
        try:
            await self.config()
            return False
        except ResticError as e:
            if e.kind is not ErrorKind.NO_REPOSITORY:
                raise
        args, env = [], {}
        if copy_chunker_params_from is not None:
            args, env = ["--copy-chunker-params"], copy_chunker_params_from.source_env_for(self)
        try:
            await self._run("init", args, timeout=self._quick, extra_env=env)
        except ResticError:
            try:  # someone else created it meanwhile
                await self.config()
            except ResticError:
                pass
            else:
                return False
            raise
        return True

    async def snapshots(self, tags: Sequence[str] | None = None) -> list[Snapshot]:
        """Return the snapshots, oldest first; with ``tags``, those that carry all of them."""
        args = ["--json", *_tag_filter(tags or ())]
        result = await self._run_locked("snapshots", args, exclusive=False, timeout=self._quick)
        return sorted(_parsed(parse_snapshots, result.stdout, "snapshots"), key=lambda s: s.time)

    async def backup(
        self,
        paths: Sequence[str],
        excludes: Sequence[str] = (),
        tags: Sequence[str] = (),
        time: datetime | None = None,
    ) -> BackupSummary:
        """Back up ``paths`` (made absolute) and return the summary with the full snapshot id.

        ``time`` (aware) back-dates the snapshot. A summary with ``partial=True`` lists the files restic
        could not read (exit code 3: the snapshot exists without them). Raise ResticError if a path does
        not exist (restic would silently skip it and exit 0) or restic fails; ValueError for bad tags.
        """
        if not paths:
            raise ValueError("backup needs at least one path")
        absolute = [os.path.abspath(p) for p in paths]
        missing = [p for p in absolute if not os.path.lexists(p)]
        if missing:
            raise ResticError(
                ErrorKind.FATAL, None, f"source paths do not exist: {', '.join(missing)}", "backup"
            )
        args = ["--json", "--quiet"]
        for tag in tags:
            args += ["--tag", _check_tag(tag)]
        for pattern in excludes:
            args += ["--exclude", pattern]
        env: dict[str, str] = {}
        if time is not None:
            if time.tzinfo is None:
                raise ValueError("time must be an aware datetime")
            # restic reads --time in its local zone: make that UTC so the instant is exact.
            env["TZ"] = "UTC"
            args += ["--time", time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")]
        lines: collections.deque[bytes] = collections.deque(maxlen=20)
        result = await self._run_locked(
            "backup",
            [*args, *absolute],
            exclusive=False,
            timeout=self._timeout,
            extra_env=env,
            accept=lambda kind, _: kind is ErrorKind.PARTIAL,
            on_line=lines.append,
        )
        msg = _parsed(parse_backup_summary, list(lines), "backup")
        snapshot_id = str(msg.get("snapshot_id", ""))
        if not snapshot_id:
            raise ResticError(ErrorKind.FATAL, result.status.code, "backup made no snapshot", "backup")
        if not _FULL_ID.match(snapshot_id):
            snapshot_id = await self._full_id(snapshot_id)  # 0.14 prints the short id
        summary = summary_from_json(msg, snapshot_id)
        if result.status.code == 3:
            unreadable = tuple(_unreadable(result.stderr))
            summary = dataclasses.replace(summary, partial=True, unreadable=unreadable)
        return summary

    async def backup_stdin(
        self,
        filename: str,
        tags: Sequence[str],
        *,
        command: StreamCommand | None = None,
        source_fd: int | None = None,
    ) -> BackupSummary:
        """Make a snapshot of one file, ``/FILENAME``, holding what ``command`` writes to its stdout (or
        what can be read from ``source_fd``, which is closed here).

        restic 0.17+ runs ``command`` itself (``--stdin-from-command``); older restic reads it through
        a pipe (``streams.piped_backup``). Either way no snapshot is left when the command fails: raise
        StreamFailed then, ResticError when restic fails, ValueError for a bad name or tag.
        """
        if (command is None) == (source_fd is None):
            raise ValueError("give exactly one of command or source_fd")
        if not _STDIN_NAME.match(filename):
            raise ValueError(f"invalid stdin file name {filename!r}: [a-z0-9][a-z0-9_.-]*, no slash")
        features = await self.features()
        args = ["--json", "--quiet", "--stdin-filename", filename]
        for tag in tags:
            args += ["--tag", _check_tag(tag)]
        # The input can be read once: restic waits for a lock itself where it can, nothing retries.
        wait = ["--retry-lock", f"{int(self._lock_wait)}s"] if features.retry_lock else []
        lines: collections.deque[bytes] = collections.deque(maxlen=20)

        def run(stdin_fd: int | None, extra: Sequence[str], env: dict[str, str]) -> Any:
            return self._run(
                "backup",
                [*args, *extra],
                timeout=self._timeout,
                global_args=wait,
                extra_env=env,
                on_line=lines.append,
                stdin_fd=stdin_fd,
            )

        if command is None:
            result = await run(source_fd, ["--stdin"], {})
        elif features.stdin_from_command:
            try:
                result = await run(None, ["--stdin-from-command", "--", *command.argv], dict(command.env))
            except ResticError as error:
                if _COMMAND_FAILED in error.stderr_tail:
                    raise StreamFailed(f"{command.argv[0]}: {error.stderr_tail}") from error
                raise
        else:
            result = await piped_backup(
                lambda fd: run(fd, ["--stdin"], {}), command, reaper=self._reaper, timeout=self._timeout
            )
        msg = _parsed(parse_backup_summary, list(lines), "backup")
        snapshot_id = str(msg.get("snapshot_id", ""))
        if not snapshot_id:
            raise ResticError(ErrorKind.FATAL, result.status.code, "backup made no snapshot", "backup")
        if not _FULL_ID.match(snapshot_id):
            snapshot_id = await self._full_id(snapshot_id)  # 0.14 prints the short id
        return summary_from_json(msg, snapshot_id)

    async def dump_into(self, snapshot: str, filename: str, command: StreamCommand) -> None:
        """Stream ``/FILENAME`` of ``snapshot`` (``restic dump``) into the stdin of ``command``.

        Raise StreamFailed if the command fails, ResticError if restic does.
        """
        if not _SNAPSHOT_REF.match(snapshot):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        if not _STDIN_NAME.match(filename):
            raise ValueError(f"invalid file name {filename!r}")
        features = await self.features()
        wait = ["--retry-lock", f"{int(self._lock_wait)}s"] if features.retry_lock else []
        await piped_restore(
            lambda fd: self._run(
                "dump", [snapshot, "/" + filename], timeout=self._timeout, global_args=wait, stdout_fd=fd
            ),
            command,
            reaper=self._reaper,
            timeout=self._timeout,
        )

    async def _full_id(self, short_id: str) -> str:
        result = await self._run_locked(
            "snapshots", ["--json", short_id], exclusive=False, timeout=self._quick
        )
        found = [
            s.id for s in _parsed(parse_snapshots, result.stdout, "snapshots") if s.id.startswith(short_id)
        ]
        if len(found) != 1:
            raise ResticError(
                ErrorKind.FATAL, 0, f"cannot resolve snapshot id {short_id}: {found}", "snapshots"
            )
        return found[0]

    async def forget_plan(
        self, keep: Keep, tags: Sequence[str] = (), group_by: Sequence[str] = ("host", "paths")
    ) -> RetentionPlan:
        """Return what ``forget`` with ``keep`` would keep and remove, per group (``--dry-run``).

        ``tags`` limits it to snapshots carrying all of them. Raise ValueError for an invalid policy
        (before restic sees it: 0.14 removes everything on some bad values) or group_by.
        """
        policy = keep_args(keep)
        validate_group_by(group_by)
        args = ["--dry-run", "--json", "--group-by", ",".join(group_by), *_tag_filter(tags), *policy]
        result = await self._run_locked("forget", args, exclusive=True, timeout=self._timeout)
        return _parsed(lambda out: parse_forget(out, group_by, tags), result.stdout, "forget")

    async def forget_ids(self, ids: Sequence[str]) -> None:
        """Forget exactly these snapshots (full ids). Nothing happens for an empty list."""
        wanted = list(dict.fromkeys(_check_full_id(i) for i in ids))
        if wanted:
            await self._run_locked("forget", wanted, exclusive=True, timeout=self._timeout)

    async def prune(self) -> None:
        """Remove the data no snapshot references any more."""
        await self._run_locked("prune", [], exclusive=True, timeout=self._timeout)

    async def copy(self, ids: Sequence[str], to: Restic) -> list[str]:
        """Copy these snapshots (full ids) into ``to``; return the ids copied now.

        Snapshots ``to`` already holds (its copies name them as ``original``) are left out; with nothing
        left restic is not run at all (``restic copy`` without ids would copy every snapshot).
        """
        wanted = list(dict.fromkeys(_check_full_id(i) for i in ids))
        present = {s.original for s in await to.snapshots() if s.original}
        todo = [i for i in wanted if i not in present]
        if todo:
            await to._run_locked(
                "copy",
                todo,
                exclusive=False,
                timeout=to._timeout,
                extra_env=self.source_env_for(to),
                also_unlock=[self],
            )
        return todo

    async def check(self, read_data_subset: str | None = None) -> CheckResult:
        """Check the repository, reading the data of ``read_data_subset`` ("K/N" or "P%") too.

        Return ok=False when restic found damage; raise ResticError when the check could not run.
        """
        args: list[str] = []
        if read_data_subset is not None:
            m = _SUBSET.match(read_data_subset)
            if m is None or (m.group(1) and not 1 <= int(m.group(1)) <= int(m.group(2))):
                raise ValueError(
                    f"read_data_subset must be K/N with 1 <= K <= N, or P%: {read_data_subset!r}"
                )
            args.append(f"--read-data-subset={read_data_subset}")
        result = await self._run_locked(
            "check",
            args,
            exclusive=True,
            timeout=self._timeout,
            accept=lambda kind, err: kind is ErrorKind.FATAL and _CHECK_DAMAGE in err,
        )
        output = (result.stdout + b"\n" + result.stderr).decode("utf-8", "replace").strip()
        return CheckResult(
            ok=result.status.code == 0, read_data_subset=read_data_subset, output_tail=output[-4000:]
        )

    async def restore(self, snapshot: str, target: Path, include_paths: Sequence[str] = ()) -> RestoreResult:
        """Restore ``snapshot`` (an id or "latest") under ``target``, only ``include_paths`` if given."""
        if not _SNAPSHOT_REF.match(snapshot):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        features = await self.features()
        args = [snapshot, "--target", str(target)]
        for path in include_paths:
            args += ["--include", path]
        if features.restore_json:
            args.append("--json")
        result = await self._run_locked("restore", args, exclusive=False, timeout=self._timeout)
        return parse_restore(result.stdout) if features.restore_json else RestoreResult(None, None)

    async def locks(self) -> list[str]:
        """Return the ids of the locks in the repository (``list locks``, taking no lock itself)."""
        result = await self._run("list", ["locks"], timeout=self._quick, global_args=["--no-lock"])
        return [line for line in result.stdout.decode("utf-8", "replace").split() if _FULL_ID.match(line)]

    async def ls(self, snapshot: str) -> list[LsEntry]:
        """Return every node of ``snapshot`` as (path, type, size) for verification."""
        if not _SNAPSHOT_REF.match(snapshot):
            raise ValueError(f"not a snapshot id: {snapshot!r}")
        lines: list[bytes] = []
        await self._run_locked(
            "ls", ["--json", snapshot], exclusive=False, timeout=self._timeout, on_line=lines.append
        )
        return _parsed(parse_ls, b"\n".join(lines), "ls")


def _tag_filter(tags: Sequence[str]) -> list[str]:
    return ["--tag", ",".join(_check_tag(t) for t in tags)] if tags else []


def _check_tag(tag: str) -> str:
    if not tag or "," in tag or tag != tag.strip():
        raise ValueError(f"invalid tag {tag!r}: non-empty, no commas, no surrounding blanks")
    return tag


def _check_full_id(snapshot_id: str) -> str:
    if not isinstance(snapshot_id, str) or not _FULL_ID.match(snapshot_id):
        raise ValueError(f"not a full snapshot id: {snapshot_id!r}")
    return snapshot_id


def _parsed(parse: Callable[[Any], T], data: Any, command: str) -> T:
    try:
        return parse(data)
    except ParseError as e:
        raise ResticError(ErrorKind.FATAL, 0, f"unexpected output: {e}", command) from e


def _json(stdout: bytes) -> Any:
    try:
        return json.loads(stdout)
    except ValueError as e:
        raise ParseError(f"not JSON: {stdout[:200]!r}") from e


def _unreadable(stderr: bytes) -> list[UnreadableItem]:
    items = []
    for raw in stderr.splitlines():
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("message_type") == "error":
            items.append(UnreadableItem(path=str(msg.get("item", "")), message=json_error_text(msg)))
    return items
