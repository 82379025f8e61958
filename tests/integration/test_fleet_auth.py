"""Issue 18: the fleet against a REAL etcd that demands a client certificate (``--client-cert-auth``) and
a user name and password (``etcdctl auth enable``), in the network-namespace fabric of test_fleet.py.

A host with the right CA, client certificate and password runs the singleton; hosts with a wrong
password, a client certificate from another CA, or none at all each get one clear record naming the
endpoint and etcd's (or TLS's) refusal, keep running (their local services too) and never run it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_fleet import PY, alive, wait_until
from tests.support.etcd import EtcdCluster, make_ca, make_client_cert, make_server_cert
from tests.support.harness import Hasupd
from tests.support.netns import SINGLETON_SCRIPT, Fabric, Host, read_intervals

pytestmark = [pytest.mark.root]

CLUSTER = "t18auth"
TTL = 4.0  # every call is a new TLS connection (and a first one authenticates): a call timeout of TTL/6


@dataclass
class Secure:
    fabric: Fabric
    etcd: EtcdCluster
    tls: Path
    ca: tuple[Path, Path]
    log: Path
    script: Path


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Secure]:
    """One etcd member in the hub namespace: https only, client certificates signed by its CA, auth on."""
    with Fabric(tmp_path) as fabric:
        tls = tmp_path / "tls"
        ca = make_ca(tls, "etcd-ca")
        (address,) = fabric.etcd_addresses(1)
        server = make_server_cert(tls, ca, address)
        admin = make_client_cert(tls, ca, "admin")
        etcd = EtcdCluster(
            tmp_path / "etcd",
            1,
            hosts=[address],
            prefix=fabric.hub_prefix,
            tls=(ca[0], *server),
            client_cert=admin,
        )
        try:
            etcd.start()
            etcd.enable_auth("root-secret", "hasupd", "right-password", f"/hasupd/{CLUSTER}/")
            etcd.wait_healthy(30)
            script = tmp_path / "svc.py"
            script.write_text(SINGLETON_SCRIPT)
            yield Secure(fabric, etcd, tls, ca, tmp_path / "shared.log", script)
        finally:
            etcd.stop()


def start(env: Secure, name: str, etcd: dict[str, Any]) -> Host:
    """A hasupd host in its own namespace with the singleton and a local service."""
    host = env.fabric.add_host(name)
    node = {"HASUPD_TEST_NODE": name}

    def service(svc: str, placement: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": [PY, str(env.script), str(env.log), svc, "0"],
            "timeout_stop_sec": "500ms",
            "environment": node,
        }
        if placement is not None:
            body["placement"] = placement
        return body

    fleet = {"etcd": etcd, "cluster": CLUSTER, "host": name, "lease_ttl_sec": f"{TTL:g}s"}
    host.start(
        {"single": service("single", {"singleton": True}), "local": service(f"local-{name}")},
        {"fleet": fleet},
    )
    return host


def records(daemon: Hasupd, prefix: str = "fleet.") -> list[dict[str, Any]]:
    with daemon._lock:
        return [dict(r) for r in daemon.records if str(r.get("event", "")).startswith(prefix)]


def test_client_certificates_and_password_against_a_real_etcd(secure: Secure) -> None:
    env = secure
    endpoint = env.etcd.endpoints[0]
    client = make_client_cert(env.tls, env.ca, "hasupd", common_name=False)
    named = make_client_cert(env.tls, env.ca, "hasupd-cn")  # right CA, but with a CommonName
    stranger_ca = make_ca(env.tls, "another-ca")
    stranger = make_client_cert(env.tls, stranger_ca, "stranger")
    right = env.tls / "etcd.pass"
    right.write_text("right-password\n")
    wrong = env.tls / "wrong.pass"
    wrong.write_text("not-the-password\n")
    base = {"endpoints": env.etcd.endpoints, "ca_file": str(env.ca[0]), "username": "hasupd"}
    good = {**base, "cert_file": str(client[0]), "key_file": str(client[1]), "password_file": str(right)}
    hosts = {
        "good": start(env, "good", good),
        "badpass": start(env, "badpass", {**good, "password_file": str(wrong)}),
        "badcert": start(
            env, "badcert", {**good, "cert_file": str(stranger[0]), "key_file": str(stranger[1])}
        ),
        "nocert": start(env, "nocert", {**base, "password_file": str(right)}),
        "cncert": start(env, "cncert", {**good, "cert_file": str(named[0]), "key_file": str(named[1])}),
    }
    for h in hosts.values():
        assert h.daemon is not None
        h.daemon.wait_ready(timeout=30)
    good_daemon = hosts["good"].daemon
    assert good_daemon is not None
    good_daemon.wait_for("fleet.elected", timeout=30)
    run = wait_until(
        lambda: [r for r in read_intervals(env.log, "single") if alive(r)], 30, "the singleton runs"
    )
    assert [r.node for r in run] == ["good"]
    time.sleep(3 * TTL)  # the refused hosts keep trying every round: still one record each, no crash

    said = {name: records(h.daemon) for name, h in hosts.items() if h.daemon is not None}
    print(*(f"{n}: {r['event']}: {r.get('message')}" for n, rs in said.items() for r in rs), sep="\n")
    # A first call may time out while etcd warms up (each call is a new TLS connection): no harm.
    assert not [r for r in said["good"] if r["event"] in ("fleet.fenced", "fleet.lost", "fleet.join-refused")]
    assert [r["event"] for r in said["good"]].count("fleet.elected") == 1, said["good"]

    refused = [r for r in said["badpass"] if r["event"] == "fleet.join-refused"]
    assert len(refused) == 1, said["badpass"]
    assert endpoint in refused[0]["reason"] and "authentication failed" in refused[0]["reason"]
    refused = [r for r in said["cncert"] if r["event"] == "fleet.join-refused"]
    assert len(refused) == 1, said["cncert"]
    assert endpoint in refused[0]["reason"] and "without CN" in refused[0]["reason"]

    for name in ("badcert", "nocert"):
        clear = [r for r in said[name] if r["event"] in ("fleet.join-refused", "fleet.unreachable")]
        assert len(clear) == 1, said[name]
        text = str(clear[0].get("reason") or clear[0].get("error"))
        assert endpoint in text and "TLS" in text and "cert_file" in text, text

    for name, h in hosts.items():
        assert h.daemon is not None and h.daemon.proc.poll() is None, f"hasupd on {name} exited"
        assert [r for r in read_intervals(env.log, f"local-{name}") if alive(r)], f"local service on {name}"
    runs = read_intervals(env.log, "single")
    assert [(r.node, r.token) for r in runs] == [(run[0].node, run[0].token)]

    status = good_daemon.ctl("fleet", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [(s["service"], s["owner"]) for s in json.loads(status.stdout)["services"]] == [("single", "good")]
