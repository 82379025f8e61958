"""Rotating ``restic check --read-data-subset=K/N``: every pack is read once every N check runs.

K lives in the state dir (``STATE/backup/JOB/check-subset``, text "K/N"), so the rotation survives
restarts. It only moves on after a check that completed (clean or finding damage); a check that could
not run (lock, network) reads the same subset next time, so no subset is skipped.
"""

from __future__ import annotations

from pathlib import Path

from hasupd.backup.statefile import check_name, read_text
from hasupd.files import atomic_write_text


class CheckRotation:
    def __init__(self, state_dir: Path | str, job: str, n: int) -> None:
        """Raise ValueError if ``n`` < 1 or ``job`` is not a hasupd name."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"read_data_subset N must be an integer >= 1, not {n!r}")
        self.n = n
        self._path = Path(state_dir) / "backup" / check_name("job", job) / "check-subset"

    def current(self) -> str:
        """Return the subset for the next check, e.g. "3/12". Starts at 1, and again at 1 when N changed
        or the file is unreadable."""
        return f"{self._k()}/{self.n}"

    def advance(self) -> str:
        """Move to the next subset after a completed check and return it. Raise OSError if unwritable."""
        k = self._k() % self.n + 1
        atomic_write_text(self._path, f"{k}/{self.n}\n")
        return f"{k}/{self.n}"

    def _k(self) -> int:
        try:
            text = read_text(self._path)
            if text is None:
                return 1
            k_text, _, n_text = text.strip().partition("/")
            if not (k_text.isdigit() and n_text.isdigit()) or int(n_text) != self.n:
                return 1
            k = int(k_text)
        except (OSError, ValueError):
            # Damaged (not UTF-8, a folder, digits int() refuses: "²", 5000 of them): from the first
            # subset again; advance() then writes it whole.
            return 1
        return k if 1 <= k <= self.n else 1
