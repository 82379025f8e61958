"""KnownGood: one read and one write per service config, however many instances report it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasupd import recovery
from hasupd.config.model import ServiceConfig
from hasupd.recovery import KnownGood


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    done: list[Path] = []
    real = recovery.atomic_write_bytes

    def counting(path: Path, data: bytes) -> None:
        done.append(path)
        real(path, data)

    monkeypatch.setattr(recovery, "atomic_write_bytes", counting)
    return done


def test_many_saves_of_one_config_write_once_and_a_new_config_again(
    tmp_path: Path, writes: list[Path]
) -> None:
    good = KnownGood(tmp_path)
    a = ServiceConfig(name="web", command=("/bin/sleep", "1"))
    b = ServiceConfig(name="web", command=("/bin/sleep", "2"))
    for _ in range(500):
        good.save(a)
    assert len(writes) == 1 and good.load("web") == a
    good.save(b)
    good.save(b)
    assert len(writes) == 2 and good.load("web") == b


def test_a_file_left_by_an_earlier_run_with_the_same_config_is_not_rewritten(
    tmp_path: Path, writes: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = ServiceConfig(name="web", command=("/bin/sleep", "1"))
    KnownGood(tmp_path).save(a)
    assert len(writes) == 1
    fresh = KnownGood(tmp_path)  # hasupd restarted
    reads: list[str] = []
    real_load = fresh.load
    monkeypatch.setattr(fresh, "load", lambda name: reads.append(name) or real_load(name))
    for _ in range(100):
        fresh.save(a)
    assert len(writes) == 1 and reads == ["web"]
