"""Alert rules on a fake clock (hasupd.alerts.rules): baselines from seeded history in a real sqlite
store, one incident per burst, resolved when it ends; new errors, restarts, a quiet service."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hasupd import events as ev
from hasupd.alerts.rules import Rules
from hasupd.config.model import AlertRule, Baseline, Config, DaemonConfig, RuleKind, ServiceConfig
from hasupd.observe.error_store import HOUR, RESTART_KEY, ErrorStore
from tests.unit.fakes import FakeClock, Recorder

WALL0 = 1_796_000_400.0  # the start of an hour (baselines go by the hour of the day)
GROUP = "0123456789ab"


class Source:
    def __init__(self, rules: Sequence[AlertRule], services: Sequence[str] = ("app",)) -> None:
        self.config = Config(
            config_dir="/etc/hasupd",
            daemon=DaemonConfig(rules=tuple(rules)),
            services=tuple(ServiceConfig(name=n, command=("/bin/true",)) for n in services),
        )


class Rig:
    def __init__(
        self, tmp_path: Path, rules: Sequence[AlertRule], services: Sequence[str] = ("app",)
    ) -> None:
        self.clock = FakeClock()
        self.bus = ev.EventBus()
        self.recorder = Recorder(self.bus)
        self.store = ErrorStore(tmp_path)
        self.source = Source(rules, services)
        self.rules = Rules(self.bus, self.source, self.clock, self.store, wall=self.wall)
        self.bus.publish(ev.DaemonReady(services=len(services)))

    def wall(self) -> float:
        return WALL0 + self.clock.time() - 1000.0

    def errors(self, n: int, group: str = GROUP, service: str = "app") -> None:
        self.bus.publish(ev.ErrorsSeen(service=service, group=group, count=n))

    def per_minute(self, n: int, minutes: int) -> None:
        """``n`` errors every minute for ``minutes`` minutes (as batches of the scanner would say)."""
        for _ in range(minutes):
            self.errors(n)
            self.clock.advance(60)

    def fired(self) -> list[ev.RuleFired]:
        return [e for e in self.recorder.events if isinstance(e, ev.RuleFired)]

    def resolved(self) -> list[ev.RuleResolved]:
        return [e for e in self.recorder.events if isinstance(e, ev.RuleResolved)]

    def incidents(self) -> tuple[list[ev.IncidentOpened], list[ev.IncidentClosed]]:
        opened = [e for e in self.recorder.events if isinstance(e, ev.IncidentOpened)]
        closed = [e for e in self.recorder.events if isinstance(e, ev.IncidentClosed)]
        return opened, closed


def seed_same_hour(store: ErrorStore, key: str, wall: float, per_hour: int, days: int) -> None:
    """History: ``per_hour`` at this hour of the day and the next two on each of the past ``days`` days,
    and a quiet rest of the day (so a moving average would be far lower)."""
    hour = int(wall // HOUR)
    for day in range(1, days + 1):
        for offset in range(3):
            store.count(key, (hour + offset - 24 * day) * HOUR + 10, per_hour)


def test_a_burst_above_5x_the_same_hour_baseline_fires_once_lasts_and_resolves(tmp_path: Path) -> None:
    rule = AlertRule(
        name="burst",
        kind=RuleKind.ERROR_RATE,
        window_sec=600,
        above=10,
        factor=5,
        baseline=Baseline.SAME_HOUR,
    )
    rig = Rig(tmp_path, [rule])
    # Usually 60 an hour at this hour (1 a minute): 10 per 10-minute window; 5 x = 50.
    seed_same_hour(rig.store, GROUP, rig.wall(), per_hour=60, days=7)
    rig.per_minute(1, 30)  # the usual: nothing
    rig.per_minute(3, 15)  # three times the usual: above `above`, not above 5 x the baseline
    assert rig.fired() == []
    rig.per_minute(20, 20)  # a burst: 20 a minute for 20 minutes
    (fired,) = rig.fired()
    assert fired.kind == "error_rate" and fired.group == GROUP and fired.service == "app"
    assert fired.count is not None and fired.count > 50
    assert fired.threshold == 50 and fired.baseline == 10
    assert "5 x the baseline 10.00: same_hour over 7 days" in fired.detail
    opened, closed = rig.incidents()
    assert [o.incident for o in opened] == [fired.incident] and closed == []  # one incident all along
    rig.per_minute(1, 5)  # the burst ends; most of its errors are still in the window
    assert rig.resolved() == []
    rig.per_minute(1, 5)  # ... until no more than 5 x the usual are
    (resolved,) = rig.resolved()
    assert resolved.incident == fired.incident
    opened, closed = rig.incidents()
    assert len(opened) == 1 and [(c.incident, c.outcome) for c in closed] == [(fired.incident, "resolved")]
    # A second burst is a second incident.
    rig.per_minute(30, 3)
    assert len(rig.fired()) == 2 and rig.fired()[1].incident != fired.incident


def test_resolves_by_timer_when_errors_stop_altogether(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [AlertRule(name="r", kind=RuleKind.ERROR_RATE, window_sec=300, above=5)])
    rig.errors(10)
    assert len(rig.fired()) == 1
    rig.clock.advance(299)
    assert rig.resolved() == []
    rig.clock.advance(2)  # no event at all: the timer counts again when the 10 leave the window
    assert len(rig.resolved()) == 1


def test_moving_average_baseline(tmp_path: Path) -> None:
    rule = AlertRule(
        name="r",
        kind=RuleKind.ERROR_RATE,
        window_sec=3600,
        factor=3,
        baseline=Baseline.MOVING_AVERAGE,
        days=2,
    )
    rig = Rig(tmp_path, [rule])
    hour = int(rig.wall() // HOUR)
    for h in range(hour - 48, hour):
        rig.store.count(GROUP, h * HOUR, 10)  # 10 an hour for two days
    rig.errors(30)
    assert rig.fired() == []
    rig.errors(1)
    (fired,) = rig.fired()
    assert fired.baseline == 10 and fired.threshold == 30 and fired.count == 31


def test_new_error_fires_once_per_group_and_resolves_when_it_stays_away(tmp_path: Path) -> None:
    rule = AlertRule(name="new", kind=RuleKind.NEW_ERROR, window_sec=600)
    rig = Rig(tmp_path, [rule])
    new = ev.ErrorGroupNew(service="app", group=GROUP, kind="line", pattern="ERROR <n>", sample="ERROR 7")
    rig.bus.publish(new)
    rig.errors(1)
    (fired,) = rig.fired()
    assert fired.kind == "new_error" and fired.sample == "ERROR 7" and "ERROR <n>" in fired.detail
    rig.clock.advance(500)
    rig.errors(3)  # comes back: still the same incident
    rig.clock.advance(500)
    assert rig.resolved() == [] and len(rig.fired()) == 1
    rig.clock.advance(101)
    assert [r.incident for r in rig.resolved()] == [fired.incident]


def test_rules_apply_to_their_services_and_group_only(tmp_path: Path) -> None:
    rules = [
        AlertRule(name="web-only", kind=RuleKind.ERROR_RATE, window_sec=60, above=1, services=("web",)),
        AlertRule(name="one-group", kind=RuleKind.ERROR_RATE, window_sec=60, above=1, group="ffffffffffff"),
    ]
    rig = Rig(tmp_path, rules, services=("app", "web"))
    rig.errors(5, service="app")
    assert rig.fired() == []
    rig.errors(5, service="web")
    assert [f.rule for f in rig.fired()] == ["web-only"]
    rig.errors(5, group="ffffffffffff", service="app")
    assert [f.rule for f in rig.fired()] == ["web-only", "one-group"]


def test_restarts_per_hour_above_their_baseline(tmp_path: Path) -> None:
    rule = AlertRule(name="restarts", kind=RuleKind.RESTART_RATE, window_sec=3600, factor=2, above=2)
    rig = Rig(tmp_path, [rule])
    seed_same_hour(rig.store, RESTART_KEY + "app", rig.wall(), per_hour=3, days=7)

    def restart() -> None:
        rig.bus.publish(
            ev.ServiceRestartScheduled(
                service="app", delay_sec=0.1, reason="on-failure", restarts=1, result="exit-code"
            )
        )
        rig.clock.advance(60)

    for _ in range(6):
        restart()
    assert rig.fired() == []  # 6 = 2 x the usual 3
    restart()
    (fired,) = rig.fired()
    assert fired.kind == "restart_rate" and fired.count == 7 and fired.group is None
    rig.clock.advance(3600)
    assert len(rig.resolved()) == 1


def test_a_quiet_service_fires_once_and_resolves_on_its_next_line(tmp_path: Path) -> None:
    rule = AlertRule(name="quiet", kind=RuleKind.QUIET, window_sec=1800, services=("worker",))
    rig = Rig(tmp_path, [rule], services=("app", "worker"))
    for _ in range(10):  # talking every 10 minutes: never quiet for 30
        rig.clock.advance(600)
        rig.bus.publish(ev.OutputSeen(service="worker", lines=3))
    assert rig.fired() == []
    assert len(rig.clock.pending()) == 1  # ONE timer, however much it talks
    rig.clock.advance(1799)
    assert rig.fired() == []
    rig.clock.advance(2)
    (fired,) = rig.fired()
    assert fired.service == "worker" and fired.kind == "quiet" and "30m" in fired.detail
    rig.clock.advance(7200)
    assert len(rig.fired()) == 1  # one incident while it stays quiet
    rig.bus.publish(ev.ServiceStatusText(service="worker", status="working"))
    assert [r.incident for r in rig.resolved()] == [fired.incident]


def test_a_removed_rule_resolves_its_incident(tmp_path: Path) -> None:
    rig = Rig(tmp_path, [AlertRule(name="r", kind=RuleKind.ERROR_RATE, window_sec=600, above=1)])
    rig.errors(5)
    assert len(rig.fired()) == 1
    rig.source.config = Config(config_dir="/etc/hasupd", services=rig.source.config.services)
    rig.bus.publish(ev.ConfigApplied())
    assert len(rig.resolved()) == 1
    assert "removed" in rig.resolved()[0].detail
