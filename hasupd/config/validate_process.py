"""The per-service process settings applied in the child before exec: ``limits.nofile|nproc|core``,
``nice``, ``ionice``, ``umask``, ``oom_score_adjust``, ``supplementary_groups``, ``no_new_privileges``.

Values as systemd's LimitNOFILE=, Nice=, IOSchedulingClass=/Priority=, UMask=, OOMScoreAdjust=,
SupplementaryGroups= and NoNewPrivileges= take them.
"""

from __future__ import annotations

import re

from yaml.nodes import MappingNode, Node, ScalarNode

from hasupd.config.model import IoNice, RLimit, ServiceConfig
from hasupd.config.nodes import (
    Converter,
    Ctx,
    describe,
    is_null,
    mapping_items,
    record,
    to_int,
    to_nonempty_str,
)
from hasupd.config.quantities import parse_size
from hasupd.host.users import UnknownIdentity, lookup_group

_UMASK = re.compile(r"0*[0-7]{1,3}")
_IONICE_CLASSES = ("realtime", "best-effort", "idle")
MAX_RLIMIT = 2**62  # far above anything real; the kernel's RLIM_INFINITY is spelled "infinity"


def _limit_value(text: str, sized: bool) -> int | None:
    """Return one side of a limit (None: infinity). Raise ValueError with the reason."""
    if text == "infinity":
        return None
    value = parse_size(text) if sized else int(text) if text.isascii() and text.isdigit() else -1
    if value < 0:
        raise ValueError(f"invalid limit {text!r}: expected a whole number >= 0 or infinity")
    if value > MAX_RLIMIT:
        raise ValueError(f"invalid limit {text!r}: at most {MAX_RLIMIT} (or infinity)")
    return value


def to_rlimit(sized: bool) -> Converter:
    """Return a converter of ``N``, ``infinity`` or ``SOFT:HARD`` (sizes such as 1G when ``sized``) to
    an RLimit; a single value sets both, as systemd's Limit*= does."""
    example = "0, 1G, infinity or SOFT:HARD" if sized else "4096, infinity or SOFT:HARD such as 1024:4096"

    def convert(ctx: Ctx, node: Node, path: str) -> RLimit | None:
        if not isinstance(node, ScalarNode) or is_null(node) or node.tag.endswith(":bool"):
            ctx.error(node, path, f"expected a limit such as {example}, got {describe(node)}")
            return None
        soft_text, colon, hard_text = node.value.strip().partition(":")
        try:
            soft = _limit_value(soft_text.strip(), sized)
            hard = _limit_value(hard_text.strip(), sized) if colon else soft
        except ValueError as e:
            ctx.error(node, path, str(e))
            return None
        if hard is not None and (soft is None or soft > hard):
            ctx.error(node, path, f"invalid limit {node.value!r}: the soft limit is above the hard limit")
            return None
        return RLimit(soft, hard)

    return convert


def to_umask(ctx: Ctx, node: Node, path: str) -> int | None:
    """Return an octal umask written as digits ("0027", 0027 or 027)."""
    if not isinstance(node, ScalarNode) or is_null(node) or not _UMASK.fullmatch(str(node.value)):
        shown = repr(node.value) if isinstance(node, ScalarNode) else describe(node)
        ctx.error(node, path, f'expected an octal umask such as "0027", got {shown}')
        return None
    return int(node.value, 8)


def to_group_name(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a group name or a numeric gid that the group database holds (see ``hasupd.host.users``):
    a service's ``group`` and each of its ``supplementary_groups``."""
    value = to_nonempty_str(ctx, node, path)
    if value is None:
        return None
    try:
        lookup_group(value)
    except UnknownIdentity as error:
        ctx.error(node, path, str(error))
        return None
    return value


def _to_ionice_class(ctx: Ctx, node: Node, path: str) -> str | None:
    if isinstance(node, ScalarNode) and node.value in _IONICE_CLASSES:
        return str(node.value)
    shown = repr(node.value) if isinstance(node, ScalarNode) else describe(node)
    ctx.error(node, path, f"expected one of {', '.join(_IONICE_CLASSES)}, got {shown}")
    return None


LIMIT_FIELDS: dict[str, Converter] = {
    "nofile": to_rlimit(sized=False),
    "nproc": to_rlimit(sized=False),
    "core": to_rlimit(sized=True),
}
PROCESS_FIELDS: dict[str, Converter] = {
    "nice": to_int(minimum=-20, maximum=19),
    "ionice": record(
        IoNice, {"class": _to_ionice_class, "level": to_int(minimum=0, maximum=7)}, renames={"class": "klass"}
    ),
    "umask": to_umask,
    "oom_score_adjust": to_int(minimum=-1000, maximum=1000),
}


def _shown_limit(limit: RLimit) -> str:
    soft = "infinity" if limit.soft is None else str(limit.soft)
    hard = "infinity" if limit.hard is None else str(limit.hard)
    return soft if soft == hard else f"{soft}:{hard}"


def process_settings(service: ServiceConfig) -> dict[str, object]:
    """Return the process settings ``service`` sets, as they are written in its file (for status/show);
    the ones it leaves to hasupd's defaults are absent."""
    out: dict[str, object] = {}
    for name in LIMIT_FIELDS:
        limit = getattr(service.limits, name)
        if limit is not None:
            out[f"limits.{name}"] = _shown_limit(limit)
    if service.nice is not None:
        out["nice"] = service.nice
    if service.ionice is not None:
        out["ionice"] = {"class": service.ionice.klass, "level": service.ionice.level}
    if service.umask is not None:
        out["umask"] = f"{service.umask:04o}"
    if service.oom_score_adjust is not None:
        out["oom_score_adjust"] = service.oom_score_adjust
    if service.supplementary_groups:
        out["supplementary_groups"] = list(service.supplementary_groups)
    if service.no_new_privileges:
        out["no_new_privileges"] = True
    return out


_CONTAINER_HINT = (
    "applies to programs (command:); for a container pass the engine's option in container.options"
)
_ENGINE_OPTION = {
    "nofile": "--ulimit nofile=N",
    "nproc": "--ulimit nproc=N",
    "core": "--ulimit core=N",
    "umask": "--umask",
    "oom_score_adjust": "--oom-score-adj",
    "supplementary_groups": "--group-add",
    "no_new_privileges": "--security-opt no-new-privileges",
}


def check_not_container(ctx: Ctx, present: dict[str, tuple[Node, Node]]) -> None:
    """Report the process settings of a ``container:`` service: hasupd would apply them to the engine's
    client process, not to the container."""
    keys = [*PROCESS_FIELDS, "supplementary_groups", "no_new_privileges"]
    found = [(key, present[key][0]) for key in keys if key in present]
    limits = present.get("limits")
    if limits is not None and isinstance(limits[1], MappingNode):
        inner = mapping_items(limits[1])
        found += [(f"limits.{key}", inner[key][0]) for key in LIMIT_FIELDS if key in inner]
    for key, node in found:
        option = _ENGINE_OPTION.get(key.removeprefix("limits."))
        hint = f" (such as {option})" if option else ""
        ctx.error(node, key, f"{_CONTAINER_HINT}{hint}")
