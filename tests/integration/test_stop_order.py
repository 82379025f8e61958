"""Stopping a master/worker program (KillMode=mixed): the stop signal reaches the master first and the
workers only after the master exited, so a master that respawns dead workers respawns none during the
stop. Against a shell-script master and against Debian's nginx, in both containment modes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_supervise import CONTAINMENT, containment_args
from tests.support.harness import Hasupd, pid_alive, write_config
from tests.support.nginx import nginx_command

# Keeps two workers alive, respawning any that dies. On SIGTERM it finishes in-flight work for 0.5 s
# (still keeping its pool up, as a master does), then stops its workers and exits. Every worker pid it
# starts is appended to the log.
MASTER = r"""#!/bin/bash
log=$1
workers=()
start_worker() { sleep 1000 & workers[$1]=$!; echo $! >> "$log"; }
respawn_dead() {
  for i in 0 1; do
    kill -0 "${workers[$i]}" 2>/dev/null || { wait "${workers[$i]}" 2>/dev/null; start_worker $i; }
  done
}
stopping=0
trap 'stopping=1' TERM
start_worker 0
start_worker 1
while [ $stopping = 0 ]; do wait -n; respawn_dead; done
for n in 1 2 3 4 5; do sleep 0.1; respawn_dead; done
kill -TERM "${workers[@]}"
wait
exit 0
"""


def children(pid: int) -> set[int]:
    """Return the live children of ``pid`` (one pass over /proc)."""
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(name))
    return out


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stop_and_watch(d: Hasupd, name: str, master: int) -> set[int]:
    """Stop ``name`` through hasupctl; return every child of ``master`` seen while it stopped."""
    seen: set[int] = set()
    done = threading.Event()

    def sample() -> None:
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            seen.update(children(master))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = d.ctl("stop", name)
        assert result.returncode == 0, result.stderr
        d.wait_for("service.stopped", service=name, timeout=20)
    finally:
        done.set()
        sampler.join(35)
    return seen


@pytest.mark.parametrize("kind", CONTAINMENT)
def test_a_respawning_shell_master_respawns_no_worker_during_the_stop(
    kind: str, tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    extra = containment_args(kind)
    script = tmp_path / "master.sh"
    script.write_text(MASTER)
    script.chmod(0o755)
    log = tmp_path / "workers.log"
    config = write_config(
        tmp_path / "etc", {"pool": {"command": [str(script), str(log)], "timeout_stop_sec": "5s"}}
    )
    d = hasupd(config, extra_args=extra)
    master = d.wait_for("service.started", service="pool")[0]["pid"]
    wait_until(lambda: log.exists() and len(log.read_text().split()) == 2)
    before = {int(p) for p in log.read_text().split()}
    stop_and_watch(d, "pool", master)  # its children include its own `sleep 0.1`: the log is exact
    assert {int(p) for p in log.read_text().split()} == before  # not one worker respawned
    stopped = d.find("service.stopped", service="pool")
    assert stopped[-1]["result"] == "success"
    assert d.find("service.killed", service="pool") == []  # the master stopped its workers itself
    assert not any(pid_alive(p) for p in before | {master})


@pytest.mark.parametrize("kind", CONTAINMENT)
def test_nginx_stops_without_respawning_workers(
    kind: str, tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    extra = containment_args(kind)
    command, port = nginx_command(tmp_path / "nginx", workers=4)
    config = write_config(tmp_path / "etc", {"web": {"command": command, "timeout_stop_sec": "10s"}})
    d = hasupd(config, extra_args=extra)
    master = d.wait_for("service.started", service="web")[0]["pid"]
    wait_until(lambda: len(children(master)) == 4)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert b"200 OK" in conn.recv(4096)
    before = children(master)
    seen = stop_and_watch(d, "web", master)
    assert seen <= before, f"workers respawned during the stop: {sorted(seen - before)}"
    assert d.find("service.stopped", service="web")[-1]["result"] == "success"
    assert d.find("service.killed", service="web") == []
    assert not any(pid_alive(p) for p in before | {master})
