"""Held sockets go to systemd's fd store: a test NOTIFY_SOCKET stands in for systemd's and receives
the datagrams with their fds (SCM_RIGHTS). The way back (LISTEN_FDS after a crash) is tested under
the real systemd in tests/system/test_zero_blip.py."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, write_config
from tests.support.notify_socket import NotifySocket


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_held_sockets_are_stored_and_removed_when_a_reload_drops_them(
    tmp_path: Path, hasupd: Callable[..., Hasupd], store: NotifySocket
) -> None:
    first, second = tmp_path / "a.sock", tmp_path / "b.sock"
    body = {"command": ["/bin/sleep", "1000"], "instances": 2, "sockets": [{"listen": str(first)}]}
    config = write_config(tmp_path / "etc", {"web": body})
    d = hasupd(config, env={"NOTIFY_SOCKET": str(store.path)})
    d.wait_ready()
    # Bound once for both instances, stored once under <service>.<index>, with the fd.
    assert store.wait_for_message("FDSTORE=1\nFDNAME=web.0") == [str(first)]
    assert [text for text, _ in store.received].count("FDSTORE=1\nFDNAME=web.0") == 1

    write_config(tmp_path / "etc", {"web": {**body, "sockets": [{"listen": str(second)}]}})
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("config.applied", timeout=20)
    assert store.wait_for_message("FDSTOREREMOVE=1\nFDNAME=web.0") == []
    deadline = time.monotonic() + 20
    while [t for t, _ in store.received].count("FDSTORE=1\nFDNAME=web.0") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    texts = [text for text, _ in store.received]
    removed = texts.index("FDSTOREREMOVE=1\nFDNAME=web.0")
    stored = [i for i, t in enumerate(texts) if t == "FDSTORE=1\nFDNAME=web.0"]
    assert len(stored) == 2 and stored[0] < removed < stored[1], texts
    assert store.received[stored[1]][1] == [str(second)]
    assert d.stop() == 0
