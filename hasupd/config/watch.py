"""Reload when files under the config dir change (the watchdog package's inotify observer).

The observer thread only pokes the event loop (``call_soon_threadsafe``); the loop debounces, so an
editor's write-rename-chmod dance or a file written in several pieces leads to one reload, after the
writing has settled.

Only changes count: a file or folder created, deleted or moved, a file modified or closed after being
written. Newer watchdog releases (5 and later) also report plain reads (``opened``,
``closed_no_write``) and metadata changes (``attrib``); a reload reads every file, so reacting to
reads would make each reload trigger the next. The event types are therefore an allow-list (what a
future release adds is ignored until it is listed here), spelled as the ``event_type`` strings that
watchdog 2.2 (Debian 12) and the newest release share. A folder's own ``modified`` is ignored too:
it comes with every change of a file inside, which is judged on its own (an editor's swap file is not
config).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

DEBOUNCE_SEC = 0.5

# "closed" is a close after writing; a close after reading is "closed_no_write" (watchdog >= 5).
CHANGE_EVENTS = frozenset(
    {EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED}
)
FOLDER_CHANGE_EVENTS = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED})


def is_config_change(event: FileSystemEvent) -> bool:
    """Return True if ``event`` changed the config: a change (not a read) of a folder or of a file the
    loader reads (``*.yaml`` not starting with ".")."""
    if event.is_directory:
        return str(event.event_type) in FOLDER_CHANGE_EVENTS
    if str(event.event_type) not in CHANGE_EVENTS:
        return False
    paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
    return any(_is_config_file(p) for p in paths if p)


def _is_config_file(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(".yaml") and not name.startswith(".")


class _Handler(FileSystemEventHandler):  # type: ignore[misc,unused-ignore]  # untyped in watchdog 2.2
    def __init__(self, poke: Callable[[], None]) -> None:
        super().__init__()
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if is_config_change(event):
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
