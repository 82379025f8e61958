"""Fingerprints of error events: what stays the same when the same error happens again.

A one-line error is grouped by its text with the parts that vary from one occurrence to the next
replaced by placeholders (``normalise``): timestamps, UUIDs, hex numbers and long ids, URLs, paths,
IP addresses, quoted values and numbers. A Python traceback is grouped by its exception type(s) and its
frames (file and function, not line numbers, which move with every edit); a Java stack trace by its
exception class(es) and its ``at`` frames (method, not line). The message of an exception is left out
of a stack's fingerprint (it usually carries the varying values) but shown in its pattern.

Pure functions, standard library only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

KIND_LINE = "line"
KIND_PYTHON = "python"
KIND_JAVA = "java"
PATTERN_MAX = 300  # characters of a pattern kept (the sample keeps the whole event)

_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
# In order: the earlier ones contain what the later ones would otherwise cut up.
_REPLACEMENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
        ),
        "<time>",
    ),
    (re.compile(rf"\b(?:{_MONTHS}) +\d{{1,2}} \d{{2}}:\d{{2}}:\d{{2}}\b"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (
        re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
        "<uuid>",
    ),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+"), "<url>"),
    (re.compile(r"(?<![\w.])'[^'\n]*'(?!\w)"), "'<str>'"),
    (re.compile(r'"[^"\n]*"'), '"<str>"'),
    (re.compile(r"(?<![\w.<])(?:~|\.{1,2})?/[^\s:;,'\"()\[\]{}<>]+"), "<path>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b"), "<hex>"),
    # Hex ids (8+ hex digits; all-decimal ones too: a random hex id sometimes has no letter), and long
    # tokens mixing letters and digits (request ids, tokens).
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"\b(?=[A-Za-z0-9_-]*[A-Za-z])(?=(?:[A-Za-z_-]*\d){2})[A-Za-z0-9_-]{10,}\b"), "<id>"),
    (re.compile(r"(?<![A-Za-z<])[-+]?\d+(?:\.\d+)?"), "<n>"),
)
_PY_FRAME = re.compile(r'^\s+File "([^"]*)", line \d+(?:, in (.*))?$')
_JAVA_FRAME = re.compile(r"^\s+at ([\w$.<>/]+)\(")
_JAVA_CAUSE = re.compile(r"^(?:Caused by|\s*Suppressed): ([\w$.]+)")
_JAVA_HEADER = re.compile(r"(?:^|\s)((?:[\w$]+\.)+[\w$]*(?:Exception|Error|Throwable))\b")
_JAVA_ANY_HEADER = re.compile(r"^([\w$.]+)(?::|$)")  # any class name: "com.example.Oops: ..."
_PY_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


def normalise(text: str) -> str:
    """Return ``text`` with its varying parts replaced by placeholders (see the module docstring)."""
    for pattern, placeholder in _REPLACEMENTS:
        text = pattern.sub(placeholder, text)
    return text


@dataclass(frozen=True)
class Fingerprint:
    """``key`` decides the group; ``pattern`` is how the group is shown (one line)."""

    kind: str
    key: str
    pattern: str

    def group_id(self, service: str) -> str:
        """Return the group's id: 12 hex digits, the same for the same service and key, everywhere."""
        digest = hashlib.sha256(f"{service}\0{self.kind}\0{self.key}".encode()).hexdigest()
        return digest[:12]


def fingerprint(kind: str, text: str) -> Fingerprint:
    """Return the fingerprint of one error event of ``kind`` whose (possibly multi-line) text is ``text``."""
    if kind == KIND_PYTHON:
        return _python(text)
    if kind == KIND_JAVA:
        return _java(text)
    pattern = normalise(text.strip())
    return Fingerprint(KIND_LINE, pattern, pattern[:PATTERN_MAX])


def _python(text: str) -> Fingerprint:
    lines = text.split("\n")
    frames: list[str] = []
    exceptions: list[str] = []
    messages: list[str] = []
    for index, line in enumerate(lines):
        frame = _PY_FRAME.match(line)
        if frame:
            frames.append(f"{frame.group(1)}:{frame.group(2) or ''}")
        elif (
            line
            and not line[0].isspace()
            and not line.startswith("Traceback (most recent call last)")
            and not line.startswith(_PY_CHAIN)
            and index > 0
        ):
            exception, _, message = line.partition(":")
            exceptions.append(exception.strip())
            messages.append(f"{exception.strip()}:{normalise(message)}" if message else exception.strip())
    key = "|".join(exceptions) + "\n" + "\n".join(frames)
    where = frames[-1].rpartition(":")[2] if frames else ""
    pattern = " <- ".join(reversed(messages)) or normalise(lines[-1])
    if where:
        pattern += f" (in {where})"
    return Fingerprint(KIND_PYTHON, key, pattern[:PATTERN_MAX])


def _java(text: str) -> Fingerprint:
    lines = text.split("\n")
    exceptions: list[str] = []
    frames: list[str] = []
    header_end = len(lines)  # the header: the lines before the first frame (a log line, the exception)
    for index, line in enumerate(lines):
        frame = _JAVA_FRAME.match(line)
        if frame:
            header_end = min(header_end, index)
            frames.append(frame.group(1))
            continue
        cause = _JAVA_CAUSE.match(line)
        if cause:
            exceptions.append(cause.group(1))
        elif not frames:
            match = _JAVA_HEADER.search(line)
            if match:
                exceptions.append(match.group(1))
    if not any(_JAVA_HEADER.search(line) for line in lines[:header_end]):
        # An exception class not named ...Exception or ...Error: the line before the first frame.
        named = _JAVA_ANY_HEADER.match(lines[max(0, header_end - 1)])
        exceptions.insert(0, named.group(1) if named else normalise(lines[0]))
    key = "|".join(exceptions) + "\n" + "\n".join(frames)
    pattern = normalise(lines[0].strip())
    if frames:
        pattern += f" (at {frames[0]})"
    return Fingerprint(KIND_JAVA, key, pattern[:PATTERN_MAX])
