"""Noticing changes to the store's certificates.

How this works: a watchdog observer (inotify on Linux) watches the store
folder recursively and calls ``on_change(path)`` from its own thread for every
creation, modification, deletion, move or close-after-write under ``live/``
or ``archive/`` (certbot's layout: ``live/<name>/*.pem`` are symlinks that it
re-points into ``archive/``). Opening or reading a file is not a change, so
the reloader reading the pairs does not wake itself up. The watcher decides
nothing: the callback only schedules a (debounced) reload.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger("certproxy.watcher")


WATCHED_FOLDERS = ("live", "archive")
CHANGE_EVENTS = frozenset({"created", "modified", "deleted", "moved", "closed"})


class StoreWatcher(FileSystemEventHandler):
    def __init__(self, root: Path, on_change: Callable[[str], None]) -> None:
        super().__init__()
        self.root = Path(root)
        self._on_change = on_change
        self._observer: BaseObserver | None = None
        self._prefixes = tuple(str(self.root / f) for f in WATCHED_FOLDERS)

    def relevant(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self._prefixes)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGE_EVENTS:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            path = path.decode() if isinstance(path, bytes) else path
            if path and self.relevant(path):
                self._on_change(path)
                return

    def start(self) -> None:
        # watchdog warns, from its own thread, when a folder is created and watched in
        # quick succession (certbot's archive/<name>); the watch is replaced and nothing
        # is lost. A thread's warnings go through the process-wide filters: set one here,
        # when a watcher starts, rather than when the module is imported.
        warnings.filterwarnings(
            "ignore", message="Callback with id .* already exists", category=RuntimeWarning
        )
        observer = Observer()
        observer.schedule(self, str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.debug("watching %s", self.root)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
