"""Watch manifest directories (watchdog/inotify) and fingerprint their content.

What is watched, for each manifest path P given on the command line:

* the real directory behind P (``realpath``): any ``*.yaml``/``*.yml`` that is
  not hidden, plus ``..data`` -- the symlink a Kubernetes ConfigMap mount swaps
  atomically (``..data -> ..2024_01_01_...``) while the ``*.yaml`` entries stay
  symlinks into ``..data`` and never change themselves;
* P's parent directory, for P itself being created, replaced, renamed or
  removed (and, when P is a symlink, the parent of its target);
* the directory of each manifest that is a symlink elsewhere, for that target.

Editors' temporary files are ignored by name: hidden files (``.a.yaml.swp``,
``.#a.yaml``), backups (``a.yaml~``), vim's ``4913`` probe -- none of them end
in ``.yaml``/``.yml`` or they start with a dot. Write-temp-then-rename shows up
as a move whose destination is a manifest. After every reload the watch set is
recomputed (:meth:`ManifestWatcher.refresh`), so a replaced directory or a
swapped symlink is followed. Watchers only enqueue; the reconcile thread reads.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..manifest import is_manifest_name
from ..manifest import read_bytes as _read_bytes
from ..manifest import scan as _scan
from . import logs

K8S_DATA = "..data"
RELEVANT_EVENTS = ("created", "deleted", "moved", "modified", "closed")


def manifest_files(paths: List[str]) -> Tuple[List[str], List[str]]:
    """(manifest files in load order, paths that do not exist): the very files the loader
    reads (one rule for what counts as a manifest). Other problems (a directory without
    manifests, a dangling link inside one, a FIFO) are the loader's to report."""
    s = _scan(paths)
    return s.files, [d.loc.file for d in s.missing]


def fingerprint(paths: List[str], cache=None) -> Tuple[str, List[str], List[str]]:
    """A digest of every manifest's name and content: equal digests load equally.

    ``cache`` (the daemon's ``manifest.ParseCache``) hashes each file's bytes and keeps
    them for the load that follows: every file is read and hashed once per reload."""
    if cache is not None:
        cache.drop_primed()
    s = _scan(paths)
    files, missing = s.files, [d.loc.file for d in s.missing]
    h = hashlib.sha256()
    for m in missing:
        h.update(b"missing\0" + m.encode("utf-8", "surrogateescape") + b"\0")
    for d in s.problems:  # a dangling link appearing or going changes what a load says
        h.update(b"problem\0" + f"{d.loc.file}\0{d.message}".encode("utf-8", "surrogateescape") + b"\0")
    for f in files:
        h.update(b"file\0" + f.encode("utf-8", "surrogateescape") + b"\0")
        # read as the loader reads: never blocking (a file swapped for a FIFO meanwhile)
        data, failed = _read_bytes(f)
        if data is not None and cache is not None:
            h.update(str(len(data)).encode() + b"\0" + cache.digest(f, data))
        elif data is not None:
            h.update(str(len(data)).encode() + b"\0" + data)
        else:
            h.update(f"error {failed[1][0].message}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest(), files, missing


@dataclass
class Rule:
    """What matters in one watched directory."""

    manifests: bool = False  # any manifest name (and ..data)
    names: Set[str] = field(default_factory=set)  # these exact names

    def matches(self, name: str) -> bool:
        return name in self.names or (self.manifests and (is_manifest_name(name) or name == K8S_DATA))


def _nearest_existing(path: str) -> Tuple[Optional[str], str]:
    """(nearest existing ancestor directory, the first missing component below it)."""
    child = path
    parent = os.path.dirname(path)
    while parent != child:
        if os.path.isdir(parent):
            return parent, os.path.basename(child)
        child, parent = parent, os.path.dirname(parent)
    return None, ""


def compute_rules(paths: List[str]) -> Dict[str, Rule]:
    """Directories to watch (real paths) and what to look for in each."""
    rules: Dict[str, Rule] = {}

    def rule(d: str) -> Rule:
        return rules.setdefault(os.path.realpath(d), Rule())

    for p in (os.path.abspath(x) for x in paths):
        parent = os.path.dirname(p)
        if os.path.isdir(parent):
            rule(parent).names.add(os.path.basename(p))
        else:
            anc, first = _nearest_existing(p)
            if anc is not None:
                rule(anc).names.add(first)
        if os.path.isdir(p):
            real = os.path.realpath(p)
            rule(real).manifests = True
            if real != p and real != "/":
                rule(os.path.dirname(real)).names.add(os.path.basename(real))
            try:
                names = os.listdir(real)
            except OSError:
                names = []
            for n in names:
                f = os.path.join(real, n)
                if is_manifest_name(n) and os.path.islink(f):
                    t = os.path.realpath(f)
                    td = os.path.dirname(t)
                    if os.path.isdir(td):
                        rule(td).names.add(os.path.basename(t))
        elif os.path.lexists(p):
            if os.path.islink(p):
                t = os.path.realpath(p)
                td = os.path.dirname(t)
                if os.path.isdir(td):
                    rule(td).names.add(os.path.basename(t))
    return rules


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ManifestWatcher:
    """Calls ``notify(detail)`` for every relevant file event (from watchdog's thread).

    It also tracks manifests that are open for writing: written to (IN_MODIFY or
    created) and not closed yet (no IN_CLOSE_WRITE). A file being written in place
    may be half-written yet valid YAML (say, cut before its ``containers:``), which
    would remove containers; the daemon does not read while :meth:`writing` names
    a file, and the close event triggers the read. A writer that keeps a file open
    longer than ``write_timeout`` seconds is not waited for any more."""

    def __init__(self, paths: List[str], notify: Callable[[str], None], write_timeout: float = 30.0):
        from watchdog.observers import Observer

        self.paths = list(paths)
        self.notify = notify
        self.write_timeout = write_timeout
        self._writing: Dict[str, float] = {}
        self.observer = Observer()
        self.observer.daemon = True
        self._lock = threading.Lock()  # our state; never held while calling the observer
        self._refresh_lock = threading.Lock()
        self._rules: Dict[str, Rule] = {}
        self._watches: Dict[str, Tuple[object, Optional[Tuple[int, int]]]] = {}
        self._handler = _Handler(self)

    def start(self) -> None:
        self.refresh()
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    @property
    def watched(self) -> List[str]:
        with self._lock:
            return sorted(self._watches)

    def refresh(self) -> bool:
        """Recompute what to watch; True when a watch was added or re-added (the caller
        should re-read: something may have changed before the new watch was in place).

        watchdog calls our handler (which takes ``_lock``) while holding its observer's
        lock, so ``_lock`` is never held while calling into the observer: the other lock
        order deadlocked (seen once in a unit test, watchdog 6). ``_refresh_lock`` keeps
        refreshes from interleaving."""
        rules = compute_rules(self.paths)
        added = False
        with self._refresh_lock:
            with self._lock:
                self._rules = rules
                stale = [
                    (d, watch) for d, (watch, ident) in self._watches.items() if d not in rules or _identity(d) != ident
                ]
                for d, _ in stale:
                    del self._watches[d]
                missing = [d for d in rules if d not in self._watches]
            for _, watch in stale:
                try:
                    self.observer.unschedule(watch)
                except (KeyError, OSError, ValueError):
                    pass
            for d in missing:
                ident = _identity(d)
                if ident is None:
                    continue
                try:
                    watch = self.observer.schedule(self._handler, d, recursive=False)
                except OSError as e:  # vanished meanwhile, or out of inotify watches
                    logs.warning("cannot watch directory", path=d, error=e.strerror or str(e))
                    continue
                with self._lock:
                    self._watches[d] = (watch, ident)
                added = True
        return added

    def writing(self) -> List[str]:
        """Manifests open for writing right now (see the class docstring)."""
        now = time.monotonic()
        with self._lock:
            for p, since in list(self._writing.items()):
                if now - since > self.write_timeout or not os.path.lexists(p):
                    del self._writing[p]
            return sorted(self._writing)

    def _track_write(self, event_type: str, src: str, dest: str) -> None:
        if event_type in ("created", "modified"):
            if not os.path.islink(src) and is_manifest_name(os.path.basename(src)):
                self._writing.setdefault(src, time.monotonic())
        elif event_type in ("closed", "deleted"):
            self._writing.pop(src, None)
        elif event_type == "moved":
            self._writing.pop(src, None)
            if dest:
                self._writing.pop(dest, None)

    def relevant(self, event_type: str, src: str, dest: str = "") -> Optional[str]:
        """The detail to report when this event matters, else None."""
        if event_type not in RELEVANT_EVENTS:
            return None
        with self._lock:
            self._track_write(event_type, src, dest)
            rules = self._rules
            for p in (src, dest):
                if not p:
                    continue
                if p in rules:
                    # the watched directory itself: only its disappearance matters
                    if event_type in ("deleted", "moved"):
                        return f"{event_type} {p}"
                    continue
                d, n = os.path.split(p)
                r = rules.get(d)
                if r is not None and r.matches(n):
                    return f"{event_type} {p}" + (f" -> {dest}" if dest and p == src else "")
        return None


class _Handler:
    """watchdog's event handler protocol: dispatch(event)."""

    def __init__(self, watcher: ManifestWatcher):
        self.watcher = watcher

    def dispatch(self, event) -> None:
        src = event.src_path.decode() if isinstance(event.src_path, bytes) else event.src_path
        dest = getattr(event, "dest_path", "") or ""
        if isinstance(dest, bytes):
            dest = dest.decode()
        detail = self.watcher.relevant(event.event_type, src, dest)
        if detail is not None:
            self.watcher.notify(detail)
