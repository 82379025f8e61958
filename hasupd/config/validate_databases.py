"""``databases:`` of a backup job -> ``DatabaseSpec``s: exactly one of postgresql / mysql / sqlite per item,
names unique within the job (each becomes a snapshot file name and a ``db:NAME`` tag)."""

from __future__ import annotations

import re

from yaml.nodes import Node, SequenceNode

from hasupd.config.model import DatabaseKind, DatabaseSpec
from hasupd.config.nodes import (
    Converter,
    Ctx,
    child,
    describe,
    is_name,
    join,
    mapping_items,
    read_mapping,
    to_abs_path,
    to_bool,
    to_int,
    to_name,
    to_nonempty_str,
)

_KINDS = tuple(k.value for k in DatabaseKind)
# PostgreSQL and MariaDB identifiers hasupd passes on: no quoting games in names it builds SQL from.
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}\Z")


def _to_db_name(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_nonempty_str(ctx, node, path)
    if value is not None and not _DB_NAME.match(value):
        ctx.error(node, path, f"invalid database name {value!r}: letters, digits, _ $ - (at most 63)")
        return None
    return value


def _to_host(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_nonempty_str(ctx, node, path)
    if value is not None and value.startswith("-"):
        ctx.error(node, path, f"invalid host {value!r}")
        return None
    return value


_FIELDS: dict[str, Converter] = {
    "postgresql": _to_db_name,
    "mysql": _to_db_name,
    "sqlite": to_abs_path,
    "name": to_name,
    "user": _to_host,
    "host": _to_host,
    "port": to_int(1, 65535),
    "password_file": to_abs_path,
    "bin_dir": to_abs_path,
    "globals": to_bool,
    "check_query": to_nonempty_str,
}


def _default_name(kind: DatabaseKind, database: str) -> str:
    base = database.rsplit("/", 1)[-1].rsplit(".", 1)[0] if kind is DatabaseKind.SQLITE else database
    return f"{kind}-{base.lower()}"


def to_databases(ctx: Ctx, node: Node, path: str) -> tuple[DatabaseSpec, ...] | None:
    """Return the job's databases; report every problem (located) and return None if there is one."""
    if not isinstance(node, SequenceNode):
        ctx.error(node, path, f"expected a list of databases, got {describe(node)}")
        return None
    before = ctx.count
    specs: list[DatabaseSpec] = []
    names: set[str] = set()
    for index, item in enumerate(node.value):
        where = join(path, index)
        item_errors = ctx.count
        values = read_mapping(ctx, item, where, _FIELDS)
        if values is None:
            continue
        kinds = [k for k in _KINDS if k in mapping_items(item)]
        if len(kinds) != 1:
            ctx.error(item, where, f"give exactly one of {', '.join(_KINDS)}")
            continue
        kind = DatabaseKind(kinds[0])
        if "globals" in values and kind is not DatabaseKind.POSTGRESQL:
            ctx.error(child(item, "globals"), join(where, "globals"), f"not an option of a {kind} database")
        if ctx.count != item_errors:
            continue  # reported; its name is not known for sure
        database = values.pop(kind.value)
        name = values.pop("name", None) or _default_name(kind, database)
        if not is_name(name):
            ctx.error(item, join(where, "name"), f"{name!r} is not a name: give name: [a-z0-9][a-z0-9_.-]*")
            continue
        dumps = {name, f"{name}-globals"} if values.get("globals") else {name}
        if dumps & names:
            ctx.error(item, join(where, "name"), f"another database of this job is named {name!r}")
        names |= dumps
        specs.append(DatabaseSpec(kind=kind, database=database, name=name, **values))
    if ctx.count != before:
        return None
    return tuple(specs)
