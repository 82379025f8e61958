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


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x05K\x01.",  # a pickled 1
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94h\x05.",  # a memo key that is not there
        bytes(range(256)) * 4,
        b"\x80\x04" + b"(" * 100_000,
        b"\x80\x04\x8d\xe3\xda\x97\rV\x03\x94\xe3\xf2\xc2d\xd8\x06\xac\xa5N\x01\x9c+",  # OverflowError
        b"\x80\x04\x8e\xf3@\xbe\x0e>3(13",  # MemoryError (a length of petabytes)
    ],
)
def test_a_damaged_known_good_file_counts_as_none_and_is_rewritten(tmp_path: Path, data: bytes) -> None:
    config = ServiceConfig(name="web", command=("/bin/true",))
    path = tmp_path / "known-good" / "web.pickle"
    path.parent.mkdir()
    path.write_bytes(data)
    good = KnownGood(tmp_path)
    assert good.load("web") is None
    good.save(config)  # the next stable run writes it again
    assert KnownGood(tmp_path).load("web") == config


def test_a_known_good_config_that_cannot_be_written_is_no_exception(tmp_path: Path) -> None:
    config = ServiceConfig(name="web", command=("/bin/true",))
    (tmp_path / "known-good").write_text("a file where the folder should be")
    good = KnownGood(tmp_path)
    good.save(config)  # a warning, no exception (as on a full disk)
    assert good.load("web") is None
    # A folder where its file should be is replaced.
    (tmp_path / "known-good").unlink()
    (tmp_path / "known-good" / "web.pickle").mkdir(parents=True)
    good.save(config)
    assert KnownGood(tmp_path).load("web") == config
