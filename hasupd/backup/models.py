"""What restic reports, as frozen typed data parsed from its JSON output (0.14 .. 0.18 shapes)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GROUP_FIELDS = ("host", "paths", "tags")


class ParseError(ValueError):
    """restic printed something that is not the JSON this module expects."""


def parse_time(value: object) -> datetime:
    """Return an aware datetime from restic's RFC 3339 text (nanoseconds are cut to microseconds)."""
    if not isinstance(value, str):
        raise ParseError(f"expected a time string, got {value!r}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError as e:
        raise ParseError(f"bad time {value!r}") from e
    if when.tzinfo is None:
        raise ParseError(f"time without offset: {value!r}")
    return when


def _strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ParseError(f"expected a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int):
        raise ParseError(f"{key}: expected an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    hostname: str
    original: str | None = None  # set on a copy: the id of the snapshot it was copied from

    @classmethod
    def from_json(cls, data: object) -> Snapshot:
        """Return the snapshot described by one object of ``snapshots --json``/``forget --json``."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ParseError(f"not a snapshot: {data!r:.200}")
        sid = data["id"]
        original = data.get("original")
        return cls(
            id=sid,
            short_id=str(data.get("short_id") or sid[:8]),
            time=parse_time(data.get("time")),
            paths=_strings(data.get("paths")),
            tags=_strings(data.get("tags")),
            hostname=str(data.get("hostname", "")),
            original=original if isinstance(original, str) else None,
        )


def parse_snapshots(stdout: bytes) -> list[Snapshot]:
    """Return the snapshots of ``restic snapshots --json`` output."""
    data = _load(stdout)
    if data is None:
        return []
    if not isinstance(data, list):
        raise ParseError("snapshots --json did not print a list")
    return [Snapshot.from_json(item) for item in data]


@dataclass(frozen=True)
class UnreadableItem:
    path: str
    message: str


@dataclass(frozen=True)
class BackupSummary:
    snapshot_id: str  # always the full id
    files_new: int
    files_changed: int
    files_unmodified: int
    data_added: int
    total_duration: float
    partial: bool = False  # exit code 3: the snapshot exists but lacks the files in ``unreadable``
    unreadable: tuple[UnreadableItem, ...] = ()


def parse_backup_summary(lines: Sequence[bytes]) -> dict[str, Any]:
    """Return the ``summary`` message among ``backup --json`` stdout lines. Raise ParseError if absent."""
    for raw in reversed(lines):
        line = raw.strip()
        if not line.startswith(b"{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("message_type") == "summary":
            return msg
    raise ParseError("backup --json printed no summary line")


def summary_from_json(msg: Mapping[str, Any], snapshot_id: str) -> BackupSummary:
    """Return a BackupSummary from a parsed summary message and the resolved full snapshot id."""
    duration = msg.get("total_duration", 0.0)
    return BackupSummary(
        snapshot_id=snapshot_id,
        files_new=_int(msg, "files_new"),
        files_changed=_int(msg, "files_changed"),
        files_unmodified=_int(msg, "files_unmodified"),
        data_added=_int(msg, "data_added"),
        total_duration=float(duration) if isinstance(duration, int | float) else 0.0,
    )


@dataclass(frozen=True)
class GroupKey:
    """What a forget group has in common; None for a field that was not grouped by."""

    host: str | None
    paths: tuple[str, ...] | None
    tags: tuple[str, ...] | None

    def matches(self, snapshot: Snapshot) -> bool:
        """Return True if ``snapshot`` belongs to this group."""
        if self.host is not None and snapshot.hostname != self.host:
            return False
        if self.paths is not None and sorted(snapshot.paths) != sorted(self.paths):
            return False
        return self.tags is None or sorted(snapshot.tags) == sorted(self.tags)

    def describe(self) -> str:
        """Return e.g. "host=h paths=/a,/b tags=-" for messages."""
        parts = []
        for name, value in (("host", self.host), ("paths", self.paths), ("tags", self.tags)):
            if value is None:
                continue
            text = value if isinstance(value, str) else ",".join(value) or "-"
            parts.append(f"{name}={text}")
        return " ".join(parts) or "all snapshots"


def group_key(snapshot: Snapshot, group_by: Sequence[str]) -> GroupKey:
    """Return the group ``snapshot`` falls in when grouping by ``group_by`` (fields of GROUP_FIELDS)."""
    return GroupKey(
        host=snapshot.hostname if "host" in group_by else None,
        paths=tuple(sorted(snapshot.paths)) if "paths" in group_by else None,
        tags=tuple(sorted(snapshot.tags)) if "tags" in group_by else None,
    )


@dataclass(frozen=True)
class RetentionGroup:
    key: GroupKey
    keep: tuple[Snapshot, ...]
    remove: tuple[Snapshot, ...]


@dataclass(frozen=True)
class RetentionPlan:
    """What ``forget --dry-run`` would do: per group, the snapshots it keeps and removes."""

    group_by: tuple[str, ...]
    tags: tuple[str, ...]  # the --tag filter the plan was made with (a snapshot must carry all of them)
    groups: tuple[RetentionGroup, ...]

    def remove_ids(self) -> list[str]:
        """Return the ids the plan removes, oldest first."""
        snaps = [s for g in self.groups for s in g.remove]
        return [s.id for s in sorted(snaps, key=lambda s: s.time)]


def parse_forget(stdout: bytes, group_by: Sequence[str], tags: Sequence[str]) -> RetentionPlan:
    """Return the plan in ``forget --dry-run --json`` output."""
    data = _load(stdout)
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ParseError("forget --json did not print a list")
    groups = []
    for item in data:
        if not isinstance(item, dict):
            raise ParseError(f"not a forget group: {item!r:.200}")
        # null means "not grouped by this" or, when grouped by it, "empty": group_by tells which.
        host = item.get("host")
        key = GroupKey(
            host=str(host or "") if "host" in group_by else None,
            paths=tuple(sorted(_strings(item.get("paths")))) if "paths" in group_by else None,
            tags=tuple(sorted(_strings(item.get("tags")))) if "tags" in group_by else None,
        )
        keep = tuple(Snapshot.from_json(s) for s in item.get("keep") or [])
        remove = tuple(Snapshot.from_json(s) for s in item.get("remove") or [])
        groups.append(RetentionGroup(key=key, keep=keep, remove=remove))
    return RetentionPlan(group_by=tuple(group_by), tags=tuple(tags), groups=tuple(groups))


@dataclass(frozen=True)
class LsEntry:
    path: str
    type: str  # "file", "dir", "symlink", ...
    size: int | None  # files only


def parse_ls(stdout: bytes) -> list[LsEntry]:
    """Return the nodes of ``ls --json`` output (the leading snapshot line is skipped)."""
    entries = []
    for raw in stdout.splitlines():
        if not raw.strip():
            continue
        try:
            msg = json.loads(raw)
        except ValueError as e:
            raise ParseError(f"ls --json printed a non-JSON line: {raw[:200]!r}") from e
        if not isinstance(msg, dict) or msg.get("struct_type") != "node":
            continue
        size = msg.get("size")
        entries.append(
            LsEntry(
                path=str(msg.get("path", "")),
                type=str(msg.get("type", "")),
                size=size if isinstance(size, int) and msg.get("type") == "file" else None,
            )
        )
    return entries


@dataclass(frozen=True)
class CheckResult:
    ok: bool  # False: restic found errors in the repository (damaged packs, missing blobs ...)
    read_data_subset: str | None
    output_tail: str


@dataclass(frozen=True)
class RestoreResult:
    # From the JSON summary where restic prints one (>= 0.16); None on older versions.
    files_restored: int | None
    bytes_restored: int | None


def parse_restore(stdout: bytes) -> RestoreResult:
    """Return the counts of the summary line of ``restore --json`` (None when there is none)."""
    for raw in reversed(stdout.splitlines()):
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("message_type") == "summary":
            return RestoreResult(
                files_restored=_int(msg, "files_restored"), bytes_restored=_int(msg, "bytes_restored")
            )
    return RestoreResult(None, None)


def _load(stdout: bytes) -> Any:
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ParseError(f"restic printed no JSON: {text[:200]!r}") from e
