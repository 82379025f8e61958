"""Undoing an interrupted restore from its journal alone, on real files, phase by phase."""

from __future__ import annotations

import os
from pathlib import Path

from hasupd.backup.journal import Journal, RestoreEntry, SwapPath, undo_restore


def tree(root: Path) -> dict[str, str]:
    """Return {relative path: content} of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def layout(tmp: Path, phase: str, *, aside: bool, restored: bool) -> tuple[RestoreEntry, dict[str, str]]:
    """Build what a restore of ``tmp/data`` left when hasupd died in ``phase``."""
    live, kept = tmp / "data", tmp / "data.pre-restore-S"
    staging = tmp / ".data.hasupd-restore-S"
    live.mkdir()
    (live / "ok.txt").write_text("LIVE\n")
    before = tree(tmp)
    (staging / str(live).lstrip("/")).mkdir(parents=True)
    (staging / str(live).lstrip("/") / "ok.txt").write_text("RESTORED\n")
    if aside:
        os.rename(live, kept)
    if restored:
        os.rename(staging / str(live).lstrip("/"), live)
    sp = SwapPath(live=str(live), staging=str(staging), kept=str(kept), existed=True)
    return RestoreEntry("app-data", "root", "S", "in-place", phase, [sp]), before


def test_killed_while_staging_only_the_staging_goes(tmp_path: Path) -> None:
    entry, before = layout(tmp_path, "stage", aside=False, restored=False)
    done = undo_restore(entry)
    assert tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["data"]
    assert done == [f"removed the staging folder {tmp_path / '.data.hasupd-restore-S'}"]


def test_killed_between_the_two_renames_puts_the_original_back(tmp_path: Path) -> None:
    entry, before = layout(tmp_path, "swap", aside=True, restored=False)
    assert not (tmp_path / "data").exists()  # the half-done swap: nothing live at all
    done = undo_restore(entry)
    assert tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["data"]
    assert any("original data is live again" in line for line in done), done


def test_killed_after_the_swap_drops_the_unused_restored_copy(tmp_path: Path) -> None:
    entry, before = layout(tmp_path, "swap", aside=True, restored=True)
    undo_restore(entry)
    assert tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["data"]


def test_killed_while_services_ran_on_restored_data_keeps_that_copy_aside(tmp_path: Path) -> None:
    entry, _ = layout(tmp_path, "started", aside=True, restored=True)
    undo_restore(entry)
    assert (tmp_path / "data" / "ok.txt").read_text() == "LIVE\n"
    assert (tmp_path / "data.interrupted-restore-S" / "ok.txt").read_text() == "RESTORED\n"
    assert sorted(os.listdir(tmp_path)) == ["data", "data.interrupted-restore-S"]


def test_a_path_that_did_not_exist_before_is_absent_again(tmp_path: Path) -> None:
    staging = tmp_path / ".new.hasupd-restore-S"
    live = tmp_path / "new"
    staging.mkdir()
    live.mkdir()  # the restored copy, swapped in
    sp = SwapPath(
        live=str(live), staging=str(staging), kept=str(tmp_path / "new.pre-restore-S"), existed=False
    )
    undo_restore(RestoreEntry("j", "root", "S", "in-place", "swap", [sp]))
    assert os.listdir(tmp_path) == []


def test_partial_target_restore_is_removed_and_a_given_empty_folder_kept(tmp_path: Path) -> None:
    made, given = tmp_path / "made", tmp_path / "given"
    for target in (made, given):
        (target / "srv").mkdir(parents=True)
        (target / "srv" / "x").write_text("partial")
    undo_restore(RestoreEntry("j", "root", "S", "target", "stage", target=str(made)))
    undo_restore(RestoreEntry("j", "root", "S", "target", "stage", target=str(given), target_existed=True))
    assert not made.exists() and given.is_dir() and os.listdir(given) == []


def test_journal_round_trip_and_torn_files(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "app-data")
    (tmp_path / "x").mkdir()
    entry, _ = layout(tmp_path / "x", "swap", aside=False, restored=False)
    journal.write_restore(entry)
    assert journal.interrupted_restore() == entry
    journal.end_restore()
    assert journal.interrupted_restore() is None
    journal.begin_run(["backup", "prune"])
    assert journal.interrupted_run() == ["backup", "prune"]
    assert journal.interrupted_run() is None  # read once


def test_journal_files_that_are_not_utf8_read_as_torn(tmp_path: Path) -> None:
    """Bytes hasupd never writes (a damaged disk) are read like a file torn by a crash; they raised
    UnicodeDecodeError at hasupd's start (the leftovers of every job are looked at then)."""
    journal = Journal(tmp_path, "app-data")
    journal.dir.mkdir(parents=True, exist_ok=True)
    for path in (journal.run_file, journal.dump_file, journal.restore_file):
        path.write_bytes(b"\xff\xfe{")
    assert journal.interrupted_run() == []
    assert journal.interrupted_dump() is None
    try:
        journal.interrupted_restore()
    except ValueError as error:  # left in place for an admin, with the reason
        assert "not a restore journal" in str(error)
    else:
        raise AssertionError("a damaged restore journal must be reported")
