"""Silences read back from a silences.json that hasupd did not write itself."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hasupd.alerts.silences import FILE, Silences


def test_entries_of_the_wrong_types_are_left_out_and_the_rest_still_match(tmp_path: Path) -> None:
    now = time.time()
    good = {"target": "web", "until": now + 600, "reason": "maintenance", "created": now, "by": "root"}
    wrong = [
        {**good, "target": "db", "until": "soon"},
        {**good, "target": ["web"]},
        {**good, "target": "db", "until": float("inf")},
        {**good, "target": "db", "created": None},
        {**good, "target": "db", "reason": 1},
        {**good, "target": "db", "by": None},
        {**good, "target": "db", "until": True},
        "web",
        [1, 2],
    ]
    (tmp_path / FILE).write_text(json.dumps([*wrong, good]))
    silences = Silences(tmp_path)
    # Said once, naming the file; the good one holds.
    assert silences.load() == f"{tmp_path / FILE}: 9 entries are not silences, left out"
    assert [s.target for s in silences.active(now)] == ["web"]
    found = silences.match(["db", "web"], now)
    assert found is not None and (found.target, found.reason) == ("web", "maintenance")
    assert silences.match(["db"], now) is None
