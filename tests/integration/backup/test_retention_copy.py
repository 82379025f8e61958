"""Retention on back-dated history and the long-term copy to a REST repository, against real restic."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from hasupd.backup.restic import Restic
from hasupd.backup.retention import long_term_set, safe_plan
from hasupd.config.model import Keep
from tests.integration.backup.conftest import EXTRA, History, RestServer, history_times


def at(month: int, day: int, hour: int = 3) -> datetime:
    return datetime(2025, month, day, hour, 0, tzinfo=UTC)


# Worked out by hand for the 03:00 snapshots of conftest.DAYS (January: 1 5 10 12 15 19 22 25 26 29 31,
# February: 1..9) plus one at 01:00 on 02-09:
#   daily 7  -> the newest snapshot of each of the 7 newest days: 02-09 (03:00, not 01:00) .. 02-03;
#   weekly 4 -> the newest of each of the 4 newest ISO weeks: 02-09 (a Sunday, week 6), then the
#               Sundays 02-02 (week 5: 01-27..02-02), 01-26 (week 4), 01-19 (week 3).
# restic >= 0.17 would also keep the oldest snapshot while a bucket has counts left; none are left here.
EXPECTED_SHORT_TERM = {at(2, d) for d in range(3, 10)} | {at(2, 2), at(1, 26), at(1, 19)}


async def test_retention_plan_matches_hand_computed_policy(
    make_restic: Callable[..., Restic], history: History
) -> None:
    restic = make_restic(history.repo)
    snapshots = await restic.snapshots()
    assert sorted(s.time for s in snapshots) == sorted(history_times())
    plan = await restic.forget_plan(Keep(daily=7, weekly=4))
    assert len(plan.groups) == 1
    group = plan.groups[0]
    assert group.key.paths == (str(history.source),) and group.key.host is not None
    assert {s.time for s in group.keep} == EXPECTED_SHORT_TERM
    assert {s.time for s in group.remove} == set(history_times()) - EXPECTED_SHORT_TERM
    assert EXTRA in {s.time for s in group.remove}

    doomed = safe_plan(plan, snapshots)
    await restic.forget_ids(doomed)
    await restic.prune()
    assert {s.time for s in await restic.snapshots()} == EXPECTED_SHORT_TERM


async def test_long_term_copy_to_rest_repository(
    make_restic: Callable[..., Restic], history: History, rest_server: RestServer
) -> None:
    hot = make_restic(history.repo)
    cold = make_restic(rest_server.repo_url(), name="cold")
    assert await cold.init_if_absent(copy_chunker_params_from=hot)
    keep = Keep(monthly=12, yearly=5)
    features = await hot.features()
    snapshots = await hot.snapshots()

    chosen = long_term_set(snapshots, keep, datetime.now(UTC), keep_oldest=features.forget_keeps_oldest)
    by_id = {s.id: s.time for s in snapshots}
    # By hand: the newest of February and of January (monthly), 2025's newest is February's (yearly);
    # restic >= 0.17 also keeps the oldest (2025-01-01) as the monthly count is not used up.
    expected = {at(2, 9), at(1, 31)} | ({at(1, 1)} if features.forget_keeps_oldest else set())
    assert {by_id[i] for i in chosen} == expected
    # The pure function agrees with restic's own planner on this version.
    plan = await hot.forget_plan(keep)
    assert {s.id for g in plan.groups for s in g.keep} == chosen

    copied = await hot.copy(sorted(chosen), to=cold)
    assert sorted(copied) == sorted(chosen)
    in_cold = await cold.snapshots()
    assert {s.original for s in in_cold} == chosen
    assert {s.time for s in in_cold} == expected

    assert await hot.copy(sorted(chosen), to=cold) == []  # already there: restic is not even run
    assert len(await cold.snapshots()) == len(chosen)
