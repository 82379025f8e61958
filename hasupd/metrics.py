"""Prometheus metrics: the text exposition format 0.0.4 at ``http://<metrics.listen>/metrics``.

Counters are kept from bus events (per event); gauges are read from the manager's services when
scraped (cost per scrape, not per tick). The only periodic work is one timer for the whole daemon
that measures how late the event loop answers. The HTTP server is a few lines of asyncio: it serves
``GET``/``HEAD /metrics`` and nothing else, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from hasupd import events as ev
from hasupd.service import Service
from hasupd.states import ServiceState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_INTERVAL_SEC = 1.0
READ_TIMEOUT_SEC = 5.0
MAX_REQUEST_BYTES = 8192
MAX_CONNECTIONS = 16
RELOAD_OUTCOMES = ("applied", "invalid")


class Services(Protocol):
    """What the metrics read at scrape time (the Manager)."""

    @property
    def services(self) -> dict[str, Service]: ...


def split_listen(listen: str) -> tuple[str, int]:
    """Return (host, port) of a validated "host:port" or "[v6]:port"."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Exposition:
    """Builds one scrape's text."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, text: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self._lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        suffix = "_total" if kind == "counter" else ""
        self._lines += [f"{name}{suffix}{_labels(labels)} {_number(v)}" for labels, v in samples]

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


class Metrics:
    """Counts events and serves the metrics of ``source``'s services on ``listen`` ("host:port")."""

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
        self._active = 0
        bus.subscribe(self._on_event)

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
            case ev.ConfigApplied():
                self.reloads["applied"] += 1
            case ev.ConfigInvalid():
                self.reloads["invalid"] += 1
            case _:
                pass

    # ------------------------------------------------------------------ exposition

    def render(self) -> str:
        """Return the current metrics in the text exposition format 0.0.4."""
        services = sorted(self._source.services.items())
        out = Exposition()
        out.family(
            "hasupd_service_state",
            "gauge",
            "1 for the state the service is in, 0 for the others",
            (
                ({"service": n, "state": str(st)}, float(s.state is st))
                for n, s in services
                for st in ServiceState
            ),
        )
        out.family(
            "hasupd_service_up",
            "gauge",
            "1 when the service is running",
            (({"service": n}, float(s.state is ServiceState.RUNNING)) for n, s in services),
        )
        out.family(
            "hasupd_service_restarts",
            "counter",
            "automatic restarts, by the result of the run that ended",
            (({"service": n, "result": r}, v) for (n, r), v in sorted(self.restarts.items())),
        )
        out.family(
            "hasupd_service_last_exit_code",
            "gauge",
            "exit code of the last main process that ended (128+N for signal N)",
            (({"service": n}, _exit_code(s)) for n, s in services if s.last_exit is not None),
        )
        out.family(
            "hasupd_watchdog_timeouts",
            "counter",
            "runs ended by the service watchdog",
            (({"service": n}, self.watchdog_timeouts[n]) for n, _ in services),
        )
        out.family(
            "hasupd_health_status",
            "gauge",
            "1 when every health probe of the service passes, 0 otherwise (absent without probes)",
            (({"service": n}, 1.0 if s.health == "healthy" else 0.0) for n, s in services if s.config.health),
        )
        out.family(
            "hasupd_event_loop_lag_seconds",
            "gauge",
            f"how late hasupd's event loop ran a timer due every {LAG_INTERVAL_SEC:g}s",
            [({}, round(self.loop_lag, 6))],
        )
        out.family(
            "hasupd_alert_spool_depth", "gauge", "alerts waiting to be sent", [({}, self.alert_spool_depth())]
        )
        jobs = sorted(self.backups.items())
        out.family(
            "hasupd_backup_last_success_timestamp_seconds",
            "gauge",
            "when the job's last backup succeeded (Unix time)",
            (({"job": j}, round(t, 3)) for j, (t, _, _) in jobs),
        )
        out.family(
            "hasupd_backup_duration_seconds",
            "gauge",
            "how long the job's last successful backup took",
            (({"job": j}, d) for j, (_, d, _) in jobs),
        )
        out.family(
            "hasupd_backup_bytes_added",
            "gauge",
            "bytes the job's last successful backup added to its repository",
            (({"job": j}, float(b)) for j, (_, _, b) in jobs),
        )
        out.family(
            "hasupd_backup_failures",
            "counter",
            "failed backup job steps",
            (({"job": j}, n) for j, n in sorted(self.backup_failures.items())),
        )
        out.family(
            "hasupd_config_reloads",
            "counter",
            "configuration reloads by outcome",
            (({"outcome": o}, v) for o, v in sorted(self.reloads.items())),
        )
        return out.text()

    # ------------------------------------------------------------------ serving

    async def run(self) -> None:
        """Serve until cancelled; return at once when no ``listen`` is configured.

        A failure to listen is recorded (``metrics.unavailable``) and supervision carries on without
        metrics.
        """
        if self.listen is None:
            return
        host, port = split_listen(self.listen)
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
                writer.write(_response(405, "method not allowed\n", head=False, extra="Allow: GET, HEAD\r\n"))
            elif target.split("?", 1)[0] != "/metrics":
                writer.write(_response(404, "not found; metrics are at /metrics\n", head=method == "HEAD"))
            else:
                writer.write(_response(200, self.render(), head=method == "HEAD", content_type=CONTENT_TYPE))
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
    status: int, body: str, *, head: bool, content_type: str = "text/plain; charset=utf-8", extra: str = ""
) -> bytes:
    data = body.encode()
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return header.encode() + (b"" if head else data)


def _exit_code(service: Service) -> float:
    status = service.last_exit
    assert status is not None
    return float(128 + status.signal if status.signal is not None else status.code or 0)
