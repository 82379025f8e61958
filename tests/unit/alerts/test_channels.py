"""Channels beyond email without a network: per-channel filters, silences (persisted, expiring, matched
by any of an alert's names), what each transport is handed (PagerDuty's event, Apprise's targets)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.alerts.apprise_channel import EVERY_TARGET, notify_type, target_id
from hasupd.alerts.mail import DeliveryError
from hasupd.alerts.pagerduty import event as pd_event
from hasupd.alerts.silences import Silences, keys
from hasupd.alerts.transport import ChannelThreads
from hasupd.config.model import AlertChannel, PagerDutyChannel
from tests.unit.alerts.test_policy import DeliveryRig, FakeMailer, Rig, chan, entry, unit


def pager(name: str = "pager", **fields: object) -> AlertChannel:
    return AlertChannel(
        name=name,
        pagerduty=PagerDutyChannel(routing_key_file="/k", url="http://127.0.0.1:9/v2/enqueue"),
        coalesce_sec=0,
        **fields,  # type: ignore[arg-type]
    )


def test_min_level_and_events_filter_but_resolved_reaches_whoever_was_told(tmp_path: Path) -> None:
    chat = AlertChannel(name="chat", apprise=("ntfy://127.0.0.1:1/t",), coalesce_sec=0, on_crash=True)
    page = pager(events=("service.failed",), on_crash=True)
    errors_only = replace(chan("mail", coalesce=0, on_crash=True), min_level="error")
    rig = Rig(tmp_path, [chat, page, errors_only], [unit("web")])
    rig.open("web", "i1")
    rig.crash("web", "i1", 1)  # a warning: chat only
    rig.fail("web", "i1", 1)  # an error: all three
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i1", outcome="resolved"))
    got = [(e.channel, e.kind, e.level, e.resolves) for e in rig.out]
    assert got == [
        ("chat", "restart", "warning", False),
        ("chat", "failed", "error", False),
        ("pager", "failed", "error", False),
        ("mail", "failed", "error", False),
        ("chat", "resolved", "info", True),
        ("pager", "resolved", "info", True),
        ("mail", "resolved", "info", True),
    ]
    by_channel = {e.channel: e for e in rig.out if e.kind == "failed"}
    assert by_channel["chat"].recipients == (EVERY_TARGET,) and by_channel["chat"].sender == ""
    assert by_channel["mail"].recipients == ("mail@x.org",)


def test_the_pagerduty_event_uses_the_incident_as_dedup_key_and_resolves_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [pager()], [unit("web")])
    rig.open("web", "i7")
    rig.fail("web", "i7", 5)
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i7", outcome="resolved"))
    trigger, resolve = (pd_event(e, "KEY", "box") for e in rig.out)
    assert trigger["dedup_key"] == resolve["dedup_key"] == "i7"
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["routing_key"] == "KEY" and trigger["payload"]["severity"] == "error"
    assert trigger["payload"]["summary"] == "[hasupd@box] web failed (start-limit-hit)"
    assert "Restarts: 5" in trigger["payload"]["custom_details"]["text"]
    assert "payload" not in resolve
    # Without an incident, the message's own id: its retries still page once.
    lone = replace(rig.out[0], incident=None)
    assert pd_event(lone, "KEY", "box")["dedup_key"] == lone.message_id
    assert notify_type(rig.out[0]) == "failure" and notify_type(rig.out[1]) == "success"


def test_apprise_target_ids_never_show_the_url() -> None:
    url = "tgram://123456:SECRET-token/987"
    assert target_id(url).startswith("tgram-") and "SECRET" not in target_id(url)
    assert target_id(url) == target_id(url) != target_id(url + "1")


@dataclass(frozen=True, kw_only=True)
class _GroupEvent(ev.Event):
    """Stands in for a rule firing about an error group (another part of hasupd raises those)."""

    NAME = "errors.new_group"
    group: str
    rule: str


def test_a_silence_matches_by_service_event_kind_group_or_rule() -> None:
    failed = ev.ServiceFailed(service="web@2", incident="i", result="start-limit-hit", restarts=3)
    assert keys(failed, "failed") == {"web@2", "web", "service.failed", "failed"}
    grouped = _GroupEvent(service="api", group="3f9a0c", rule="new-errors")
    assert {"3f9a0c", "new-errors", "errors.new_group", "api"} <= keys(grouped, "new-error")


async def test_silences_persist_expire_and_can_be_lifted(tmp_path: Path) -> None:
    silences = Silences(tmp_path)
    await silences.add("web", 60, "deploy", "alice")
    await silences.add("db", 1, "", "bob")
    again = Silences(tmp_path)  # a restart of hasupd
    assert again.load() is None
    assert again.match({"web", "service.failed"}) is not None
    now = time.time()
    assert again.match({"db"}, now) is not None and again.match({"db"}, now + 2) is None
    assert [s.target for s in again.active(now + 2)] == ["web"]
    await again.add("web", 0, "", "alice")  # 0 lifts it
    assert again.match({"web"}) is None
    (db,) = again.active(now)
    stored = json.loads((tmp_path / "silences.json").read_text())
    assert stored == [{"target": "db", "until": db.until, "reason": "", "created": db.created, "by": "bob"}]


async def test_a_silenced_alert_is_recorded_as_suppressed_and_not_sent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [chan("ops", coalesce=0)], [unit("web"), unit("db")])
    seen: list[ev.Event] = []
    rig.bus.subscribe(seen.append)
    await rig.alerts.silence("web", 3600, "maintenance", "alice")
    rig.fail("web", "i1", 3)
    rig.fail("db", "i2", 3)
    assert [e.service for e in rig.out] == ["db"]
    suppressed = [e for e in seen if isinstance(e, ev.AlertSuppressed)]
    assert len(suppressed) == 1
    assert suppressed[0].silence == "web" and suppressed[0].reason == "maintenance"
    assert suppressed[0].incident == "i1" and suppressed[0].kind == "failed"
    listed = rig.alerts.listing()
    assert [s["target"] for s in listed["silences"]] == ["web"]
    assert [r["event"] for r in listed["recent"]] == ["alert.suppressed"]


async def test_channel_threads_bound_a_hung_call_and_start_no_second_thread_behind_it() -> None:
    threads = ChannelThreads()
    release = threading.Event()
    assert await threads.run("a", lambda: 42, 5) == 42
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"no answer within 0\.2s") as info:
        await threads.run("a", lambda: release.wait(10), 0.2)
    assert info.value.session and time.monotonic() - started < 2
    with pytest.raises(DeliveryError, match="previous attempt has not finished"):
        await threads.run("a", lambda: 1, 5)  # the hung one still runs: no second thread
    assert await threads.run("b", lambda: "other channel", 5) == "other channel"
    release.set()
    await asyncio.sleep(0.1)

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await threads.run("a", boom, 5)
    assert await threads.run("a", lambda: 7, 5) == 7


async def test_a_silence_never_holds_back_the_resolved_notice_of_an_incident_that_was_told(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, [pager()], [unit("web")])
    rig.open("web", "i1")
    rig.fail("web", "i1", 3)  # paged
    await rig.alerts.silence("web", 3600, "", "alice")
    rig.fail("web", "i2", 3)  # silenced
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i1", outcome="resolved"))
    rig.bus.publish(ev.IncidentClosed(service="web", incident="i2", outcome="resolved"))
    assert [(e.incident, e.resolves) for e in rig.out] == [("i1", False), ("i1", True)]  # the page closes


async def test_delivery_stops_when_cancelled_even_as_a_new_message_wakes_its_channel(tmp_path: Path) -> None:
    # Python 3.11's wait_for lost a cancellation that arrived together with the wake-up: the channel's
    # task then went on retrying and hasupd did not stop while an endpoint was down.
    for step in range(24):
        rig = DeliveryRig(tmp_path / str(step), FakeMailer(sessions=["down"] * 100))
        rig.delivery._retry = (30.0, 30.0)  # the channel sleeps in its backoff
        runner = asyncio.get_running_loop().create_task(rig.delivery.run())
        rig.delivery.submit(entry(1, service="web"))
        records = rig.records
        await rig.until(lambda: any(isinstance(r, ev.AlertFailed) for r in records))  # noqa: B023
        worker = rig.delivery._workers["ops"]
        rig.delivery._wake["ops"].set()
        for _ in range(step % 6):
            await asyncio.sleep(0)
        runner.cancel()  # what stopping hasupd does
        await asyncio.wait({runner}, timeout=2)  # (does not pass a cancellation on, unlike await)
        lost = not worker.done()
        if lost:  # clean up: a second cancellation lands in the backoff wait
            worker.cancel()
            await asyncio.wait({runner}, timeout=2)
        assert not lost, f"the channel's task outlived the cancellation (step {step})"
        assert runner.cancelled()
