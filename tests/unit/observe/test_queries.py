"""Record queries over JSON-line files, error grouping, incident chains, and output times from marks."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hasupd import events as ev
from hasupd.observe.logs import RECORDS_FILE, LogSetup, RecordFileHandler, log_events
from hasupd.observe.queries import Query, RecordStore, normalise, parse_since, scan_files
from hasupd.observe.service_output import ServiceOutput
from hasupd.states import OutputMode

NOW = 1_700_000_000.0


def test_since_takes_ages_and_iso_times() -> None:
    assert parse_since("30d", NOW) == NOW - 30 * 86400
    assert parse_since("2h", NOW) == NOW - 7200
    assert parse_since("15m", NOW) == NOW - 900
    assert parse_since("90s", NOW) == NOW - 90
    assert parse_since("1w", NOW) == NOW - 7 * 86400
    assert parse_since("2025-03-01T12:00:00+00:00") == datetime(2025, 3, 1, 12, tzinfo=UTC).timestamp()
    assert parse_since("2025-03-01") == datetime(2025, 3, 1).timestamp()  # local midnight
    with pytest.raises(ValueError, match="neither an age"):
        parse_since("yesterday")


def test_normalise_replaces_numbers_pids_hex_ids_and_paths() -> None:
    assert (
        normalise("web (pid 1234) exited unexpectedly with exit code 3, result exit-code")
        == "web (pid <n>) exited unexpectedly with exit code <n>, result exit-code"
    )
    assert (
        normalise("cannot open the log file /var/lib/hasupd/logs/web.log: No space left")
        == "cannot open the log file <path>: No space left"
    )
    assert normalise("incident 3fa2b91c0d4e closed after 1.25s") == "incident <id> closed after <n>s"
    assert normalise("web2 is fine") == "web2 is fine"  # digits inside a name stay


class Source:
    def __init__(self, **modes: OutputMode) -> None:
        self.services: dict[str, Any] = {n: SimpleNamespace(output=m) for n, m in modes.items()}


def store_for(
    folder: Path, logger: logging.Logger, bus: ev.EventBus, source: Source | None = None
) -> RecordStore:
    logger.addHandler(RecordFileHandler(folder))
    log_events(bus, logger)
    output = ServiceOutput(bus, folder / "logs", None, source or Source())  # type: ignore[arg-type]
    return RecordStore(LogSetup(logger, False, folder), output, None, bus)


def killed(service: str, pid: int, at: float, incident: str | None = None) -> ev.ServiceExited:
    return ev.ServiceExited(
        service=service,
        incident=incident,
        pid=pid,
        result="signal",
        signal="SIGKILL",
        status="SIGKILL",
        time=at,
    )


async def test_errors_group_by_event_service_and_pattern_most_common_first(
    tmp_path: Path, logger: logging.Logger
) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus)
    for i in range(3):
        bus.publish(killed("db", 100 + i, NOW + i, incident="aaaa1111bbbb"))
        # Reactions to the exit are not counted again.
        bus.publish(
            ev.ServiceRestartScheduled(service="db", delay_sec=0.1, reason="r", restarts=i, result="signal")
        )
    for i in range(5):
        bus.publish(killed("web", 200 + i, NOW + 10 + i, incident=f"cccc{i}dddd0000"))
    bus.publish(
        ev.ServiceSpawnFailed(service="web", result="resources", error="/bin/nope: not found", time=NOW + 20)
    )
    bus.publish(ev.ServiceExited(service="web", pid=9, result="signal", expected=True, time=NOW + 21))  # info
    groups = await store.errors(NOW - 1)
    assert [(g["event"], g["service"], g["count"]) for g in groups] == [
        ("service.exited", "web", 5),
        ("service.exited", "db", 3),
        ("service.spawn_failed", "web", 1),
    ]
    web = groups[0]
    assert (
        web["incident"] == "cccc4dddd0000"
        and web["pattern"] == "web (pid <n>) exited unexpectedly with SIGKILL, result signal"
    )
    assert web["first_seen"] < web["last_seen"] and web["example"].startswith("web (pid 204)")
    assert groups[2]["pattern"] == "web could not be started: <path>: not found"
    assert [g["count"] for g in await store.errors(NOW + 12)] == [3, 1]


async def test_incident_chain_in_order_with_its_output(tmp_path: Path, logger: logging.Logger) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus)
    chain: list[ev.Event] = [
        ev.IncidentOpened(service="web", incident="feed0001beef", reason="main process exited", time=NOW),
        killed("web", 7, NOW, incident="feed0001beef"),
        ev.ServiceRestartScheduled(
            service="web",
            incident="feed0001beef",
            delay_sec=0.1,
            reason="r",
            restarts=1,
            result="signal",
            time=NOW,
        ),
        ev.IncidentOutput(
            service="web", incident="feed0001beef", lines=("a", "b"), source="journal", time=NOW + 0.3
        ),
        ev.ServiceStarted(service="web", incident="feed0001beef", pid=8, invocation="x", time=NOW + 0.1),
        ev.IncidentClosed(service="web", incident="feed0001beef", outcome="resolved", time=NOW + 2),
        ev.ServiceStarted(service="web", pid=9, invocation="y", time=NOW + 3),  # not in the incident
    ]
    for event in chain:
        bus.publish(event)
    found = await store.incident("feed0001beef")
    assert found is not None
    assert [r["event"] for r in found["records"]] == [
        "incident.opened",
        "service.exited",
        "service.restart_scheduled",
        "service.started",
        "incident.closed",
    ]
    assert found["outcome"] == "resolved" and found["reason"] == "main process exited"
    assert found["output"] == {"lines": ["a", "b"], "source": "journal", "error": None}
    assert await store.incident("000000000000") is None


def test_scan_reads_rotated_files_newest_last_and_stops_at_since_or_limit(tmp_path: Path) -> None:
    def write(name: str, times: list[float]) -> None:
        lines = [
            json.dumps(
                {
                    "time": datetime.fromtimestamp(t, UTC).isoformat(),
                    "event": "e",
                    "service": "s",
                    "level": "info",
                }
            )
            for t in times
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        os.utime(tmp_path / name, (times[-1], times[-1]))

    write(f"{RECORDS_FILE}.2", [NOW, NOW + 1])
    write(f"{RECORDS_FILE}.1", [NOW + 2, NOW + 3])
    write(RECORDS_FILE, [NOW + 4, NOW + 5])
    with (tmp_path / RECORDS_FILE).open("a") as f:
        f.write("{cut by a cra")
    assert [t for t, _ in scan_files(tmp_path, Query())] == [NOW + i for i in range(6)]
    assert [t for t, _ in scan_files(tmp_path, Query(limit=3))] == [NOW + 3, NOW + 4, NOW + 5]
    assert [t for t, _ in scan_files(tmp_path, Query(since=NOW + 2.5))] == [NOW + 3, NOW + 4, NOW + 5]
    assert scan_files(tmp_path, Query(service="other")) == []


async def test_file_output_lines_get_times_from_the_marks_of_starts_and_exits(
    tmp_path: Path, logger: logging.Logger
) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus, Source(web=OutputMode.FILE))
    log = tmp_path / "logs" / "web.log"
    log.parent.mkdir()
    log.write_text("")
    bus.publish(ev.ServiceStarted(service="web", pid=1, invocation="a", time=NOW))
    with log.open("a") as f:
        f.write("run1 a\nrun1 b\n")
    bus.publish(ev.ServiceExited(service="web", pid=1, result="exit-code", exit_code=1, time=NOW + 10))
    with log.open("a") as f:
        f.write("run1 late\n")  # drained after the exit was seen: still written before it
    bus.publish(ev.ServiceStarted(service="web", pid=2, invocation="b", time=NOW + 11))
    with log.open("a") as f:
        f.write("run2 a\n")
    os.utime(log, (NOW + 15, NOW + 15))
    lines = await store.output.tail("web", 10)
    assert [(item["output"], t) for t, item in lines] == [
        ("run1 a", NOW + 10),
        ("run1 b", NOW + 10),
        ("run1 late", NOW + 10),
        ("run2 a", NOW + 15),
    ]
    before_restart = store.output.next_start("web", NOW + 10)
    assert before_restart is not None
    bounded = await store.output.tail("web", 2, size_limit=before_restart.size)
    assert [item["output"] for _, item in bounded] == ["run1 b", "run1 late"]
    # Merged with the records: the exit's output before the exit record, the new run's after its start.
    merged = await store.logs("web", 10)
    assert [i.get("output") or i["event"] for i in merged] == [
        "service.started",
        "run1 a",
        "run1 b",
        "run1 late",
        "service.exited",
        "service.started",
        "run2 a",
    ]


async def test_follower_sends_new_records_once_and_stops_when_the_client_goes(
    tmp_path: Path, logger: logging.Logger
) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus)
    follower = store.follower("web")
    bus.publish(killed("web", 1, NOW))  # in both the initial lines and the follower's queue
    initial = await store.logs("web", 5)
    bus.publish(killed("web", 2, NOW + 1))
    bus.publish(killed("db", 3, NOW + 2))
    bus.publish(ev.ServiceStarted(service="web", pid=4, invocation="x", time=NOW + 3))
    sent: list[Any] = []

    async def send(item: Any) -> bool:
        sent.append(item)
        return len(sent) < 3

    await follower.run(initial, send)
    assert [i["pid"] for i in sent] == [1, 2, 4]
    assert len(bus._subscribers) == 2  # the writer and the marks; the follower unsubscribed


@pytest.mark.parametrize(
    ("content", "last"),
    [
        (b"early\n" + b"x" * (1024 * 1024) + b"END\n", 1024 * 1024 + 3),  # a last line of 1 MiB
        (b"early\n" + b"y" * (32 * 1024 * 1024) + b"END", 32 * 1024 * 1024 + 3),  # 32 MiB, no newline
    ],
    ids=["1MiB-line", "32MiB-no-newline"],
)
async def test_a_tail_ending_in_a_huge_line_keeps_its_end_and_says_how_much_was_cut(
    tmp_path: Path, logger: logging.Logger, content: bytes, last: int
) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus, Source(web=OutputMode.FILE))
    log = tmp_path / "logs" / "web.log"
    log.parent.mkdir()
    log.write_bytes(content)
    lines = [item["output"] for _, item in await store.output.tail("web", 20)]
    assert len(lines) == 1  # the earlier line lies outside the read window; the last one is kept
    shown = lines[0]
    assert shown.startswith(f"[cut: {last - 8192} bytes] ") and shown.endswith("END")
    assert len(shown) == len(f"[cut: {last - 8192} bytes] ") + 8192


async def test_long_lines_in_a_tail_are_cut_to_their_end_and_short_ones_stay_whole(
    tmp_path: Path, logger: logging.Logger
) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus, Source(web=OutputMode.FILE))
    log = tmp_path / "logs" / "web.log"
    log.parent.mkdir()
    log.write_bytes(b"first\n" + b"z" * 10_000 + b"!\nlast\n")
    lines = [item["output"] for _, item in await store.output.tail("web", 20)]
    assert lines[0] == "first" and lines[2] == "last"
    assert lines[1] == "[cut: 1809 bytes] " + "z" * 8191 + "!"


async def test_a_line_the_rotation_split_counts_its_bytes_in_the_rotated_files(
    tmp_path: Path, logger: logging.Logger
) -> None:
    bus = ev.EventBus()
    store = store_for(tmp_path, logger, bus, Source(web=OutputMode.FILE))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "web.log.2").write_bytes(b"old line\n" + b"a" * 5000)
    (logs / "web.log.1").write_bytes(b"b" * 6000)
    (logs / "web.log").write_bytes(b"c" * 3000 + b"END\n")
    lines = [item["output"] for _, item in await store.output.tail("web", 20)]
    # Shown: the part in the current file; cut: the 6000 + 5000 bytes of it in the rotated files.
    assert lines == ["[cut: 11000 bytes] " + "c" * 3000 + "END"]
