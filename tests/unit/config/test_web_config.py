"""web: in hasupd.yaml: values, and the rule that beyond loopback needs TLS and a credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasupd.config.load import load_config
from hasupd.config.model import WebConfig, WebTls
from hasupd.config.validate_web import is_loopback
from tests.unit.config.test_load import issues, write

RELATIVE = "expected an absolute path, got 't'"
NOT_ADDRESS = 'invalid address \'9465\': expected "host:port" or "[v6]:port"'


def test_no_web_means_no_dashboard(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, {"hasupd.yaml": "log: {format: text}\n"})).daemon.web is None


def test_web_is_read(tmp_path: Path) -> None:
    text = """
    web:
      listen: "0.0.0.0:9465"
      tls: {cert_file: /etc/hasupd/web.crt, key_file: /etc/hasupd/web.key}
      token_file: /etc/hasupd/web.token
    """
    assert load_config(write(tmp_path, {"hasupd.yaml": text})).daemon.web == WebConfig(
        listen="0.0.0.0:9465",
        tls=WebTls(cert_file="/etc/hasupd/web.crt", key_file="/etc/hasupd/web.key"),
        token_file="/etc/hasupd/web.token",
    )


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            'web: {listen: "10.0.0.1:9465", token_file: /t}',
            "1:15: web.listen: 10.0.0.1:9465 is reachable beyond loopback: the dashboard then needs "
            "tls (cert_file, key_file)",
        ),
        ("web: {tls: {cert_file: /c, key_file: /k}}", "1:6: web.listen: required key is missing"),
        (
            'web: {listen: "127.0.0.1:1", token_file: /t, password_file: /p}',
            "1:46: web.password_file: give token_file or password_file, not both",
        ),
        (
            'web: {listen: "127.0.0.1:1", token_file: t}',
            "1:42: web.token_file: expected an absolute path, got 't'",
        ),
        (
            "web: {listen: 9465}",
            '1:15: web.listen: invalid address \'9465\': expected "host:port" or "[v6]:port"',
        ),
    ],
)
def test_located_errors(tmp_path: Path, text: str, want: str) -> None:
    assert issues(write(tmp_path, {"hasupd.yaml": text + "\n"})) == [f"hasupd.yaml:{want}"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("", False),
        ("10.1.2.3", False),
        ("example.org", False),
        ("[::ffff:127.0.0.1]", False),  # an IPv4-mapped address: treated as open, to be safe
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
