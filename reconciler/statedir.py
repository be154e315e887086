"""The state directory: automatic choices, intent records, and the writer lock.

``state.json`` is versioned and written atomically and durably (``atomicfile``: temp file, fsync, rename,
fsync of the directory). It holds:
- ``allocations``: automatic subnets, addresses and the ULA prefix (IPAM), so
  choices are stable across runs and reboots;
- ``intents``: the keys of objects a run is about to create, written before it
  creates them, so a run killed between creating an object and marking it in
  the kernel does not leave an orphan the next run refuses to touch.

The kernel markers are the authority on ownership; a lost or corrupt state file
is rebuilt from them (addresses are read back from our endpoints).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from .atomicfile import write_atomic
from .errors import LockHeld, UserError
from .ipam import Allocations
from .objects import Key, Kind

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"


def key_to_json(key: Key) -> List[str]:
    return [key[0].label] + [str(k) for k in key[1:]]


def key_from_json(data: List[str]) -> Key:
    return (Kind[data[0].upper()],) + tuple(data[1:])


@dataclass(frozen=True)
class State:
    allocations: Allocations = field(default_factory=Allocations)
    intents: Tuple[Key, ...] = ()
    problem: Optional[str] = None  # why the file could not be read (it was rebuilt)
    # kernel tables of the host namespace that may hold our BGP exports (SPEC 5.2): observed
    # even after `bgp:` leaves the manifests, so the routes left there are removed
    export_tables: Tuple[int, ...] = ()

    def to_json(self) -> dict:
        out = {
            "version": STATE_VERSION,
            "allocations": self.allocations.to_json(),
            "intents": [key_to_json(k) for k in self.intents],
        }
        if self.export_tables:
            out["export_tables"] = list(self.export_tables)
        return out


class StateStore:
    def __init__(self, directory: str):
        self.dir = directory
        self.path = os.path.join(directory, STATE_FILE)

    def load(self) -> State:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return State()
        except OSError as e:
            return State(problem=f"cannot read {self.path}: {e.strerror}; rebuilding from the kernel")
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            version = data.get("version")
            if version != STATE_VERSION:
                raise ValueError(f"unknown version {version!r}")
            intents = tuple(key_from_json(k) for k in data.get("intents") or ())
            tables = tuple(sorted({int(t) for t in data.get("export_tables") or ()}))
            return State(allocations=Allocations.from_json(data.get("allocations")), intents=intents,
                         export_tables=tables)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            return State(problem=f"{self.path} is corrupt ({e}); rebuilding it from the kernel")

    def save(self, state: State) -> None:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        write_atomic(self.path, data, durable=True)  # ownership records must survive a power loss

    @contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """One writer at a time: an exclusive flock on <state dir>/lock. Waits up to
        ``timeout`` seconds, then fails clearly. The kernel drops the lock when the
        holder dies, so a killed apply never blocks the next one."""
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create state directory {self.dir}: {e.strerror}")
        fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        raise LockHeld(
                            f"another ipvlan-reconciler run holds {self.dir}/{LOCK_FILE}; "
                            f"gave up after {timeout:g}s (use --lock-timeout to wait longer)"
                        )
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)
