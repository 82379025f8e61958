"""decode_request: every malformed request is a ProtocolError, whatever its depth, numbers or unicode."""

from __future__ import annotations

import time

import pytest

from hasupd.control.protocol import MAX_REQUEST_DEPTH, ProtocolError, decode_request, nesting_exceeds


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        ("[" * 33, True),
        ("[" * 32 + "]" * 32, False),
        ('{"a":' * 33 + "1" + "}" * 33, True),
        ('["' + "[" * 100 + '"]', False),  # brackets in a string are text
        ('["\\"' + "[" * 100 + '"]', False),  # an escaped quote does not end the string
        ('["\\\\"' + ",[" * 40 + "]" * 40 + "]", True),  # an escaped backslash does
        ('["' + "[" * 100, False),  # unterminated string: json.loads rejects it
        ("]" * 100 + "[" * 10, False),
    ],
)
def test_nesting_depth_ignores_strings(text: str, deeper: bool) -> None:
    assert nesting_exceeds(text, 32) is deeper


def test_nesting_scan_is_linear_on_hostile_input() -> None:
    started = time.monotonic()
    for text in ('"' + '\\"' * 30000, '"\\"' * 20000, "[]," * 20000, '""' * 30000):
        nesting_exceeds(text, MAX_REQUEST_DEPTH)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"[" * 100000, "nested deeper than 32"),
        (b'{"v":1,"cmd":"status","args":{"a":' + b"[" * 990 + b"]" * 990 + b"}}", "nested deeper"),
        (b'{"v":1,"cmd":"status","args":{"n":' + b"9" * 5000 + b"}}", "not usable JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"\xef\xbb\xbf{}", "not JSON"),
        (b'{"v":1,"cmd":"st\x00"}', "not JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"v":"' + b"x" * 5000 + b'"}', "unsupported protocol version"),
        (b'{"v":1,"cmd":["status"]}', "'cmd' string"),
        (b'{"v":1,"cmd":"status","args":[]}', "'args' must be"),
    ],
)
def test_malformed_requests_are_protocol_errors(line: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says) as caught:
        decode_request(line)
    assert len(str(caught.value)) < 400


def test_a_lone_surrogate_escape_is_a_string() -> None:
    assert decode_request(b'{"v":1,"cmd":"status","args":{"names":["\\ud800"]}}') == (
        "status",
        {"names": ["\ud800"]},
    )
