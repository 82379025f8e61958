"""The state record: what one image of hasupd hands the next (``hasupctl daemon-reexec``), and what a
hasupd started after a crash finds of the last one.

File format (``RUNTIME_DIR/state.record``)::

    HASUPD-STATE <format> <sha256 of the body, hex>\\n<body: JSON>

A record of another format, a bad checksum or a body that does not parse is *unreadable*: never a
reason to kill anything; the caller falls back to adoption (finding each unit's processes through its
cgroup, or its INVOCATION_ID and session without cgroups).

The body holds, per unit, ``Service.snapshot()`` (state, result, counters, start-limit window, pending
timers and the watchdog deadline as CLOCK_MONOTONIC deadlines, incident), plus what only the host side
knows: the main pid's start time (so a reused pid is never adopted), the digest of the config it was
started with, and on a re-exec the fds kept open across ``execve`` (held listening sockets by service
and position, notify sockets and output pipes by unit, the control socket). With ``fleet:``, ``fleet``
holds this host's membership (lease, owned keys and tokens, last acknowledged keep-alive), carried on by
``hasupd.fleet.carry``.

``RecordKeeper`` keeps the record current while hasupd runs (rewritten atomically once per burst of
state changes, per event and never per tick), so that a crash of hasupd leaves a record that is at
most one loop turn old.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hasupd import __version__
from hasupd import events as ev
from hasupd.config.model import ServiceConfig
from hasupd.host.adoption import (
    Found,
    find_by_invocation,
    find_in_cgroup,
    inherited_fds,
    keep_across_exec,
    listening_copy,
    plain,
    start_time,
    stdout_pipe_inode,
)
from hasupd.host.containment import Containment
from hasupd.host.procfs import release_free_heap
from hasupd.host.sockets import address_of
from hasupd.manager import Manager
from hasupd.ports import SpawnError
from hasupd.runtimes.exec import ExecSpawner
from hasupd.service import Service
from hasupd.state_record import REEXEC_FROM_ENV, write
from hasupd.states import ServiceResult, ServiceState
from hasupd.watch.watchers import LoopWatchers

log = logging.getLogger(__name__)
FLEET_ENV_PREFIX = "HASUPD_FLEET_"  # the fleet's variables (token, host) are ownership, not config
TRIM_ABOVE_BYTES = 128 * 1024  # glibc's default mmap threshold: a record above it ends up in the heap


def config_digest(config: ServiceConfig) -> str:
    """Return a digest of a unit's config (frozen dataclasses: equal configs, equal repr). The fleet's
    variables are left out: a placed service's ownership is carried on by the fleet, not restarted."""
    environment = tuple(kv for kv in config.environment if not kv[0].startswith(FLEET_ENV_PREFIX))
    return hashlib.sha256(repr(dataclasses.replace(config, environment=environment)).encode()).hexdigest()[
        :16
    ]


def capture(
    manager: Manager,
    programs: ExecSpawner,
    reason: str,
    start_times: dict[int, int | None] | None = None,
    fleet: dict[str, Any] | None = None,
    *,
    digests: dict[str, tuple[ServiceConfig, str]] | None = None,
) -> dict[str, Any]:
    """Return the record body for the current state of ``manager``'s service units (no fds), with
    ``fleet``: this host's fleet membership (``FleetNode.hand_over()``), carried on by the next image.

    ``start_times`` caches main pid -> start time between calls (a main pid's start time never changes
    while it is supervised, so only new pids cost a /proc read); pids no longer main are dropped.
    ``digests`` caches unit -> (config, its config_digest) likewise (a config's repr costs ~50 us, and
    the record is rewritten after every state change: 25 ms a time at 500 services without it)."""
    cache: dict[int, int | None] = start_times if start_times is not None else {}
    digest_of: dict[str, tuple[ServiceConfig, str]] = digests if digests is not None else {}
    mains: set[int] = set()
    units: dict[str, Any] = {}
    for names in manager.units.values():
        for unit in names:
            service = manager.services[unit]
            snap = service.snapshot()
            pid = snap["main_pid"]
            known = digest_of.get(unit)
            if known is None or known[0] is not service.config:
                known = digest_of[unit] = (service.config, config_digest(service.config))
            snap["config"] = known[1]
            if isinstance(pid, int):
                mains.add(pid)
                if pid not in cache:
                    cache[pid] = start_time(pid)
                snap["start_time"] = cache[pid]
            else:
                snap["start_time"] = None
            snap["container"] = service.config.container is not None
            snap["pending"] = manager.is_pending(unit)
            units[unit] = snap
    for gone in cache.keys() - mains:
        del cache[gone]
    for gone_unit in digest_of.keys() - units.keys():
        del digest_of[gone_unit]
    return {
        "hasupd_version": __version__,
        "pid": os.getpid(),
        "reason": reason,
        "written_monotonic": time.monotonic(),
        "written_wall": time.time(),
        "units": units,
        "fleet": fleet,
        "sockets": {},
        "backup_jobs_running": sorted(
            name
            for name, s in manager.services.items()
            if name not in units and s.state not in (ServiceState.DEAD, ServiceState.FAILED)
        ),
    }


def keep_fds(
    body: dict[str, Any],
    *,
    manager: Manager,
    programs: ExecSpawner,
    notify_fds: dict[str, int],
    control_fd: int | None,
) -> None:
    """Add the fds to keep across ``execve`` to ``body`` and clear their FD_CLOEXEC: every held listening
    socket, each unit's notify socket and output pipe, the control socket."""
    sockets: dict[str, list[dict[str, Any]]] = {}
    for name, held in manager.held_sockets().items():
        entries = []
        for spec, sock in held.held():
            keep_across_exec(sock.fileno())
            entries.append({"listen": spec.listen, "fd": sock.fileno()})
        if entries:
            sockets[name] = entries
    body["sockets"] = sockets
    outputs = programs.kept_outputs()
    for unit, snap in body["units"].items():
        pid = snap.get("main_pid")
        if isinstance(pid, int) and pid in outputs:
            keep_across_exec(outputs[pid])
            snap["output_fd"] = outputs[pid]
        if unit in notify_fds:
            keep_across_exec(notify_fds[unit])
            snap["notify_fd"] = notify_fds[unit]
    if control_fd is not None:
        keep_across_exec(control_fd)
        body["control_fd"] = control_fd


class RecordKeeper:
    """Rewrites the record after state changes: once per loop turn that had any, never on a timer."""

    TRIGGERS = (
        ev.ServiceStateChanged,
        ev.ServiceStarted,
        ev.ServiceRestartScheduled,
        ev.IncidentOpened,
        ev.IncidentClosed,
        # The fleet membership: what a hasupd restarted after a crash carries on (the keep-alive time
        # it holds may be older; the new one asks etcd how long the lease has left).
        ev.FleetJoined,
        ev.FleetResumed,
        ev.FleetElected,
        ev.FleetLost,
        ev.FleetFenced,
        ev.FleetMoved,
        ev.FleetGaveUp,
    )

    def __init__(self, path: Path, manager: Manager, programs: ExecSpawner, bus: ev.EventBus) -> None:
        self.path = path
        self._manager = manager
        self._programs = programs
        self._loop = asyncio.get_running_loop()
        self._pending = False
        self._start_times: dict[int, int | None] = {}
        self._digests: dict[str, tuple[ServiceConfig, str]] = {}
        self.writes = 0
        self.error: str | None = None
        self.fleet: Callable[[], dict[str, Any] | None] | None = None  # the membership, once in a fleet
        self._unsubscribe = bus.subscribe(self._on_event)

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, self.TRIGGERS) and not self._pending:
            self._pending = True
            # Two hops: callbacks already due (a restart at restart_sec 0 is a timer due now) run
            # before the write, which costs ~7 ms at 500 services and would delay them.
            self._loop.call_soon(self._loop.call_soon, self._write_pending)

    def _write_pending(self) -> None:
        if self._pending:  # else written meanwhile (write_now)
            self.write_now()

    def write_now(self) -> None:
        """Write the record now (the keeper's own writes come through here too)."""
        self._pending = False
        try:
            fleet = self.fleet() if self.fleet is not None else None
            body = capture(
                self._manager, self._programs, "current", self._start_times, fleet, digests=self._digests
            )
            size = write(self.path, body)
        except OSError as e:  # a full runtime dir: adoption after a crash falls back to finding
            self.error = f"{self.path}: {e.strerror}"
            return
        self.writes += 1
        if size > TRIM_ABOVE_BYTES:
            # Rebuilt at every state change (~0.5 KB a unit): without a trim, glibc keeps the heap
            # that the last big record (its text and its bytes) took resident for good.
            release_free_heap()

    def close(self) -> None:
        self._unsubscribe()


# --------------------------------------------------------------------------- the new image


@dataclass
class Restored:
    """What ``restore`` did: for the records and the daemon."""

    record: str  # "restored", "none", or why the record was unreadable
    carried: int = 0  # units with a process carried on
    adopted: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # config changed: restarted under the new one
    lost: list[str] = field(default_factory=list)  # recorded as running, nothing found
    to_start: list[str] = field(default_factory=list)  # not carried over in a state of their own
    previous_pid: int | None = None
    written_monotonic: float | None = None
    from_version: str | None = None
    control_fd: int | None = None


def kept_units(body: dict[str, Any] | None, containment: Containment, manager: Manager) -> frozenset[str]:
    """Return the units whose processes must survive start-up clean-up: those of the record, and those
    with a cgroup or scope record of an earlier run (adoption finds out whose they are)."""
    units = set(body["units"]) if body is not None else set()
    for names in manager.units.values():
        for unit in names:
            path = containment.cgroup_path(unit)
            if (path is not None and path.is_dir()) or containment.recorded_invocation(unit):
                units.add(unit)
    return frozenset(units)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_EXIT_FIELDS: dict[str, Callable[[object], bool]] = {
    "pid": _is_int,
    "code": lambda v: v is None or _is_int(v),
    "signal": lambda v: v is None or _is_int(v),
    "core_dumped": lambda v: isinstance(v, bool),
    "unknown": lambda v: isinstance(v, bool),
}
# What Service.restore and this module read of a unit's entry, and the types they take.
_SNAPSHOT_FIELDS: dict[str, Callable[[object], bool]] = {
    "state": lambda v: isinstance(v, str) and v in set(ServiceState),
    "result": lambda v: isinstance(v, str) and v in set(ServiceResult),
    "main_pid": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "start_time": lambda v: v is None or _is_number(v),
    "restarts": lambda v: v is None or _is_int(v),
    "attempt": lambda v: v is None or _is_int(v),
    "start_limit": lambda v: v is None or (isinstance(v, list) and all(map(_is_number, v))),
    "invocation": lambda v: v is None or isinstance(v, str),
    "status_text": lambda v: v is None or isinstance(v, str),
    "config": lambda v: v is None or isinstance(v, str),
    "output_fd": lambda v: v is None or _is_int(v),
    "notify_fd": lambda v: v is None or _is_int(v),
    "last_exit": lambda v: (
        v is None
        or (
            isinstance(v, dict)
            and "pid" in v
            and all(k in _EXIT_FIELDS and _EXIT_FIELDS[k](x) for k, x in v.items())
        )
    ),
}


def _usable_units(units: dict[str, Any], manager: Manager) -> dict[str, Any]:
    """Return the entries of the record's ``units`` that can be carried on; each other one is recorded
    as a warning (its unit is then found by adoption, as without a record): a damaged entry must not
    keep hasupd from starting."""
    usable: dict[str, Any] = {}
    where = Path(manager.config.daemon.runtime_dir)
    for unit, snap in units.items():
        if not isinstance(snap, dict):
            wrong = [f"a {type(snap).__name__}, not an object"]
        else:
            # state and result are required; the others may be missing (older records lack some).
            wrong = [
                k
                for k, ok in _SNAPSHOT_FIELDS.items()
                if (k in snap or k in ("state", "result")) and not ok(snap.get(k))
            ]
        if wrong:
            log.warning(
                "state record in %s: the entry of %s is damaged (%s); %s is found as after a crash instead",
                where,
                unit[:100],
                ", ".join(wrong),
                unit[:100],
            )
        else:
            usable[unit] = snap
    return usable


def restore(
    body: dict[str, Any] | None,
    *,
    reexec: bool,
    manager: Manager,
    programs: ExecSpawner,
    containment: Containment,
    watchers: LoopWatchers,
    bus: ev.EventBus,
    record: str,
) -> Restored:
    """Carry every service unit of ``manager`` on from ``body`` (None: no usable record) and what is
    running: re-attach kept fds (``reexec``: this process's own, at the numbers in the record), adopt
    each unit's main process, restore states and timers. Kill nothing. Return what was done; publish
    ``service.adopted`` for every unit adopted without a usable re-exec record.

    A unit whose config changed since its process started is restarted under the new config.
    """
    out = Restored(record=record)
    if body is not None:
        body = {**body, "units": _usable_units(body["units"], manager)}
    units: dict[str, Any] = body["units"] if body is not None else {}
    version, _, when = os.environ.pop(REEXEC_FROM_ENV, "").partition(" ")
    if reexec and version:
        out.from_version = version
        with contextlib.suppress(ValueError):
            out.written_monotonic = float(when)
    if body is not None:
        out.previous_pid = body.get("pid")
        # From the record's capture: the old image stopped supervising then, a little before execve.
        out.written_monotonic = body.get("written_monotonic") or out.written_monotonic
        out.from_version = out.from_version or body.get("hasupd_version")
        if reexec:
            out.control_fd = body.get("control_fd")
    use_fds = reexec and body is not None
    kept = _kept_from_record(body) if use_fds and body is not None else _Kept()
    if reexec and not use_fds:
        kept = _identify_kept(manager)  # the record is unusable; the fds themselves say what they are
        out.control_fd = kept.control
    watchers.inherited_notify.update(kept.notify)
    found: dict[str, tuple[int, str, str | None]] = {}  # unit -> (pid, how, invocation)
    for unit, service in _service_units(manager):
        if service.config.container is not None:
            continue  # containers are not carried over (see README): cleaned up and started anew
        hit = _find(unit, units.get(unit), containment, trust_record=use_fds)
        if hit is not None:
            found[unit] = (hit.pid, hit.how, hit.invocation)
    _restore_sockets(manager, kept.sockets, found)
    for unit, service in _service_units(manager):
        snap = units.get(unit)
        changed = snap is not None and snap.get("config") != config_digest(service.config)
        hit_ = found.get(unit)
        if snap is None or snap.get("pending") or service.config.container is not None:
            out.to_start.append(unit)
        if hit_ is None:
            if snap is not None and snap.get("main_pid") and service.config.container is None:
                out.lost.append(unit)
                out.to_start.append(unit)
                snap = {**snap, "main_pid": None}
            if snap is not None and service.config.container is None:
                service.restore(snap, None)
            continue
        pid, how, invocation = hit_
        output_fd = kept.outputs.pop(unit, None)
        if output_fd is None and kept.pipes:
            output_fd = kept.pipes.pop(stdout_pipe_inode(pid) or -1, None)
        try:
            process = programs.adopt(
                unit,
                invocation or (snap or {}).get("invocation") or "",
                pid,
                service.main_exited,
                output_fd,
            )
        except SpawnError:
            out.lost.append(unit)
            out.to_start.append(unit)
            continue
        if snap is not None:
            if not use_fds:
                # The last record is as old as the last state change, not the last WATCHDOG=1: the
                # adopted process gets a full watchdog period from now.
                snap = {**snap, "watchdog_due": None}
            service.restore(snap, process)
        else:
            service.adopt_found(process, invocation or "")
        out.carried += 1
        if not (use_fds and snap is not None):
            out.adopted.append(unit)
            unknown = []
            if process.foreign:
                unknown.append("its exit status (not hasupd's child): an exit counts as a failure")
            if snap is None:
                unknown.append("the config it was started with, its restart counters and start time")
            bus.publish(ev.ServiceAdopted(service=unit, pid=pid, how=how, unknown=tuple(unknown)))
        if changed:
            out.restarted.append(unit)
            service.restart()
    for fd in [*kept.pipes.values(), *kept.outputs.values(), *kept.unknown]:
        os.close(fd)  # kept by the old image for a unit that is gone: of no use now
    return out


@dataclass
class _Kept:
    """The fds the old image kept across execve, by use."""

    sockets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # service -> [{listen, fd}]
    notify: dict[str, int] = field(default_factory=dict)  # unit -> fd
    outputs: dict[str, int] = field(default_factory=dict)  # unit -> pipe read end
    pipes: dict[int, int] = field(default_factory=dict)  # pipe inode -> read end (no record: by inode)
    control: int | None = None
    unknown: list[int] = field(default_factory=list)


def _kept_from_record(body: dict[str, Any]) -> _Kept:
    kept = _Kept(sockets=body.get("sockets") or {}, control=body.get("control_fd"))
    for unit, snap in body["units"].items():
        if isinstance(snap.get("notify_fd"), int):
            kept.notify[unit] = snap["notify_fd"]
        if isinstance(snap.get("output_fd"), int):
            kept.outputs[unit] = snap["output_fd"]
    return kept


def _identify_kept(manager: Manager) -> _Kept:
    """Return the fds this image inherited, each matched to its use by what it is: the control socket
    and notify sockets by the path they are bound at, held sockets by their listening address, output
    pipes by inode (matched to a main process's stdout later). Unmatched sockets are in ``unknown``."""
    runtime_dir = Path(manager.config.daemon.runtime_dir)
    control_path = str(runtime_dir / "control.sock")
    notify_paths = {
        str(runtime_dir / "notify" / f"{unit}.sock"): unit
        for names in manager.units.values()
        for unit in names
    }
    listening: dict[tuple[int, object], int] = {}
    kept = _Kept()
    for item in inherited_fds():
        if item.pipe_inode is not None:
            kept.pipes[item.pipe_inode] = item.fd
        elif item.type == socket.SOCK_STREAM and item.listening and item.address == control_path:
            kept.control = item.fd
        elif item.type == socket.SOCK_DGRAM and item.address in notify_paths:
            kept.notify[notify_paths[str(item.address)]] = item.fd
        elif item.type == socket.SOCK_STREAM and item.listening and item.family is not None:
            listening[(int(item.family), item.address)] = item.fd
        else:
            kept.unknown.append(item.fd)
    for name, held in manager.held_sockets().items():
        keys = []
        for spec in held.specs:
            family, address = address_of(spec.listen)
            keys.append((int(family), plain(address)))
        if all(key in listening for key in keys):
            fds = [listening.pop(key) for key in keys]
            kept.sockets[name] = [
                {"listen": s.listen, "fd": fd} for s, fd in zip(held.specs, fds, strict=True)
            ]
    kept.unknown.extend(listening.values())
    return kept


def _service_units(manager: Manager) -> Iterator[tuple[str, Service]]:
    for names in manager.units.values():
        for unit in names:
            yield unit, manager.services[unit]


def _find(
    unit: str, snap: dict[str, Any] | None, containment: Containment, trust_record: bool
) -> Found | None:
    """Return the unit's main process: the recorded pid if it is still the same process (start time),
    else (after a crash) the session leader in its cgroup or with its INVOCATION_ID."""
    if snap is not None and isinstance(snap.get("main_pid"), int):
        pid = snap["main_pid"]
        if snap.get("start_time") is not None and start_time(pid) == snap["start_time"]:
            how = "state record" if trust_record else "state record (pid and start time)"
            return Found(pid, snap.get("invocation"), how)
    if trust_record:
        return None  # a re-exec keeps every child: not in the record means not running
    path = containment.cgroup_path(unit)
    if path is not None:
        return find_in_cgroup(path)
    invocation = containment.recorded_invocation(unit) or (snap or {}).get("invocation")
    return find_by_invocation(invocation) if invocation else None


def _restore_sockets(
    manager: Manager, kept: dict[str, list[dict[str, Any]]], found: dict[str, tuple[int, str, str | None]]
) -> None:
    """Hold the listening sockets that survived: the kept fds after a re-exec, else copies taken from a
    running instance's fds 3, 4, ... (pidfd_getfd; root). What cannot be recovered is bound anew."""
    for name, held in manager.held_sockets().items():
        specs = held.specs
        socks: list[socket.socket] = []
        entries = kept.get(name, [])
        if [e.get("listen") for e in entries] == [s.listen for s in specs]:
            for entry in entries:
                sock = socket.socket(fileno=int(entry["fd"]))
                sock.set_inheritable(False)
                socks.append(sock)
        else:
            for entry in entries:  # the config changed them: not ours to hold any more
                os.close(int(entry["fd"]))
            for unit in manager.units.get(name, []):
                if unit not in found:
                    continue
                copies = [
                    listening_copy(found[unit][0], 3 + i, *address_of(spec.listen))
                    for i, spec in enumerate(specs)
                ]
                if all(c is not None for c in copies):
                    socks = [c for c in copies if c is not None]
                    break
                for c in copies:
                    if c is not None:
                        c.close()
        if socks:
            held.adopt(socks)
