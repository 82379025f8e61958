"""``alerts.rules`` in hasupd.yaml -> ``AlertRule``s (what they do: ``hasupd.alerts.rules``).

```yaml
alerts:
  rules:
    - {name: new-errors, new_error: {window_sec: 1h}}
    - {name: error-burst, services: [app], error_rate: {window_sec: 10m, above: 20, factor: 5}}
    - {name: restarts, restart_rate: {window_sec: 1h, above: 3, baseline: moving_average, days: 14}}
    - {name: worker-quiet, services: [worker], quiet: {after_sec: 30m}}
```
"""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hasupd.config.model import AlertRule, Baseline, RuleKind
from hasupd.config.nodes import (
    Converter,
    Ctx,
    describe,
    is_null,
    join,
    mapping_items,
    read_mapping,
    seq_of,
    to_duration,
    to_enum,
    to_int,
    to_name,
    to_positive_number,
)

RULES_KEY = "rules"  # the one key of alerts: that is not a channel
MAX_DAYS = 90  # the history kept (hasupd.observe.error_store.RETENTION_SEC)
_GROUP = re.compile(r"^[0-9a-f]{12}$")
_KINDS = tuple(kind.value for kind in RuleKind)


def _to_group(ctx: Ctx, node: Node, path: str) -> str | None:
    value = node.value if isinstance(node, ScalarNode) else None
    if not isinstance(value, str) or not _GROUP.match(value):
        ctx.error(
            node,
            path,
            f"expected an error group id (12 hex digits, see hasupctl errors), got {describe(node)}",
        )
        return None
    return value


_RATE: dict[str, Converter] = {
    "window_sec": to_duration(positive=True),
    "above": to_positive_number(1e12),
    "factor": to_positive_number(1e6),
    "baseline": to_enum(Baseline),
    "days": to_int(minimum=1, maximum=MAX_DAYS),
}
_OPTIONS: dict[RuleKind, dict[str, Converter]] = {
    RuleKind.NEW_ERROR: {"window_sec": to_duration(positive=True), "group": _to_group},
    RuleKind.ERROR_RATE: {**_RATE, "group": _to_group},
    RuleKind.RESTART_RATE: _RATE,
    RuleKind.QUIET: {"after_sec": to_duration(positive=True)},
}
_RULE_FIELDS: dict[str, Converter] = {
    "name": to_name,
    "services": seq_of(to_name, "a list of service names"),
    **{kind.value: (lambda ctx, node, path: node) for kind in RuleKind},
}


def _to_rule(ctx: Ctx, node: Node, path: str) -> AlertRule | None:
    """Return one rule: a name, exactly one kind with its options, and optionally the services."""
    before = ctx.count
    values = read_mapping(ctx, node, path, _RULE_FIELDS, required=("name",))
    if values is None:
        return None
    kinds = [key for key in values if key in _KINDS]
    if not kinds:
        ctx.error(node, path, f"a rule needs one of {', '.join(_KINDS)}")
        return None
    for extra in kinds[1:]:
        ctx.error(
            mapping_items(node)[extra][0], join(path, extra), f"a rule takes only one of {', '.join(_KINDS)}"
        )
    # The options of every kind given are read, so that their problems are reported too (and the
    # configuration reference's test learns every option of every kind).
    read_options = {
        name: read_mapping(ctx, values[name], join(path, name), _OPTIONS[RuleKind(name)])
        for name in kinds
        if not is_null(values[name])
    }
    kind = RuleKind(kinds[0])
    options_node: Node = values.pop(kind.value)
    options: dict[str, Any] = read_options.get(kind.value) or {}
    if ctx.count != before:
        return None
    where = join(path, kind.value)
    if kind is RuleKind.QUIET:
        if "after_sec" not in options:
            ctx.error(options_node, join(where, "after_sec"), "required key is missing")
            return None
        options["window_sec"] = options.pop("after_sec")
    if (
        kind in (RuleKind.ERROR_RATE, RuleKind.RESTART_RATE)
        and "above" not in options
        and "factor" not in options
    ):
        ctx.error(
            options_node, where, "a rate rule needs above (a count), factor (times the baseline) or both"
        )
        return None
    if ("baseline" in options or "days" in options) and "factor" not in options:
        key = "baseline" if "baseline" in options else "days"
        ctx.error(mapping_items(options_node)[key][0], join(where, key), "only used with factor")
        return None
    return AlertRule(name=values["name"], kind=kind, services=values.get("services", ()), **options)


def to_rules(ctx: Ctx, node: Node, path: str) -> tuple[AlertRule, ...] | None:
    """Return the rules of ``alerts.rules`` (a list); names must be unique."""
    if not isinstance(node, SequenceNode):
        ctx.error(node, path, f"expected a list of rules, got {describe(node)}")
        return None
    before = ctx.count
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for index, item in enumerate(node.value):
        if not isinstance(item, MappingNode):
            ctx.error(item, join(path, index), f"expected a rule (a mapping), got {describe(item)}")
            continue
        rule = _to_rule(ctx, item, join(path, index))
        if rule is None:
            continue
        if rule.name in seen:
            ctx.error(
                mapping_items(item)["name"][1],
                join(path, f"{index}.name"),
                f"duplicate rule name {rule.name!r}",
            )
            continue
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules) if ctx.count == before else None
