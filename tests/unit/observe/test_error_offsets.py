"""A damaged saved read position in errors.sqlite (negative, beyond the file, not an integer, a blob, a
cursor that is not text) is recorded as a warning naming the file and the unit, and reading starts over
from the start of the file: hasupd neither dies (ValueError out of int()) nor fails at every batch
(a seek to a negative position), and nothing written since is lost."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.observe.error_groups import ErrorGroups
from hasupd.observe.error_store import FILE_NAME, ErrorStore
from tests.unit.fakes import Recorder
from tests.unit.observe.test_error_groups import Source, settle


class Caught(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def caught() -> Iterator[Caught]:
    handler = Caught()
    logger = logging.getLogger("hasupd.observe.error_store")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("inode", "pos"),
    [
        ("real", -5),
        ("real", 10**12),  # beyond the file's size
        ("real", "abc"),
        ("real", b"\x00\x01"),
        ("real", 2.5),
        ("abc", 3),
        (None, None),  # NULL, as a hand-edited table without its NOT NULL could hold
    ],
)
async def test_a_damaged_saved_position_starts_over_and_is_recorded(
    tmp_path: Path, caught: Caught, inode: object, pos: object
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_text("ERROR before 1\n")
    real = os.stat(log).st_ino
    store = ErrorStore(tmp_path)
    with store._conn:
        store._conn.execute("DROP TABLE offsets")  # without NOT NULL, as damage could leave it
        store._conn.execute("CREATE TABLE offsets (unit TEXT PRIMARY KEY, inode, pos, cursor)")
        store._conn.execute(
            "INSERT INTO offsets VALUES (?, ?, ?, ?)", ("app", real if inode == "real" else inode, pos, None)
        )
    store.close()
    bus = ev.EventBus()
    recorder = Recorder(bus)
    groups = ErrorGroups(bus, Source(), tmp_path, None)
    task = asyncio.create_task(groups.run())
    try:
        with log.open("a") as f:
            f.write("ERROR after 2\n")
        found = await settle(groups, recorder, 2)
        # Read again from the start: what was written meanwhile is there, nothing lost.
        assert found == {"ERROR before <n>": 1, "ERROR after <n>": 1}, found
        assert groups.failure is None
        # Beyond the file's end is what a truncated file looks like, not damage: no record then.
        damaged = pos != 10**12
        assert damaged == any(
            str(tmp_path / FILE_NAME) in m and "saved read position of app is damaged" in m
            for m in caught.messages
        ), caught.messages
        # Reading goes on from there, once (the repaired position is kept).
        with log.open("a") as f:
            f.write("ERROR after 3\n")
        assert (await settle(groups, recorder, 3))["ERROR after <n>"] == 2
        assert len(caught.messages) == damaged, caught.messages
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        groups.close()
