"""ExecSpawner against real processes, in cgroup mode and in the process-group fallback.

cgroup mode needs root and a writable cgroup2; without them these tests fail with the reason, unless
HASUPD_TEST_NO_CGROUP=1 is set, which skips only the cgroup variants. The journal test talks to a
plain AF_UNIX listening socket made here: a stand-in for journald, which is tested for real elsewhere.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hasupd.config.model import ServiceConfig
from hasupd.host.containment import Containment
from hasupd.host.output import journal_header, journal_stream_available
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.ports import ExitStatus, SpawnError, SpawnSpec
from hasupd.runtimes.envfile import parse_environment
from hasupd.runtimes.exec import ExecProcess, ExecSpawner
from hasupd.states import OutputMode
from tests.support.exitwatch import Exit

PY = "/usr/bin/python3"  # Debian's: readable by every user, unlike a venv under /root


def new_spawner(containment: Containment, reaper: Reaper, tmp_path: Path, **kw: Any) -> ExecSpawner:
    kw.setdefault("journal_socket_dir", tmp_path / "nojournal")
    return ExecSpawner(asyncio.get_running_loop(), containment, reaper, tmp_path / "state", **kw)


@pytest.fixture(params=["clone3", "subprocess"])
async def spawner(
    request: pytest.FixtureRequest, containment: Containment, reaper: Reaper, tmp_path: Path
) -> AsyncIterator[ExecSpawner]:
    # Both spawn paths: clone3 through the C extension, and the subprocess fallback.
    s = new_spawner(containment, reaper, tmp_path, native=request.param == "clone3")
    if request.param == "clone3":
        # Built by `pip install -e .` (scripts/test) or `python3 setup.py build_ext --inplace`.
        assert s._clone.usable(), s.describe()  # the extension must be built for the tests
    yield s
    s.close()


def make_spec(
    argv: list[str], name: str = "svc", output: OutputMode = OutputMode.FILE, **kw: Any
) -> SpawnSpec:
    extra_env = kw.pop("extra_env", {})
    pass_fds = kw.pop("pass_fds", ())
    return SpawnSpec(
        service=ServiceConfig(name=name, command=tuple(argv), **kw),
        invocation_id=uuid.uuid4().hex,
        output=output,
        extra_env=extra_env,
        pass_fds=pass_fds,
    )


async def run(spawner: ExecSpawner, spec: SpawnSpec) -> tuple[ExecProcess, ExitStatus, bytes]:
    """Spawn, wait for the exit and the end of its output; return the output (file mode)."""
    exit_ = Exit()
    proc = spawner.spawn(spec, exit_)
    status = await exit_.wait()
    await asyncio.wait_for(proc.wait_output_closed(), 10)
    # EOF comes when the last writer closed the pipe, a moment before it has left its cgroup.
    for _ in range(500):
        if not proc.scope.pids():
            break
        await asyncio.sleep(0.01)
    proc.scope.release()
    log = spawner._outputs.log_dir / f"{spec.unit_name or spec.service.name}.log"
    return proc, status, log.read_bytes() if log.exists() else b""


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_environment_is_clean_and_layered(
    spawner: ExecSpawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in (
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "WATCHDOG_USEC",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
    ):
        monkeypatch.setenv(key, "from-hasupd")
    monkeypatch.setenv("HASUPD_SECRET", "x")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# comment\n; another\n\nFROM_FILE=one\nexport EXPORTED='single quoted $X'\n"
        'OVERRIDDEN=file\nMULTI="line1\nline2"\n'
    )
    spec = make_spec(
        ["/usr/bin/env", "-0"],
        environment_files=(str(env_file), "-/nonexistent/optional.env"),
        environment=(("OVERRIDDEN", "service"), ("BOTH", "service")),
        extra_env={"BOTH": "extra", "NOTIFY_SOCKET": "/run/hasupd/notify/svc.sock"},
    )
    _, status, out = await run(spawner, spec)
    assert status.code == 0
    env = dict(item.split("=", 1) for item in out.decode().split("\0") if item)
    assert env["INVOCATION_ID"] == spec.invocation_id
    assert env["PATH"] == DEFAULT_PATH
    assert env["LANG"] == "C.UTF-8"
    assert env["USER"] == env["LOGNAME"] == pwd.getpwuid(os.geteuid()).pw_name
    assert env["FROM_FILE"] == "one"
    assert env["EXPORTED"] == "single quoted $X"
    assert env["MULTI"] == "line1\nline2"
    assert env["OVERRIDDEN"] == "service"
    assert env["BOTH"] == "extra"
    assert env["NOTIFY_SOCKET"] == "/run/hasupd/notify/svc.sock"  # only because extra_env set it
    for key in ("LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "JOURNAL_STREAM", "HASUPD_SECRET"):
        assert key not in env


async def test_child_is_in_its_scope_before_exec(containment: Containment, spawner: ExecSpawner) -> None:
    # cat's very first action is to read /proc/self/cgroup: it only shows the service cgroup if the
    # child was placed there between fork and exec.
    proc, status, out = await run(spawner, make_spec(["/bin/cat", "/proc/self/cgroup", "/proc/self/stat"]))
    assert status.code == 0
    lines = out.decode().splitlines()
    cgroup = next(line[3:] for line in lines if line.startswith("0::"))
    stat = lines[-1].rsplit(")", 1)[1].split()
    pgid, sid = int(stat[2]), int(stat[3])
    assert pgid == sid == proc.pid  # its own session either way
    if containment.kind == "cgroup":
        assert containment.parent is not None
        assert str(containment.parent / "svc.service").endswith(cgroup)
        assert not (containment.parent / "svc.service").exists()  # released after the exit
    else:
        with open("/proc/self/cgroup") as f:
            assert cgroup == next(ln.strip()[3:] for ln in f if ln.startswith("0::"))


@pytest.fixture
def other_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("running a service as another user needs root")
    name = "hsd" + uuid.uuid4().hex[:8]
    subprocess.run(["groupadd", "--system", name + "x"], check=True)
    try:
        cmd = [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "-G",
            name + "x",
            name,
        ]
        subprocess.run(cmd, check=True)
        try:
            yield name
        finally:
            subprocess.run(["userdel", name], check=True)
    finally:
        subprocess.run(["groupdel", name + "x"], check=False)  # userdel may have removed it


async def test_runs_as_the_configured_user(
    containment: Containment, spawner: ExecSpawner, other_user: str
) -> None:
    pw = pwd.getpwnam(other_user)
    spec = make_spec(["/bin/cat", "/proc/self/cgroup", "/proc/self/status"], user=other_user)
    _, status, out = await run(spawner, spec)
    assert status.code == 0
    fields = dict(
        line.split(":", 1) for line in out.decode().splitlines() if ":" in line and "::" not in line
    )
    assert fields["Uid"].split() == [str(pw.pw_uid)] * 4
    assert fields["Gid"].split() == [str(pw.pw_gid)] * 4
    assert {int(g) for g in fields["Groups"].split()} == set(os.getgrouplist(other_user, pw.pw_gid))
    assert grp.getgrnam(other_user + "x").gr_gid in {int(g) for g in fields["Groups"].split()}
    if containment.kind == "cgroup":  # the cgroup write after the user switch worked
        assert "0::/" in out.decode() and "/svc.service" in out.decode()
    _, status, out = await run(spawner, make_spec(["/usr/bin/env", "-0"], "env", user=other_user))
    env = dict(item.split("=", 1) for item in out.decode().split("\0") if item)
    assert (env["USER"], env["LOGNAME"], env["HOME"], env["SHELL"]) == (
        other_user,
        other_user,
        pw.pw_dir,
        "/usr/sbin/nologin",
    )


FD_PROBE = r"""
import os
for fd in (3, 4, 5):
    os.write(fd, str(fd).encode())
extra = []
for fd in range(6, 1024):
    try:
        os.fstat(fd)
        extra.append(fd)
    except OSError:
        pass
print(extra, os.readlink("/proc/self/fd/0"), os.environ.get("LISTEN_PID"), os.getpid())
"""


@pytest.mark.parametrize("listen", [False, True], ids=["plain", "listen-fds"])
async def test_pass_fds_arrive_at_3_in_order(spawner: ExecSpawner, listen: bool) -> None:
    pipes = [os.pipe() for _ in range(3)]
    try:
        order = [pipes[2][1], pipes[0][1], pipes[1][1]]  # not in numeric order on purpose
        extra_env = {"LISTEN_FDS": "3"} if listen else {}
        exit_ = Exit()
        proc = spawner.spawn(
            make_spec([PY, "-S", "-c", FD_PROBE], pass_fds=tuple(order), extra_env=extra_env), exit_
        )
        for _, w in pipes:
            os.close(w)
        assert (await exit_.wait()).code == 0
        await proc.wait_output_closed()
        proc.scope.release()
        got = [os.read(r, 10) for r, _ in pipes]
        assert got == [b"4", b"5", b"3"]
        out = (spawner._outputs.log_dir / "svc.log").read_text().split()
        assert out[0] == "[]", "nothing but 0-5 is open in the child"
        assert out[1] == "/dev/null"
        if listen:
            assert out[2] == out[3] == str(proc.pid)
    finally:
        for r, _ in pipes:
            os.close(r)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"command": ("/nonexistent/prog",)}, "/nonexistent/prog does not exist"),
        ({"command": ("no-such-prog-hasupd",)}, "'no-such-prog-hasupd' was not found in PATH"),
        ({"command": ("/etc",)}, "is not an executable file"),
        ({"user": "no-such-user-hasupd"}, "user 'no-such-user-hasupd' does not exist"),
        ({"group": "no-such-group-hasupd"}, "group 'no-such-group-hasupd' does not exist"),
        ({"working_directory": "/nonexistent/dir"}, "working directory /nonexistent/dir does not exist"),
        (
            {"environment_files": ("/nonexistent/app.env",)},
            "environment file /nonexistent/app.env does not exist",
        ),
        ({"environment_files": ("BAD",)}, r"\.env:2: expected KEY=VALUE"),
        # issue 15: read at every start on the event loop; these hung it or filled the memory
        ({"environment_files": ("FIFO",)}, r"fifo\.env: not a regular file: it is a FIFO"),
        ({"environment_files": ("-/dev/zero",)}, "/dev/zero: not a regular file: it is a character device"),
        ({"command": ("NOEXEC",)}, "cannot execute .*: Exec format error"),
    ],
)
async def test_spawn_errors_leave_nothing_behind(
    containment: Containment, spawner: ExecSpawner, tmp_path: Path, kw: dict[str, Any], match: str
) -> None:
    kw = dict(kw)  # shared between the parametrized runs
    bad_env = tmp_path / "bad.env"
    bad_env.write_text("GOOD=1\nthis line has no equals sign\n")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01not a program")
    garbage.chmod(0o755)
    if kw.get("environment_files") == ("BAD",):
        kw = {"environment_files": (str(bad_env),)}
    if kw.get("environment_files") == ("FIFO",):
        os.mkfifo(tmp_path / "fifo.env")
        kw = {"environment_files": (str(tmp_path / "fifo.env"),)}
    if kw.get("command") == ("NOEXEC",):
        kw = {"command": (str(garbage),)}
    command = kw.pop("command", ("/bin/true",))
    before = open_fds()
    with pytest.raises(SpawnError, match=match) as info:
        spawner.spawn(make_spec(list(command), **kw), Exit())
    assert str(info.value).startswith("cannot start svc: ")
    assert open_fds() == before
    if containment.kind == "cgroup":
        assert containment.parent is not None
        assert not (containment.parent / "svc.service").exists()


async def test_output_file_rotates_by_size(containment: Containment, reaper: Reaper, tmp_path: Path) -> None:
    spawner = new_spawner(containment, reaper, tmp_path, log_max_bytes=1000, log_keep=2)
    try:
        script = (
            "import sys, time\n"
            "for i in range(12):\n"
            "    sys.stdout.write('%03d' % i + 'x' * 496 + '\\n'); sys.stdout.flush(); time.sleep(0.02)\n"
        )
        _, status, _ = await run(spawner, make_spec([PY, "-S", "-c", script]))
        assert status.code == 0
        logs = spawner._outputs.log_dir
        assert sorted(p.name for p in logs.iterdir()) == ["svc.log", "svc.log.1", "svc.log.2"]
        parts = [(logs / n).read_text() for n in ("svc.log.2", "svc.log.1", "svc.log")]
        assert all(len(p) <= 1000 + 500 for p in parts)
        expected = "".join(f"{i:03d}" + "x" * 496 + "\n" for i in range(12))
        assert expected.endswith("".join(parts))
    finally:
        spawner.close()


async def test_output_is_drained_after_the_main_exits(spawner: ExecSpawner) -> None:
    script = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(0.3); print('late', flush=True); os._exit(0)\n"
        "print('early', flush=True)\n"
    )
    _, status, out = await run(spawner, make_spec([PY, "-S", "-c", script]))
    assert status.code == 0
    assert out.split() == [b"early", b"late"]


async def test_journal_output_speaks_the_stream_protocol(
    containment: Containment, reaper: Reaper, tmp_path: Path
) -> None:
    jdir = tmp_path / "journal"
    jdir.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stand_in:  # a stand-in for journald
        stand_in.bind(str(jdir / "stdout"))
        stand_in.listen(8)
        stand_in.settimeout(5)
        assert journal_stream_available(jdir)
        stand_in.accept()[0].close()  # the probe connection
        spawner = new_spawner(containment, reaper, tmp_path, journal_socket_dir=jdir)
        try:
            script = (
                "import os, sys\n"
                "st = os.fstat(1)\n"
                "print('%d:%d' % (st.st_dev, st.st_ino), os.environ['JOURNAL_STREAM'], flush=True)\n"
                "print('oops', file=sys.stderr, flush=True)\n"
            )
            exit_ = Exit()
            proc = spawner.spawn(make_spec([PY, "-S", "-c", script], "web@1", OutputMode.JOURNAL), exit_)
            assert proc.output_mode == OutputMode.JOURNAL and proc.output_note is None
            streams = []
            for _ in range(2):
                conn, _ = stand_in.accept()
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while chunk := conn.recv(4096):
                        data += chunk
                    streams.append(data)
            assert (await exit_.wait()).code == 0
            proc.scope.release()
        finally:
            spawner.close()
    out_header, err_header = journal_header("web@1", 6), journal_header("web@1", 3)
    assert out_header == b"web@1\n\n6\n0\n0\n0\n0\n"
    assert streams[0].startswith(out_header) and streams[1] == err_header + b"oops\n"
    mine, exported = streams[0][len(out_header) :].decode().split()
    assert mine == exported


async def test_journal_unreachable_falls_back_to_file(spawner: ExecSpawner) -> None:
    exit_ = Exit()
    proc = spawner.spawn(make_spec(["/bin/echo", "hi"], output=OutputMode.JOURNAL), exit_)
    assert proc.output_mode == OutputMode.FILE
    assert proc.output_note is not None and "journald is not reachable" in proc.output_note
    await exit_.wait()
    await proc.wait_output_closed()
    proc.scope.release()
    assert (spawner._outputs.log_dir / "svc.log").read_text() == "hi\n"


async def test_exit_status_and_send_signal(spawner: ExecSpawner) -> None:
    exit_ = Exit()
    proc = spawner.spawn(make_spec(["/bin/sleep", "100"], output=OutputMode.INHERIT), exit_)
    proc.send_signal(signal.SIGTERM)
    status = await exit_.wait()
    assert status.signal == signal.SIGTERM and status.pid == proc.pid
    proc.send_signal(signal.SIGTERM)  # gone: no error
    proc.scope.release()
    _, status, _ = await run(spawner, make_spec(["/bin/sh", "-c", "exit 3"], output=OutputMode.INHERIT))
    assert status.code == 3


def test_environment_file_syntax() -> None:
    text = (
        "A=plain value  \n"
        "export B=1\n"
        'C="x \\"q\\" \\$HOME \\n"\n'
        "D='a \\ b'\n"
        "E=con\\\ntinued\n"
        "  # indented comment\n"
        "F=\n"
        "G=a#b\n"
    )
    env = parse_environment(text, "f.env")
    assert env == {
        "A": "plain value",
        "B": "1",
        "C": 'x "q" $HOME \\n',
        "D": "a \\ b",
        "E": "continued",
        "F": "",
        "G": "a#b",
    }
    with pytest.raises(SpawnError, match=r"f\.env:1: '1X' is not a valid variable name"):
        parse_environment("1X=2\n", "f.env")
    with pytest.raises(SpawnError, match=r"f\.env:2: unterminated \" quote"):
        parse_environment('OK=1\nX="open\n', "f.env")


async def test_a_cgroup_that_cannot_be_created_is_a_spawn_error(reaper: Reaper, tmp_path: Path) -> None:
    containment = Containment.detect(base_name=f"hasupd-test-{uuid.uuid4().hex[:12]}")
    try:
        if containment.kind != "cgroup" or containment.parent is None:
            if os.environ.get("HASUPD_TEST_NO_CGROUP") == "1":
                pytest.skip(f"HASUPD_TEST_NO_CGROUP=1 and no cgroup here: {containment.describe()}")
            pytest.fail("cgroup mode needs root and a writable cgroup2: " + containment.describe())
        # The kernel itself refuses the mkdir (EAGAIN) once the parent may have no more descendants.
        (containment.parent / "cgroup.max.descendants").write_text("0")
        spawner = new_spawner(containment, reaper, tmp_path)
        try:
            before = open_fds()
            with pytest.raises(SpawnError, match=r"cannot start svc: cannot create cgroup .*/svc\.service"):
                spawner.spawn(make_spec(["/bin/true"]), Exit())
            assert open_fds() == before
        finally:
            spawner.close()
    finally:
        containment.close()
