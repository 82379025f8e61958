"""Alerts without a mail server: the table, routing, coalescing (fake clock), the spool on disk, and
delivery with a fake mailer (backoff, refusals, drops, tests that bypass the backoff)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.alerts.delivery import Delivery
from hasupd.alerts.mail import Accepted, DeliveryError, render
from hasupd.alerts.policy import ALERTS, OUTPUT_WAIT_SEC, Alerts
from hasupd.alerts.spool import Spool, SpoolEntry
from hasupd.alerts.text import IncidentLog, clip
from hasupd.config.model import AlertChannel, Config, DaemonConfig, EmailChannel, ServiceConfig, SmtpConfig
from hasupd.states import OutputMode
from tests.unit.fakes import FakeClock

# --------------------------------------------------------------------------- fakes


@dataclass
class FakeUnit:
    config: ServiceConfig
    output: OutputMode = OutputMode.INHERIT


class FakeSource:
    def __init__(self, channels: Sequence[AlertChannel], units: Sequence[FakeUnit]) -> None:
        self.services = {u.config.name: u for u in units}
        self.config = Config(
            config_dir="/etc/hasupd",
            daemon=DaemonConfig(alerts=tuple(channels)),
            services=tuple(u.config for u in units),
        )


def chan(name: str, coalesce: float = 60.0, on_crash: bool = False, port: int = 25) -> AlertChannel:
    email_ = EmailChannel(smtp=SmtpConfig(port=port), from_addr="hasupd@x.org", to=(f"{name}@x.org",))
    return AlertChannel(name=name, email=email_, coalesce_sec=coalesce, on_crash=on_crash)


def unit(
    name: str, alerts: tuple[str, ...] | None = None, output: OutputMode = OutputMode.INHERIT
) -> FakeUnit:
    return FakeUnit(ServiceConfig(name=name, command=("/bin/true",), alerts=alerts), output)


class Rig:
    """Alerts on a fake clock; what it would deliver is collected in ``out``."""

    def __init__(self, tmp: Path, channels: Sequence[AlertChannel], units: Sequence[FakeUnit]) -> None:
        self.bus = ev.EventBus()
        self.clock = FakeClock()
        self.source = FakeSource(channels, units)
        self.alerts = Alerts(self.bus, self.source, tmp / "alerts", self.clock, host="box")
        self.out: list[SpoolEntry] = []
        self.alerts.delivery.submit = self.out.append  # type: ignore[method-assign]

    def open(self, service: str, incident: str) -> None:
        self.bus.publish(ev.IncidentOpened(service=service, incident=incident, reason="exit code 3"))

    def crash(self, service: str, incident: str, n: int) -> None:
        self.bus.publish(
            ev.ServiceExited(service=service, incident=incident, pid=100 + n, result="exit-code", exit_code=3,
                             status="exit code 3")
        )  # fmt: skip
        self.bus.publish(
            ev.ServiceRestartScheduled(
                service=service,
                incident=incident,
                delay_sec=0.1,
                reason="on-failure",
                restarts=n,
                result="exit-code",
            )
        )

    def fail(self, service: str, incident: str, restarts: int) -> None:
        self.bus.publish(
            ev.ServiceFailed(service=service, incident=incident, result="start-limit-hit", restarts=restarts)
        )

    def subjects(self) -> list[str]:
        return [e.subject for e in self.out]


# --------------------------------------------------------------------------- what alerts, and where


def test_the_table_holds_every_alerting_event_once() -> None:
    kinds = {rule.kind for rule in ALERTS.values()}
    assert kinds == {
        "failed",
        "watchdog",
        "unhealthy",
        "limit",
        "restart",
        "config-invalid",
        "resolved",
        "backup-failed",
        "backup-warning",
        "backup-damaged",
        "backup-stale",
        "drill-failed",
        "drill-stale",
        "restore-failed",
        "recovery",
        "recovery-failed",
        "daemon-crashed",
        "fleet-unowned",
        "fleet-fenced",
        "fleet-join-refused",
        "rule",
    }
    assert [cls for cls, rule in ALERTS.items() if rule.crash] == [ev.ServiceRestartScheduled]


def test_crash_loop_is_the_first_alert_at_once_and_one_summary_with_the_counts(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops", coalesce=12, on_crash=True)], [unit("web")])
    rig.open("web", "i1")
    for n in range(1, 21):
        rig.crash("web", "i1", n)
        rig.clock.advance(0.25)
    rig.fail("web", "i1", 20)
    assert rig.subjects() == ["[hasupd@box] web crashed and restarts (exit-code, restart #1)"]
    rig.clock.advance(12)
    assert rig.subjects()[1] == "[hasupd@box] web: 20 more events: 19 x restart, 1 x failed"
    summary = rig.out[1]
    assert summary.kind == "summary" and summary.incident == "i1"
    assert summary.in_reply_to == rig.out[0].message_id
    assert "Restarts:  20" in summary.body and "Last exit: exit code 3" in summary.body
    rig.clock.advance(100)  # the next window stays quiet: nothing more
    assert len(rig.out) == 2
    rig.crash("web", "i1", 21)  # after a quiet window: at once again
    assert len(rig.out) == 3


def test_routing_by_service_alerts_and_on_crash(tmp_path: Path) -> None:
    rig = Rig(
        tmp_path,
        [chan("ops", on_crash=True), chan("mail")],
        [unit("web"), unit("db", alerts=("mail",)), unit("quiet", alerts=())],
    )
    rig.crash("web", "a", 1)
    assert [e.channel for e in rig.out] == ["ops"]  # mail has no on_crash
    rig.fail("web", "b", 3)
    assert [e.channel for e in rig.out[1:]] == ["mail"]  # ops: web's window is open, held
    rig.fail("db", "c", 1)
    rig.fail("quiet", "d", 1)
    assert [(e.channel, e.service) for e in rig.out[2:]] == [("mail", "db")]
    rig.bus.publish(ev.ConfigInvalid(errors=("hasupd.yaml:1:1: x: bad",)))
    assert sorted((e.channel, e.service) for e in rig.out[3:]) == [("mail", None), ("ops", None)]
    # An instance routes by its service's config; a service removed meanwhile by its file's.
    rig.fail("gone@1", "e", 1)
    assert [e.channel for e in rig.out[5:]] == ["ops", "mail"]


def test_resolved_goes_only_where_the_incident_alerted_and_threads_under_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops", coalesce=0, on_crash=True), chan("mail", coalesce=0)], [unit("web")])
    rig.open("web", "i1")
    rig.crash("web", "i1", 1)
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i1", outcome="resolved"))
    assert [(e.channel, e.kind) for e in rig.out] == [("ops", "restart"), ("ops", "resolved")]
    crash, resolved = rig.out
    assert resolved.subject == "[hasupd@box] web resolved (incident i1)"
    assert resolved.incident == "i1" and resolved.in_reply_to == crash.message_id
    rig.open("web", "i2")
    rig.crash("web", "i2", 1)
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i2", outcome="stopped"))
    assert [e.kind for e in rig.out[2:]] == ["restart"]  # stopped is not resolved


def test_a_resolved_within_the_window_ends_the_summary(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops", coalesce=30, on_crash=True)], [unit("web")])
    rig.open("web", "i1")
    rig.crash("web", "i1", 1)
    rig.crash("web", "i1", 2)
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i1", outcome="resolved"))
    rig.clock.advance(30)
    assert rig.subjects()[1] == "[hasupd@box] web: 2 more events: 1 x restart, 1 x resolved; now resolved"


def test_a_first_alert_waits_briefly_for_the_output_lines(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops", coalesce=0)], [unit("web", output=OutputMode.FILE)])
    rig.open("web", "i1")
    rig.fail("web", "i1", 0)
    assert rig.out == []
    rig.bus.publish(
        ev.IncidentOutput(service="web", incident="i1", lines=("a", "fatal: b"), source="web.log")
    )
    assert len(rig.out) == 1
    assert "Last 2 output line(s) before the failure (web.log):\n  | a\n  | fatal: b" in rig.out[0].body
    rig.open("web", "i2")
    rig.fail("web", "i2", 0)
    rig.clock.advance(OUTPUT_WAIT_SEC)  # no output came: sent without it
    assert len(rig.out) == 2 and "No output was captured" in rig.out[1].body


def test_no_channels_no_work(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [], [unit("web")])
    rig.open("web", "i1")
    rig.fail("web", "i1", 1)
    assert rig.out == [] and rig.alerts._incidents == {}


def test_bodies_carry_no_environment_values(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops", coalesce=0)], [])
    rig.bus.publish(
        ev.ConfigInvalid(
            errors=(
                "services.d/web.yaml:4:8: environment.TOKEN: expected a string, got 'hunter2'",
                "services.d/web.yaml:5:3: restart: unknown value 'sometimes'",
            )
        )
    )
    body = rig.out[0].body
    assert "hunter2" not in body and "environment.TOKEN: (message withheld" in body
    assert "restart: unknown value 'sometimes'" in body


def test_incident_log_is_bounded_and_keeps_first_and_latest() -> None:
    log = IncidentLog(id="i", service="web", opened=0.0, reason="r")
    for n in range(200):
        log.add(
            ev.ServiceRestartScheduled(
                service="web", incident="i", delay_sec=0, reason="r", restarts=n, result="x"
            )
        )
    lines = log.chain()
    assert len(lines) == 15 + 1 + 45 and "140 record(s) left out" in lines[15]
    assert "restart #199" in lines[-1] and log.restarts == 199
    assert clip("a\x1bb" + "x" * 600).startswith("a?b") and len(clip("x" * 600)) == 500


# --------------------------------------------------------------------------- the spool


def entry(n: int, channel: str = "ops", **kw: object) -> SpoolEntry:
    fields: dict[str, object] = {
        "id": f"{n:020d}-0000", "channel": channel, "created": 1_700_000_000.0 + n,
        "message_id": f"<{n}@box>", "kind": "failed", "subject": f"s{n}", "body": f"body {n}\n",
        "sender": "hasupd@x.org", "recipients": ("ops@x.org",), **kw,
    }  # fmt: skip
    return SpoolEntry(**fields)  # type: ignore[arg-type]


async def test_spool_is_durable_private_and_survives_reopening(tmp_path: Path) -> None:
    folder = tmp_path / "alerts"
    spool = Spool(folder)
    assert await spool.open() == []
    await spool.add(entry(2))
    await spool.add(entry(1, service="web", incident="abc"))
    assert [e.id for e in spool.entries] == [entry(1).id, entry(2).id]
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.glob("*.json"))
    (folder / "x.json.tmp").write_text("half")
    (folder / "junk.json").write_text("{nope")
    again = Spool(folder)
    bad = await again.open()
    assert [name for name, _ in bad] == ["junk.json"] and (folder / "junk.json.bad").exists()
    assert not (folder / "x.json.tmp").exists()
    assert [(e.id, e.incident, e.recipients) for e in again.entries] == [
        (entry(1).id, "abc", ("ops@x.org",)),
        (entry(2).id, None, ("ops@x.org",)),
    ]
    await again.remove(again.entries[0])
    assert len(list(folder.glob("*.json"))) == 1


async def test_a_full_spool_drops_the_oldest_not_in_flight_and_counts_per_channel(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_messages=3)
    await spool.open()
    for n in range(3):
        await spool.add(entry(n, channel="ops" if n else "mail"))
    spool.entries[0].in_flight = True  # being delivered: never dropped under it
    victims = await spool.add(entry(3))
    assert [v.id for v in victims] == [entry(1).id] and spool.dropped == {"ops": 1}
    victims = await spool.add(entry(4))
    assert [v.id for v in victims] == [entry(2).id] and spool.dropped == {"ops": 2}
    assert json.loads((tmp_path / "dropped.json").read_text()) == {"ops": 2}
    reopened = Spool(tmp_path, max_messages=3)
    await reopened.open()
    assert reopened.dropped == {"ops": 2} and len(reopened) == 3
    await reopened.reported("ops", 2)
    assert reopened.dropped == {} and json.loads((tmp_path / "dropped.json").read_text()) == {}


def test_render_is_a_seven_bit_message_with_threading_and_the_drop_note() -> None:
    e = entry(1, service="web", incident="abc", in_reply_to="<0@box>", body="héllo\n" + "x" * 1200)
    raw = render(e, dropped=3)
    assert raw.isascii()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Message-ID"] == "<1@box>" and msg["In-Reply-To"] == "<0@box>"
    assert msg["X-Hasupd-Incident"] == "abc" and msg["Auto-Submitted"] == "auto-generated"
    text = msg.get_content()
    assert text.startswith("NOTE: 3 older alert(s) were dropped") and "héllo" in text
    assert b"Content-Transfer-Encoding: 7bit" in render(entry(2))


# --------------------------------------------------------------------------- delivery (fake mailer)


@dataclass
class FakeMailer:
    """Scripted: each session pops an outcome (None = connects fine); sends are refused for subjects
    in ``refuse`` and for recipients in ``refuse_rcpt``."""

    sessions: list[str | None] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    refuse_rcpt: set[str] = field(default_factory=set)
    sent: list[bytes] = field(default_factory=list)
    opened: int = 0

    @contextlib.asynccontextmanager
    async def session(self, smtp: SmtpConfig) -> AsyncIterator[FakeMailer]:
        self.opened += 1
        outcome = self.sessions.pop(0) if self.sessions else None
        if outcome is not None:
            raise DeliveryError(outcome, session=True)
        yield self

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> Accepted:
        subject = str(email.message_from_bytes(message, policy=email.policy.default)["Subject"])
        if subject in self.refuse:
            raise DeliveryError("message refused: 552 too big", session=False)
        self.sent.append(message)
        return Accepted("250 ok", {r: "550 no such user" for r in recipients if r in self.refuse_rcpt})


class DeliveryRig:
    def __init__(
        self, tmp: Path, mailer: FakeMailer, channels: Sequence[AlertChannel] = (chan("ops"),)
    ) -> None:
        self.records: list[ev.Event] = []
        self.spool = Spool(tmp / "alerts")
        self.channels = {c.name: c for c in channels}
        self.delivery = Delivery(
            self.spool, mailer, lambda: self.channels, self.records.append, retry_min=0.05, retry_max=0.2,
            rand=lambda: 0.0,
        )  # fmt: skip

    def of(self, cls: type[ev.Event]) -> list[ev.Event]:
        return [r for r in self.records if isinstance(r, cls)]

    async def until(self, condition: object, timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():  # type: ignore[operator]
                await asyncio.sleep(0.005)


async def test_session_failures_back_off_exponentially_and_then_deliver(tmp_path: Path) -> None:
    mailer = FakeMailer(sessions=["down 1", "down 2", "down 3", "down 4"])
    rig = DeliveryRig(tmp_path, mailer)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(rig.delivery.run())
        rig.delivery.submit(entry(1, service="web", incident="i1"))
        await rig.until(lambda: rig.of(ev.AlertSent))
        runner.cancel()
    failed = rig.of(ev.AlertFailed)
    assert [f.retry_in_sec for f in failed] == [0.05, 0.1, 0.2, 0.2]  # type: ignore[attr-defined]
    assert [f.attempts for f in failed] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert failed[0].error == "down 1" and failed[0].incident == "i1" and failed[0].waiting == 1  # type: ignore[attr-defined]
    sent = rig.of(ev.AlertSent)[0]
    assert sent.message_id == "<1@box>" and sent.response == "250 ok"  # type: ignore[attr-defined]
    assert rig.spool.entries == [] and list((tmp_path / "alerts").glob("*.json")) == []


async def test_a_refused_message_backs_off_alone_and_the_others_go_on(tmp_path: Path) -> None:
    mailer = FakeMailer(refuse={"s1"}, refuse_rcpt={"b@x.org"})
    rig = DeliveryRig(tmp_path, mailer)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(rig.delivery.run())
        rig.delivery.submit(entry(1))
        rig.delivery.submit(entry(2, recipients=("a@x.org", "b@x.org"), to=("a@x.org", "b@x.org")))
        await rig.until(lambda: len(mailer.sent) >= 2)  # s2 twice: the retry only to b@x.org
        runner.cancel()
    assert b"To: a@x.org, b@x.org\r\n" in mailer.sent[1]  # the header stays; the envelope is b only
    failed = [f.error for f in rig.of(ev.AlertFailed)]  # type: ignore[attr-defined]
    assert "message refused: 552 too big" in failed
    assert any("b@x.org: 550 no such user" in f for f in failed)
    left = {e.id: e.recipients for e in rig.spool.entries}
    assert left == {entry(1).id: ("ops@x.org",), entry(2).id: ("b@x.org",)}
    stored = SpoolEntry.decode((tmp_path / "alerts" / f"{entry(2).id}.json").read_bytes())
    assert stored.recipients == ("b@x.org",)  # only those still owed a copy


async def test_drops_are_announced_in_the_next_delivered_message(tmp_path: Path) -> None:
    mailer = FakeMailer(sessions=["down"])
    rig = DeliveryRig(tmp_path, mailer)
    rig.spool.max_messages = 2
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(rig.delivery.run())
        for n in range(1, 5):
            rig.delivery.submit(entry(n))
        await rig.until(lambda: len(rig.of(ev.AlertSent)) == 2)
        runner.cancel()
    dropped = rig.of(ev.AlertDropped)
    assert [d.message_id for d in dropped] == ["<1@box>", "<2@box>"]  # type: ignore[attr-defined]
    assert b"NOTE: 2 older alert(s) were dropped" in mailer.sent[0]
    assert b"older alert" not in mailer.sent[1]
    assert rig.spool.dropped == {}


async def test_a_test_message_is_tried_at_once_even_while_the_channel_backs_off(tmp_path: Path) -> None:
    mailer = FakeMailer(sessions=["down"])
    rig = DeliveryRig(tmp_path, mailer)
    rig.delivery._retry = (60.0, 600.0)  # the regular retry is far away
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(rig.delivery.run())
        rig.delivery.submit(entry(1))
        await rig.until(lambda: rig.of(ev.AlertFailed))
        ok, answer = await rig.delivery.deliver_now(entry(2, kind="test"), timeout=2)
        assert (ok, answer) == (True, "250 ok")
        await rig.until(lambda: len(rig.of(ev.AlertSent)) == 2)  # the server is back: the rest follows
        runner.cancel()
    assert [s.message_id for s in rig.of(ev.AlertSent)] == ["<2@box>", "<1@box>"]  # type: ignore[attr-defined]


async def test_messages_of_a_removed_channel_are_dropped_with_a_record(tmp_path: Path) -> None:
    rig = DeliveryRig(tmp_path, FakeMailer())
    rig.channels.clear()
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(rig.delivery.run())
        rig.delivery.submit(entry(1))
        await rig.until(lambda: rig.of(ev.AlertDropped))
        runner.cancel()
    assert "no longer configured" in rig.of(ev.AlertDropped)[0].reason  # type: ignore[attr-defined]
    assert rig.delivery.depth == 0


async def test_what_is_spooled_is_delivered_on_start(tmp_path: Path) -> None:
    first = Spool(tmp_path / "alerts")
    await first.open()
    await first.add(entry(7))
    mailer = FakeMailer()
    rig = DeliveryRig(tmp_path, mailer)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(rig.delivery.run())
        await rig.until(lambda: rig.of(ev.AlertSent))
        runner.cancel()
    assert len(mailer.sent) == 1 and os.listdir(tmp_path / "alerts") == []


def test_alert_test_needs_a_known_channel(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops")], [])
    with pytest.raises(LookupError, match="no alert channel 'nope'"):
        asyncio.run(rig.alerts.send_test("nope"))
    empty = Rig(tmp_path, [], [])
    with pytest.raises(LookupError, match="no alert channels are configured"):
        asyncio.run(empty.alerts.send_test(None))


async def test_a_reload_that_changes_a_channel_retries_its_messages_at_once(tmp_path: Path) -> None:
    mailer = FakeMailer(sessions=["535 bad password"])
    rig = Rig(tmp_path, [chan("ops", coalesce=0)], [unit("web")])
    rig.alerts.delivery = delivery = Delivery(
        rig.alerts.spool, mailer, rig.alerts.channels, rig.bus.publish, retry_min=600, retry_max=600
    )
    records: list[ev.Event] = []
    rig.bus.subscribe(records.append)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(delivery.run())
        rig.fail("web", "i1", 0)
        await DeliveryRig.until(None, lambda: any(isinstance(r, ev.AlertFailed) for r in records))  # type: ignore[arg-type]
        rig.bus.publish(ev.ConfigApplied())  # nothing changed: still backing off
        await asyncio.sleep(0.05)
        assert mailer.opened == 1
        rig.source.config = Config(
            config_dir="/etc/hasupd", daemon=DaemonConfig(alerts=(chan("ops", coalesce=0, port=587),))
        )
        rig.bus.publish(ev.ConfigApplied(channels_changed=("ops",)))
        await DeliveryRig.until(None, lambda: any(isinstance(r, ev.AlertSent) for r in records))  # type: ignore[arg-type]
        runner.cancel()
    assert mailer.opened == 2
