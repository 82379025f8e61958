"""Prometheus metrics at ``http://<metrics.listen>/metrics``, through prometheus_client.

Counters are kept from bus events (per event); gauges are read from the manager's services when
scraped (cost per scrape, not per tick). A custom collector turns both into metric families at scrape
time, in a private registry (prometheus_client's global one, with its process collectors, is not
used). The exposition (text format 0.0.4, or OpenMetrics when the ``Accept`` header asks for it) is
prometheus_client's; the HTTP server is hasupd's own few lines of asyncio on the event loop (no
server thread): it serves ``GET``/``HEAD /metrics`` and nothing else, one request per connection.
The only periodic work is one timer for the whole daemon that measures how late the event loop
answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hasupd import events as ev
from hasupd.states import Health, ServiceState

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

    from hasupd.service import Service

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # generate_latest's format
LAG_INTERVAL_SEC = 1.0
READ_TIMEOUT_SEC = 5.0
MAX_REQUEST_BYTES = 8192
MAX_CONNECTIONS = 16
RELOAD_OUTCOMES = ("applied", "invalid")


class Services(Protocol):
    """What the metrics read at scrape time (the Manager)."""

    @property
    def services(self) -> dict[str, Service]: ...


@dataclass(frozen=True)
class JobView:
    """What the metrics read of a backup job at scrape time (from its persisted stamps and config)."""

    job: str
    age_sec: float | None  # age of the newest good backup; None: there is none
    max_age_sec: float | None  # the job's max_age; None: not set


def split_listen(listen: str) -> tuple[str, int]:
    """Return (host, port) of a validated "host:port" or "[v6]:port"."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def accept_header(head: bytes) -> str:
    """Return the value of the request's ``Accept`` header(s), joined by commas ("" without one)."""
    values = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "accept":
            values.append(value.strip())
    return ",".join(values)


class Metrics:
    """Counts events and serves the metrics of ``source``'s services on ``listen`` ("host:port").

    ``registry`` holds one collector that reads this object at scrape time.
    """

    def __init__(self, bus: ev.EventBus, source: Services, listen: str | None) -> None:
        self._bus = bus
        self._source = source
        self.listen = listen
        self.restarts: Counter[tuple[str, str]] = Counter()  # (service, result)
        self.watchdog_timeouts: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter({outcome: 0 for outcome in RELOAD_OUTCOMES})
        self.loop_lag = 0.0
        self.alert_spool_depth: Callable[[], int] = lambda: 0  # the alert spool plugs in here
        self.address: tuple[str, int] | None = None  # where it listens, once it does
        # Backup jobs: job -> (last success as a Unix time, its duration, bytes it added)
        self.backups: dict[str, tuple[float, float, int]] = {}
        self.backup_failures: Counter[str] = Counter()
        self.drills: dict[str, bool] = {}  # job -> whether its last restore drill passed
        # The backup units plug in here: every job's age and max_age, read at scrape time.
        self.backup_jobs: Callable[[], Iterable[JobView]] = lambda: ()
        # Pings to systemd's watchdog that hasupd withheld because its event loop answered late.
        self.systemd_watchdog_late = 0
        self.restorable: dict[str, float] = {}  # job -> snapshot time of the last boot drill that passed
        # The fleet: (service, slot) -> this host's fencing token while it owns it, 0 after it lost it.
        self.fleet_owned: dict[tuple[str, str], int] = {}
        self.fleet_elections: Counter[str] = Counter()
        # The fleet plugs in here; None: no fleet configured, no fleet families served.
        self.fleet_lease_age: Callable[[], float | None] | None = None
        self._active = 0
        bus.subscribe(self._on_event)
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """The registry that holds one collector reading this object, made at the first scrape:
        prometheus_client (~4 MB, 77 modules) is imported only where metrics are served or rendered."""
        if self._registry is None:
            from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

            # A registry of its own: the global one carries prometheus_client's process and platform
            # collectors, and would keep serving this collector after this object is gone.
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_families(self))
        return self._registry

    def _on_event(self, event: ev.Event) -> None:
        match event:
            case ev.ServiceRestartScheduled(service=str(name), result=result):
                self.restarts[(name, result)] += 1
                if result == "watchdog":
                    self.watchdog_timeouts[name] += 1
            case ev.ServiceNotRestarted(service=str(name), result="watchdog"):
                # Every run that ends in failure is either restarted or not: each watchdog kill counts once.
                self.watchdog_timeouts[name] += 1
            case ev.BackupFinished(job=job, duration_sec=duration, bytes_added=added):
                self.backups[job] = (event.time, duration, added)
            case ev.BackupFailed(job=job):
                self.backup_failures[job] += 1
            case ev.DrillFinished(job=job, ok=ok, restorable_as_of=when):
                self.drills[job] = ok
                if ok and when is not None:
                    self.restorable[job] = float(when)
            case ev.WatchdogLate():
                self.systemd_watchdog_late += 1
            case ev.FleetElected(service=str(name), slot=slot, token=token):
                self.fleet_elections[name] += 1
                self.fleet_owned[(name, slot)] = token
            case ev.FleetResumed(services=names, slots=slots, tokens=tokens):
                # Carried on from the last image of hasupd: owned all along, no election.
                for name, slot, token in zip(names, slots, tokens, strict=False):
                    self.fleet_owned[(name, slot)] = token
            case ev.FleetLost(service=str(name), slot=slot) | ev.FleetMoved(service=str(name), slot=slot):
                self.fleet_owned[(name, slot)] = 0
            case ev.FleetFenced():
                self.fleet_owned = dict.fromkeys(self.fleet_owned, 0)
            case ev.ConfigApplied():
                self.reloads["applied"] += 1
            case ev.ConfigInvalid():
                self.reloads["invalid"] += 1
            case _:
                pass

    # ------------------------------------------------------------------ exposition

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, computed now from the counters and the services' state."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        services = sorted(self._source.services.items())
        state = GaugeMetricFamily(
            "hasupd_service_state",
            "1 for the state the service is in, 0 for the others",
            labels=("service", "state"),
        )
        up = GaugeMetricFamily("hasupd_service_up", "1 when the service is running", labels=("service",))
        exit_code = GaugeMetricFamily(
            "hasupd_service_last_exit_code",
            "exit code of the last main process that ended (128+N for signal N)",
            labels=("service",),
        )
        watchdog = CounterMetricFamily(
            "hasupd_watchdog_timeouts", "runs ended by the service watchdog", labels=("service",)
        )
        health = GaugeMetricFamily(
            "hasupd_health_status",
            "1 when every health probe of the service passes, 0 otherwise (absent without probes)",
            labels=("service",),
        )
        for name, service in services:
            for st in ServiceState:
                state.add_metric((name, str(st)), float(service.state is st))
            up.add_metric((name,), float(service.state is ServiceState.RUNNING))
            if service.last_exit is not None:
                exit_code.add_metric((name,), _exit_code(service))
            watchdog.add_metric((name,), self.watchdog_timeouts[name])
            if service.config.health:
                health.add_metric((name,), 1.0 if service.health is Health.HEALTHY else 0.0)
        restarts = CounterMetricFamily(
            "hasupd_service_restarts",
            "automatic restarts, by the result of the run that ended",
            labels=("service", "result"),
        )
        for (name, result), count in sorted(self.restarts.items()):
            restarts.add_metric((name, result), count)
        yield from (state, up, restarts, exit_code, watchdog, health)
        yield GaugeMetricFamily(
            "hasupd_event_loop_lag_seconds",
            f"how late hasupd's event loop ran a timer due every {LAG_INTERVAL_SEC:g}s",
            value=round(self.loop_lag, 6),
        )
        yield CounterMetricFamily(
            "hasupd_systemd_watchdog_late",
            "pings to systemd's watchdog withheld because hasupd's event loop answered late",
            value=self.systemd_watchdog_late,
        )
        yield GaugeMetricFamily(
            "hasupd_alert_spool_depth", "alerts waiting to be sent", value=self.alert_spool_depth()
        )
        yield from self._backup_families()
        if self.fleet_lease_age is not None:
            yield from self._fleet_families(self.fleet_lease_age())
        reloads = CounterMetricFamily(
            "hasupd_config_reloads", "configuration reloads by outcome", labels=("outcome",)
        )
        for outcome, count in sorted(self.reloads.items()):
            reloads.add_metric((outcome,), count)
        yield reloads

    def _fleet_families(self, age: float | None) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        owner = GaugeMetricFamily(
            "hasupd_fleet_owner",
            "1 while this host owns the placed service's slot",
            labels=("service", "slot"),
        )
        token = GaugeMetricFamily(
            "hasupd_fleet_token",
            "the fencing token of this host's ownership (0: not owned)",
            labels=("service", "slot"),
        )
        for (name, slot), value in sorted(self.fleet_owned.items()):
            owner.add_metric((name, slot), float(value > 0))
            token.add_metric((name, slot), float(value))
        elections = CounterMetricFamily(
            "hasupd_fleet_elections", "ownerships this host won", labels=("service",)
        )
        for name, count in sorted(self.fleet_elections.items()):
            elections.add_metric((name,), count)
        yield from (owner, token, elections)
        # NaN while this host holds no lease (not joined, fenced): an age would be a lie.
        yield GaugeMetricFamily(
            "hasupd_fleet_lease_age_seconds",
            "seconds since this host's last acknowledged keep-alive was sent (NaN: no lease)",
            value=round(age, 3) if age is not None else float("nan"),
        )

    def _backup_families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        last = GaugeMetricFamily(
            "hasupd_backup_last_success_timestamp_seconds",
            "when the job's last backup succeeded (Unix time)",
            labels=("job",),
        )
        duration = GaugeMetricFamily(
            "hasupd_backup_duration_seconds",
            "how long the job's last successful backup took",
            labels=("job",),
        )
        added = GaugeMetricFamily(
            "hasupd_backup_bytes_added",
            "bytes the job's last successful backup added to its repository",
            labels=("job",),
        )
        for job, (time, took, size) in sorted(self.backups.items()):
            last.add_metric((job,), round(time, 3))
            duration.add_metric((job,), took)
            added.add_metric((job,), float(size))
        failures = CounterMetricFamily("hasupd_backup_failures", "failed backup job steps", labels=("job",))
        for job, count in sorted(self.backup_failures.items()):
            failures.add_metric((job,), count)
        age = GaugeMetricFamily(
            "hasupd_backup_age_seconds",
            "age of the job's newest good backup (absent while it has none)",
            labels=("job",),
        )
        max_age = GaugeMetricFamily(
            "hasupd_backup_max_age_seconds", "the job's max_age (absent without one)", labels=("job",)
        )
        for view in self.backup_jobs():
            if view.age_sec is not None:
                age.add_metric((view.job,), round(view.age_sec, 3))
            if view.max_age_sec is not None:
                max_age.add_metric((view.job,), view.max_age_sec)
        drill = GaugeMetricFamily(
            "hasupd_backup_drill_ok",
            "1 when the job's last restore drill passed, 0 when it failed (absent until one ran)",
            labels=("job",),
        )
        for job, ok in sorted(self.drills.items()):
            drill.add_metric((job,), float(ok))
        restorable = GaugeMetricFamily(
            "hasupd_backup_restorable_as_of_timestamp_seconds",
            "the time of the snapshot on which the job's services last booted in a boot drill (Unix time)",
            labels=("job",),
        )
        for job, when in sorted(self.restorable.items()):
            restorable.add_metric((job,), round(when, 3))
        yield from (last, duration, added, failures, age, max_age, drill, restorable)

    def render(self) -> str:
        """Return the current metrics in the text exposition format 0.0.4."""
        from prometheus_client.exposition import generate_latest  # noqa: PLC0415

        return generate_latest(self.registry).decode()

    def scrape(self, accept: str) -> tuple[bytes, str]:
        """Return (body, content type) of a scrape, in the format the ``Accept`` header prefers.

        OpenMetrics when it lists ``application/openmetrics-text``, else the text format 0.0.4 (or
        what else the installed prometheus_client negotiates, e.g. text 1.0.0 with newer releases).
        A header prometheus_client cannot read gets the text format 0.0.4.
        """
        from prometheus_client.exposition import choose_encoder, generate_latest  # noqa: PLC0415

        try:
            encoder, content_type = choose_encoder(accept)
        except (TypeError, ValueError):
            # Newer releases compare the header's version with numbers and raise on one like
            # "version=abc": a client's header must not take hasupd down; it gets the default format.
            encoder, content_type = generate_latest, TEXT_CONTENT_TYPE
        return encoder(self.registry), content_type

    # ------------------------------------------------------------------ serving

    async def run(self) -> None:
        """Serve until cancelled; return at once when no ``listen`` is configured.

        A failure to listen is recorded (``metrics.unavailable``) and supervision carries on without
        metrics.
        """
        if self.listen is None:
            return
        host, port = split_listen(self.listen)
        _ = self.registry  # prometheus_client imported now, not during the first scrape
        async with asyncio.TaskGroup() as tasks:
            try:
                server = await asyncio.start_server(
                    lambda r, w: self._accept(tasks, r, w), host, port, limit=MAX_REQUEST_BYTES
                )
            except OSError as e:
                self._bus.publish(ev.MetricsUnavailable(address=self.listen, error=e.strerror or str(e)))
                return
            self.address = server.sockets[0].getsockname()[:2]
            self._bus.publish(ev.MetricsListening(address=self.listen))
            try:
                async with server:
                    await self._measure_lag()
            finally:
                server.close()

    async def _measure_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_INTERVAL_SEC
            await asyncio.sleep(LAG_INTERVAL_SEC)
            self.loop_lag = max(0.0, loop.time() - due)

    def _accept(
        self, tasks: asyncio.TaskGroup, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._active >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active += 1
        tasks.create_task(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SEC)
            method, target, *_ = [*head.decode("latin-1").split("\r\n", 1)[0].split(" "), "", ""]
            if method not in ("GET", "HEAD"):
                writer.write(
                    _response(405, b"method not allowed\n", head=False, extra="Allow: GET, HEAD\r\n")
                )
            elif target.split("?", 1)[0] != "/metrics":
                writer.write(_response(404, b"not found; metrics are at /metrics\n", head=method == "HEAD"))
            else:
                body, content_type = self.scrape(accept_header(head))
                writer.write(_response(200, body, head=method == "HEAD", content_type=content_type))
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_SEC)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a client that sends no complete request, or leaves, gets nothing
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


def _response(
    status: int, data: bytes, *, head: bool, content_type: str = "text/plain; charset=utf-8", extra: str = ""
) -> bytes:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return header.encode() + (b"" if head else data)


def _exit_code(service: Service) -> float:
    status = service.last_exit
    assert status is not None
    return float(128 + status.signal if status.signal is not None else status.code or 0)


def _families(metrics: Metrics) -> Collector:
    """Return the registry's view of ``metrics``: its families, computed at each scrape."""
    from prometheus_client.registry import Collector  # noqa: PLC0415

    class _Families(Collector):
        def collect(self) -> Iterator[Metric]:
            return metrics.collect()

    return _Families()
