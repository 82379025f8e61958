"""services.d keys for the per-process settings: limits.nofile|nproc|core, nice, ionice, umask,
oom_score_adjust, supplementary_groups, no_new_privileges; and how status shows them."""

from __future__ import annotations

from pathlib import Path

from hasupd.config.load import load_config
from hasupd.config.model import IoNice, RLimit
from hasupd.config.validate_process import process_settings
from tests.unit.config.test_load import service_issues, write


def test_settings_are_read_as_systemd_writes_them(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "services.d/a.yaml": """
                command: [true]
                limits: {nofile: 4096, nproc: "256:infinity", core: 1G}
                nice: -5
                ionice: {class: idle}
                umask: "0027"
                oom_score_adjust: 500
                supplementary_groups: [daemon, "0"]
                no_new_privileges: true
            """,
            "services.d/b.yaml": "command: [true]\numask: 0077\n",
        },
    )
    services = {s.name: s for s in load_config(root).services}
    a = services["a"]
    assert a.limits.nofile == RLimit(4096, 4096)
    assert a.limits.nproc == RLimit(256, None)
    assert a.limits.core == RLimit(2**30, 2**30)
    assert (a.nice, a.umask, a.oom_score_adjust) == (-5, 0o027, 500)
    assert a.ionice == IoNice("idle", 4)
    assert a.supplementary_groups == ("daemon", "0")
    assert a.no_new_privileges is True
    assert services["b"].umask == 0o077  # unquoted: the digits as written, read as octal
    assert process_settings(a) == {
        "limits.nofile": "4096",
        "limits.nproc": "256:infinity",
        "limits.core": str(2**30),
        "nice": -5,
        "ionice": {"class": "idle", "level": 4},
        "umask": "0027",
        "oom_score_adjust": 500,
        "supplementary_groups": ["daemon", "0"],
        "no_new_privileges": True,
    }
    assert process_settings(services["b"]) == {"umask": "0077"}


def test_bad_values_are_reported_where_they_are(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        command: [true]
        limits: {nofile: "4096:1024", nproc: lots, core: -1}
        nice: 20
        ionice: {class: fast, level: 9}
        umask: "0089"
        oom_score_adjust: -1001
        supplementary_groups: [no-such-group-xyz]
        no_new_privileges: maybe
        """,
    ) == [
        "services.d/a.yaml:2:18: limits.nofile: invalid limit '4096:1024': the soft limit is above the"
        " hard limit",
        "services.d/a.yaml:2:38: limits.nproc: invalid limit 'lots': expected a whole number >= 0 or"
        " infinity",
        "services.d/a.yaml:2:50: limits.core: invalid size '-1': expected a number of bytes with an optional"
        " suffix K, M, G, T, P or E (powers of 1024) such as 512K",
        "services.d/a.yaml:3:7: nice: expected an integer from -20 to 19, got 20",
        "services.d/a.yaml:4:17: ionice.class: expected one of realtime, best-effort, idle, got 'fast'",
        "services.d/a.yaml:4:30: ionice.level: expected an integer from 0 to 7, got 9",
        "services.d/a.yaml:5:8: umask: expected an octal umask such as \"0027\", got '0089'",
        "services.d/a.yaml:6:19: oom_score_adjust: expected an integer from -1000 to 1000, got -1001",
        "services.d/a.yaml:7:24: supplementary_groups.0: unknown group 'no-such-group-xyz'",
        "services.d/a.yaml:8:20: no_new_privileges: expected true or false, got a string",
    ]


def test_a_container_service_is_told_to_use_the_engine(tmp_path: Path) -> None:
    assert service_issues(
        tmp_path,
        """
        container: {image: localhost/app:1}
        limits: {memory: 64M, nofile: 4096}
        nice: 5
        no_new_privileges: true
        """,
    ) == [
        "services.d/a.yaml:2:23: limits.nofile: applies to programs (command:); for a container pass the"
        " engine's option in container.options (such as --ulimit nofile=N)",
        "services.d/a.yaml:3:1: nice: applies to programs (command:); for a container pass the engine's"
        " option in container.options",
        "services.d/a.yaml:4:1: no_new_privileges: applies to programs (command:); for a container pass"
        " the engine's option in container.options (such as --security-opt no-new-privileges)",
    ]
