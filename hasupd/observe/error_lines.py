"""Which lines of a service's output are errors, and which lines belong together as one error event.

A line is at error level when
- it starts with an sd-daemon level prefix ``<0>`` .. ``<3>`` (``<4>`` .. ``<7>`` are below error level;
  the prefix is taken off the text either way), or
- the journal says so: ``PRIORITY`` 0 .. 3 on an entry the program sent itself (not through the stdout
  stream: hasupd gives every stderr stream priority 3, which says nothing about the line), or
- it matches one of the service's ``errors.match`` regular expressions.

A Python traceback (from ``Traceback (most recent call last):`` to its exception line, chained ones
included) and a Java stack trace (the line before the first ``at`` frame, the frames, ``Caused by:``
and ``... N more``) are ONE event each, and always errors: a stack is never printed for good news. An
error line right before a stack (``logger.exception("...")``, a logback line) is the stack's first line.

``Assembler`` is fed the lines of one unit in order; it holds back at most one line (to see whether a
Java stack follows it) and an unfinished stack, until ``flush`` at the end of each batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hasupd.observe.fingerprint import KIND_JAVA, KIND_LINE, KIND_PYTHON

LINE_MAX = 8192  # characters of one line kept
EVENT_LINES_MAX = 200  # lines of one stack kept; the rest is cut (the stack ends there)
ERROR_PRIORITY = 3

_PREFIX = re.compile(r"^<([0-7])>")
_PY_START = "Traceback (most recent call last):"
_PY_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_JAVA_FRAME = re.compile(r"^\s+at [\w$.<>/]+\(")
_JAVA_MORE = re.compile(r"^(?:\s+\.\.\. \d+ (?:more|common frames omitted)|Caused by: |\s+Suppressed: )")


@dataclass(frozen=True)
class ErrorEvent:
    """One error: its kind (``line``, ``python``, ``java``), its whole text and when it was written."""

    kind: str
    text: str
    time: float


class Classifier:
    """Decides whether one line is at error level (see the module docstring)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        # One alternation: one regex scan per line however many patterns there are.
        self._match = re.compile("|".join(f"(?:{p})" for p in patterns)).search if patterns else None

    def classify(self, line: str, priority: int | None = None) -> tuple[str, bool]:
        """Return the line without its level prefix, and whether it is at error level.

        ``priority``: the journal's PRIORITY when the program set it itself (None otherwise).
        """
        error = priority is not None and priority <= ERROR_PRIORITY
        if line[:1] == "<":
            prefix = _PREFIX.match(line)
            if prefix:
                line = line[3:]
                error = error or int(prefix.group(1)) <= ERROR_PRIORITY
        if not error and self._match is not None:
            error = self._match(line) is not None
        return line, error


class Assembler:
    """Turns the lines of one unit into error events (``events``, taken with ``take``)."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.events: list[ErrorEvent] = []
        self._pending: tuple[str, bool, float] | None = None  # the last line, held back one line
        self._stack: list[str] | None = None
        self._stack_kind = ""
        self._stack_time = 0.0
        self._python_done = False  # the traceback's exception line was seen
        self._chain = False  # ... and a chained traceback may follow
        self._idle_flushes = 0
        self._emitted: ErrorEvent | None = None  # the error line emitted just before the held one

    def feed(self, raw: str, when: float, priority: int | None = None) -> None:
        """Take the next line (without its newline) written at ``when``."""
        line, error = self.classifier.classify(raw[:LINE_MAX], priority)
        self._idle_flushes = 0
        if self._stack is not None:
            if self._continue_stack(line):
                return
            self._end_stack()
        if line.startswith(_PY_START):
            if self._pending is not None and self._pending[1]:
                # An error line right before a stack is its header (logger.exception writes both).
                header, _, at = self._pending
                self._pending = None
                self._start(KIND_PYTHON, [header, line], at)
            else:
                self._flush_pending()
                self._start(KIND_PYTHON, [line], when)
            return
        if self._pending is not None and _JAVA_FRAME.match(line):
            lines, at = [self._pending[0], line], self._pending[2]
            before = self._emitted
            if before is not None and self.events and self.events[-1] is before:
                self.events.pop()  # the error line before the exception line: the header, as above
                lines, at = [before.text, *lines], before.time
            self._start(KIND_JAVA, lines, at)
            self._pending = None
            return
        self._emitted = None
        self._flush_pending()
        self._pending = (line, error, when)

    def flush(self) -> None:
        """End of a batch: emit what is complete. An unfinished traceback waits for one more batch."""
        self._flush_pending()
        if self._stack is None:
            return
        self._idle_flushes += 1
        if self._stack_kind == KIND_JAVA or self._python_done or self._idle_flushes > 1:
            self._end_stack()

    @property
    def idle(self) -> bool:
        """True when nothing is held back (after ``flush``: no unfinished stack)."""
        return self._pending is None and self._stack is None

    def take(self) -> list[ErrorEvent]:
        """Return the events emitted since the last call."""
        events, self.events = self.events, []
        return events

    def _start(self, kind: str, lines: list[str], when: float) -> None:
        self._stack, self._stack_kind, self._stack_time = lines, kind, when
        self._python_done = self._chain = False

    def _continue_stack(self, line: str) -> bool:
        """Add ``line`` to the open stack if it belongs to it; return whether it did."""
        assert self._stack is not None
        if len(self._stack) >= EVENT_LINES_MAX:
            return False
        if self._stack_kind == KIND_JAVA:
            if _JAVA_FRAME.match(line) or _JAVA_MORE.match(line):
                self._stack.append(line)
                return True
            return False
        if not self._python_done:
            self._stack.append(line)
            # Frames and source lines are indented; the first line that is not is the exception.
            self._python_done = bool(line) and not line[0].isspace()
            return True
        if line == "" or line in _PY_CHAIN:
            self._chain = True
            self._stack.append(line)
            return True
        if self._chain and line.startswith(_PY_START):
            self._stack.append(line)
            self._python_done = self._chain = False
            return True
        return False

    def _end_stack(self) -> None:
        assert self._stack is not None
        lines = self._stack
        while lines and (lines[-1] == "" or lines[-1] in _PY_CHAIN):
            lines.pop()  # a chain that never came
        self.events.append(ErrorEvent(self._stack_kind, "\n".join(lines), self._stack_time))
        self._stack = None

    def _flush_pending(self) -> None:
        if self._pending is not None:
            line, error, when = self._pending
            self._pending = None
            if error and line.strip():
                self._emitted = ErrorEvent(KIND_LINE, line, when)
                self.events.append(self._emitted)
