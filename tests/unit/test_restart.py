"""Table tests for the pure restart policy."""

from __future__ import annotations

import pytest

from hasupd.restart import StartLimit, backoff_delay, shall_restart
from hasupd.states import RestartMode as M
from hasupd.states import ServiceResult as R

# (mode, result) -> restart?  Mirrors systemd's table for Restart=.
TABLE = {
    M.NO: set(),
    M.ALWAYS: {
        R.SUCCESS,
        R.EXIT_CODE,
        R.SIGNAL,
        R.CORE_DUMP,
        R.TIMEOUT,
        R.WATCHDOG,
        R.HEALTH,
        R.RESOURCES,
        R.OOM_KILL,
    },
    M.ON_SUCCESS: {R.SUCCESS},
    M.ON_FAILURE: {
        R.EXIT_CODE,
        R.SIGNAL,
        R.CORE_DUMP,
        R.TIMEOUT,
        R.WATCHDOG,
        R.HEALTH,
        R.RESOURCES,
        R.OOM_KILL,
    },
    M.ON_ABNORMAL: {R.SIGNAL, R.CORE_DUMP, R.TIMEOUT, R.WATCHDOG, R.HEALTH, R.OOM_KILL},
    M.ON_WATCHDOG: {R.WATCHDOG},
}


@pytest.mark.parametrize("mode", list(M))
@pytest.mark.parametrize("result", list(R))
def test_shall_restart_table(mode: M, result: R) -> None:
    restart, reason = shall_restart(mode, result, stop_requested=False)
    assert restart == (result in TABLE[mode]), reason
    assert reason  # the decision always says why


@pytest.mark.parametrize("mode", list(M))
def test_requested_stop_never_restarts(mode: M) -> None:
    assert shall_restart(mode, R.SIGNAL, stop_requested=True) == (False, "a stop was requested")


def test_backoff_doubles_up_to_the_maximum_and_jitter_only_shortens() -> None:
    assert [backoff_delay(n, 0.1, 1.0, rand=lambda: 0.0) for n in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert backoff_delay(0, 0.1, 1.0, rand=lambda: 1.0) == pytest.approx(0.08)
    assert backoff_delay(1000, 0.1, 30.0, rand=lambda: 0.0) == 30.0
    assert backoff_delay(3, 0.0, 30.0) == 0.0


def test_start_limit_window() -> None:
    limit = StartLimit(burst=3, interval=10.0)
    assert [limit.allow(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert limit.count(3.0) == 3
    assert limit.allow(10.5)  # the start at 0.0 left the window
    limit.reset()
    assert limit.count(10.5) == 0


@pytest.mark.parametrize("mode", list(M))
def test_prevent_exit_status_is_never_restarted(mode: M) -> None:
    restart, reason = shall_restart(
        mode, R.EXIT_CODE, stop_requested=False, exit_code=3, prevent_exit_status=(3, 7)
    )
    assert (restart, reason) == (False, "exit code 3 means a retry cannot help")


def test_prevent_exit_status_applies_only_to_listed_codes_and_exit_code_results() -> None:
    def decide(mode: M, result: R, code: int | None, prevent: tuple[int, ...] = (3,)) -> tuple[bool, str]:
        return shall_restart(mode, result, stop_requested=False, exit_code=code, prevent_exit_status=prevent)

    assert decide(M.ALWAYS, R.EXIT_CODE, 4) == (True, "restart is 'always'")
    # A signal has no exit code; a clean exit is not an exit-code result.
    assert decide(M.ALWAYS, R.SIGNAL, None)[0]
    assert decide(M.ALWAYS, R.SUCCESS, 0, prevent=(0,))[0]
    assert decide(M.ON_FAILURE, R.EXIT_CODE, 3, prevent=()) == (
        True,
        "result exit-code and restart is 'on-failure'",
    )
