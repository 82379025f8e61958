"""fleet: in hasupd.yaml and placement: per service: values, defaults and located errors."""

from __future__ import annotations

import socket
from pathlib import Path

from hasupd.config.load import load_config
from hasupd.config.model import EtcdConfig, FleetConfig, Placement
from tests.unit.config.test_load import issues, write

FLEET = """
fleet:
  etcd: {endpoints: ["http://127.0.0.1:2379"]}
  cluster: prod
"""


def test_no_fleet_means_no_placement_and_defaults_stay() -> None:
    assert FleetConfig.lease_ttl_sec == 10.0


def test_fleet_and_placement_are_read_with_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": FLEET,
            "services.d/db.yaml": "command: [true]\ntimeout_stop_sec: 4s\n"
            "placement: {singleton: true, prefer: [app1], avoid: [app3]}\n",
            "services.d/web.yaml": "command: [true]\ntimeout_stop_sec: 1s\nplacement: {replicas: 2}\n",
            "services.d/local.yaml": "command: [true]\n",
        },
    )
    config = load_config(tmp_path)
    host = socket.gethostname().split(".")[0].lower()
    assert config.daemon.fleet == FleetConfig(
        etcd=EtcdConfig(endpoints=("http://127.0.0.1:2379",)), cluster="prod", host=host, lease_ttl_sec=10.0
    )
    placements = {s.name: s.placement for s in config.services}
    assert placements == {
        "db": Placement(singleton=True, prefer=("app1",), avoid=("app3",)),
        "web": Placement(replicas=2),
        "local": None,
    }
    assert placements["db"] is not None and placements["db"].slots == 1


def test_full_etcd_settings(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
            fleet:
              etcd:
                endpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379/"]
                ca_file: /etc/hasupd/ca.pem
                cert_file: /etc/hasupd/c.pem
                key_file: /etc/hasupd/k.pem
                username: u
                password_file: /etc/hasupd/etcd.pass
              cluster: prod
              host: app1
              lease_ttl_sec: 3s
            """
        },
    )
    fleet = load_config(tmp_path).daemon.fleet
    assert fleet is not None
    assert fleet.etcd.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert (fleet.host, fleet.lease_ttl_sec, fleet.etcd.username) == ("app1", 3.0, "u")


def test_placement_without_fleet_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"services.d/a.yaml": "command: [true]\nplacement: {singleton: true}\n"})
    assert issues(tmp_path) == ["services.d/a.yaml:2:12: placement: placement needs fleet: in hasupd.yaml"]


def test_bad_placements(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": FLEET,
            "services.d/a.yaml": "command: [true]\nplacement: {replicas: 0}\n",
            "services.d/b.yaml": "command: [true]\n"
            "placement: {singleton: true, prefer: [h1, h2], avoid: [h2]}\n",
            "services.d/c.yaml": "command: [true]\nplacement: {singleton: true, replicas: 2}\n",
            "services.d/d.yaml": "command: [true]\nplacement: {prefer: [h1]}\n",
            "services.d/e.yaml": "command: [true]\nplacement: {singleton: false}\n",
            "services.d/f.yaml": "command: [true]\nplacement: {singleton: true, prefer: [H!]}\n",
        },
    )
    found = issues(tmp_path)
    assert found[0] == "services.d/a.yaml:2:23: placement.replicas: expected an integer from 1 to 1000, got 0"
    assert found[1] == "services.d/b.yaml:2:55: placement.avoid: host 'h2' is both preferred and avoided"
    assert (
        found[2]
        == "services.d/c.yaml:2:30: placement.replicas: singleton and replicas are mutually exclusive"
    )
    assert found[3] == "services.d/d.yaml:2:12: placement: expected singleton: true or replicas: N"
    assert (
        found[4]
        == "services.d/e.yaml:2:24: placement.singleton: singleton: false places nothing; remove placement"
    )
    assert found[5].startswith("services.d/f.yaml:2:39: placement.prefer.0: ")
    assert len(found) == 6


def test_bad_fleet_settings(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
            fleet:
              etcd:
                endpoints: ["ftp://x:1", "http://h", "http://h:1/v3"]
                cert_file: /c.pem
                username: u
              cluster: Prod!
              lease_ttl_sec: 1s
            """,
            "services.d/a.yaml": "command: [true]\nplacement: {singleton: true}\n",
        },
    )
    found = issues(tmp_path)
    assert (
        "hasupd.yaml:3:17: fleet.etcd.endpoints.0: invalid etcd endpoint 'ftp://x:1': expected http(s)://HOST:PORT"
        in found
    )
    assert (
        "hasupd.yaml:3:30: fleet.etcd.endpoints.1: invalid etcd endpoint 'http://h': expected http(s)://HOST:PORT"
        in found
    )
    assert any(f.startswith("hasupd.yaml:3:42: fleet.etcd.endpoints.2: invalid etcd endpoint") for f in found)
    assert any(f.startswith("hasupd.yaml:6:12: fleet.cluster: ") for f in found)
    # the broken fleet: is reported once, in hasupd.yaml, not again in every placed service
    assert not any(f.startswith("services.d/") for f in found)


def test_pairs_and_short_ttl(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
            fleet:
              etcd: {endpoints: ["https://h:1"], cert_file: /c.pem, username: u}
              cluster: prod
            """
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:2:9: fleet.etcd.key_file: required key is missing (cert_file is given)",
        "hasupd.yaml:2:9: fleet.etcd.password_file: required key is missing (username is given)",
    ]
    write(tmp_path, {"hasupd.yaml": FLEET + "  lease_ttl_sec: 1s\n"})
    assert issues(tmp_path) == [
        "hasupd.yaml:4:18: fleet.lease_ttl_sec: must be at least 2s (etcd's minimum lease TTL)"
    ]


def test_placed_stop_timeout_must_fit_in_half_the_ttl(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": FLEET + "  lease_ttl_sec: 4s\n",
            "services.d/a.yaml": "command: [true]\nplacement: {singleton: true}\n",
            "services.d/b.yaml": "command: [true]\ntimeout_stop_sec: 3s\nplacement: {singleton: true}\n",
            "services.d/c.yaml": "command: [true]\ntimeout_stop_sec: 1500ms\nplacement: {singleton: true}\n",
        },
    )
    tail = "a fenced stop must end before the lease expires"
    assert issues(tmp_path) == [
        "services.d/a.yaml:2:12: placement: a placed service needs timeout_stop_sec <= half of "
        f"fleet.lease_ttl_sec less 0.5s (1.5s), got 10s: {tail}",
        "services.d/b.yaml:2:19: timeout_stop_sec: a placed service needs timeout_stop_sec <= half of "
        f"fleet.lease_ttl_sec less 0.5s (1.5s), got 3s: {tail}",
    ]


def test_lease_ttl_is_whole_seconds(tmp_path: Path) -> None:
    write(tmp_path, {"hasupd.yaml": FLEET + "  lease_ttl_sec: 2500ms\n"})
    assert issues(tmp_path) == [
        "hasupd.yaml:4:18: fleet.lease_ttl_sec: must be whole seconds (etcd's leases are), got 2.5s"
    ]


ELECTION = """
fleet:
  etcd: {endpoints: ["http://127.0.0.1:2379"], election_timeout_sec: 1s}
  cluster: prod
"""


def test_a_ttl_that_cannot_ride_out_a_known_election_timeout_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"hasupd.yaml": ELECTION + "  lease_ttl_sec: 3s\n"})
    assert issues(tmp_path) == [
        "hasupd.yaml:4:18: fleet.lease_ttl_sec: 3s cannot ride out an etcd leader election (up to 2.5s "
        "with fleet.etcd.election_timeout_sec 1s): every election would fence the owners; use at least 4s"
    ]


def test_a_stop_timeout_that_leaves_no_room_for_an_election_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": ELECTION + "  lease_ttl_sec: 5s\n",
            "services.d/a.yaml": "command: [true]\ntimeout_stop_sec: 500ms\nplacement: {singleton: true}\n",
            "services.d/b.yaml": "command: [true]\ntimeout_stop_sec: 1500ms\nplacement: {singleton: true}\n",
        },
    )
    assert issues(tmp_path) == [
        "services.d/b.yaml:2:19: timeout_stop_sec: with timeout_stop_sec 1.5s and fleet.lease_ttl_sec 5s "
        "this service would be fenced (stopped, then elected anew) by every etcd leader election (up to "
        "2.5s with fleet.etcd.election_timeout_sec): shorten timeout_stop_sec or raise lease_ttl_sec"
    ]


def test_the_default_ttl_rides_out_etcds_default_election_timeout(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": ELECTION,
            "services.d/a.yaml": "command: [true]\ntimeout_stop_sec: 4500ms\nplacement: {singleton: true}\n",
        },
    )
    fleet = load_config(tmp_path).daemon.fleet
    assert fleet is not None and fleet.etcd.election_timeout_sec == 1.0
