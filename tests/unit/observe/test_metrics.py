"""Prometheus exposition: counters from events, gauges from the services, parsed by prometheus_client
(text format 0.0.4 and OpenMetrics, chosen by the Accept header)."""

from __future__ import annotations

import asyncio
import random
import signal

from hasupd import events as ev
from hasupd.config.model import HealthProbe, ProbeKind, ServiceConfig, StartLimit
from hasupd.observe.metrics import JobView, Metrics, accept_header, split_listen
from hasupd.service import Service
from hasupd.states import OutputMode
from tests.support.metrics_families import FAMILIES, Samples, check_families
from tests.unit.fakes import FakeClock, FakeSpawner

OPENMETRICS = "application/openmetrics-text"


class Source:
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}


def samples(text: str) -> Samples:
    return check_families(text)


def make_service(
    name: str, bus: ev.EventBus, spawner: FakeSpawner, clock: FakeClock, *probes: HealthProbe
) -> Service:
    config = ServiceConfig(
        name=name,
        command=("/bin/true",),
        restart_sec=0.1,
        start_limit=StartLimit(burst=50, interval_sec=60.0),
        health=probes,
    )
    return Service(config, spawner=spawner, clock=clock, bus=bus, output=OutputMode.INHERIT, rand=lambda: 0.0)


def test_counters_come_from_events_and_gauges_from_the_services() -> None:
    bus = ev.EventBus()
    source = Source()
    metrics = Metrics(bus, source, None)
    spawner, clock = FakeSpawner(), FakeClock()
    web = source.services["web"] = make_service("web", bus, spawner, clock)
    source.services['we"ird'] = make_service('we"ird', bus, spawner, clock)
    web.start()
    for _ in range(3):
        spawner.last.exit(sig=signal.SIGKILL)
        clock.advance(5)
    spawner.last.exit(code=2)
    bus.publish(ev.ConfigInvalid(errors=("x",)))
    bus.publish(ev.ConfigApplied())
    bus.publish(ev.ConfigApplied())
    bus.publish(ev.ServiceNotRestarted(service="web", reason="r", result="watchdog"))

    got = samples(metrics.render())
    assert got[("hasupd_service_restarts_total", (("result", "signal"), ("service", "web")))] == 3
    assert got[("hasupd_service_restarts_total", (("result", "exit-code"), ("service", "web")))] == 1
    assert got[("hasupd_service_state", (("service", "web"), ("state", "auto-restart")))] == 1
    assert (
        sum(
            v
            for (n, labels), v in got.items()
            if n == "hasupd_service_state" and ("service", "web") in labels
        )
        == 1
    )
    assert got[("hasupd_service_state", (("service", 'we"ird'), ("state", "dead")))] == 1
    assert got[("hasupd_service_up", (("service", "web"),))] == 0
    assert got[("hasupd_service_last_exit_code", (("service", "web"),))] == 2
    assert ("hasupd_service_last_exit_code", (("service", 'we"ird'),)) not in got  # never ran
    assert got[("hasupd_watchdog_timeouts_total", (("service", "web"),))] == 1
    assert got[("hasupd_config_reloads_total", (("outcome", "applied"),))] == 2
    assert got[("hasupd_config_reloads_total", (("outcome", "invalid"),))] == 1
    assert got[("hasupd_event_loop_lag_seconds", ())] == 0
    assert got[("hasupd_alert_spool_depth", ())] == 0
    clock.advance(1)
    assert samples(metrics.render())[("hasupd_service_up", (("service", "web"),))] == 1


def test_every_family_is_typed_and_documented_in_both_formats() -> None:
    """Counters are typed ``counter`` (not ``unknown``) with their ``_total`` samples under them, and
    every family has a help text, in the text format and in OpenMetrics."""
    bus = ev.EventBus()
    source = Source()
    metrics = Metrics(bus, source, None)
    metrics.alert_spool_depth = lambda: 2
    spawner, clock = FakeSpawner(), FakeClock()
    probe = HealthProbe(kind=ProbeKind.EXEC, argv=("/bin/true",))
    web = source.services["web"] = make_service("web", bus, spawner, clock, probe)
    web.start()
    spawner.last.exit(code=3)
    bus.publish(
        ev.BackupFinished(
            job="app-data", snapshot="ab12", files_new=1, files_changed=0, bytes_added=4096, duration_sec=1.5
        )
    )
    bus.publish(ev.BackupFailed(job="app-data", step="check", error="boom"))
    bus.publish(ev.DrillFinished(job="app-data", ok=True, detail="booted", boot=True, restorable_as_of=1e9))
    bus.publish(ev.ConfigApplied())
    bus.publish(ev.DrillFinished(job="app-data", ok=False, detail="restore failed"))
    bus.publish(ev.WatchdogLate(lag_sec=2.5))
    metrics.backup_jobs = lambda: [
        JobView(job="app-data", age_sec=120.0, max_age_sec=93600.0),
        JobView(job="never", age_sec=None, max_age_sec=None),
    ]

    text = metrics.render()
    assert "# TYPE hasupd_service_restarts_total counter" in text
    assert 'hasupd_backup_restorable_as_of_timestamp_seconds{job="app-data"} 1e+09' in text
    body, content_type = metrics.scrape(f"{OPENMETRICS}; version=1.0.0, text/plain;q=0.5")
    # The version differs: prometheus_client 0.16 (Debian 12) says 0.0.1, newer releases 1.0.0.
    assert content_type.startswith(f"{OPENMETRICS}; version=") and "charset=utf-8" in content_type
    assert body.decode().endswith("# EOF\n")
    for got in (check_families(text), check_families(body.decode(), openmetrics=True)):
        named = {name for name, _ in got}
        assert named == {n + "_total" if t == "counter" else n for n, t in FAMILIES.items()}
        assert got[("hasupd_service_restarts_total", (("result", "exit-code"), ("service", "web")))] == 1
        assert got[("hasupd_backup_failures_total", (("job", "app-data"),))] == 1
        assert got[("hasupd_backup_drill_ok", (("job", "app-data"),))] == 0
        assert got[("hasupd_systemd_watchdog_late_total", ())] == 1
        assert got[("hasupd_backup_age_seconds", (("job", "app-data"),))] == 120
        assert got[("hasupd_backup_max_age_seconds", (("job", "app-data"),))] == 93600
        assert ("hasupd_backup_age_seconds", (("job", "never"),)) not in got
        assert got[("hasupd_backup_bytes_added", (("job", "app-data"),))] == 4096
        assert got[("hasupd_backup_duration_seconds", (("job", "app-data"),))] == 1.5
        assert got[("hasupd_health_status", (("service", "web"),))] == 0
        assert got[("hasupd_alert_spool_depth", ())] == 2
    assert metrics.scrape("")[1] == "text/plain; version=0.0.4; charset=utf-8"
    assert metrics.scrape("*/*")[0].decode() == metrics.render()


def test_a_malformed_accept_header_gets_the_text_format() -> None:
    """prometheus_client 0.2x raises TypeError on ``version=abc``; a scraper's header must not reach
    hasupd's TaskGroup as an exception. A few hundred random headers built from the tokens that matter."""
    metrics = Metrics(ev.EventBus(), Source(), None)
    for accept in (f"{OPENMETRICS}; version=abc", "text/plain; version=x.y", "text/plain;version=="):
        body, content_type = metrics.scrape(accept)
        # 0.16 reads no version: OpenMetrics for the first; newer releases fall back to text 0.0.4.
        if content_type.startswith(OPENMETRICS):
            assert accept.startswith(OPENMETRICS)
            check_families(body.decode(), openmetrics=True)
        else:
            assert content_type == "text/plain; version=0.0.4; charset=utf-8"
            check_families(body.decode())
    rand = random.Random(15)
    tokens = [
        OPENMETRICS,
        "text/plain",
        "*/*",
        "version=",
        "version=1.0.0",
        "version=0.0.1",
        "version=a.b",
        "version=1",
        "escaping=",
        "escaping=dots",
        "escaping=values",
        "q=0.5",
        "=",
        ";",
        ",",
        "\xff",
        " ",
    ]
    for _ in range(300):
        accept = "".join(rand.choice(tokens) + rand.choice(("", ";", ",")) for _ in range(rand.randint(1, 8)))
        body, content_type = metrics.scrape(accept)
        check_families(body.decode(), openmetrics=content_type.startswith(OPENMETRICS))


def test_accept_header_is_read_case_insensitively_and_joined() -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: text/plain\r\naccept:  a/b;q=1\r\n\r\n"
    assert accept_header(head) == "text/plain,a/b;q=1"
    assert accept_header(b"GET /metrics HTTP/1.1\r\nX-Accept: a/b\r\n\r\n") == ""


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert split_listen("[::1]:9101") == ("::1", 9101)


async def test_served_over_http_and_a_busy_port_is_recorded_not_fatal() -> None:
    bus = ev.EventBus()
    seen: list[ev.Event] = []
    bus.subscribe(seen.append)
    first = Metrics(bus, Source(), "127.0.0.1:0")
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(first.run())
        while first.address is None:
            await asyncio.sleep(0.01)
        host, port = first.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await reader.read()
        writer.close()
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in reply
        assert b"# TYPE hasupd_service_up gauge" in reply
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {OPENMETRICS}\r\n\r\n".encode())
        header, _, body = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        assert f"\r\nContent-Type: {OPENMETRICS}; version=".encode() in header
        check_families(body.decode(), openmetrics=True)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /metrics HTTP/1.1\r\nAccept: {OPENMETRICS}; version=abc\r\n\r\n".encode())
        assert (await reader.read()).startswith(b"HTTP/1.1 200 OK\r\n")
        writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405")
        writer.close()
        busy = Metrics(bus, Source(), f"127.0.0.1:{port}")
        await busy.run()  # returns: the port is taken
        serving.cancel()
    assert any(isinstance(e, ev.MetricsUnavailable) and "127.0.0.1:" in e.address for e in seen)
    assert any(isinstance(e, ev.MetricsListening) for e in seen)


def test_fleet_families_follow_elections_losses_and_the_lease_age() -> None:
    bus = ev.EventBus()
    metrics = Metrics(bus, Source(), None)
    assert "hasupd_fleet_lease_age_seconds" not in metrics.render()  # no fleet: nothing about it
    metrics.fleet_lease_age = lambda: 0.75
    bus.publish(ev.FleetElected(service="db", host="h1", slot="owner/db", token=42))
    found = check_families(metrics.render(), fleet=True)
    assert found[("hasupd_fleet_owner", (("service", "db"), ("slot", "owner/db")))] == 1.0
    assert found[("hasupd_fleet_token", (("service", "db"), ("slot", "owner/db")))] == 42.0
    assert found[("hasupd_fleet_elections_total", (("service", "db"),))] == 1.0
    assert found[("hasupd_fleet_lease_age_seconds", ())] == 0.75
    bus.publish(ev.FleetFenced(host="h1", since_ack_sec=1.6, stopped=("db",)))
    found = check_families(metrics.render(), fleet=True)
    assert found[("hasupd_fleet_owner", (("service", "db"), ("slot", "owner/db")))] == 0.0


def test_fleet_ownership_carried_on_by_a_new_image_of_hasupd_is_owned_without_an_election() -> None:
    bus = ev.EventBus()
    metrics = Metrics(bus, Source(), None)
    metrics.fleet_lease_age = lambda: 0.1
    bus.publish(
        ev.FleetResumed(
            host="h1",
            cluster="c",
            lease="7",
            how="re-exec",
            slots=("owner/db", "replica/web/1"),
            tokens=(42, 43),
            services=("db", "web"),
            lease_left_sec=9.0,
        )
    )
    found = check_families(metrics.render(), fleet=True)
    assert found[("hasupd_fleet_owner", (("service", "db"), ("slot", "owner/db")))] == 1.0
    assert found[("hasupd_fleet_token", (("service", "web"), ("slot", "replica/web/1")))] == 43.0
    assert ("hasupd_fleet_elections_total", (("service", "db"),)) not in found
