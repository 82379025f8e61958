"""host/adoption: finding a unit's main process and taking its listening socket back (real processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hasupd.host import adoption
from tests.support.harness import require_root

HOLDER = "import socket, time; s = socket.socket(fileno=3); time.sleep(60)"


@pytest.fixture
def holder() -> Iterator[tuple[subprocess.Popen[bytes], tuple[str, int]]]:
    """A process in its own session holding a listening socket at fd 3, with an INVOCATION_ID."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    address = sock.getsockname()

    def to_fd3() -> None:
        os.dup2(sock.fileno(), 3)

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        pass_fds=(3,),
        preexec_fn=to_fd3,  # noqa: PLW1509  # single-threaded test process
        start_new_session=True,
        env={**os.environ, "INVOCATION_ID": "a" * 32},
    )
    sock.close()  # only the holder has it now
    time.sleep(0.2)
    yield proc, address
    proc.kill()
    proc.wait()


def test_a_listening_socket_is_copied_out_of_a_running_process(
    holder: tuple[subprocess.Popen[bytes], tuple[str, int]],
) -> None:
    require_root()  # pidfd_getfd needs ptrace rights over the process
    proc, address = holder
    copy = adoption.listening_copy(proc.pid, 3, socket.AF_INET, address)
    assert copy is not None
    with copy, socket.create_connection(address, timeout=2):
        conn, _ = copy.accept()  # the very socket the process holds: the connection reaches us
        conn.close()
    assert adoption.listening_copy(proc.pid, 3, socket.AF_INET, ("127.0.0.1", 1)) is None  # other address
    assert adoption.listening_copy(proc.pid, 9, socket.AF_INET, address) is None  # no such fd


def test_the_main_process_is_found_by_its_invocation_id_and_its_start_time_names_it(
    holder: tuple[subprocess.Popen[bytes], tuple[str, int]],
) -> None:
    proc, _ = holder
    found = adoption.find_by_invocation("a" * 32)
    assert found is not None and found.pid == proc.pid
    assert adoption.start_time(proc.pid) is not None
    assert adoption.is_child(proc.pid)
    assert adoption.environment_value(proc.pid, "INVOCATION_ID") == "a" * 32


def test_inherited_fds_are_those_without_close_on_exec() -> None:
    r, w = os.pipe()
    try:
        os.set_inheritable(r, True)
        found = {i.fd: i for i in adoption.inherited_fds()}
        assert r in found and found[r].pipe_inode == os.fstat(r).st_ino
        assert w not in found
    finally:
        os.close(r)
        os.close(w)
