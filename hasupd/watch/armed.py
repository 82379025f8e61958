"""The base of the freeze watchers: one timer and at most one task per armed check.

Each watcher is armed for one service by the state machine and driven by its own timer
(``loop.call_at``); nothing ticks over all services, so idle cost is one timer per armed check. The
watchers only observe and call back; what to do (stop, restart, alert) is the state machine's call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine

from hasupd.ports import TaskSpawner


class Armed:
    """Base of the watchers: one timer and at most one task at a time, both owned and cancelled here.

    Single use: a service's next start gets new watchers, so a late result of an old check can never
    reach the new run. Checks run as tasks of ``tasks`` (the daemon's TaskGroup: a bug in a check stops
    hasupd); without it (a watcher used on its own) as plain tasks of the loop.
    """

    def __init__(self, tasks: TaskSpawner | None = None) -> None:
        self._tasks = tasks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None
        self._used = False

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._used:
            raise RuntimeError(f"{type(self).__name__} is single-use: make a new one for each start")
        self._used = True
        self._loop = loop

    def stop(self) -> None:
        """Disarm the timer and cancel a running check; ``wait_stopped`` waits for its cleanup."""
        loop, self._loop = self._loop, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A callback that stops its own watcher runs inside that task, which ends by itself.
        if loop is not None and self._task is not None and self._task is not asyncio.current_task(loop):
            self._task.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the task cancelled by ``stop`` has finished (its process is signalled)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_at(self._loop.time() + delay, callback)

    def _spawn(self, coro: Coroutine[None, None, None], name: str) -> None:
        assert self._loop is not None
        if self._tasks is not None:
            task = self._tasks.spawn(coro, name)
        else:
            task = self._loop.create_task(coro, name=name)
        self._task = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if self._tasks is None and not task.cancelled():
            task.result()  # standalone: a bug in a check surfaces in the loop's exception handler
