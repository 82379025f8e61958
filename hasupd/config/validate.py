"""Composed YAML documents -> a validated ``Config``, every problem reported as a ``ConfigIssue``.

Each file is validated on its own (``validate_services``, ``validate_backups``, ``validate_daemon``);
this module checks file names, what files say about each other (``after``, ``alerts``, ``restore``,
dependency cycles) and lists the features that validate but that the daemon does not run yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence

from yaml.nodes import MappingNode, Node, SequenceNode

from hasupd.config.fleet_timing import FENCE_MARGIN_SEC, election_allowance, rides_out_election
from hasupd.config.issues import ConfigIssue
from hasupd.config.model import Config, DaemonConfig, FleetConfig, ServiceConfig
from hasupd.config.nodes import NAME_PATTERN, Ctx, Document, check_reference, child, is_name, name_items
from hasupd.config.unitstate import MAX_UNIT_NAME, is_unit_name
from hasupd.config.validate_backups import validate_backup
from hasupd.config.validate_daemon import validate_daemon
from hasupd.config.validate_services import validate_service

__all__ = ["build_config"]


def _check_file_name(ctx: Ctx, doc: Document, what: str) -> bool:
    """Report a file whose name (without .yaml) is not a valid name; return whether it is valid (a
    service may be a template instance, NAME@INSTANCE)."""
    if what == "service" and len(doc.name) > MAX_UNIT_NAME:
        # Its cgroup and state folders are named NAME.service: one file name holds 255 bytes.
        ctx.error(
            None,
            "",
            f"service name too long: {len(doc.name)} characters (the file name without .yaml), "
            f"at most {MAX_UNIT_NAME}",
        )
        return False
    if is_name(doc.name) or (what == "service" and is_unit_name(doc.name)):
        return True
    ctx.error(
        None,
        "",
        f"invalid {what} name {doc.name!r} (the file name without .yaml): names match {NAME_PATTERN}",
    )
    return False


def _check_service_references(
    ctx: Ctx,
    doc: Document,
    services: Collection[str],
    jobs: Collection[str],
    channels: Collection[str] | None,
) -> None:
    """Report names in ``after``, ``alerts`` and ``on_failure`` restore actions that are not defined."""
    for index, _, item in name_items(child(doc.node, "after")):
        check_reference(ctx, item, f"after.{index}", services, "service")
    for index, _, item in name_items(child(doc.node, "alerts")):
        check_reference(ctx, item, f"alerts.{index}", channels, "alert channel")
    actions = child(doc.node, "on_failure")
    if isinstance(actions, SequenceNode):
        for index, action in enumerate(actions.value):
            if isinstance(action, MappingNode):
                check_reference(
                    ctx, child(action, "restore"), f"on_failure.{index}.restore", jobs, "backup job"
                )


def _dependency_edges(
    docs: Sequence[Document], services: Collection[str]
) -> dict[str, list[tuple[str, int, Node]]]:
    """Return ``{service: [(dependency, index in after, item node)]}`` for the known services."""
    edges: dict[str, list[tuple[str, int, Node]]] = {}
    for doc in docs:
        if doc.name in services:
            after = name_items(child(doc.node, "after"))
            edges[doc.name] = [(name, index, item) for index, name, item in after if name in services]
    return edges


def _shortest_cycle(start: str, edges: dict[str, list[tuple[str, int, Node]]]) -> list[str] | None:
    """Return the shortest dependency path ``[start, ..., start]``, or None when ``start`` is on no cycle."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for target, _, _ in edges.get(current, ()):
            if target == start:
                path = [current]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in previous:
                previous[target] = current
                queue.append(target)
    return None


def _check_cycles(ctxs: dict[str, Ctx], docs: Sequence[Document], services: Collection[str]) -> None:
    """Report a dependency cycle on every file in it, at the ``after`` item that leads into it."""
    edges = _dependency_edges(docs, services)
    for doc in docs:
        cycle = _shortest_cycle(doc.name, edges) if doc.name in edges else None
        if cycle is None:
            continue
        _, index, item = next(edge for edge in edges[doc.name] if edge[0] == cycle[1])
        ctxs[doc.path].error(item, f"after.{index}", f"dependency cycle: {' -> '.join(cycle)}")


def _check_rule_references(ctx: Ctx, daemon: Document | None, services: Collection[str]) -> None:
    """Report services named in ``alerts.rules`` that are not defined."""
    rules = child(daemon.node, "alerts", "rules") if daemon is not None else None
    if isinstance(rules, SequenceNode):
        for index, rule in enumerate(rules.value):
            for i, _, item in name_items(child(rule, "services")):
                check_reference(ctx, item, f"alerts.rules.{index}.services.{i}", services, "service")


def _rides_out_election(fleet: FleetConfig, timeout_stop_sec: float) -> bool:
    """Return True unless etcd's election timeout is known and a leader election would fence."""
    election = fleet.etcd.election_timeout_sec
    return election is None or rides_out_election(fleet.lease_ttl_sec, timeout_stop_sec, election)


def _check_placement(
    ctx: Ctx,
    doc: Document,
    daemon: Document | None,
    daemon_config: DaemonConfig,
    service: ServiceConfig | None,
) -> None:
    """Report ``placement:`` in a service when hasupd.yaml has no ``fleet:`` (placed where, then?), and a
    stop timeout too long for self-fencing: a fenced service must be down before the lease can expire."""
    placement = child(doc.node, "placement")
    if placement is None:
        return
    fleet = daemon_config.fleet
    if fleet is not None:
        if service is None:
            return
        # Fencing starts at least TTL/2 after the last acknowledged keep-alive was sent; the stop (its
        # SIGKILL, the reaping) must end before etcd can expire the lease, with a margin for the kill.
        limit = fleet.lease_ttl_sec / 2 - FENCE_MARGIN_SEC
        node = child(doc.node, "timeout_stop_sec") or placement
        key = "timeout_stop_sec" if child(doc.node, "timeout_stop_sec") is not None else "placement"
        stop = service.timeout_stop_sec
        if stop > limit:
            ctx.error(
                node,
                key,
                f"a placed service needs timeout_stop_sec <= half of fleet.lease_ttl_sec less "
                f"{FENCE_MARGIN_SEC:g}s ({limit:g}s), "
                f"got {stop:g}s: a fenced stop must end before the lease expires",
            )
        elif not _rides_out_election(fleet, stop):
            election = election_allowance(fleet.etcd.election_timeout_sec or 0.0)
            ctx.error(
                node,
                key,
                f"with timeout_stop_sec {stop:g}s and fleet.lease_ttl_sec {fleet.lease_ttl_sec:g}s this "
                f"service would be fenced (stopped, then elected anew) by every etcd leader election "
                f"(up to {election:g}s with fleet.etcd.election_timeout_sec): shorten timeout_stop_sec "
                f"or raise lease_ttl_sec",
            )
        return
    if daemon is not None and child(daemon.node, "fleet") is not None:
        return  # fleet: is there but broken; that is reported in hasupd.yaml
    ctx.error(placement, "placement", "placement needs fleet: in hasupd.yaml")


def build_config(
    config_dir: str,
    daemon: Document | None,
    services: Sequence[Document],
    backups: Sequence[Document],
    issues: list[ConfigIssue],
) -> Config:
    """Validate the documents of one config dir and return their ``Config``.

    ``daemon`` is hasupd.yaml (None when there is none). Append every problem found to ``issues``; the
    returned Config is only meaningful when nothing was appended (invalid parts are left out of it).
    """
    ctxs = {doc.path: Ctx(doc.path, issues) for doc in (*services, *backups)}
    daemon_ctx = Ctx(daemon.path if daemon else "", issues)
    daemon_config, channels, repositories = validate_daemon(daemon_ctx, daemon)
    service_names = frozenset(
        doc.name for doc in services if _check_file_name(ctxs[doc.path], doc, "service")
    )
    job_names = frozenset(doc.name for doc in backups if _check_file_name(ctxs[doc.path], doc, "backup job"))
    for doc in backups:
        if doc.name in service_names:
            # Jobs are units listed and controlled next to services: one name, one thing.
            ctxs[doc.path].error(
                None, "", f"backup job {doc.name!r} has the name of a service; rename one of them"
            )

    service_configs = []
    for doc in services:
        service = validate_service(ctxs[doc.path], doc)
        _check_placement(ctxs[doc.path], doc, daemon, daemon_config, service)
        _check_service_references(ctxs[doc.path], doc, service_names, job_names, channels)
        if service is not None:
            service_configs.append(service)
    _check_cycles(ctxs, services, service_names)
    _check_rule_references(daemon_ctx, daemon, service_names)

    job_configs = [validate_backup(ctxs[doc.path], doc, service_names, repositories) for doc in backups]
    for ctx in (daemon_ctx, *ctxs.values()):
        ctx.finish()
    return Config(
        config_dir=config_dir,
        daemon=daemon_config,
        services=tuple(sorted(service_configs, key=lambda s: s.name)),
        backups=tuple(sorted((job for job in job_configs if job is not None), key=lambda j: j.name)),
    )
