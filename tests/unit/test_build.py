"""DaemonTasks: the daemon's TaskGroup as the TaskSpawner every part gets."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hasupd.build import TASK_LOGGER, DaemonTasks


async def _boom() -> None:
    raise RuntimeError("bug")


async def _forever() -> None:
    await asyncio.sleep(3600)


def test_a_failing_task_is_recorded_by_name_and_ends_the_group(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> asyncio.Task[None]:
        tasks = DaemonTasks(asyncio.get_running_loop())
        async with asyncio.TaskGroup() as group:
            tasks.attach(group)
            other = tasks.spawn(_forever(), "other")
            tasks.spawn(_boom(), "probe tcp x:1")
        return other

    with caplog.at_level(logging.CRITICAL, logger=TASK_LOGGER), pytest.raises(ExceptionGroup) as raised:
        asyncio.run(asyncio.wait_for(main(), 5))
    assert raised.group_contains(RuntimeError, match="bug")
    [record] = [r for r in caplog.records if r.name == TASK_LOGGER]
    assert record.getMessage() == "internal error in task 'probe tcp x:1': RuntimeError: bug; hasupd stops"


def test_outside_the_group_tasks_run_on_the_loop_and_cancellation_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        tasks = DaemonTasks(asyncio.get_running_loop())
        async with asyncio.TaskGroup() as group:
            tasks.attach(group)
        tasks.attach(None)
        late = tasks.spawn(_forever(), "late")
        await asyncio.sleep(0)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late

    with caplog.at_level(logging.CRITICAL, logger=TASK_LOGGER):
        asyncio.run(asyncio.wait_for(main(), 5))
    assert not [r for r in caplog.records if r.name == TASK_LOGGER]
