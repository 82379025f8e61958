"""The restic layer against real restic (0.14 and the other Debian release's), local and REST repositories."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from hasupd.backup.compat import ErrorKind, ResticError
from hasupd.backup.restic import Restic
from tests.integration.backup.conftest import RestServer

FULL_ID = re.compile(r"[0-9a-f]{64}\Z")


async def test_version_and_gates(make_restic: Callable[..., Restic], tmp_path: Path) -> None:
    restic = make_restic(tmp_path / "repo")
    version = await restic.version()
    assert version >= (0, 14, 0)
    features = await restic.features()
    assert features.retry_lock == (version >= (0, 16, 0))
    assert features.exit_code_12 == (version >= (0, 17, 1))


async def test_init_if_absent_twice_local_and_rest(
    make_restic: Callable[..., Restic], tmp_path: Path, rest_server: RestServer
) -> None:
    hot = make_restic(tmp_path / "repo")
    assert await hot.init_if_absent() is True
    assert await hot.init_if_absent() is False
    cold = make_restic(rest_server.repo_url(), name="cold")
    assert await cold.init_if_absent(copy_chunker_params_from=hot) is True
    assert await cold.init_if_absent(copy_chunker_params_from=hot) is False
    # Same chunker parameters: copies from hot deduplicate in cold.
    assert (await cold.config())["chunker_polynomial"] == (await hot.config())["chunker_polynomial"]


async def test_backup_snapshots_ls_restore(
    make_restic: Callable[..., Restic], tmp_path: Path, fresh_repo: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01" * 1000)
    (src / "skip.tmp").write_text("excluded\n")
    restic = make_restic(fresh_repo)

    first = await restic.backup([str(src)], excludes=["*.tmp"], tags=["job-a"])
    assert FULL_ID.match(first.snapshot_id), first  # 0.14 prints a short id: resolved
    assert first.files_new == 2 and not first.partial
    (src / "a.txt").write_text("alpha 2\n")
    second = await restic.backup([str(src)], excludes=["*.tmp"], tags=["job-a"])
    assert second.files_changed == 1 and second.files_unmodified == 1

    snaps = await restic.snapshots(tags=["job-a"])
    assert [s.id for s in snaps] == [first.snapshot_id, second.snapshot_id]
    assert snaps[0].paths == (str(src),) and snaps[0].tags == ("job-a",)
    assert snaps[0].time.tzinfo is not None and snaps[0].short_id == first.snapshot_id[:8]
    assert await restic.snapshots(tags=["other"]) == []

    entries = {e.path: e for e in await restic.ls(second.snapshot_id)}
    assert entries[f"{src}/sub/b.bin"].type == "file" and entries[f"{src}/sub/b.bin"].size == 2000
    assert entries[f"{src}/sub"].type == "dir" and f"{src}/skip.tmp" not in entries

    target = tmp_path / "restore"
    result = await restic.restore(first.snapshot_id, target, include_paths=[f"{src}/a.txt"])
    assert (target / src.relative_to("/") / "a.txt").read_text() == "alpha\n"
    assert not (target / src.relative_to("/") / "sub").exists()
    if (await restic.features()).restore_json:
        assert result.bytes_restored == len("alpha\n") and result.files_restored
    else:
        assert result.files_restored is None


async def test_missing_source_path_is_an_error(
    make_restic: Callable[..., Restic], tmp_path: Path, fresh_repo: Path
) -> None:
    # restic itself skips a missing top-level path and exits 0 when another path exists.
    restic = make_restic(fresh_repo)
    (tmp_path / "here").mkdir()
    with pytest.raises(ResticError) as err:
        await restic.backup([str(tmp_path / "here"), str(tmp_path / "gone")])
    assert err.value.kind is ErrorKind.FATAL and "gone" in str(err.value)
    assert await restic.snapshots() == []


async def test_wrong_password_and_missing_repository(
    make_restic: Callable[..., Restic], tmp_path: Path, fresh_repo: Path, rest_server: RestServer
) -> None:
    restic = make_restic(fresh_repo)
    modern = (await restic.features()).exit_codes_10_11
    bad = tmp_path / "bad.pass"
    bad.write_text("nope\n")
    with pytest.raises(ResticError) as err:
        await make_restic(fresh_repo, password=bad).snapshots()
    assert err.value.kind is ErrorKind.WRONG_PASSWORD
    assert err.value.code == (12 if (await restic.features()).exit_code_12 else 1)

    for url in (tmp_path / "absent", rest_server.repo_url()):
        with pytest.raises(ResticError) as err:
            await make_restic(url).snapshots()
        assert err.value.kind is ErrorKind.NO_REPOSITORY, err.value
        assert err.value.code == (10 if modern else 1)


async def test_unreadable_file_gives_partial_snapshot(
    make_restic: Callable[..., Restic], tmp_path: Path, fresh_repo: Path
) -> None:
    """Exit code 3. As root a chmod 000 file is still readable, so restic runs without the capabilities
    that let root ignore permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH dropped from the bounding set
    by setpriv); it stays uid 0 and still owns its repository and cache."""
    real = make_restic(fresh_repo)._binary
    wrapper = tmp_path / "restic-nodac"
    wrapper.write_text(
        f'#!/bin/sh\nexec setpriv --bounding-set=-dac_override,-dac_read_search -- {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "ok.txt").write_text("fine\n")
    secret = src / "locked" / "secret.txt"
    secret.write_text("unreadable\n")
    secret.chmod(0o000)
    restic = make_restic(fresh_repo, binary=str(wrapper))
    summary = await restic.backup([str(src)])
    assert summary.partial
    assert [u.path for u in summary.unreadable] == [str(secret)]
    assert "permission denied" in summary.unreadable[0].message.lower()
    assert FULL_ID.match(summary.snapshot_id)
    assert [s.id for s in await restic.snapshots()] == [summary.snapshot_id]
