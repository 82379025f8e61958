"""Prometheus exposition: counters from events, gauges from the services, parsed by prometheus_client."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client.parser import text_string_to_metric_families

from hasupd import events as ev
from hasupd.config.model import ServiceConfig, StartLimit
from hasupd.metrics import Metrics, split_listen
from hasupd.service import Service
from hasupd.states import OutputMode
from tests.unit.fakes import FakeClock, FakeSpawner


class Source:
    def __init__(self) -> None:
        self.services: dict[str, Service] = {}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def make_service(name: str, bus: ev.EventBus, spawner: FakeSpawner, clock: FakeClock) -> Service:
    config = ServiceConfig(
        name=name,
        command=("/bin/true",),
        restart_sec=0.1,
        start_limit=StartLimit(burst=50, interval_sec=60.0),
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
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405")
        writer.close()
        busy = Metrics(bus, Source(), f"127.0.0.1:{port}")
        await busy.run()  # returns: the port is taken
        serving.cancel()
    assert any(isinstance(e, ev.MetricsUnavailable) and "127.0.0.1:" in e.address for e in seen)
    assert any(isinstance(e, ev.MetricsListening) for e in seen)
