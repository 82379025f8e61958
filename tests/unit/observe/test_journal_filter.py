"""hasupd.observe.journal_filter: what of journalctl's JSON reaches hasupd's error groups."""

from __future__ import annotations

import json

from hasupd.observe.journal_filter import HOT_BYTES, TAIL_LINES, Filter


def entry(n: int, message: str, *, unit: str = "app", transport: str = "stdout", priority: int = 6) -> bytes:
    """One line as journalctl --output=json writes it ("FIELD" : "value")."""
    fields = {
        "__CURSOR": f"s=1;i={n:x}",
        "MESSAGE": message,
        "PRIORITY": str(priority),
        "SYSLOG_IDENTIFIER": unit,
        "_TRANSPORT": transport,
        "_STREAM_ID": "s1",
    }
    return (
        b"{ " + b", ".join(f"{json.dumps(k)} : {json.dumps(v)}".encode() for k, v in fields.items()) + b" }\n"
    )


def ordinary(first: int, count: int, unit: str = "app") -> bytes:
    return b"".join(
        entry(n, f"INFO request {n} served in 3 ms", unit=unit) for n in range(first, first + count)
    )


def passed_messages(out: bytes) -> list[str]:
    return [json.loads(line)["MESSAGE"] for line in out.splitlines() if b'"MESSAGE"' in line]


def test_reads_without_a_candidate_are_dropped_and_summarised() -> None:
    flt = Filter(["app", "db"], [])
    assert flt.feed(ordinary(0, 300) + ordinary(300, 10, unit="db")) == b""
    # The last TAIL_LINES lines are held back (the header of a stack that may follow), not yet counted.
    assert json.loads(flt.summary()) == {
        "__hasupd_skipped": {"app": 300 - (TAIL_LINES - 10)},
        "__CURSOR": f"s=1;i={309:x}",
    }
    assert not flt.pending
    assert flt.feed(ordinary(310, 100, unit="db")) == b""
    assert flt.feed(ordinary(410, 5, unit="db")) == b""  # counts add up until the next summary
    assert json.loads(flt.summary()) == {
        "__hasupd_skipped": {"app": TAIL_LINES - 10, "db": 10 + 105 - TAIL_LINES},
        "__CURSOR": f"s=1;i={414:x}",
    }


def test_a_java_stack_comes_with_its_header_from_the_dropped_read_before() -> None:
    flt = Filter(["app"], [])
    flt.feed(ordinary(0, 200) + entry(200, "Exception in thread main: IllegalStateException"))
    out = flt.feed(
        entry(201, "\tat com.example.Main.run(Main.java:10)") + entry(202, "Caused by: java.io.IOException")
    )
    messages = passed_messages(out)
    assert messages[-3:] == [
        "Exception in thread main: IllegalStateException",
        "\tat com.example.Main.run(Main.java:10)",
        "Caused by: java.io.IOException",
    ]
    assert len(messages) == TAIL_LINES + 2


def test_after_a_candidate_the_rest_of_a_stack_is_passed_on_then_dropping_resumes() -> None:
    flt = Filter(["app"], [])
    assert passed_messages(flt.feed(entry(0, "Traceback (most recent call last):"))) == [
        "Traceback (most recent call last):"
    ]
    frames = entry(1, '  File "app.py", line 3, in <module>') + entry(2, "ValueError: invalid literal")
    assert passed_messages(flt.feed(frames)) == [
        '  File "app.py", line 3, in <module>',
        "ValueError: invalid literal",
    ]
    filler = ordinary(3, HOT_BYTES // len(entry(3, "INFO request 3 served in 3 ms")) + 10)
    assert flt.feed(filler) == filler  # still within HOT_BYTES of the traceback
    assert flt.feed(ordinary(100_000, 10)) == b""


def test_what_is_a_candidate() -> None:
    flt = Filter(["app", "chatty"], ["chatty"])
    candidates = [
        entry(1, "<3>disk full"),
        entry(2, "    at org.Foo.bar(Foo.java:1)"),
        entry(3, "\u00a0at org.Foo.bar(Foo.java:1)"),
        entry(4, "\t... 12 more"),
        entry(5, "journal entry the program sent itself", transport="journal", priority=3),
        entry(6, "anything at all", unit="chatty"),
        entry(7, "INFO with a Traceback (most recent call last): inside"),
    ]
    for line in candidates:
        assert Filter(["app", "chatty"], ["chatty"]).feed(line) == line, line
    not_candidates = [
        entry(8, "<4>only a warning"),
        entry(9, "stderr line: hasupd gives the stream priority 3", priority=3),
        entry(10, "nothing at all here"),
        entry(11, "an at sign in the middle: look at this"),
    ]
    for line in not_candidates:
        assert flt.feed(line) == b"", line
