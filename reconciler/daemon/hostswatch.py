"""Which /etc/netns/NAME/hosts files may have changed: inotify (watchdog) on /etc/netns and
every directory below it, so the daemon's observation opens (or even ``stat``s) only those
(issue 12; docs/daemon.md, "Observation cache").

``changed(name, path)`` is called from watchdog's thread for every event that can change a
file's content or presence under /etc/netns/NAME: a file closed after writing, deleted or
moved (a rename over it: editors, our own atomic writes), a directory created, deleted or
moved. Only those are asked of the kernel (watchdog's ``event_filter``): opens, reads (ours,
on every observation that reads a file), IN_MODIFY and IN_ATTRIB are not even delivered --
watchdog costs ~0.25 ms of CPU per event on the host, and every hosts file we write is ~3.
Not seen: a writer that keeps the file open (no close yet), a hard link made over it;
the periodic resync reads every file. ``changed(None, path)`` means "anything may have changed": /etc/netns itself
moved or deleted (the watch is dead from then on: :attr:`HostsWatch.alive` is False), or
the inotify queue overflowed. watchdog rebuilds its watches after an overflow but tells no
handler, only its log: a filter on its logger turns that record into ``changed(None)``.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

#: event types that can change what a hosts file holds (not "opened", "closed_no_write")
EVENTS = frozenset({"created", "deleted", "modified", "moved", "closed"})
WATCHDOG_INOTIFY_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


class _OverflowFilter(logging.Filter):
    def __init__(self, on_overflow: Callable[[], None]):
        super().__init__()
        self.on_overflow = on_overflow

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if "overflow" in record.getMessage().lower():
                self.on_overflow()
        except Exception:  # never break watchdog's logging
            pass
        return True


class HostsWatch:
    def __init__(self, etc_netns: str, changed: Callable[[Optional[str], str], None]):
        self.root = os.path.normpath(etc_netns)
        self.changed = changed
        self.observer = None
        self.dead = False
        self._filter = _OverflowFilter(lambda: changed(None, self.root))

    def start(self) -> bool:
        """Watch /etc/netns recursively; False (and nothing watched) when it does not exist
        or cannot be watched (e.g. out of inotify watches): then every hosts file is
        ``stat``ed as before."""
        from watchdog.observers import Observer

        if not os.path.isdir(self.root):
            return False
        obs = Observer()
        obs.daemon = True
        try:
            try:  # not even asked for: opens and reads (ours on every observation), IN_ACCESS
                obs.schedule(_Handler(self), self.root, recursive=True, event_filter=_event_classes())
            except TypeError:  # watchdog < 4: no event_filter (our handler filters)
                obs.schedule(_Handler(self), self.root, recursive=True)
            obs.start()
        except (OSError, RuntimeError):
            try:
                obs.stop()
            except Exception:
                pass
            return False
        for name in WATCHDOG_INOTIFY_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)
        self.observer = obs
        return True

    @property
    def alive(self) -> bool:
        return self.observer is not None and not self.dead and self.observer.is_alive()

    def stop(self) -> None:
        for name in WATCHDOG_INOTIFY_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)
        obs, self.observer = self.observer, None
        if obs is not None:
            obs.stop()
            obs.join(timeout=5)

    def event(self, event_type: str, src: str, dest: str = "") -> None:
        if event_type not in EVENTS:
            return
        for p in (src, dest):
            if not p:
                continue
            if p == self.root:
                if event_type in ("deleted", "moved"):
                    self.dead = True
                self.changed(None, p)
            elif p.startswith(self.root + os.sep):
                self.changed(p[len(self.root) + 1 :].split(os.sep, 1)[0], p)


def _event_classes() -> list:
    from watchdog import events as e

    return [e.DirCreatedEvent, e.FileDeletedEvent, e.DirDeletedEvent, e.FileMovedEvent, e.DirMovedEvent,
            e.FileClosedEvent]


class _Handler:
    """watchdog's event handler protocol: dispatch(event)."""

    def __init__(self, watch: HostsWatch):
        self.watch = watch

    def dispatch(self, event) -> None:
        src = event.src_path.decode() if isinstance(event.src_path, bytes) else event.src_path
        dest = getattr(event, "dest_path", "") or ""
        if isinstance(dest, bytes):
            dest = dest.decode()
        self.watch.event(event.event_type, src, dest)
