"""The fleet entry of the state record (hasupd.fleet.carry): an entry of the wrong types is "nothing to
carry" (the node starts anew), never an exception at start."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hasupd.config.model import EtcdConfig, FleetConfig, ServiceConfig
from hasupd.fleet.carry import carried


class Manager:
    """A manager that places nothing: enough to reach every field of the entry."""

    def placed(self) -> dict[str, ServiceConfig]:
        return {}

    def placed_inactive(self, name: str) -> bool:
        return True


GOOD: dict[str, Any] = {
    "cluster": "c",
    "host": "h",
    "lease": 7,
    "last_ack": 1.0,
    "last_ack_wall": 2.0,
    "owned": [{"service": "web", "key": "k", "token": 3, "since": 1.0}],
    "gave_up": {"web": [5.0, "k"]},
}


@pytest.mark.parametrize(
    "entry",
    [
        {**GOOD, "lease": math.inf},
        {**GOOD, "lease": -math.inf},
        {**GOOD, "lease": math.nan},
        {**GOOD, "lease": "x"},
        {**GOOD, "lease": [1]},
        {**GOOD, "owned": 5},
        {**GOOD, "owned": [{**GOOD["owned"][0], "token": math.inf}]},
        {**GOOD, "owned": [{**GOOD["owned"][0], "environment": [1]}]},
        {**GOOD, "gave_up": {"web": 1}},
        {**GOOD, "gave_up": [1]},
        json.loads('{"cluster": "c", "host": "h", "lease": Infinity}'),
        [],
        3,
    ],
)
def test_a_malformed_fleet_entry_carries_nothing(entry: object) -> None:
    config = FleetConfig(etcd=EtcdConfig(endpoints=("http://127.0.0.1:1",)), cluster="c", host="h")
    assert carried(entry, config, Manager()) is None  # type: ignore[arg-type]


def test_a_good_entry_is_carried() -> None:
    config = FleetConfig(etcd=EtcdConfig(endpoints=("http://127.0.0.1:1",)), cluster="c", host="h")
    found = carried(GOOD, config, Manager())  # type: ignore[arg-type]
    assert found is not None and found.lease == 7 and found.stale == [("k", 3)]
