"""The dashboard's credential check: Bearer or Basic, constant-time comparison, clear reasons."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hasupd.config.model import WebConfig, WebTls
from hasupd.web import auth

SECRET = b"s3cret-token"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("Bearer s3cret-token", None),
        ("bearer  s3cret-token ", None),
        (basic("anyone", "s3cret-token"), None),
        (basic("", "s3cret-token"), None),
        (None, auth.NO_CREDENTIAL),
        ("", auth.NO_CREDENTIAL),
        ("Digest abc", auth.NO_CREDENTIAL),
        ("Bearer s3cret-tokeN", auth.WRONG_CREDENTIAL),
        ("Bearer s3cret-token2", auth.WRONG_CREDENTIAL),
        ("Bearer", auth.WRONG_CREDENTIAL),
        (basic("s3cret-token", "x"), auth.WRONG_CREDENTIAL),
        ("Basic !!!not-base64", auth.WRONG_CREDENTIAL),
    ],
)
def test_check(header: str | None, want: str | None) -> None:
    assert auth.check(header, SECRET) == want


def test_secret_is_the_first_line_of_its_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"s3cret-token\r\nignored\n")
    config = WebConfig(listen="0.0.0.0:1", token_file=str(tmp_path / "t"))
    assert auth.read_secret(config) == SECRET
    assert auth.read_secret(WebConfig(listen="127.0.0.1:1")) is None


@pytest.mark.parametrize(("content", "why"), [(None, "cannot read"), (b"\nsecret\n", "is empty")])
def test_an_unusable_secret_file_is_refused(tmp_path: Path, content: bytes | None, why: str) -> None:
    if content is not None:
        (tmp_path / "t").write_bytes(content)
    with pytest.raises(auth.WebSetupError, match=why):
        auth.read_secret(WebConfig(listen="0.0.0.0:1", password_file=str(tmp_path / "t")))


def test_a_bad_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("not a certificate\n")
    config = WebConfig(listen="0.0.0.0:1", tls=WebTls(str(tmp_path / "c"), str(tmp_path / "c")))
    with pytest.raises(auth.WebSetupError, match="cannot load"):
        auth.tls_context(config)


def test_a_flood_of_refusals_is_recorded_a_few_times_a_minute_and_counted() -> None:
    records = auth.RefusalRecords(per_window=3, window_sec=60.0, max_addresses=2)
    admitted = [records.admit("10.0.0.9", t) for t in (0, 1, 2, 3, 4, 5)]
    assert admitted == [0, 0, 0, None, None, None]
    assert records.admit("10.0.0.8", 6) == 0  # another address has its own allowance
    assert records.admit("10.0.0.9", 61) == 3  # a new window: the three left out are told
    assert records.admit("10.0.0.9", 62) == 0
    # A third address beyond max_addresses: the addresses whose window is over are forgotten.
    assert records.admit("10.0.0.7", 200) == 0
    assert records.admit("10.0.0.9", 201) == 0
