"""load_config: config folders written into tmp_path, checked issue by issue (file:line:col: key: message)."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import textwrap
from pathlib import Path

import pytest

from hasupd.config.load import ConfigError, ConfigIssue, load_config
from hasupd.config.model import (
    AccessConfig,
    AlertChannel,
    BackupJobConfig,
    CheckSpec,
    Config,
    ContainerEngine,
    ContainerSpec,
    DaemonConfig,
    DrillSpec,
    EmailChannel,
    HealthProbe,
    HeartbeatFile,
    Keep,
    Limits,
    LogConfig,
    LogFormat,
    LogTarget,
    LongTerm,
    MetricsConfig,
    ProbeKind,
    RecoveryAction,
    RecoveryKind,
    RepositoryConfig,
    ServiceConfig,
    SmtpConfig,
    SocketSpec,
    StartLimit,
    TlsMode,
)
from hasupd.states import OutputMode, RestartMode, ServiceType

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def write(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: YAML text}`` (dedented) below ``root``; return ``root``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def issues(root: Path) -> list[str]:
    """Return the issues load_config raises for ``root``, with the "ROOT/" prefix of file names removed."""
    with pytest.raises(ConfigError) as info:
        load_config(root)
    return [str(issue).removeprefix(f"{root}/") for issue in info.value.issues]


def service_issues(tmp_path: Path, text: str) -> list[str]:
    """Return the issues of a folder holding only services.d/a.yaml with ``text``."""
    return issues(write(tmp_path, {"services.d/a.yaml": text}))


# --------------------------------------------------------------------------- error reporting


def test_three_errors_in_two_files_are_all_reported_in_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services.d/b.yaml": """
                command: [true]
                kill_sgnal: SIGTERM
            """,
            "services.d/a.yaml": """
                command: [true]
                restart: sometimes
                timeout_stop_sec: 10 parsecs
            """,
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    a, b = f"{tmp_path}/services.d/a.yaml", f"{tmp_path}/services.d/b.yaml"
    assert [str(issue) for issue in info.value.issues] == [
        f"{a}:2:10: restart: invalid value 'sometimes': "
        "expected one of no, always, on-success, on-failure, on-abnormal, on-watchdog",
        f"{a}:3:19: timeout_stop_sec: invalid duration '10 parsecs': unknown unit 'parsecs'; "
        "expected a number with a unit (us, ms, s, min, h, d, w, M, y) such as 250ms, 30s, 5min, 1h 30min",
        f"{b}:2:1: kill_sgnal: unknown key 'kill_sgnal', did you mean 'kill_signal'?",
    ]
    assert info.value.issues[2] == ConfigIssue(
        b, 2, 1, "kill_sgnal", "unknown key 'kill_sgnal', did you mean 'kill_signal'?"
    )
    assert str(info.value) == "\n".join(str(issue) for issue in info.value.issues)


def test_issue_without_key_has_no_key_part() -> None:
    assert str(ConfigIssue("/etc/hasupd/x.yaml", 1, 1, "", "boom")) == "/etc/hasupd/x.yaml:1:1: boom"
    assert str(ConfigIssue("f.yaml", 3, 7, "a.b", "boom")) == "f.yaml:3:7: a.b: boom"


def test_unknown_keys_with_and_without_hint(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        restar: always
        start_limit: {burst: 3, intervall: 5s, colour: red}
        qqqqqqq: 1
        health:
          - {tcp: "127.0.0.1:1", intervl_sec: 5s}
        """,
    ) == [
        "services.d/a.yaml:2:1: restar: unknown key 'restar', did you mean 'restart'?",
        "services.d/a.yaml:3:25: start_limit.intervall: "
        "unknown key 'intervall', did you mean 'interval_sec'?",
        "services.d/a.yaml:3:40: start_limit.colour: "
        "unknown key 'colour'; expected one of: burst, interval_sec",
        "services.d/a.yaml:4:1: qqqqqqq: unknown key 'qqqqqqq'",
        "services.d/a.yaml:6:26: health.0.intervl_sec: "
        "unknown key 'intervl_sec', did you mean 'interval_sec'?",
    ]


def test_duplicate_keys_are_reported_at_the_second_one(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        restart: always
        health:
          - tcp: "127.0.0.1:1"
            failures: 3
            failures: 4
        restart: "no"
        """,
    ) == [
        "services.d/a.yaml:6:5: health.0.failures: duplicate key 'failures' (first given at 5:5)",
        "services.d/a.yaml:7:1: restart: duplicate key 'restart' (first given at 2:1)",
    ]


def test_merge_keys_are_resolved_and_explicit_keys_win(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services.d/a.yaml": """
                command: [true]
                health:
                  - &probe {tcp: "127.0.0.1:1", failures: 5, interval_sec: 1s}
                  - <<: *probe
                    failures: 2
                  - <<: [{tcp: "127.0.0.1:2", timeout_sec: 3s}, *probe]
            """
        },
    )
    first, second, third = load_config(tmp_path).services[0].health
    assert first == HealthProbe(kind=ProbeKind.TCP, target="127.0.0.1:1", failures=5, interval_sec=1.0)
    assert second == HealthProbe(kind=ProbeKind.TCP, target="127.0.0.1:1", failures=2, interval_sec=1.0)
    assert third == HealthProbe(
        kind=ProbeKind.TCP, target="127.0.0.1:2", failures=5, interval_sec=1.0, timeout_sec=3.0
    )


def test_wrong_types(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: {prog: true}
        after: db
        environment_files: [{a: 1}]
        instances: "2"
        start_limit: [5]
        environment: {A: [1], B: ~}
        output:
        limits: {cpu_percent: lots}
        """,
    ) == [
        "services.d/a.yaml:1:10: command: expected a list of strings or a command line, got a mapping",
        "services.d/a.yaml:2:8: after: expected a list of service names, got a string",
        "services.d/a.yaml:3:21: environment_files.0: expected a string, got a mapping",
        "services.d/a.yaml:4:12: instances: expected an integer from 1 to 1000, got a string",
        "services.d/a.yaml:5:14: start_limit: expected a mapping, got a list",
        "services.d/a.yaml:6:18: environment.A: expected a string, got a list",
        "services.d/a.yaml:6:26: environment.B: expected a string, got null",
        "services.d/a.yaml:7:8: output: expected a string, got null",
        "services.d/a.yaml:8:23: limits.cpu_percent: expected a number > 0 and <= 100000, got a string",
    ]


def test_bad_durations_sizes_signals_and_enums(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        restart_sec: soon
        watchdog_sec: 0s
        limits: {memory: 12X}
        kill_signal: SIGFOO
        type: forking
        """,
    ) == [
        "services.d/a.yaml:2:14: restart_sec: invalid duration 'soon': expected a number with a unit "
        "(us, ms, s, min, h, d, w, M, y) such as 250ms, 30s, 5min, 1h 30min",
        "services.d/a.yaml:3:15: watchdog_sec: invalid duration '0s': must be greater than 0",
        "services.d/a.yaml:4:18: limits.memory: invalid size '12X': expected a number of bytes with an "
        "optional suffix K, M, G, T, P or E (powers of 1024) such as 512K",
        "services.d/a.yaml:5:14: kill_signal: invalid signal 'SIGFOO': expected one of "
        + ", ".join(s.name for s in sorted(signal.Signals, key=lambda s: s.value))
        + " or a number",
        "services.d/a.yaml:6:7: type: invalid value 'forking': expected one of simple, notify, oneshot",
    ]


def test_positive_integers_and_restart_delays(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        instances: 0
        start_limit: {burst: -1}
        health: [{tcp: "h:1", failures: 0}]
        restart_sec: 1min
        restart_max_delay_sec: 10s
        """,
    ) == [
        "services.d/a.yaml:2:12: instances: expected an integer from 1 to 1000, got 0",
        "services.d/a.yaml:3:22: start_limit.burst: expected an integer from 1 to 1000000, got -1",
        "services.d/a.yaml:4:33: health.0.failures: expected an integer from 1 to 1000, got 0",
        "services.d/a.yaml:6:24: restart_max_delay_sec: must be >= restart_sec (60s)",
    ]


def test_restart_sec_above_the_default_max_delay(tmp_path: Path) -> None:
    assert service_issues(tmp_path, "command: [true]\nrestart_sec: 1min\n") == [
        "services.d/a.yaml:2:14: restart_sec: larger than restart_max_delay_sec (30s by default); "
        "set restart_max_delay_sec too",
    ]


def test_unknown_user_and_group(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        user: no-such-user-hasupd
        group: no-such-group-hasupd
        """,
    ) == [
        "services.d/a.yaml:2:7: user: unknown user 'no-such-user-hasupd'",
        "services.d/a.yaml:3:8: group: unknown group 'no-such-group-hasupd'",
    ]


def test_missing_executables(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o644)
    write(
        tmp_path,
        {
            "services.d/a.yaml": "command: [no-such-program-hasupd, --flag]\n",
            "services.d/b.yaml": "command: /no/such/program --flag\n",
            "services.d/c.yaml": f"command: [{tool}]\n",
            "services.d/d.yaml": f"command: [tool]\nenvironment: {{PATH: {tool.parent}}}\n",
            "services.d/e.yaml": "command: [bin/tool]\n",
            "services.d/f.yaml": "command: [sh]\nenvironment: {PATH: /nonexistent}\n",
        },
    )
    found = issues(tmp_path)
    assert found[:2] == [
        "services.d/a.yaml:1:11: command.0: "
        f"executable 'no-such-program-hasupd' not found on PATH {DEFAULT_PATH}",
        "services.d/b.yaml:1:10: command: executable '/no/such/program' not found",
    ]
    assert found[2:] == [
        f"services.d/c.yaml:1:11: command.0: '{tool}' is not executable",
        f"services.d/d.yaml:1:11: command.0: executable 'tool' not found on PATH {tool.parent}",
        "services.d/e.yaml:1:11: command.0: "
        "relative path 'bin/tool': use an absolute path or a name on the PATH",
        "services.d/f.yaml:1:11: command.0: executable 'sh' not found on PATH /nonexistent",
    ]


def test_command_and_container(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services.d/a.yaml": "description: nothing to run\n",
            "services.d/b.yaml": "command: [true]\ncontainer: {image: x}\n",
            "services.d/c.yaml": "command: []\n",
            "services.d/d.yaml": 'command: "unterminated \'quote"\n',
            "services.d/e.yaml": "container: {engine: lxc}\n",
        },
    )
    assert issues(tmp_path) == [
        "services.d/a.yaml:1:1: command or container is required",
        "services.d/b.yaml:2:1: container: command and container are mutually exclusive",
        "services.d/c.yaml:1:10: command: the command is empty",
        "services.d/d.yaml:1:10: command: cannot split the command line: No closing quotation",
        "services.d/e.yaml:1:12: container.image: required key is missing",
        "services.d/e.yaml:1:21: container.engine: invalid value 'lxc': expected one of podman, docker",
    ]


def test_paths_addresses_and_probes(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        working_directory: srv/app
        environment_files: [/etc/default/a, -/etc/default/b, etc/c]
        heartbeat_file: {max_age_sec: 5s}
        sockets:
          - {listen: "127.0.0.1:80"}
          - {listen: "127.0.0.1:0"}
          - {listen: "::1:80"}
          - {listen: "[::1]:80"}
          - {listen: "[nope]:80"}
          - {listen: /run/a.sock}
          - {listen: relative.sock}
        health:
          - {http: "ftp://host/"}
          - {interval_sec: 1s}
          - {exec: [true], tcp: "h:1"}
        on_failure: [reboot, {exec: [true], restore: x}]
        """,
    ) == [
        "services.d/a.yaml:2:20: working_directory: expected an absolute path, got 'srv/app'",
        "services.d/a.yaml:3:54: environment_files.2: "
        "expected an absolute path (with an optional leading '-'), got 'etc/c'",
        "services.d/a.yaml:4:17: heartbeat_file.path: required key is missing",
        "services.d/a.yaml:7:14: sockets.1.listen: invalid port '0' in '127.0.0.1:0': expected 1 to 65535",
        "services.d/a.yaml:8:14: sockets.2.listen: invalid address '::1:80': "
        "write an IPv6 address in brackets, as in [::1]:8080",
        "services.d/a.yaml:10:14: sockets.4.listen: invalid address '[nope]:80': "
        "[nope] is not an IPv6 address in brackets",
        "services.d/a.yaml:12:14: sockets.6.listen: invalid address 'relative.sock': "
        'expected "host:port", "[v6]:port" or an absolute unix socket path',
        "services.d/a.yaml:14:12: health.0.http: invalid URL 'ftp://host/': "
        "expected http://host[:port]/path or https://...",
        "services.d/a.yaml:15:5: health.1: a health probe needs one of http, tcp, exec",
        "services.d/a.yaml:16:20: health.2.tcp: a health probe takes only one of http, tcp, exec",
        "services.d/a.yaml:17:14: on_failure.0: invalid recovery action 'reboot': "
        "expected rollback_config, {exec: [argv]} or {restore: JOB}",
        "services.d/a.yaml:17:37: on_failure.1.restore: a recovery action takes only one of exec, restore",
        "services.d/a.yaml:17:46: on_failure.1.restore: unknown backup job 'x'",
    ]


def test_after_unknown_service_and_cycles(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services.d/a.yaml": "command: [true]\nafter: [b]\n",
            "services.d/b.yaml": "command: [true]\nafter: [ghost, c]\n",
            "services.d/c.yaml": "command: [true]\nafter: [a]\n",
            "services.d/d.yaml": "command: [true]\nafter: [a, d]\n",
            "services.d/e.yaml": "command: [true]\nafter: [a, Bad]\n",
        },
    )
    assert issues(tmp_path) == [
        "services.d/a.yaml:2:9: after.0: dependency cycle: a -> b -> c -> a",
        "services.d/b.yaml:2:9: after.0: unknown service 'ghost'",
        "services.d/b.yaml:2:16: after.1: dependency cycle: b -> c -> a -> b",
        "services.d/c.yaml:2:9: after.0: dependency cycle: c -> a -> b -> c",
        "services.d/d.yaml:2:12: after.1: dependency cycle: d -> d",
        "services.d/e.yaml:2:12: after.1: invalid name 'Bad': names match [a-z0-9][a-z0-9_.-]*",
    ]


def test_yaml_syntax_error_does_not_hide_other_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": "log: {target: journal\n",
            "services.d/a.yaml": "command: [true\nrestart: always\n",
            "services.d/b.yaml": "command: [true]\nrestart: sometimes\nalerts: [ops]\n",
            "services.d/c.yaml": "command: [true]\n---\ncommand: [false]\n",
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:2:1: YAML syntax error: expected ',' or '}', but got '<stream end>' "
        "(while parsing a flow mapping started at 1:6)",
        "services.d/a.yaml:2:8: YAML syntax error: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence started at 1:10)",
        "services.d/b.yaml:2:10: restart: invalid value 'sometimes': "
        "expected one of no, always, on-success, on-failure, on-abnormal, on-watchdog",
        "services.d/c.yaml:2:1: YAML syntax error: but found another document "
        "(expected a single document in the stream started at 1:1)",
    ]


def test_bytes_that_are_not_text(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_bytes(b'command: [true]\ndescription: "\xff"\n')
    (tmp_path / "services.d" / "b.yaml").write_bytes(b'command: [true]\ndescription: "ok \x07"\n')
    assert issues(tmp_path) == [
        "services.d/a.yaml:2:15: not valid utf-8 text: byte #xff: invalid start byte",
        "services.d/b.yaml:2:18: YAML syntax error: character #x0007 is not allowed",
    ]


def test_file_level_problems_and_ignored_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services.d/empty.yaml": "# nothing yet\n",
            "services.d/Web.yaml": "command: [true]\n",
            "services.d/list.yaml": "- command\n",
            "services.d/web.yaml.example": "nonsense: [",
            "services.d/web.yaml~": "nonsense: [",
            "services.d/.web.yaml.swp": "nonsense: [",
            "services.d/.hidden.yaml": "nonsense: [",
            "services.d/notes.txt": "nonsense: [",
            "backups.d/nothing.yaml": "",
        },
    )
    (tmp_path / "services.d" / "folder.yaml").mkdir()
    assert issues(tmp_path) == [
        "backups.d/nothing.yaml:1:1: empty backup job file: repository and paths are required",
        "services.d/Web.yaml:1:1: invalid service name 'Web' (the file name without .yaml): "
        "names match [a-z0-9][a-z0-9_.-]*",
        "services.d/empty.yaml:1:1: empty service file: command or container is required",
        "services.d/list.yaml:1:1: expected a mapping, got a list",
    ]


def test_missing_config_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope")
    assert [str(issue) for issue in info.value.issues] == [
        f"{tmp_path}/nope:1:1: the config directory does not exist"
    ]


def test_empty_config_dir_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path) == Config(config_dir=str(tmp_path))


def test_references_between_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
                alerts:
                  ops: {email: {from: a@example.org, to: [b@example.org]}}
                backups:
                  repositories:
                    hot: {url: /srv/restic, password_file: /etc/p}
            """,
            "services.d/web.yaml": """
                command: [true]
                alerts: [ops, opz]
                on_failure: [{restore: web-data}, {restore: nothing}]
            """,
            "backups.d/web-data.yaml": """
                repository: hott
                paths: [/srv]
                quiesce: [web, db]
                long_term: {repository: hot}
            """,
            "backups.d/other.yaml": """
                repository: hot
                paths: [/srv]
                long_term: {repository: hot}
            """,
        },
    )
    assert issues(tmp_path) == [
        "backups.d/other.yaml:3:25: long_term.repository: "
        "must differ from repository: long-term copies go elsewhere",
        "backups.d/web-data.yaml:1:13: repository: unknown repository 'hott', did you mean 'hot'?",
        "backups.d/web-data.yaml:3:16: quiesce.1: unknown service 'db'",
        "services.d/web.yaml:2:15: alerts.1: unknown alert channel 'opz', did you mean 'ops'?",
        "services.d/web.yaml:3:45: on_failure.1.restore: unknown backup job 'nothing'",
    ]


def test_backup_job_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": "backups: {repositories: {hot: {url: /r, password_file: /p}}}\n",
            "backups.d/job.yaml": """
                repository: hot
                paths: []
                keep: {daily: 0, weekly: -1, monthly: yes, within: 2 years, last: 1}
                schedule: every day
                check: {read_data_subset: 13/12}
                before: [[], "dump --all"]
                max_age: 0
            """,
        },
    )
    assert issues(tmp_path) == [
        "backups.d/job.yaml:2:8: paths: expected a list of absolute paths, got an empty list",
        "backups.d/job.yaml:3:15: keep.daily: expected an integer from 1 to 1000000, got 0",
        "backups.d/job.yaml:3:26: keep.weekly: expected an integer from 1 to 1000000, got -1",
        "backups.d/job.yaml:3:39: keep.monthly: expected an integer from 1 to 1000000, got a boolean",
        "backups.d/job.yaml:3:52: keep.within: invalid duration '2 years': "
        "expected restic's form such as 7d, 2y5m7d3h (y m d h)",
        "backups.d/job.yaml:4:11: schedule: invalid schedule 'every day': expected @hourly, @daily, "
        "@weekly, @monthly, @yearly or a cron expression of 5 fields "
        "(minute hour day-of-month month day-of-week)",
        "backups.d/job.yaml:5:27: check.read_data_subset: invalid read_data_subset '13/12': "
        "expected K/N with 1 <= K <= N, such as 1/12",
        "backups.d/job.yaml:6:10: before.0: the command is empty",
        "backups.d/job.yaml:7:10: max_age: invalid duration '0': must be greater than 0",
    ]


def test_daemon_file_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
                state_dir: var/lib
                log: {target: syslog}
                metrics: {listen: "localhost"}
                alerts:
                  Ops: {email: {from: a@example.org, to: [b@example.org]}}
                  ops:
                    email:
                      smtp: {port: 70000, tls: ssl, username: u}
                      from: nobody
                      to: []
                backups:
                  repositories:
                    hot: {url: /r}
            """
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:1:12: state_dir: expected an absolute path, got 'var/lib'",
        "hasupd.yaml:2:15: log.target: invalid value 'syslog': expected one of auto, journal, stderr",
        "hasupd.yaml:3:19: metrics.listen: "
        'invalid address \'localhost\': expected "host:port" or "[v6]:port"',
        "hasupd.yaml:5:3: alerts.Ops: invalid name 'Ops': names match [a-z0-9][a-z0-9_.-]*",
        "hasupd.yaml:8:20: alerts.ops.email.smtp.port: expected an integer from 1 to 65535, got 70000",
        "hasupd.yaml:8:32: alerts.ops.email.smtp.tls: "
        "invalid value 'ssl': expected one of none, starttls, tls",
        "hasupd.yaml:9:13: alerts.ops.email.from: invalid email address 'nobody'",
        "hasupd.yaml:10:11: alerts.ops.email.to: expected a list of email addresses, got an empty list",
        "hasupd.yaml:13:10: backups.repositories.hot.password_file: required key is missing",
    ]


def test_smtp_username_needs_password_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"hasupd.yaml": "alerts: {ops: {email: {smtp: {username: u}, from: a@b.org, to: [c@d.org]}}}\n"},
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:1:30: alerts.ops.email.smtp.password_file: required key is missing (username is given)",
    ]


# --------------------------------------------------------------------------- a valid config


def full_config(tmp_path: Path) -> Path:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return write(
        tmp_path,
        {
            "hasupd.yaml": """
                state_dir: /srv/state
                runtime_dir: /run/h
                log: {target: journal, format: text}
                metrics: {listen: "127.0.0.1:9464"}
                access:
                  read: [hasupd]
                  operate: [ops]
                  admin: [wheel]
                alerts:
                  ops:
                    email:
                      smtp:
                        host: mail.example.org
                        port: 587
                        tls: starttls
                        username: u
                        password_file: /etc/hasupd/smtp.pass
                        ca_file: /etc/ssl/ca.pem
                        timeout_sec: 10s
                      from: hasupd@example.org
                      to: [ops@example.org, "On call <oncall@example.org>"]
                    coalesce_sec: 5m
                    on_crash: true
                  audit:
                    email: {from: a@example.org, to: [b@example.org]}
                backups:
                  repositories:
                    hot: {url: /var/backups/restic, password_file: /etc/hasupd/restic.pass}
                    cold: {url: "s3:https://s3.example.org/bucket", password_file: /etc/hasupd/restic.pass,
                           environment_file: /etc/hasupd/s3.env}
            """,
            "services.d/web.yaml": f"""
                description: the web front
                command: /bin/sh -c 'exec sleep 100'
                type: notify
                user: {user}
                group: {group}
                working_directory: /srv/app
                environment: {{PORT: 8080, DEBUG: true, NAME: "web {{instance}}"}}
                environment_files: [/etc/default/app, -/etc/default/app.local]
                after: [db]
                instances: 2
                sockets:
                  - {{listen: "127.0.0.1:8080"}}
                  - {{listen: "[::1]:8080", name: v6}}
                  - {{listen: /run/a.sock}}
                restart: always
                restart_sec: 250ms
                restart_max_delay_sec: 1min
                start_limit: {{burst: 3, interval_sec: 30s}}
                timeout_start_sec: 1m 30s
                timeout_stop_sec: 5
                kill_signal: sigint
                watchdog_sec: 10s
                heartbeat_file: {{path: /run/app/alive, max_age_sec: 1m}}
                health:
                  - {{http: "http://127.0.0.1:8080/health", interval_sec: 5s, timeout_sec: 2s, failures: 4,
                     start_period_sec: 30s}}
                  - {{tcp: "127.0.0.1:5432"}}
                  - {{exec: [pg_isready, -q]}}
                limits: {{memory: 512M, cpu_percent: 90, cpu_window_sec: 2min}}
                output: file
                on_failure:
                  - {{exec: [/usr/local/bin/reset-app]}}
                  - {{restore: app-data}}
                  - rollback_config
                alerts: [ops]
            """,
            "services.d/db.yaml": """
                container:
                  engine: docker
                  image: docker.io/library/postgres:16
                  args: [-c, max_connections=50]
                  options: [--volume, "/srv/db:/var/lib/postgresql/data"]
                restart: no
                alerts: []
            """,
            "backups.d/app-data.yaml": """
                repository: hot
                paths: [/srv/app/data]
                exclude: ["*.tmp"]
                schedule: "@daily"
                randomized_delay_sec: 30m
                keep: {last: 3, hourly: 24, daily: 7, weekly: 4, monthly: 6, yearly: 1, within: 2y5m}
                before: [[/usr/local/bin/dump-db, /var/backups/db.sql], "/bin/sync -f /srv"]
                quiesce: [web]
                long_term: {repository: cold, schedule: "0 3 * * 0", keep: {monthly: 12, yearly: 5}}
                check: {schedule: "@weekly", read_data_subset: 1/12}
                drill: {schedule: "@monthly"}
                max_age: 26h
                prune_schedule: "@monthly"
            """,
        },
    )


def test_full_config_round_trips_to_the_model(tmp_path: Path) -> None:
    root = full_config(tmp_path)
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    smtp = SmtpConfig(
        host="mail.example.org",
        port=587,
        tls=TlsMode.STARTTLS,
        username="u",
        password_file="/etc/hasupd/smtp.pass",
        ca_file="/etc/ssl/ca.pem",
        timeout_sec=10.0,
    )
    expected = Config(
        config_dir=str(root),
        daemon=DaemonConfig(
            state_dir="/srv/state",
            runtime_dir="/run/h",
            log=LogConfig(target=LogTarget.JOURNAL, format=LogFormat.TEXT),
            metrics=MetricsConfig(listen="127.0.0.1:9464"),
            access=AccessConfig(read=("hasupd",), operate=("ops",), admin=("wheel",)),
            alerts=(
                AlertChannel(
                    name="audit",
                    email=EmailChannel(smtp=SmtpConfig(), from_addr="a@example.org", to=("b@example.org",)),
                ),
                AlertChannel(
                    name="ops",
                    email=EmailChannel(
                        smtp=smtp,
                        from_addr="hasupd@example.org",
                        to=("ops@example.org", "On call <oncall@example.org>"),
                    ),
                    coalesce_sec=300.0,
                    on_crash=True,
                ),
            ),
            repositories=(
                RepositoryConfig(
                    name="cold",
                    url="s3:https://s3.example.org/bucket",
                    password_file="/etc/hasupd/restic.pass",
                    environment_file="/etc/hasupd/s3.env",
                ),
                RepositoryConfig(
                    name="hot", url="/var/backups/restic", password_file="/etc/hasupd/restic.pass"
                ),
            ),
        ),
        services=(
            ServiceConfig(
                name="db",
                container=ContainerSpec(
                    image="docker.io/library/postgres:16",
                    engine=ContainerEngine.DOCKER,
                    args=("-c", "max_connections=50"),
                    options=("--volume", "/srv/db:/var/lib/postgresql/data"),
                ),
                restart=RestartMode.NO,
                alerts=(),
            ),
            ServiceConfig(
                name="web",
                description="the web front",
                command=("/bin/sh", "-c", "exec sleep 100"),
                type=ServiceType.NOTIFY,
                user=user,
                group=group,
                working_directory="/srv/app",
                environment=(("DEBUG", "true"), ("NAME", "web {instance}"), ("PORT", "8080")),
                environment_files=("/etc/default/app", "-/etc/default/app.local"),
                after=("db",),
                instances=2,
                sockets=(
                    SocketSpec(listen="127.0.0.1:8080"),
                    SocketSpec(listen="[::1]:8080", name="v6"),
                    SocketSpec(listen="/run/a.sock"),
                ),
                restart=RestartMode.ALWAYS,
                restart_sec=0.25,
                restart_max_delay_sec=60.0,
                start_limit=StartLimit(burst=3, interval_sec=30.0),
                timeout_start_sec=90.0,
                timeout_stop_sec=5.0,
                kill_signal=signal.SIGINT,
                watchdog_sec=10.0,
                heartbeat_file=HeartbeatFile(path="/run/app/alive", max_age_sec=60.0),
                health=(
                    HealthProbe(
                        kind=ProbeKind.HTTP,
                        target="http://127.0.0.1:8080/health",
                        interval_sec=5.0,
                        timeout_sec=2.0,
                        failures=4,
                        start_period_sec=30.0,
                    ),
                    HealthProbe(kind=ProbeKind.TCP, target="127.0.0.1:5432"),
                    HealthProbe(kind=ProbeKind.EXEC, argv=("pg_isready", "-q")),
                ),
                limits=Limits(memory=512 * 1024**2, cpu_percent=90.0, cpu_window_sec=120.0),
                output=OutputMode.FILE,
                on_failure=(
                    RecoveryAction(kind=RecoveryKind.EXEC, argv=("/usr/local/bin/reset-app",)),
                    RecoveryAction(kind=RecoveryKind.RESTORE, job="app-data"),
                    RecoveryAction(kind=RecoveryKind.ROLLBACK_CONFIG),
                ),
                alerts=("ops",),
            ),
        ),
        backups=(
            BackupJobConfig(
                name="app-data",
                repository="hot",
                paths=("/srv/app/data",),
                exclude=("*.tmp",),
                schedule="@daily",
                randomized_delay_sec=1800.0,
                keep=Keep(last=3, hourly=24, daily=7, weekly=4, monthly=6, yearly=1, within="2y5m"),
                before=(("/usr/local/bin/dump-db", "/var/backups/db.sql"), ("/bin/sync", "-f", "/srv")),
                quiesce=("web",),
                long_term=LongTerm(repository="cold", schedule="0 3 * * 0", keep=Keep(monthly=12, yearly=5)),
                check=CheckSpec(schedule="@weekly", read_data_subset_n=12),
                drill=DrillSpec(schedule="@monthly"),
                max_age_sec=26 * 3600.0,
                prune_schedule="@monthly",
            ),
        ),
    )
    config = load_config(root)
    assert config == expected
    assert [s.source for s in config.services] == [
        f"{root}/services.d/db.yaml",
        f"{root}/services.d/web.yaml",
    ]
    assert config.backups[0].source == f"{root}/backups.d/app-data.yaml"
    assert config.service("web") is config.services[1]
    assert hash(config) == hash(expected)


def test_a_plain_service_with_a_string_command(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services.d/web.yaml": """
                command: [sh, -c, "sleep 1"]
                type: oneshot
                restart: on-abnormal
                environment: {PATH: /usr/bin:/bin}
                after: [db]
            """,
            "services.d/db.yaml": "command: true\n",
        },
    )
    config = load_config(tmp_path)
    assert config.services[1].command == ("sh", "-c", "sleep 1")
    assert config.services[0].command == ("true",)


def test_a_service_name_longer_than_its_folders_can_be_named_is_refused(tmp_path: Path) -> None:
    # NAME.service names its cgroup and state folders: 247 characters fit a file name, 248 do not.
    fits, too_long = "a" * 247, "b" * 248
    write(
        tmp_path,
        {
            f"services.d/{fits}.yaml": "command: [/bin/true]",
            f"services.d/{too_long}.yaml": "command: [/bin/true]",
        },
    )
    assert issues(tmp_path) == [
        f"services.d/{too_long}.yaml:1:1: service name too long: 248 characters "
        "(the file name without .yaml), at most 247"
    ]
