"""The fleet harness itself: a real 3-member etcd cluster in a hub namespace, hosts in namespaces.

These pass without any fleet code; they prove that what test_fleet.py measures is the fleet's doing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.etcd import ETCDCTL, EtcdCluster
from tests.support.netns import Fabric, ip

pytestmark = [pytest.mark.root]


def host_get(prefix: tuple[str, ...], endpoint: str, key: str) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, ETCDCTL, "--endpoints", endpoint, "--dial-timeout", "1s", "--command-timeout", "2s"]
    env = {**os.environ, "ETCDCTL_API": "3"}
    argv += ["get", key]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, check=False)


def test_cluster_quorum_partition_and_teardown(tmp_path: Path) -> None:
    with Fabric(tmp_path) as fabric:
        names = list(fabric.namespaces)
        etcd = EtcdCluster(tmp_path / "etcd", 3, hosts=fabric.etcd_addresses(3), prefix=fabric.hub_prefix)
        try:
            etcd.start()
            host = fabric.add_host("h1")
            names = list(fabric.namespaces)
            etcd.ctl("put", "/k", "v")
            assert "v" in host_get(host.prefix, etcd.endpoints[2], "/k").stdout  # a host reaches etcd
            etcd.kill_member(0)
            assert etcd.get_prefix("/k") == {"/k": "v"}  # two of three: a quorum
            etcd.kill_member(1)
            with pytest.raises((RuntimeError, subprocess.TimeoutExpired)):
                etcd.ctl("get", "/k", timeout=6)  # one of three: no linearizable read
            etcd.restart_member(0)
            etcd.restart_member(1)
            etcd.wait_healthy(30)
            assert etcd.get_prefix("/k") == {"/k": "v"}  # data kept across the restart
            host.partition()
            assert host_get(host.prefix, etcd.endpoints[0], "/k").returncode != 0
            host.heal()
            assert "v" in host_get(host.prefix, etcd.endpoints[0], "/k").stdout
        finally:
            etcd.stop()
    left = ip("netns", "list").stdout
    assert not [n for n in names if n in left], left  # every namespace is gone
