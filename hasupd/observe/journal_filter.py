"""Between ``journalctl --output=json --follow`` and hasupd's error groups, in a process of its own.

    python3 -m hasupd.observe.journal_filter [--unit U ...] [--every-line-of U ...] -- journalctl ARGS

hasupd reads the output of ``output: journal`` services back from the journal for its error groups
(``hasupd.observe.error_groups``). Reading every line back costs CPU per byte; this process pays it,
not hasupd's supervising one (so a service's log flood never competes with restarts for hasupd's event
loop; it runs at a lower priority, nice 10). It passes on, unchanged, only the JSON lines that can matter
to the error groups (``CANDIDATE``: see ``hasupd.observe.error_lines``), the ``HOT_BYTES`` after each
of them (the rest of a stack) and the ``TAIL_LINES`` before (the header of a Java stack); for the reads
it drops it writes one summary line instead: ``{"__hasupd_skipped": {UNIT: lines}, "__CURSOR": ...}``
(the lines are a sign of life; the cursor lets hasupd resume after the last line read).

It ends when journalctl ends (with journalctl's exit status) and dies with hasupd (the parent-death
signal hasupd gives it), taking journalctl with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

# journalctl's JSON lines that can matter to the error groups: a level prefix <0>..<3>, a Python
# traceback, a Java stack's lines (a message starting with white space, an escape or a non-ASCII
# character, or with "Caused by: "), a PRIORITY the program set itself (any transport but the stdout
# stream), a MESSAGE that is not text; every line of a unit with errors.match is added by --every-line-of.
CANDIDATE = (
    rb'"MESSAGE" ?: ?"<[0-3]>'
    rb"|Traceback \(most recent call last\):"
    rb'|"MESSAGE" ?: ?"(?:[^"\\A-Za-z0-9]|\\[^u]|\\u[0-9a-fA-F]{4}){1,64}?(?:at |\.\.\. \d|Suppressed: )'
    rb'|"MESSAGE" ?: ?"Caused by: '
    rb'|"_TRANSPORT" ?: ?"(?!stdout")'
    rb'|"MESSAGE" ?: ?(?![ "])'
)
SUMMARY_SEC = 0.25  # dropped lines are summarised at most this often (hasupd scans each 0.2 s)
HOT_BYTES = 256 * 1024  # passed on after a candidate: covers a stack of EVENT_LINES_MAX lines
TAIL_LINES = 64  # of what was dropped, kept: the lines before a Java stack's first frame
_CURSOR = re.compile(rb'"__CURSOR" ?: ?"([^"]*)"')
# journalctl writes "FIELD" : "value"; JSON writers without the spaces are taken too.
_IDENTIFIER = re.compile(rb'"SYSLOG_IDENTIFIER" ?: ?"([^"]*)"')
_PR_SET_PDEATHSIG = 1


class Filter:
    """Decides, read by read, what of journalctl's output is passed on."""

    def __init__(self, units: Sequence[str], every_line_of: Sequence[str]) -> None:
        extra = b"".join(
            rb'|"SYSLOG_IDENTIFIER" ?: ?"' + re.escape(unit.encode()) + rb'"' for unit in every_line_of
        )
        self.candidates = re.compile(CANDIDATE + extra)
        self.units = {unit.encode(): unit for unit in units}
        self.hot = 0  # bytes still passed on after the last candidate
        self.tail = b""  # the last lines dropped since
        self.counts: dict[str, int] = {}  # lines dropped per unit, not yet summarised
        self.cursor: str | None = None  # the cursor of the last line dropped

    def feed(self, data: bytes) -> bytes:
        """Take complete lines; return those to pass on (b"" when the read is dropped: then its lines
        are counted for ``summary``)."""
        if self.hot <= 0 and self.candidates.search(data) is None:
            self._drop(data)
            return b""
        data, self.tail = self.tail + data, b""
        last = None
        for last in self.candidates.finditer(data):  # noqa: B007 (the last one is wanted)
            pass
        self.hot = HOT_BYTES - (len(data) - last.end()) if last else self.hot - len(data)
        return data

    @property
    def pending(self) -> bool:
        """Whether dropped lines wait to be summarised."""
        return bool(self.counts) or self.cursor is not None

    def summary(self) -> bytes:
        """Return the summary line of what was dropped since the last one (and forget it)."""
        summary: dict[str, object] = {"__hasupd_skipped": self.counts}
        if self.cursor is not None:
            summary["__CURSOR"] = self.cursor
        self.counts, self.cursor = {}, None
        return json.dumps(summary).encode() + b"\n"

    def _drop(self, data: bytes) -> None:
        held = self.tail + data
        self.tail = last_lines(held, TAIL_LINES)
        done = held[: len(held) - len(self.tail)]
        self.hot -= len(data)
        # One pass over the bytes, however many units are followed.
        for ident, count in Counter(_IDENTIFIER.findall(done)).items():
            if (unit := self.units.get(ident)) is not None:
                self.counts[unit] = self.counts.get(unit, 0) + count
        end = len(data) - 1 if data.endswith(b"\n") else len(data)
        cursor = _CURSOR.search(data, data.rfind(b"\n", 0, end) + 1)
        if cursor is not None:
            self.cursor = cursor.group(1).decode("utf-8", "replace")


def last_lines(data: bytes, count: int) -> bytes:
    """Return the last ``count`` lines of ``data`` (all of it if it has fewer)."""
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(count):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1 :]


def _parse(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    units: list[str] = []
    every: list[str] = []
    rest = list(argv)
    while rest and rest[0] != "--":
        option = rest.pop(0)
        if option not in ("--unit", "--every-line-of") or not rest:
            raise SystemExit(f"journal_filter: unknown or incomplete option {option!r}")
        (units if option == "--unit" else every).append(rest.pop(0))
    if not rest or len(rest) < 2:
        raise SystemExit("journal_filter: no command after --")
    return units, every, rest[1:]


def main(argv: Sequence[str]) -> int:
    units, every, command = _parse(argv)
    os.nice(10)
    libc = ctypes.CDLL(None, use_errno=True)

    def die_with_me() -> None:  # in journalctl's child, before exec: it goes when this process goes
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, preexec_fn=die_with_me)  # noqa: PLW1509
    assert proc.stdout is not None
    source = proc.stdout.fileno()
    out = sys.stdout.buffer
    flt = Filter(units, every)
    partial = b""
    last_summary = time.monotonic()
    try:
        while True:
            if flt.pending and time.monotonic() - last_summary >= SUMMARY_SEC:
                out.write(flt.summary())
                out.flush()
                last_summary = time.monotonic()
            if flt.pending and not select.select([source], [], [], SUMMARY_SEC)[0]:
                continue  # quiet: the summary goes out now
            chunk = os.read(source, 1 << 20)
            if not chunk:
                break
            data = partial + chunk
            cut = data.rfind(b"\n") + 1
            partial = data[cut:]
            passed = flt.feed(data[:cut]) if cut else b""
            if passed:
                if flt.pending:  # in order: what was dropped before these lines first
                    out.write(flt.summary())
                    last_summary = time.monotonic()
                out.write(passed)
                out.flush()
        if partial:
            flt.feed(partial + b"\n")
        if flt.pending:
            out.write(flt.summary())
        out.write(flt.tail)  # what was held back: passed on, the stream has ended
        out.flush()
    except BrokenPipeError:  # hasupd stopped reading
        proc.terminate()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
