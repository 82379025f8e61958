"""Error events from output lines, and their fingerprints (hasupd.observe.error_lines, .fingerprint)."""

from __future__ import annotations

import time
from pathlib import Path

from hasupd.observe.error_lines import Assembler, Classifier, ErrorEvent
from hasupd.observe.error_store import ErrorStore
from hasupd.observe.fingerprint import KIND_JAVA, KIND_LINE, KIND_PYTHON, fingerprint, normalise

PY_TB = """Traceback (most recent call last):
  File "/srv/app/server.py", line {a}, in handle
    result = process(request)
  File "/srv/app/jobs.py", line {b}, in process
    raise KeyError(key)
KeyError: 'user-{n}'"""

JAVA = """Exception in thread "worker-{n}" java.lang.IllegalStateException: queue {n} is closed
\tat com.example.Queue.put(Queue.java:{a})
\tat com.example.Worker.run(Worker.java:{b})
Caused by: java.io.IOException: broken pipe
\tat com.example.Net.write(Net.java:12)
\t... 3 more"""


def events_of(lines: list[str], patterns: tuple[str, ...] = ()) -> list[ErrorEvent]:
    assembler = Assembler(Classifier(patterns))
    for line in lines:
        assembler.feed(line, 1.0)
    assembler.flush()
    return assembler.take()


def test_normalise_replaces_what_varies() -> None:
    a = normalise(
        "2026-12-02T06:59:50.123Z ERROR req 9f1c2d3e-aaaa-4bbb-8ccc-0123456789ab user 'alice' failed "
        "reading /var/lib/app/7/data.db from 10.0.0.7:5432 after 1.25s (code 0x1f, id 5f3a9c2e41)"
    )
    b = normalise(
        "2026-12-03 07:00:01 ERROR req 0e1c2d3e-bbbb-4ccc-8ddd-0123456789ff user 'bob' failed "
        "reading /var/lib/app/12/data.db from 10.0.0.9:5433 after 30s (code 0x2, id 77aa00bb11)"
    )
    assert a == b
    assert "ERROR req <uuid> user '<str>' failed reading <path> from <ip>" in a
    # Words stay words: what the error says is kept.
    assert normalise("can't open the socket") == "can't open the socket"
    assert normalise('bad value "x" for key') == 'bad value "<str>" for key'


def test_same_shape_same_group_other_shape_other_group() -> None:
    one = fingerprint(KIND_LINE, "ERROR order 17 failed: timeout after 30s")
    two = fingerprint(KIND_LINE, "ERROR order 9912 failed: timeout after 5s")
    other = fingerprint(KIND_LINE, "ERROR order 17 refused: no stock")
    assert one.group_id("app") == two.group_id("app") != other.group_id("app")
    assert one.group_id("app") != one.group_id("web")  # groups are per service
    assert one.pattern == "ERROR order <n> failed: timeout after <n>s"


def test_a_python_traceback_is_one_event_grouped_by_type_and_frames() -> None:
    lines = ["starting", *PY_TB.format(a=10, b=20, n=1).split("\n"), "next request ok"]
    lines += PY_TB.format(a=11, b=25, n=2).split("\n")  # other line numbers and values: same group
    events = events_of(lines)
    assert [e.kind for e in events] == [KIND_PYTHON, KIND_PYTHON]
    assert events[0].text == PY_TB.format(a=10, b=20, n=1)
    fps = [fingerprint(e.kind, e.text) for e in events]
    assert fps[0].key == fps[1].key
    assert fps[0].pattern == "KeyError: '<str>' (in process)"
    other = PY_TB.format(a=10, b=20, n=1).replace("KeyError", "ValueError")
    assert fingerprint(KIND_PYTHON, other).key != fps[0].key


def test_a_chained_traceback_is_one_event() -> None:
    first = PY_TB.format(a=1, b=2, n=3)
    second = first.replace("KeyError: 'user-3'", "RuntimeError: lookup failed")
    chained = f"{first}\n\nDuring handling of the above exception, another exception occurred:\n\n{second}"
    events = events_of([*chained.split("\n"), "done"])
    assert len(events) == 1
    assert events[0].text == chained
    assert fingerprint(KIND_PYTHON, chained).pattern.startswith("RuntimeError: lookup failed <- KeyError")


def test_a_traceback_cut_by_a_batch_waits_for_the_next_batch() -> None:
    assembler = Assembler(Classifier(()))
    lines = PY_TB.format(a=1, b=2, n=3).split("\n")
    for line in lines[:3]:
        assembler.feed(line, 1.0)
    assembler.flush()
    assert assembler.take() == []
    for line in lines[3:]:
        assembler.feed(line, 2.0)
    assembler.flush()
    (event,) = assembler.take()
    assert event.text == PY_TB.format(a=1, b=2, n=3)


def test_a_java_stack_trace_is_one_event_with_its_header_line() -> None:
    events = events_of(["boot", *JAVA.format(n=4, a=10, b=20).split("\n"), "INFO fine"])
    assert len(events) == 1
    assert events[0].kind == KIND_JAVA
    assert events[0].text == JAVA.format(n=4, a=10, b=20)
    one = fingerprint(KIND_JAVA, JAVA.format(n=4, a=10, b=20))
    two = fingerprint(KIND_JAVA, JAVA.format(n=5, a=11, b=29))
    assert one.key == two.key
    assert "java.lang.IllegalStateException" in one.key and "java.io.IOException" in one.key


def test_error_level_from_the_prefix_and_from_patterns() -> None:
    lines = ["<3>disk full on /dev/sda1", "<6>all good", "<4>warning only", "ERROR x=1", "plain", "<2>crit"]
    assert [(e.kind, e.text) for e in events_of(lines)] == [
        (KIND_LINE, "disk full on /dev/sda1"),
        (KIND_LINE, "crit"),
    ]
    assert [e.text for e in events_of(lines, ("^ERROR", "good$"))] == [
        "disk full on /dev/sda1",
        "all good",
        "ERROR x=1",
        "crit",
    ]
    # The journal's PRIORITY when the program set it (not the stderr stream's default).
    assembler = Assembler(Classifier(()))
    assembler.feed("native error", 1.0, 3)
    assembler.feed("native info", 1.0, 6)
    assembler.flush()
    assert [e.text for e in assembler.take()] == ["native error"]


def test_the_store_counts_groups_keeps_samples_and_prunes(tmp_path: Path) -> None:
    store = ErrorStore(tmp_path)
    now = time.time()
    events = [ErrorEvent(KIND_LINE, f"ERROR job {i} failed", now + i) for i in range(12)]
    (seen,) = store.record("app", events, "abc123")
    assert seen.new and seen.count == 12
    (again,) = store.record("app", events[:3], None)
    assert not again.new and again.count == 3
    group = store.group(seen.group)
    assert group is not None
    assert group["count"] == 15 and group["pattern"] == "ERROR job <n> failed"
    assert len(group["samples"]) == 5
    assert group["incidents"] == [{"incident": "abc123", "time": now}]
    assert store.groups(now + 10 * 86400, None) == []
    assert store.prune(now + 200 * 86400) == 1
    assert store.group(seen.group) is None
    store.close()


def test_scanning_costs_little_per_line(tmp_path: Path) -> None:
    """10,000 lines (a tenth of them errors) classified, assembled, fingerprinted and stored: the cost
    per line, printed and bounded (it runs on hasupd's worker thread, never in the output's path)."""
    lines = []
    for i in range(10_000):
        if i % 10 == 0:
            lines.append(f"2026-12-02T07:00:{i % 60:02d} ERROR order {i} failed for user-{i * 7}")
        else:
            lines.append(f"2026-12-02T07:00:{i % 60:02d} INFO request {i} served in {i % 97}ms")
    store = ErrorStore(tmp_path)
    assembler = Assembler(Classifier(("ERROR",)))
    start = time.perf_counter()
    for line in lines:
        assembler.feed(line, 1.0)
    assembler.flush()
    store.record("app", assembler.take(), None)
    per_line = (time.perf_counter() - start) / len(lines)
    print(f"scan cost: {per_line * 1e6:.2f} us per line over {len(lines)} lines")
    assert per_line < 100e-6
    store.close()


def test_a_broken_database_is_set_aside_and_a_new_one_started(tmp_path: Path) -> None:
    (tmp_path / "errors.sqlite").write_bytes(b"this is not a database" * 100)
    store = ErrorStore(tmp_path)
    assert store.set_aside is not None and store.set_aside.read_bytes().startswith(b"this is not")
    (seen,) = store.record("app", [ErrorEvent(KIND_LINE, "ERROR 1", time.time())], None)
    assert seen.new
    store.close()


def test_an_error_line_right_before_a_stack_is_its_header() -> None:
    tb = PY_TB.format(a=1, b=2, n=3)
    java = JAVA.format(n=4, a=10, b=20).replace('Exception in thread "worker-4" ', "")
    lines = ["ERROR:root:request failed", *tb.split("\n"), "INFO ok"]
    lines += ["12:00:01 ERROR [main] c.e.Worker - job 4 failed", *java.split("\n"), "INFO ok"]
    lines += ["ERROR alone", "INFO ok", *tb.split("\n")]  # not right before: two events
    events = events_of(lines, ("ERROR",))
    assert [(e.kind, e.text.split("\n")[0]) for e in events] == [
        (KIND_PYTHON, "ERROR:root:request failed"),
        (KIND_JAVA, "12:00:01 ERROR [main] c.e.Worker - job 4 failed"),
        (KIND_LINE, "ERROR alone"),
        (KIND_PYTHON, "Traceback (most recent call last):"),
    ]
    # The header does not change the group: a stack is grouped by its exceptions and frames.
    assert fingerprint(KIND_PYTHON, events[0].text).key == fingerprint(KIND_PYTHON, events[3].text).key
    key = fingerprint(KIND_JAVA, events[1].text).key
    assert key.startswith("java.lang.IllegalStateException|java.io.IOException\n")
    assert key == fingerprint(KIND_JAVA, JAVA.format(n=5, a=1, b=2)).key
