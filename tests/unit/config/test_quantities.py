"""Durations, sizes and signals as systemd writes them."""

from __future__ import annotations

import re
import signal

import pytest

from hasupd.config.quantities import parse_duration, parse_signal, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("30sec", 30.0),
        ("5m", 300.0),
        ("5min", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1h 30min", 5400.0),
        ("1h30min", 5400.0),
        ("1min 30", 90.0),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("10", 10.0),
        ("0", 0.0),
        (" 2 h ", 7200.0),
        (10, 10.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid duration '': expected a number with a unit"),
        ("infinity", "invalid duration 'infinity': expected a number with a unit"),
        ("-1s", "invalid duration '-1s': expected a number with a unit"),
        ("5 parsecs", "invalid duration '5 parsecs': unknown unit 'parsecs'; expected a number with a unit"),
        ("1.5.3s", "invalid duration '1.5.3s'"),
        ("30 5s", "invalid duration '30 5s'"),
        (-1, "invalid duration -1: must be a finite number >= 0"),
        (float("inf"), "invalid duration inf: must be a finite number >= 0"),
        (True, "invalid duration 'True'"),
    ],
)
def test_parse_duration_rejects(text: str | float, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_duration(text)


def test_parse_duration_message_lists_units() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("soon")
    assert str(info.value) == (
        "invalid duration 'soon': expected a number with a unit (us, ms, s, min, h, d, w, M, y) "
        "such as 250ms, 30s, 5min, 1h 30min"
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512K", 512 * 1024),
        ("64M", 64 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1T", 1024**4),
        ("1.5G", 3 * 1024**3 // 2),
        ("100", 100),
        ("100B", 100),
        ("4KiB", 4096),
        ("4k", 4096),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12X", "M", "1.5", "-1K", "1 2K"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(f"invalid size {text!r}")):
        parse_size(text)


def test_parse_size_message_lists_suffixes() -> None:
    with pytest.raises(ValueError) as info:
        parse_size("12X")
    assert str(info.value) == (
        "invalid size '12X': expected a number of bytes with an optional suffix K, M, G, T, P or E "
        "(powers of 1024) such as 512K"
    )


@pytest.mark.parametrize(
    ("text", "sig"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("TERM", signal.SIGTERM),
        ("sigterm", signal.SIGTERM),
        ("term", signal.SIGTERM),
        ("SIGKILL", signal.SIGKILL),
        ("15", signal.SIGTERM),
        (9, signal.SIGKILL),
    ],
)
def test_parse_signal(text: str | int, sig: signal.Signals) -> None:
    assert parse_signal(text) is sig


def test_parse_signal_rejects_unknown_name_listing_names() -> None:
    with pytest.raises(ValueError) as info:
        parse_signal("SIGFOO")
    message = str(info.value)
    assert message.startswith("invalid signal 'SIGFOO': expected one of SIGHUP, SIGINT, SIGQUIT, ")
    assert "SIGTERM" in message
    assert message.endswith(" or a number")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "invalid signal 0: no signal has number 0"),
        ("999", "invalid signal '999': no signal has number 999"),
        ("", "invalid signal '': expected one of SIGHUP"),
        (True, "invalid signal 'True': expected one of SIGHUP"),
    ],
)
def test_parse_signal_rejects_bad_numbers_and_empty(value: str | int, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_signal(value)
