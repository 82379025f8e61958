"""Fuzz ``load_config`` (what ``hasupd check-config`` and a reload run) with config mutants.

Every mutant must end in a Config or a ConfigError, never another exception; every error must be
``FILE:LINE:COL: ...`` with FILE in the config dir; each mutant must be done promptly. The seed is
printed (pytest shows it on failure); HASUPD_FUZZ_SEED=N replays a run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hasupd.config.load import ConfigError, load_config
from hasupd.config.model import Config
from tests.support.mutants import Mutant, random_mutant, seed_files, special_mutants

BUDGET_SEC = 15.0  # the whole test, far below a minute even on a loaded machine
MAX_MUTANTS = 4000
SLOW_SEC = 3.0  # one mutant; the worst legal file takes ~0.3 s unloaded
HUNG_SEC = 6.0  # one mutant, interrupted


def _values(value: object) -> list[object]:
    """Return every leaf value of a (nested) config dataclass."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for field in dataclasses.fields(value) for leaf in _values(getattr(value, field.name))]
    if isinstance(value, tuple | list):
        return [leaf for item in value for leaf in _values(item)]
    return [value]


class _Hung(Exception):
    pass


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise _Hung in the block after ``seconds`` (a blocking open() of a FIFO is interrupted too)."""

    def fire(signum: int, frame: object) -> None:
        raise _Hung

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_one(mutant: Mutant, root: Path) -> str | None:
    """Run ``load_config`` on ``mutant`` written into ``root``; return what is wrong, or None."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    mutant.write(root)
    started = time.monotonic()
    try:
        with _alarm(HUNG_SEC):
            config: Config | None = load_config(root)
    except _Hung:
        return f"hung for {HUNG_SEC}s"
    except ConfigError as error:
        config = None
        for issue in error.issues:
            text = str(issue)
            inside = (issue.file + "/").startswith(f"{root}/")
            if not inside or issue.line < 1 or issue.col < 1 or "\n" in text or "\r" in text:
                return f"error not located as FILE:LINE:COL inside the config dir: {text!r}"
    except Exception as error:  # the bug this test looks for
        return f"{type(error).__name__}: {error}"
    took = time.monotonic() - started
    if took > SLOW_SEC:
        return f"took {took:.1f}s"
    if config is not None:
        if mutant.must_fail:
            return "accepted, must be an error"
        for leaf in _values(config):
            if isinstance(leaf, float) and not math.isfinite(leaf):
                return f"accepted a non-finite number {leaf}"
            if isinstance(leaf, int) and not isinstance(leaf, bool) and abs(leaf) >= 1 << 62:
                return f"accepted an unbounded number {leaf}"
    return None


def test_config_mutants_give_located_errors_promptly(tmp_path: Path) -> None:
    seed = int(os.environ.get("HASUPD_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32))))
    print(f"config fuzz seed: HASUPD_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    seeds = seed_files()
    root = tmp_path / "config"
    failures: list[str] = []
    deadline = time.monotonic() + BUDGET_SEC
    count = 0
    for mutant in special_mutants():
        count += 1
        problem = _check_one(mutant, root)
        if problem is not None:
            failures.append(f"{mutant.label}: {problem}")
    while count < MAX_MUTANTS and time.monotonic() < deadline:
        count += 1
        mutant = random_mutant(rng, seeds)
        problem = _check_one(mutant, root)
        if problem is not None:
            failures.append(f"{mutant.label}: {problem}")
    print(f"{count} config mutants checked")
    assert not failures, f"seed {seed}: {len(failures)} of {count} mutants:\n" + "\n".join(failures[:30])
    assert count >= 100, f"only {count} mutants in {BUDGET_SEC}s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("environment: " + "[" * 1000 + "]" * 1000, "2:77: too complex: nested more than 64 levels deep"),
        ("limits: {cpu_percent: !!float abc}", "2:23: limits.cpu_percent: expected a number > 0 and <= "),
        ("instances: !!int abc", "2:12: instances: expected an integer from 1 to 1000, got 'abc'"),
        (
            "start_limit: {burst: !!int 0x}",
            "2:22: start_limit.burst: expected an integer from 1 to 1000000, got '0x'",
        ),
        ('group: "\\ud800"', "2:8: group: not valid text: a lone surrogate \\ud800 (half a UTF-16 pair)"),
        ('watchdog_sec: "' + "9" * 400 + 's"', "2:15: watchdog_sec: invalid duration '999"),
        ("instances: 100000000000000000000", "2:12: instances: expected an integer from 1 to 1000, got 1000"),
        ("kill_signal: '²'", "2:14: kill_signal: invalid signal '²'"),
        ("sockets: [{listen: '127.0.0.1:²'}]", "2:20: sockets.0.listen: invalid port '²'"),
        ("user: 4294967295", "2:7: user: invalid user id 4294967295"),
    ],
)
def test_issue_15_reproductions_are_located_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text("command: [/bin/sleep, '10']\n" + text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    first = str(info.value.issues[0]).removeprefix(f"{tmp_path}/services.d/a.yaml:")
    assert first.startswith(message), info.value


def test_yaml_1_1_numbers_that_are_numbers_are_read_as_such(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text(
        "command: [/bin/sleep, '10']\nlimits: {cpu_percent: 0x50}\nstart_limit: {burst: 1:30}\n"
    )
    service = load_config(tmp_path).services[0]
    assert (service.limits.cpu_percent, service.start_limit.burst) == (80.0, 90)


def test_a_numeric_user_and_group_are_ids(tmp_path: Path) -> None:
    (tmp_path / "services.d").mkdir()
    (tmp_path / "services.d" / "a.yaml").write_text("command: [/bin/sleep, '10']\nuser: 65534\ngroup: 0\n")
    service = load_config(tmp_path).services[0]
    assert (service.user, service.group) == ("65534", "0")
