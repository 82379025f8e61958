"""Reload when files under the config dir change (the watchdog package's inotify observer).

The observer thread only pokes the event loop (``call_soon_threadsafe``); the loop debounces, so an
editor's write-rename-chmod dance or a file written in several pieces leads to one reload, after the
writing has settled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

DEBOUNCE_SEC = 0.5


class _Handler(FileSystemEventHandler):  # type: ignore[misc,unused-ignore]  # untyped in watchdog 2.2
    def __init__(self, poke: Callable[[], None]) -> None:
        super().__init__()
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        # Only YAML and the folders that hold it; editor swap files and backups are not config.
        if event.is_directory or any(p.endswith(".yaml") for p in paths):
            self._poke()


class ConfigWatch:
    """Calls ``on_change`` on the loop once the config dir has been quiet for DEBOUNCE_SEC."""

    def __init__(
        self, config_dir: Path, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self._timer: asyncio.TimerHandle | None = None
        self._observer = Observer()
        self._observer.schedule(_Handler(self._poke_threadsafe), str(config_dir), recursive=True)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        """Stop watching; safe when the watch never started (hasupd failed during start-up)."""
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(5)
        if self._timer is not None:
            self._timer.cancel()

    def _poke_threadsafe(self) -> None:
        self._loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(DEBOUNCE_SEC, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._on_change()
