"""A recording on_exit callback for tests that drive the spawner directly."""

from __future__ import annotations

import asyncio

from hasupd.ports import ExitStatus


class Exit:
    """on_exit callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[ExitStatus] = []
        self.done = asyncio.Event()

    def __call__(self, status: ExitStatus) -> None:
        self.calls.append(status)
        self.done.set()

    async def wait(self, timeout: float = 10.0) -> ExitStatus:
        """Return the one exit status, waiting up to ``timeout`` for it."""
        await asyncio.wait_for(self.done.wait(), timeout)
        assert len(self.calls) == 1
        return self.calls[0]
