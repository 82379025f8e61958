"""Config errors as operators read them: ``FILE:LINE:COL: dotted.key: message``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one config file.

    ``line`` and ``col`` are 1-based and point at the offending node: the value for a bad value, the key
    for an unknown or duplicate key, the item for a bad list item. ``key`` is the dotted path of that
    node inside its file ("health.0.interval_sec"), or "" for a problem with the whole file.
    """

    file: str
    line: int
    col: int
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}:{self.line}:{self.col}: {self.key}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


def sort_issues(issues: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    """Return ``issues`` ordered by file, then line, then column; ties keep the order they were found."""
    return sorted(issues, key=lambda issue: (issue.file, issue.line, issue.col))


class ConfigError(Exception):
    """The config is invalid; ``issues`` holds every problem found, ordered by file, line, column."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = sort_issues(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)
