"""run_command against real processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from hasupd.host.reaper import Reaper
from hasupd.runtimes.command import run_command


async def test_output_exit_code_and_lines() -> None:
    lines: list[bytes] = []
    result = await run_command(
        [sys.executable, "-c", "import sys; print('a'); print('b'); sys.stderr.write('oops'); sys.exit(3)"],
        reaper=None,
        on_stdout_line=lines.append,
        env={},
    )
    assert result.status.code == 3 and not result.ok
    assert result.stdout == b"a\nb\n" and lines == [b"a", b"b"]
    assert result.tail() == "oops"


async def test_timeout_stops_the_whole_group() -> None:
    reaper = Reaper(asyncio.get_running_loop())
    try:
        script = (
            "import signal, subprocess, time; signal.signal(signal.SIGINT, signal.SIG_IGN);"
            " subprocess.Popen(['sleep', '100']); time.sleep(100)"
        )
        result = await run_command(
            [sys.executable, "-c", script],
            reaper=reaper,
            timeout=0.5,
            stop_signal=signal.SIGINT,
            kill_after=0.5,
        )
        assert result.timed_out
        assert result.status.signal == signal.SIGKILL
        assert 1.0 <= result.duration_sec < 4.0
        assert "timed out" in result.describe()
    finally:
        reaper.close()


async def test_stdin_is_passed() -> None:
    result = await run_command(["/bin/cat"], reaper=None, stdin=b"secret\n")
    assert result.ok and result.stdout == b"secret\n"


async def test_cancelled_command_is_stopped_like_a_timeout_and_may_report_while_it_cleans_up(
    tmp_path: Path,
) -> None:
    done = tmp_path / "done"
    script = (
        "import signal, sys, time\n"
        "def bye(*a):\n"
        "    time.sleep(0.3)\n"
        "    sys.stderr.write('cleaning up\\n' * 1000); sys.stderr.flush()\n"
        f"    open({str(done)!r}, 'w').write('clean')\n"
        "    sys.exit(130)\n"
        "signal.signal(signal.SIGINT, bye)\n"
        "time.sleep(100)\n"
    )
    reaper = Reaper(asyncio.get_running_loop())
    try:
        task = asyncio.create_task(
            run_command(
                [sys.executable, "-c", script], reaper=reaper, stop_signal=signal.SIGINT, kill_after=5
            )
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # It was not killed by SIGPIPE half-way: it finished its cleanup.
        assert done.read_text() == "clean"
    finally:
        reaper.close()
