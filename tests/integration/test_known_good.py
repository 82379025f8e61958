"""The known-good config of a service with many instances is read and written once, not per instance.

The writes are seen from outside with inotify (the watchdog package): ``KnownGood`` replaces the file
atomically (a temp file renamed over it), so each write is one ``moved`` event onto ``NAME.pickle``;
with watchdog >= 5 (what the tests install) each read is an ``opened`` event of the file itself.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tests.support.harness import Hasupd, record_time, write_config

INSTANCES = 40


class Counter(FileSystemEventHandler):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def on_any_event(self, event: FileSystemEvent) -> None:
        target = str(getattr(event, "dest_path", "") or "") or str(event.src_path)
        if os.path.basename(target) == self.name:
            with self.lock:
                self.counts[event.event_type] = self.counts.get(event.event_type, 0) + 1


def test_known_good_is_written_once_for_all_instances(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    service = {
        "command": ["/bin/sleep", "1000"],
        "instances": INSTANCES,
        "restart_sec": "100ms",
        "restart_max_delay_sec": "1s",  # stable after 1 s
    }
    config = write_config(tmp_path / "etc", {"web": service})
    state = tmp_path / "state"
    folder = state / "known-good"
    folder.mkdir(parents=True, mode=0o700)
    counter = Counter("web.pickle")
    observer = Observer()
    observer.schedule(counter, str(folder), recursive=False)
    observer.start()
    try:
        d = hasupd(config, state_dir=state)
        started = d.wait_for("service.started", count=INSTANCES, timeout=60)
        # service.stable is a debug record (not shown): wait for the file, then until the last instance
        # has run stably (1 s) with room to spare.
        deadline = time.monotonic() + 30
        while not (folder / "web.pickle").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(max(0.0, record_time(started[-1]) + 4.0 - time.time()))
        assert len(d.find("service.started")) == INSTANCES  # no restarts: every instance ran stably
        assert pickle.loads((folder / "web.pickle").read_bytes()).name == "web"
        with counter.lock:
            counts = dict(counter.counts)
        writes = counts.get("moved", 0) + counts.get("created", 0)
        assert writes == 1, counts
        assert counts.get("opened", 0) <= 1, counts  # nothing to read: the file did not exist before
        assert d.stop() == 0
    finally:
        observer.stop()
        observer.join(5)
