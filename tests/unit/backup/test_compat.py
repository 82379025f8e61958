"""Version gates, the exit-code table per version, error text classification, JSON parsing, rotation,
and the child environment (no restic runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plumbum.commands.base import BoundEnvCommand

from hasupd.backup.check_rotation import CheckRotation
from hasupd.backup.compat import (
    ErrorKind,
    Features,
    ResticError,
    classify,
    json_error_text,
    parse_version,
    readable_stderr,
)
from hasupd.backup.models import GroupKey, ParseError, parse_forget, parse_ls, parse_snapshots
from hasupd.backup.restic import Restic
from hasupd.config.model import RepositoryConfig

V014, V016, V017, V0171, V018 = (
    Features(v) for v in [(0, 14, 0), (0, 16, 4), (0, 17, 0), (0, 17, 1), (0, 18, 0)]
)


def test_parse_version() -> None:
    assert parse_version("restic 0.14.0 compiled with go1.19.8 on linux/amd64\n") == (0, 14, 0)
    assert parse_version("restic 0.18.0-dev (compiled manually) compiled with go1.24") == (0, 18, 0)
    with pytest.raises(ValueError):
        parse_version("rustic 1.0")


def test_gates() -> None:
    assert not V014.retry_lock and V016.retry_lock
    assert not V016.exit_codes_10_11 and V017.exit_codes_10_11
    assert not V017.exit_code_12 and V0171.exit_code_12
    assert not V014.restore_json and V016.restore_json
    assert not V016.forget_keeps_oldest and V017.forget_keeps_oldest
    assert V018.json_exit_errors and not V0171.json_exit_errors
    assert not V016.stdin_from_command and V017.stdin_from_command


@pytest.mark.parametrize(
    ("features", "code", "stderr", "backup", "kind"),
    [
        (V014, 0, "", False, None),
        (V014, 1, "Fatal: wrong password or no key found\n", False, ErrorKind.WRONG_PASSWORD),
        (
            V014,
            1,
            "unable to create lock in backend: repository is already locked by PID 1",
            False,
            ErrorKind.LOCKED,
        ),
        (
            V014,
            1,
            "Fatal: unable to open config file: stat /r/config: no such file or directory\n"
            "Is there a repository at the following location?\n/r",
            False,
            ErrorKind.NO_REPOSITORY,
        ),
        (
            V014,
            1,
            "Fatal: unable to open config file: <config/> does not exist\n"
            "Is there a repository at the following location?\nrest:http://x/",
            False,
            ErrorKind.NO_REPOSITORY,
        ),
        # unreachable: the same hint, but not "absent"
        (
            V014,
            1,
            "Fatal: unable to open config file: Head ...: connect: connection refused\n"
            "Is there a repository at the following location?\nrest:http://x/",
            False,
            ErrorKind.FATAL,
        ),
        (V014, 1, "Fatal: something else", False, ErrorKind.FATAL),
        (V014, 3, "Warning: at least one source file could not be read", True, ErrorKind.PARTIAL),
        (V014, 3, "", False, ErrorKind.UNKNOWN),  # 3 means something only for backup
        (V014, 10, "", False, ErrorKind.UNKNOWN),  # not a code 0.14 has
        (V014, 130, "", False, ErrorKind.INTERRUPTED),
        (V014, 2, "panic: ...", False, ErrorKind.FATAL),
        (V017, 10, "", False, ErrorKind.NO_REPOSITORY),
        (V017, 11, "", False, ErrorKind.LOCKED),
        (V017, 12, "", False, ErrorKind.UNKNOWN),  # 12 arrived in 0.17.1
        (V017, 1, "Fatal: wrong password or no key found", False, ErrorKind.WRONG_PASSWORD),
        (V018, 12, "", False, ErrorKind.WRONG_PASSWORD),
        (V018, 42, "", False, ErrorKind.UNKNOWN),
    ],
)
def test_classify(features: Features, code: int, stderr: str, backup: bool, kind: ErrorKind | None) -> None:
    assert classify(code, stderr, features, backup=backup) is kind


def test_readable_stderr_unwraps_json() -> None:
    stderr = (
        b'{"message_type":"error","error":{"message":"/s/x: open /s/x: permission denied"},'
        b'"during":"archival","item":"/s/x"}\n'
        b'{"message_type":"exit_error","code":12,"message":"Fatal: wrong password or no key found"}\n'
        b"plain text\n"
    )
    assert readable_stderr(stderr) == (
        "/s/x: open /s/x: permission denied\nFatal: wrong password or no key found\nplain text"
    )
    assert len(readable_stderr(b"x" * 5000, limit=100)) == 100


def test_json_error_text_of_0_14() -> None:
    msg = {"message_type": "error", "error": {"Op": "open", "Path": "s/x", "Err": 13}, "item": "/s/x"}
    assert json_error_text(msg) == "/s/x: open s/x: Permission denied"


def test_restic_error_message() -> None:
    err = ResticError(ErrorKind.LOCKED, 11, "repository is already locked", "prune")
    assert str(err) == "restic prune: locked (exit code 11): repository is already locked"
    assert err.kind == "locked"  # a StrEnum: compares with the plain names too


def test_parse_snapshots_and_ls() -> None:
    out = json.dumps(
        [
            {
                "time": "2025-03-15T03:00:00.123456789+01:00",
                "paths": ["/a"],
                "hostname": "h",
                "id": "ab" * 32,
                "short_id": "abababab",
                "tags": None,
                "original": "cd" * 32,
            }
        ]
    )
    (s,) = parse_snapshots(out.encode())
    assert s.time.utcoffset() is not None and s.time.microsecond == 123456
    assert s.tags == () and s.original == "cd" * 32
    assert parse_snapshots(b"") == [] and parse_snapshots(b"null") == []
    with pytest.raises(ParseError):
        parse_snapshots(b"not json")
    with pytest.raises(ParseError):
        parse_snapshots(b'[{"id": "x", "time": "2025-01-01T00:00:00"}]')  # no offset
    ls = parse_ls(
        b'{"struct_type":"snapshot","id":"x"}\n{"name":"a","type":"file","path":"/a","size":3,'
        b'"struct_type":"node"}\n{"name":"d","type":"dir","path":"/d","struct_type":"node"}\n'
    )
    assert [(e.path, e.type, e.size) for e in ls] == [("/a", "file", 3), ("/d", "dir", None)]


def test_parse_forget_null_fields_follow_group_by() -> None:
    base = {"time": "2025-01-01T00:00:00Z", "paths": ["/a"], "hostname": "h"}
    doc = [{"tags": None, "host": "h", "paths": ["/a"], "keep": [{**base, "id": "a" * 64}], "remove": None}]
    plan = parse_forget(json.dumps(doc).encode(), ("host", "paths", "tags"), ())
    assert plan.groups[0].key == GroupKey(host="h", paths=("/a",), tags=())  # grouped by tags: none
    assert plan.groups[0].remove == ()
    plan = parse_forget(json.dumps(doc).encode(), ("paths",), ())
    assert plan.groups[0].key == GroupKey(host=None, paths=("/a",), tags=None)


def test_check_rotation(tmp_path: Path) -> None:
    rotation = CheckRotation(tmp_path, "job", 3)
    seen = []
    for _ in range(7):
        seen.append(rotation.current())
        rotation.advance()
    assert seen == ["1/3", "2/3", "3/3", "1/3", "2/3", "3/3", "1/3"]
    assert CheckRotation(tmp_path, "job", 3).current() == "2/3"  # survives a restart
    assert CheckRotation(tmp_path, "job", 12).current() == "1/12"  # N changed: start over
    (tmp_path / "backup" / "job" / "check-subset").write_text("junk")
    assert CheckRotation(tmp_path, "job", 3).current() == "1/3"
    with pytest.raises(ValueError):
        CheckRotation(tmp_path, "job", 0)
    with pytest.raises(ValueError):
        CheckRotation(tmp_path, "../x", 3)


def repo(tmp_path: Path, name: str, env_text: str | None) -> RepositoryConfig:
    env_file = None
    if env_text is not None:
        env_file = tmp_path / f"{name}.env"
        env_file.write_text(env_text)
    return RepositoryConfig(
        name=name,
        url=f"/srv/{name}",
        password_file=f"/etc/{name}.pass",
        environment_file=str(env_file) if env_file else None,
    )


def test_environment_keeps_secrets_out_of_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "leaked")  # from hasupd's own environment: never passed on
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    r = Restic(
        repo(tmp_path, "cold", "AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY='s e'\n"),
        reaper=None,
        cache_dir=tmp_path / "cache",
    )
    env = r.environment()
    assert env["RESTIC_REPOSITORY"] == "/srv/cold" and env["RESTIC_PASSWORD_FILE"] == "/etc/cold.pass"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s e" and env["RESTIC_CACHE_DIR"] == str(tmp_path / "cache")
    assert "RESTIC_PASSWORD" not in env and "NOTIFY_SOCKET" not in env
    command = r._command(["snapshots"], env)
    argv = command.formulate()
    assert not any("/srv/cold" in a or "pass" in a or "AK" in a for a in argv)


def test_restic_commands_are_plumbum_commands_carrying_argv_and_the_whole_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plumbum builds the command (argv and environment); hasupd runs what it formulates."""
    monkeypatch.setenv("RESTIC_PASSWORD", "leaked")
    fake = tmp_path / "restic"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    r = Restic(repo(tmp_path, "hot", None), reaper=None, binary=str(fake), owner="/var/lib/hasupd")
    command = r._command(["backup", "--json", "/srv/a b"], r.environment())
    assert command.formulate() == [str(fake), "backup", "--json", "/srv/a b"]
    assert isinstance(command, BoundEnvCommand)
    assert command.env["RESTIC_REPOSITORY"] == "/srv/hot"
    assert command.env["HASUPD_RESTIC_OWNER"] == "/var/lib/hasupd"  # leftovers are found by it
    assert "RESTIC_PASSWORD" not in command.env


def test_environment_file_may_not_set_the_repository(tmp_path: Path) -> None:
    r = Restic(repo(tmp_path, "cold", "RESTIC_PASSWORD=x\n"), reaper=None)
    with pytest.raises(ResticError, match="must not set RESTIC_PASSWORD"):
        r.environment()
    r = Restic(repo(tmp_path, "gone", None), reaper=None)
    r.repo = RepositoryConfig(
        name="gone", url="/x", password_file="/p", environment_file=str(tmp_path / "no")
    )
    with pytest.raises(ResticError, match="does not exist"):
        r.environment()


def test_copy_source_environment(tmp_path: Path) -> None:
    hot = Restic(repo(tmp_path, "hot", "AWS_REGION=eu\n"), reaper=None)
    cold = Restic(repo(tmp_path, "cold", "AWS_REGION=eu\nAWS_ACCESS_KEY_ID=AK\n"), reaper=None)
    env = hot.source_env_for(cold)
    assert env["RESTIC_FROM_REPOSITORY"] == "/srv/hot" and env["RESTIC_FROM_PASSWORD_FILE"] == "/etc/hot.pass"
    other = Restic(repo(tmp_path, "other", "AWS_REGION=us\n"), reaper=None)
    with pytest.raises(ResticError, match="AWS_REGION"):
        hot.source_env_for(other)


def test_missing_binary_is_a_restic_error() -> None:
    r = Restic(RepositoryConfig(name="x", url="/x", password_file="/p"), reaper=None, binary="no-such-restic")
    with pytest.raises(ResticError, match="not found"):
        r._command(["version"], {})
