"""Reading log files back for error groups (hasupd.observe.error_groups): history before hasupd is not
imported, a rotation loses nothing, a restarted hasupd neither counts twice nor skips."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from hasupd import events as ev
from hasupd.config.model import ErrorsConfig, ServiceConfig
from hasupd.observe.error_groups import ErrorGroups
from hasupd.states import OutputMode
from tests.unit.fakes import Recorder


@dataclass
class Unit:
    config: ServiceConfig
    output: OutputMode = OutputMode.FILE


class Source:
    def __init__(self) -> None:
        config = ServiceConfig(name="app", command=("/bin/true",), errors=ErrorsConfig(match=("^ERROR",)))
        self.services = {"app": Unit(config)}


async def settle(groups: ErrorGroups, recorder: Recorder, count: int) -> dict[str, int]:
    """Wake the reader and wait (bounded) until ``count`` errors were seen in all; return them by pattern."""
    groups.wake("app")
    for _ in range(200):
        seen = [e for e in recorder.events if isinstance(e, ev.ErrorsSeen)]
        if sum(e.count for e in seen) >= count:
            break
        await asyncio.sleep(0.02)
    found = await groups.call(groups.store.groups, None, "app")
    return {g["pattern"]: g["count"] for g in found}


async def test_history_rotation_and_restart(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_text("ERROR from before hasupd 1\n")
    bus = ev.EventBus()
    recorder = Recorder(bus)
    groups = ErrorGroups(bus, Source(), tmp_path, None)
    task = asyncio.create_task(groups.run())
    try:
        with log.open("a") as f:
            f.write("INFO fine\nERROR one 1\nERROR one 2\nERROR two 5\nERROR two ")
        assert await settle(groups, recorder, 3) == {"ERROR one <n>": 2, "ERROR two <n>": 1}
        # The cut line is finished in the file that is then rotated; the new file starts.
        with log.open("a") as f:
            f.write("6\n")
        log.rename(logs / "app.log.1")
        log.write_text("ERROR three 7\n")
        assert await settle(groups, recorder, 5) == {
            "ERROR one <n>": 2,
            "ERROR two <n>": 2,
            "ERROR three <n>": 1,
        }
        assert [e.lines for e in recorder.events if isinstance(e, ev.OutputSeen)] == [4, 2]
        new = [e.pattern for e in recorder.events if isinstance(e, ev.ErrorGroupNew)]
        assert new == ["ERROR one <n>", "ERROR two <n>", "ERROR three <n>"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        groups.close()
    # hasupd stopped; the service wrote on; a new hasupd reads from where the last one stopped.
    with log.open("a") as f:
        f.write("ERROR one 3\n")
    recorder = Recorder(bus)
    again = ErrorGroups(bus, Source(), tmp_path, None)
    task = asyncio.create_task(again.run())
    try:
        assert await settle(again, recorder, 1) == {
            "ERROR one <n>": 3,
            "ERROR two <n>": 2,
            "ERROR three <n>": 1,
        }
        assert not [e for e in recorder.events if isinstance(e, ev.ErrorGroupNew)]  # known groups stay known
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        again.close()
