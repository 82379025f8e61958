"""A real etcd cluster (Debian's etcd-server, 3.4 on Debian 12) started by the tests.

Members listen on loopback addresses by default, or on given addresses inside a network namespace
(``prefix=("ip", "netns", "exec", NS)``) so that hasupd "hosts" in other namespaces reach them and a
partition can cut one host off. Nothing listens outside loopback or the namespaces the test made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import require

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"


def require_etcd() -> None:
    """Fail (or skip on HASUPD_TEST_NO_ETCD=1) unless Debian's etcd-server and etcd-client are installed."""
    require(
        os.access(ETCD, os.X_OK) and os.access(ETCDCTL, os.X_OK),
        "this test needs etcd (apt-get install etcd-server etcd-client; scripts/test installs them)",
        "HASUPD_TEST_NO_ETCD",
    )


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    """One etcd member: its name, client and peer URLs, data dir, and process while it runs."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``size`` etcd members with one ``--initial-cluster`` list; kill and restart members one by one."""

    def __init__(
        self,
        work: Path,
        size: int = 3,
        *,
        hosts: Sequence[str] | None = None,
        prefix: Sequence[str] = (),
        token: str = "hasupd-test",
        tls: tuple[Path, Path, Path] | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        """``hosts``: one listen address per member (default: 127.0.0.1 with free ports).
        ``prefix``: a command the members and etcdctl run under (e.g. ``ip netns exec NS``).
        ``tls``: (ca, server cert, server key): clients speak https and must trust ``ca``.
        ``client_cert``: (cert, key) signed by ``tls``'s CA, for etcdctl: the members then require a
        client certificate signed by that CA (``--client-cert-auth``)."""
        require_etcd()
        self.prefix = list(prefix)
        self.tls = tls
        self.client_cert = client_cert
        self.user: str | None = None  # "name:password" for etcdctl once auth is enabled
        scheme = "https" if tls else "http"
        self.members: list[Member] = []
        for i in range(size):
            if hosts is None:
                client, peer = f"{scheme}://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
            else:
                client, peer = f"{scheme}://{hosts[i]}:2379", f"http://{hosts[i]}:2380"
            data = work / f"etcd{i + 1}"
            self.members.append(Member(f"m{i + 1}", client, peer, data, work / f"etcd{i + 1}.log"))
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.argv = [
                *self.prefix,
                ETCD,
                "--name",
                m.name,
                "--data-dir",
                str(m.data_dir),
                "--listen-client-urls",
                m.client_url,
                "--advertise-client-urls",
                m.client_url,
                "--listen-peer-urls",
                m.peer_url,
                "--initial-advertise-peer-urls",
                m.peer_url,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                token,
                # Test-sized raft timings: a lost leader is replaced within about a second.
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
            ]
            if tls is not None:
                m.argv += ["--cert-file", str(tls[1]), "--key-file", str(tls[2])]
                if client_cert is not None:
                    m.argv += ["--client-cert-auth", "--trusted-ca-file", str(tls[0])]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until the cluster answers a linearizable read."""
        for m in self.members:
            self.start_member(m)
        self.wait_healthy(timeout)
        return self

    def start_member(self, m: Member) -> None:
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(
                m.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def kill_member(self, index: int) -> None:
        """SIGKILL member ``index`` (0-based); its data dir stays for a restart."""
        m = self.members[index]
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)

    def restart_member(self, index: int) -> None:
        """Start member ``index`` again on its data dir (it rejoins the cluster)."""
        self.kill_member(index)
        self.start_member(self.members[index])

    def ctl(self, *args: str, endpoints: Sequence[str] | None = None, timeout: float = 10.0) -> str:
        """Run ``etcdctl`` (API v3) against the cluster; return stdout; raise on failure."""
        eps = ",".join(endpoints or [m.client_url for m in self.members if m.alive] or self.endpoints)
        argv = [*self.prefix, ETCDCTL, "--endpoints", eps, "--dial-timeout", "2s"]
        if self.tls is not None:
            argv += ["--cacert", str(self.tls[0])]
        if self.client_cert is not None:
            argv += ["--cert", str(self.client_cert[0]), "--key", str(self.client_cert[1])]
        if self.user is not None:
            argv += ["--user", self.user]
        argv += args
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def get_prefix(self, key: str) -> dict[str, str]:
        """Return every key under ``key`` with its value."""
        out = self.ctl("get", "--prefix", key).splitlines()
        return dict(zip(out[0::2], out[1::2], strict=False))

    def leader_index(self) -> int:
        """Return the index of the member that is raft leader now (etcdctl endpoint status)."""
        for i, m in enumerate(self.members):
            if not m.alive:
                continue
            out = self.ctl("endpoint", "status", "-w", "json", endpoints=[m.client_url])
            status = json.loads(out)[0]["Status"]
            # No "leader" field while an election is under way (0 is left out of etcdctl's JSON).
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return i
        raise AssertionError("no member is leader")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until a quorum answers (a linearizable get through etcdctl)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.ctl("get", "/hasupd-test-probe", timeout=5)
                return
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                last = str(e)
            time.sleep(0.2)
        logs = "\n".join(m.log.read_text(errors="replace")[-800:] for m in self.members if m.log.exists())
        raise AssertionError(f"etcd cluster not healthy within {timeout}s: {last}\n{logs}")

    def enable_auth(self, root_password: str, user: str, password: str, prefix: str) -> None:
        """Turn on etcd's authentication: ``root`` (needed by etcd) and ``user`` with read-write on the
        keys under ``prefix`` only; etcdctl uses root from then on."""
        self.ctl("user", "add", f"root:{root_password}")
        self.ctl("user", "add", f"{user}:{password}")
        self.ctl("role", "add", user)
        self.ctl("role", "grant-permission", user, "--prefix=true", "readwrite", prefix)
        self.ctl("user", "grant-role", user, user)
        self.ctl("auth", "enable")
        self.user = f"root:{root_password}"

    def stop(self) -> None:
        """Kill every member and remove the data dirs."""
        for i in range(len(self.members)):
            self.kill_member(i)
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) named ``name`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"),
        *("-keyout", str(key), "-out", str(cert)),
    )
    return cert, key


def make_server_cert(folder: Path, ca: tuple[Path, Path], address: str) -> tuple[Path, Path]:
    """A server certificate for IP ``address`` signed by ``ca``; return (certificate, key)."""
    cert, key, csr, ext = (folder / f"server-{address}{x}" for x in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(f"subjectAltName=IP:{address}\n")
    openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={address}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return cert, key


def make_client_cert(
    folder: Path, ca: tuple[Path, Path], name: str, *, common_name: bool = True
) -> tuple[Path, Path]:
    """A client certificate (extended key usage clientAuth) signed by ``ca``; its subject is /CN=name,
    or /O=name without a CommonName (etcd's gateway refuses certificates with one once auth is on)."""
    cert, key, csr, ext = (folder / f"client-{name}{x}" for x in (".pem", ".key", ".csr", ".ext"))
    ext.write_text("extendedKeyUsage=clientAuth\n")
    subject = f"/CN={name}" if common_name else f"/O={name}"
    openssl(
        *("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject),
        *("-keyout", str(key), "-out", str(csr)),
    )
    openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"),
        *("-days", "2", "-extfile", str(ext), "-out", str(cert)),
    )
    return cert, key


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
