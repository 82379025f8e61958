"""Restart policy as pure functions: whether to restart, how long to wait, and the start limit."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

from hasupd.states import RestartMode, ServiceResult

# Results that systemd counts as "abnormal" for Restart=on-abnormal.
_ABNORMAL = frozenset(
    {
        ServiceResult.SIGNAL,
        ServiceResult.CORE_DUMP,
        ServiceResult.TIMEOUT,
        ServiceResult.WATCHDOG,
        ServiceResult.HEALTH,
        ServiceResult.OOM_KILL,
    }
)
# Never restarted, whatever the mode: restarting would repeat the failure at once.
_NEVER = frozenset({ServiceResult.START_LIMIT_HIT})


def shall_restart(
    mode: RestartMode,
    result: ServiceResult,
    *,
    stop_requested: bool,
    exit_code: int | None = None,
    prevent_exit_status: Collection[int] = (),
) -> tuple[bool, str]:
    """Return (restart?, reason) for a main process that ended with ``result``.

    ``stop_requested`` is true when an operator or hasupd itself asked the service to stop; then it
    is never restarted. ``exit_code`` is the main process's exit code (None if a signal ended it);
    with result exit-code, a code listed in ``prevent_exit_status`` (``restart_prevent_exit_status``)
    is never restarted, whatever the mode.
    """
    if result is ServiceResult.EXIT_CODE and exit_code is not None and exit_code in prevent_exit_status:
        return False, f"exit code {exit_code} means a retry cannot help"
    if stop_requested:
        return False, "a stop was requested"
    if result in _NEVER:
        return False, f"result {result} is final"
    success = result is ServiceResult.SUCCESS
    match mode:
        case RestartMode.NO:
            return False, "restart is 'no'"
        case RestartMode.ALWAYS:
            return True, "restart is 'always'"
        case RestartMode.ON_SUCCESS:
            return (
                (True, "it exited cleanly and restart is 'on-success'")
                if success
                else (
                    False,
                    f"result {result} and restart is 'on-success'",
                )
            )
        case RestartMode.ON_FAILURE:
            return (
                (False, "it exited cleanly and restart is 'on-failure'")
                if success
                else (
                    True,
                    f"result {result} and restart is 'on-failure'",
                )
            )
        case RestartMode.ON_ABNORMAL:
            if result in _ABNORMAL:
                return True, f"result {result} is abnormal and restart is 'on-abnormal'"
            return False, f"result {result} is not abnormal and restart is 'on-abnormal'"
        case RestartMode.ON_WATCHDOG:
            if result is ServiceResult.WATCHDOG:
                return True, "the watchdog fired and restart is 'on-watchdog'"
            return False, f"result {result} and restart is 'on-watchdog'"


def backoff_delay(
    attempt: int,
    base: float,
    maximum: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Return the delay before restart number ``attempt`` (0 for the first restart).

    The delay doubles from ``base`` up to ``maximum``; jitter takes up to a fifth off (never adds), so
    a crash loop of many services spreads out without ever waiting longer than configured.
    """
    if base <= 0:
        return 0.0
    nominal: float = min(maximum, base * 2.0 ** min(attempt, 62))
    return nominal * (1.0 - 0.2 * rand())


class StartLimit:
    """At most ``burst`` starts within any ``interval`` seconds."""

    def __init__(self, burst: int, interval: float) -> None:
        self.burst = burst
        self.interval = interval
        # A list, not a deque: it holds at most ``burst`` (a handful of) times, and one per service
        # (an empty deque costs ~600 bytes, an empty list 56).
        self._starts: list[float] = []

    def _expire(self, now: float) -> None:
        while self._starts and self._starts[0] <= now - self.interval:
            del self._starts[0]

    def allow(self, now: float) -> bool:
        """Return True and count the start if one more start is allowed at ``now``."""
        self._expire(now)
        if len(self._starts) >= self.burst:
            return False
        self._starts.append(now)
        return True

    def reset(self) -> None:
        """Forget every counted start."""
        self._starts.clear()

    def count(self, now: float) -> int:
        """Return how many starts are counted in the window ending at ``now``."""
        self._expire(now)
        return len(self._starts)
