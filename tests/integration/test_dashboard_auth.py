"""The dashboard beyond loopback (issue 19, must-show 2): refused at config check (and at reload) without
TLS and a credential, with a located error; with them, over real TLS on a non-loopback address, a wrong
token gets 401 and a ``web.login_failed`` record, the right one the page.

The non-loopback address lives in a network namespace of its own (a veth interface with a private
address); the client runs in the same namespace, so no packet leaves this machine.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hasupd.web.server import MAX_LIVE_PAGES
from tests.support.harness import REPO, Hasupd, write_config
from tests.support.netns import ip, require_netns

# The daemon keeps the PYTHONPATH the test runs with: put Debian's python3-aiohttp and python3-jinja2
# first on it to run the dashboard on Debian 12's versions (see README, Dashboard).
KEEP_PYTHONPATH = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
ADDRESS = "10.214.19.1"  # only inside the namespace made below
PORT = 9465
TLS = "tls (cert_file, key_file)"
CREDENTIAL = "a credential (token_file or password_file)"


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasupd", "check-config", "--config-dir", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**KEEP_PYTHONPATH, "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.mark.parametrize(
    ("web", "missing"),
    [
        ('{listen: "0.0.0.0:9465"}', f"{TLS} and {CREDENTIAL}"),
        ('{listen: "[::]:9465", token_file: /etc/t}', TLS),
        (
            '{listen: "192.0.2.7:9465", tls: {cert_file: /etc/c, key_file: /etc/k}}',
            CREDENTIAL,
        ),
        ('{listen: "dashboard.example.org:9465"}', "tls (cert_file, key_file) and a credential"),
    ],
)
def test_beyond_loopback_without_tls_and_credential_is_refused(
    tmp_path: Path, web: str, missing: str
) -> None:
    (tmp_path / "hasupd.yaml").write_text(f"# the dashboard\nweb: {web}\n")
    done = check_config(tmp_path)
    assert done.returncode == 1, done
    listen = web.split('"')[1]
    want = (
        f"{tmp_path / 'hasupd.yaml'}:2:15: web.listen: {listen} is reachable beyond loopback: "
        f"the dashboard then needs {missing}"
    )
    assert done.stderr.startswith(want), done.stderr


@pytest.mark.parametrize(
    "web",
    [
        '{listen: "127.0.0.1:9465"}',
        '{listen: "127.0.0.2:9465"}',
        '{listen: "[::1]:9465"}',
        '{listen: "localhost:9465"}',
        '{listen: "0.0.0.0:9465", tls: {cert_file: /c, key_file: /k}, token_file: /t}',
        '{listen: "0.0.0.0:9465", tls: {cert_file: /c, key_file: /k}, password_file: /p}',
    ],
)
def test_loopback_or_tls_with_credential_is_accepted(tmp_path: Path, web: str) -> None:
    (tmp_path / "hasupd.yaml").write_text(f"web: {web}\n")
    done = check_config(tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done


def test_a_reload_to_an_open_address_is_refused_and_the_old_config_runs_on(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path / "etc", {}, daemon={"web": {"listen": f"127.0.0.1:{port}"}})
    d = hasupd(config, extra_args=("--no-watch",), env=KEEP_PYTHONPATH)
    d.wait_for("web.listening", timeout=30)
    (config / "hasupd.yaml").write_text(f'web:\n  listen: "0.0.0.0:{port}"\n')
    done = d.ctl("reload")
    assert done.returncode == 1, done
    where = f"{config / 'hasupd.yaml'}:2:11: web.listen: 0.0.0.0:{port} is reachable beyond loopback"
    assert where in done.stderr, done.stderr
    d.wait_for("config.invalid")


def test_loopback_host_names_only_and_a_bounded_number_of_live_streams(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    """DNS rebinding: a page from elsewhere, its name pointed at 127.0.0.1, sends its own Host."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path / "etc", {}, daemon={"web": {"listen": f"127.0.0.1:{port}"}})
    d = hasupd(config, extra_args=("--no-watch",), env=KEEP_PYTHONPATH)
    d.wait_for("web.listening", timeout=30)

    def status(host: str) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return int(conn.makefile("rb").readline().split()[1])

    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "127.0.0.1"):
        assert status(host) == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"10.0.0.1:{port}"):
        assert status(host) == 421, host

    # Open live streams are bounded: one too many ends the oldest (a closed page is noticed only at its
    # next write; a page still open reconnects by itself).
    streams = []
    try:
        for _ in range(MAX_LIVE_PAGES + 1):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            streams.append(conn)
            conn.sendall(f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        replies = [conn.makefile("rb") for conn in streams]
        assert [reply.readline().split()[1] for reply in replies] == [b"200"] * (MAX_LIVE_PAGES + 1)
        oldest, deadline = b"", time.monotonic() + 10
        while not oldest.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
            oldest += replies[0].read1(65536)  # (the connection itself stays open: keep-alive)
        assert oldest.endswith(b"\r\n0\r\n\r\n") and b"data: " in oldest, oldest[-200:]
    finally:
        for conn in streams:
            conn.close()
    assert status(f"127.0.0.1:{port}") == 200


# The client, run inside the namespace: prints {"status": N, "body": ..., "type": ...} for one request.
CLIENT = """
import json, ssl, sys, urllib.error, urllib.request
url, cafile, method, auth = sys.argv[1:5]
request = urllib.request.Request(url, method=method)
if auth:
    request.add_header("Authorization", auth)
context = ssl.create_default_context(cafile=cafile)
try:
    with urllib.request.urlopen(request, context=context, timeout=20) as response:
        out = {"status": response.status, "type": response.headers["Content-Type"],
               "body": response.read(4000).decode()}
except urllib.error.HTTPError as e:
    out = {"status": e.code, "type": e.headers["Content-Type"], "body": e.read(4000).decode(),
           "www": e.headers.get("WWW-Authenticate")}
print(json.dumps(out))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with loopback and an ethernet interface holding ``ADDRESS``."""
    require_netns()
    name = f"hweb{secrets.token_hex(3)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        # A veth pair with both ends in the namespace (the dummy driver may be missing as a module).
        ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ip("-n", name, "addr", "add", f"{ADDRESS}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "eth1", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "web.crt", folder / "web.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hasupd-test",
         "-addext", f"subjectAltName=IP:{ADDRESS}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_and_token_on_a_non_loopback_address(
    tmp_path: Path, netns: str, hasupd: Callable[..., Hasupd]
) -> None:
    cert, key = self_signed(tmp_path)
    token = secrets.token_urlsafe(24)
    (tmp_path / "web.token").write_text(token + "\n")
    config = write_config(
        tmp_path / "etc",
        {"api": {"command": ["/bin/sleep", "1000"]}},
        daemon={
            "web": {
                "listen": f"{ADDRESS}:{PORT}",
                "tls": {"cert_file": str(cert), "key_file": str(key)},
                "token_file": str(tmp_path / "web.token"),
            }
        },
    )
    assert check_config(config).returncode == 0
    d = hasupd(
        config,
        argv_prefix=("ip", "netns", "exec", netns),
        extra_args=("--no-cgroup", "--no-watch"),
        env=KEEP_PYTHONPATH,
    )
    listening = d.wait_for("web.listening", timeout=30)[0]
    assert listening["url"] == f"https://{ADDRESS}:{PORT}/"

    def get(path: str, auth: str = "", method: str = "GET") -> dict[str, str | int]:
        done = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT,
             f"https://{ADDRESS}:{PORT}{path}", str(cert), method, auth],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        result: dict[str, str | int] = json.loads(done.stdout)
        return result

    def basic(password: str) -> str:
        return "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()

    # No credential: 401 and the browser's prompt, but no record (every first visit looks like this).
    bare = get("/")
    assert bare["status"] == 401 and "Basic" in str(bare["www"]), bare
    # Wrong ones: 401 and a record each, with where they came from.
    for wrong in ("Bearer " + token[:-1] + "x", basic("guess"), "Bearer "):
        refused = get("/errors", wrong)
        assert refused["status"] == 401, refused
        assert "api" not in str(refused["body"])
    failed = d.wait_for("web.login_failed", count=3, timeout=10)
    assert {(r["remote"], r["path"], r["reason"], r["level"]) for r in failed} == {
        (ADDRESS, "/errors", "wrong credential", "warning")
    }
    assert len(d.find("web.login_failed")) == 3  # the bare request is not one
    # The right one, as a script sends it and as a browser does.
    for right in ("Bearer " + token, basic(token)):
        page = get("/", right)
        assert page["status"] == 200 and 'data-unit="api"' in str(page["body"]), page
    live = get("/api/overview", "Bearer " + token)
    assert json.loads(str(live["body"]))["units"][0]["name"] == "api"
    # Read-only, whoever asks.
    assert get("/", "Bearer " + token, method="POST")["status"] == 405
    assert len(d.find("web.login_failed")) == 3
    # A flood of guesses: all refused, at most 5 records a minute from one address (the others are
    # counted in its next record), so that guessing cannot push older records out of the files.
    for _ in range(4):
        assert get("/", "Bearer guess")["status"] == 401
    d.wait_for("web.login_failed", count=5, timeout=10)
    time.sleep(0.5)
    assert len(d.find("web.login_failed")) == 5
