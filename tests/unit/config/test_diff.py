"""The one reload plan (hasupd.config.diff): every kind of change to services, backup jobs and alert
channels, the empty plan, and the text ``hasupctl reload --dry-run`` prints."""

from __future__ import annotations

from dataclasses import replace

from hasupd.cli.ctl import print_reload
from hasupd.config.diff import Changes, plan_reload
from hasupd.config.model import (
    AlertChannel,
    BackupJobConfig,
    Config,
    DaemonConfig,
    EmailChannel,
    LongTerm,
    RepositoryConfig,
    ServiceConfig,
    SmtpConfig,
)


def service(name: str, **fields: object) -> ServiceConfig:
    return ServiceConfig(name=name, command=("/bin/sleep", "1000"), **fields)  # type: ignore[arg-type]


def job(name: str, **fields: object) -> BackupJobConfig:
    settings: dict[str, object] = {"repository": "hot", "paths": ("/srv",), **fields}
    return BackupJobConfig(name=name, **settings)  # type: ignore[arg-type]


def channel(name: str, port: int = 25, **fields: object) -> AlertChannel:
    email = EmailChannel(smtp=SmtpConfig(port=port), from_addr="hasupd@x", to=("ops@x",))
    return AlertChannel(name=name, email=email, **fields)  # type: ignore[arg-type]


REPOS = (
    RepositoryConfig(name="hot", url="/srv/hot", password_file="/etc/pw"),
    RepositoryConfig(name="cold", url="rest:http://127.0.0.1:1/", password_file="/etc/pw"),
)


def config(
    services: tuple[ServiceConfig, ...] = (),
    jobs: tuple[BackupJobConfig, ...] = (),
    channels: tuple[AlertChannel, ...] = (),
    repos: tuple[RepositoryConfig, ...] = REPOS,
) -> Config:
    return Config(
        config_dir="/etc/hasupd",
        daemon=DaemonConfig(alerts=channels, repositories=repos),
        services=services,
        backups=jobs,
    )


OLD = config(
    services=(service("db"), service("gone"), service("tuned"), service("web")),
    jobs=(job("db-data"), job("logs"), job("old")),
    channels=(channel("ops"), channel("pager"), channel("retired")),
)


def test_no_change_is_an_empty_plan_that_keeps_every_service() -> None:
    plan = plan_reload(OLD, OLD)
    assert plan.empty
    assert plan.jobs == Changes() and plan.channels == Changes()
    assert plan.describe() == ["keep    db", "keep    gone", "keep    tuned", "keep    web"]
    assert plan_reload(config(), config()).describe() == []


def test_every_kind_of_service_change() -> None:
    new = replace(
        OLD,
        services=(
            service("db"),
            service("fresh"),
            service("tuned", restart_sec=5.0),
            ServiceConfig(name="web", command=("/bin/sleep", "2000")),
        ),
    )
    plan = plan_reload(OLD, new).services
    assert [s.name for s in plan.added] == ["fresh"]
    assert plan.removed == ("gone",)
    assert [s.name for s in plan.changed] == ["web"]  # the program changed: restart
    assert [s.name for s in plan.updated] == ["tuned"]  # only how hasupd treats it: in place
    assert plan.unchanged == ("db",)
    assert plan.describe() == [
        "start   fresh (new)",
        "stop    gone (removed)",
        "restart web (changed: command)",
        "update  tuned in place (changed: restart_sec)",
        "keep    db",
    ]
    assert not plan.empty


def test_every_kind_of_backup_job_change() -> None:
    new = replace(OLD, backups=(job("db-data", schedule="30 4 * * *"), job("logs"), job("new")))
    plan = plan_reload(OLD, new)
    assert plan.jobs == Changes(added=("new",), removed=("old",), changed=(("db-data", ("schedule",)),))
    assert plan.services.empty and plan.channels.empty and not plan.empty
    assert plan.jobs.describe("backup job") == [
        "add     backup job new (new)",
        "remove  backup job old (removed)",
        "change  backup job db-data (changed: schedule)",
    ]


def test_a_job_changes_when_a_repository_it_uses_changes() -> None:
    old = config(
        jobs=(job("a"), job("b", repository="cold"), job("c", long_term=LongTerm(repository="cold")))
    )
    moved = (REPOS[0], replace(REPOS[1], url="rest:http://127.0.0.1:2/"))
    plan = plan_reload(old, replace(old, daemon=replace(old.daemon, repositories=moved)))
    assert plan.jobs.changed == (("b", ("repository cold",)), ("c", ("repository cold",)))
    assert plan.jobs.added == () and plan.jobs.removed == ()


def test_every_kind_of_alert_channel_change() -> None:
    new = replace(
        OLD,
        daemon=replace(
            OLD.daemon, alerts=(channel("ops", port=587), channel("pager", on_crash=True), channel("sms"))
        ),
    )
    plan = plan_reload(OLD, new)
    assert plan.channels == Changes(
        added=("sms",), removed=("retired",), changed=(("ops", ("email",)), ("pager", ("on_crash",)))
    )
    assert plan.channels.changed_names == ("ops", "pager")
    assert plan.services.empty and plan.jobs.empty


def test_the_whole_plan_as_text_and_json() -> None:
    new = config(
        services=(service("db"), service("web", restart_sec=3.0)),
        jobs=(job("db-data", schedule="@hourly"),),
        channels=(channel("ops", port=587),),
    )
    old = config(services=(service("db"), service("web")), jobs=(job("db-data"),), channels=(channel("ops"),))
    plan = plan_reload(old, new)
    assert plan.describe() == [
        "update  web in place (changed: restart_sec)",
        "keep    db",
        "change  backup job db-data (changed: schedule)",
        "change  alert channel ops (changed: email)",
    ]
    assert plan.as_json() == {
        "services": {
            "start": [],
            "stop": [],
            "restart": {},
            "update": {"web": ["restart_sec"]},
            "keep": ["db"],
        },
        "backup_jobs": {"add": [], "remove": [], "change": {"db-data": ["schedule"]}},
        "alert_channels": {"add": [], "remove": [], "change": {"ops": ["email"]}},
    }


def test_the_dry_run_text(capsys: object) -> None:
    old = config(jobs=(job("db-data"),))
    plan = plan_reload(old, config(jobs=(job("db-data", schedule="@hourly"),), channels=(channel("ops"),)))
    print_reload({"dry_run": True, "plan": plan.describe()})
    print_reload({"dry_run": False, "plan": []})
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out == (
        "plan (dry run, nothing changed):\n"
        "  change  backup job db-data (changed: schedule)\n"
        "  add     alert channel ops (new)\n"
        "applied:\n"
        "  nothing to do\n"
    )
