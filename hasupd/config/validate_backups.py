"""``backups.d/NAME.yaml`` -> ``BackupJobConfig``, with its references to repositories and services.

Schedules are only checked for shape here (a macro or five cron fields); interpreting them is the
scheduler's job.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from yaml.nodes import Node

from hasupd.config.cron import parse_cron
from hasupd.config.model import BackupJobConfig, CheckSpec, DrillSpec, Keep, LongTerm
from hasupd.config.nodes import (
    Converter,
    Ctx,
    Document,
    check_reference,
    child,
    mapping_items,
    name_items,
    read_mapping,
    record,
    seq_of,
    to_abs_path,
    to_argv,
    to_bool,
    to_duration,
    to_int,
    to_name,
    to_nonempty_str,
    to_str,
)
from hasupd.config.validate_databases import to_databases

SCHEDULE_MACROS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
_CRON_FIELDS = 5
_RESTIC_DURATION = re.compile(r"(?:[0-9]{1,6}[ymdh])+")
_SUBSET = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")


def to_schedule(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a schedule: one of ``SCHEDULE_MACROS`` or a cron expression of five fields."""
    value = to_str(ctx, node, path)
    if value is None:
        return None
    text = value.strip()
    if text in SCHEDULE_MACROS:
        return text
    if not text.startswith("@") and len(text.split()) == _CRON_FIELDS:
        try:
            parse_cron(text)  # what the scheduler does with it: a bad field must fail here, not there
        except ValueError as exc:
            ctx.error(node, path, f"invalid schedule: {exc}")
            return None
        return text
    ctx.error(
        node,
        path,
        f"invalid schedule {value!r}: expected {', '.join(SCHEDULE_MACROS)} "
        "or a cron expression of 5 fields (minute hour day-of-month month day-of-week)",
    )
    return None


def _to_within(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a restic --keep-within duration such as "2y5m7d3h"."""
    value = to_str(ctx, node, path)
    if value is not None and not _RESTIC_DURATION.fullmatch(value):
        ctx.error(
            node, path, f"invalid duration {value!r}: expected restic's form such as 7d, 2y5m7d3h (y m d h)"
        )
        return None
    return value


def _to_subset(ctx: Ctx, node: Node, path: str) -> int | None:
    """Return N of a "K/N" read_data_subset (1 <= K <= N): every pack is read once per N checks."""
    value = to_str(ctx, node, path)
    if value is None:
        return None
    match = _SUBSET.fullmatch(value.strip())
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        ctx.error(
            node, path, f"invalid read_data_subset {value!r}: expected K/N with 1 <= K <= N, such as 1/12"
        )
        return None
    return int(match[2])


_KEEP = record(
    Keep,
    {
        **{key: to_int(minimum=1) for key in ("last", "hourly", "daily", "weekly", "monthly", "yearly")},
        "within": _to_within,
    },
)

BACKUP_FIELDS: dict[str, Converter] = {
    "repository": to_name,
    "paths": seq_of(to_abs_path, "a list of absolute paths", nonempty=True),
    "databases": to_databases,
    "exclude": seq_of(to_nonempty_str, "a list of patterns"),
    "schedule": to_schedule,
    "randomized_delay_sec": to_duration(),
    "keep": _KEEP,
    "before": seq_of(to_argv, "a list of commands (each a list of strings)"),
    "quiesce": seq_of(to_name, "a list of service names"),
    "long_term": record(
        LongTerm, {"repository": to_name, "schedule": to_schedule, "keep": _KEEP}, required=("repository",)
    ),
    "check": record(
        CheckSpec,
        {"schedule": to_schedule, "read_data_subset": _to_subset},
        renames={"read_data_subset": "read_data_subset_n"},
    ),
    "drill": record(DrillSpec, {"schedule": to_schedule, "boot": to_bool}),
    "max_age": to_duration(positive=True),
    "prune_schedule": to_schedule,
}
_RENAMES = {"max_age": "max_age_sec"}


def validate_backup(
    ctx: Ctx, doc: Document, services: Collection[str], repositories: Collection[str] | None
) -> BackupJobConfig | None:
    """Return the backup job of ``doc``, or None after reporting every problem in it through ``ctx``.

    ``services`` are the known service names (for quiesce); ``repositories`` the repository names of
    hasupd.yaml, or None when they are unknown because hasupd.yaml is broken (then they are not checked).
    """
    if doc.node is None:
        if doc.parsed:
            ctx.error(None, "", "empty backup job file: repository and paths are required")
        return None
    before = ctx.count
    values = read_mapping(ctx, doc.node, "", BACKUP_FIELDS, required=("repository",))
    if values is None:
        return None
    present = mapping_items(doc.node)
    if "paths" not in present and "databases" not in present:
        ctx.error(doc.node, "paths", "required key is missing (give paths, databases or both)")
    check_reference(ctx, child(doc.node, "repository"), "repository", repositories, "repository")
    check_reference(
        ctx, child(doc.node, "long_term", "repository"), "long_term.repository", repositories, "repository"
    )
    for index, _, item in name_items(child(doc.node, "quiesce")):
        check_reference(ctx, item, f"quiesce.{index}", services, "service")
    long_term = values.get("long_term")
    if long_term is not None and long_term.repository == values.get("repository"):
        node = child(doc.node, "long_term", "repository")
        ctx.error(node, "long_term.repository", "must differ from repository: long-term copies go elsewhere")
    if ctx.count != before:
        return None
    values.setdefault("paths", ())
    return BackupJobConfig(
        name=doc.name, source=doc.path, **{_RENAMES.get(key, key): value for key, value in values.items()}
    )
