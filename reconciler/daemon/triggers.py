"""The daemon's trigger queue: watchers only enqueue, one thread reconciles.

Sources (file change, netlink event, /run/netns change, SIGHUP) call
:meth:`TriggerQueue.put`; timers (periodic resync, retry after an error) are
scheduled with :meth:`TriggerQueue.schedule`. The reconcile thread calls
:meth:`TriggerQueue.get`, which returns one :class:`Batch` holding everything
that happened since the previous batch, once the sources have been quiet for
``debounce`` seconds (trailing debounce), but never later than ``max_delay``
after the first trigger of the batch -- a host with a steady trickle of link
events still reconciles. Immediate triggers (signals, due timers) fire at once.

Everything that decides *when* is in :meth:`TriggerQueue.due` and
:meth:`TriggerQueue.poll`, driven by an injectable clock, so the debounce logic
is unit-tested without sleeping.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

MAX_DETAILS = 50  # details kept per batch (a storm of events keeps only the first few)


@dataclass
class Batch:
    """What happened since the previous batch."""

    sources: Counter = field(default_factory=Counter)  # source -> number of triggers
    details: List[str] = field(default_factory=list)  # first MAX_DETAILS details, in order
    timers: Tuple[str, ...] = ()  # timers that fired
    first: float = 0.0  # clock time of the first trigger (or timer deadline)

    def has(self, *sources: str) -> bool:
        return any(self.sources.get(s) for s in sources) or any(t in sources for t in self.timers)

    def describe(self) -> str:
        parts = [f"{s}" if n == 1 else f"{s}x{n}" for s, n in sorted(self.sources.items())]
        parts += [f"timer:{t}" for t in self.timers]
        return ",".join(parts) or "nothing"


class TriggerQueue:
    def __init__(
        self,
        debounce: float = 0.5,
        max_delay: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if debounce < 0:
            raise ValueError("debounce must be >= 0")
        self.debounce = debounce
        self.max_delay = max_delay if max_delay is not None else max(10 * debounce, 2.0)
        self.clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._sources: Counter = Counter()
        self._details: List[str] = []
        self._first: Optional[float] = None
        self._last: Optional[float] = None
        self._immediate = False
        self._timers: Dict[str, float] = {}
        self._closed = False

    # producers ---------------------------------------------------------------------------------
    def put(self, source: str, detail: str = "", immediate: bool = False) -> None:
        """Record a trigger. Thread-safe; never blocks for long (watchers call it)."""
        with self._cond:
            now = self.clock()
            self._sources[source] += 1
            if detail and len(self._details) < MAX_DETAILS:
                self._details.append(detail)
            if self._first is None:
                self._first = now
            self._last = now
            if immediate:
                self._immediate = True
            self._cond.notify_all()

    def schedule(self, name: str, at: float) -> None:
        """Fire timer ``name`` at clock time ``at`` (replaces an earlier schedule of it)."""
        with self._cond:
            self._timers[name] = at
            self._cond.notify_all()

    def cancel(self, name: str) -> None:
        with self._cond:
            self._timers.pop(name, None)
            self._cond.notify_all()

    def scheduled(self, name: str) -> Optional[float]:
        with self._cond:
            return self._timers.get(name)

    def close(self) -> None:
        """Wake the consumer for good: get() returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # consumer ----------------------------------------------------------------------------------
    def due(self) -> Optional[float]:
        """Clock time at which the next batch is due (None: nothing pending)."""
        with self._cond:
            return self._due_locked()

    def _due_locked(self) -> Optional[float]:
        cands = list(self._timers.values())
        if self._first is not None:
            assert self._last is not None
            if self._immediate:
                cands.append(self._last)
            else:
                cands.append(min(self._last + self.debounce, self._first + self.max_delay))
        return min(cands) if cands else None

    def poll(self) -> Optional[Batch]:
        """The batch if it is due now, else None (never blocks)."""
        with self._cond:
            return self._take_if_due_locked()

    def _take_if_due_locked(self) -> Optional[Batch]:
        due = self._due_locked()
        now = self.clock()
        if due is None or due > now:
            return None
        fired = tuple(sorted(n for n, at in self._timers.items() if at <= now))
        for n in fired:
            del self._timers[n]
        batch = Batch(timers=fired, first=self._first if self._first is not None else due)
        # triggers are taken when the debounce says so, or together with a due timer
        # (a reconcile done for the timer covers them too)
        batch.sources, batch.details = self._sources, self._details
        self._sources, self._details = Counter(), []
        self._first = self._last = None
        self._immediate = False
        return batch

    def get(self, timeout: Optional[float] = None) -> Optional[Batch]:
        """Block until a batch is due and return it; None when closed or on timeout."""
        limit = None if timeout is None else self.clock() + timeout
        with self._cond:
            while not self._closed:
                batch = self._take_if_due_locked()
                if batch is not None:
                    return batch
                due = self._due_locked()
                now = self.clock()
                wait_until = due if limit is None else (limit if due is None else min(due, limit))
                if limit is not None and now >= limit:
                    return None
                if self.clock is time.monotonic:
                    # the real clock: sleep until the batch is due or a producer notifies (an
                    # idle daemon's reconcile thread used to wake once a second for nothing)
                    self._cond.wait(timeout=None if wait_until is None else max(wait_until - now, 0.0))
                else:
                    # wake up at least once a second: the clock may be a fake, or may jump
                    self._cond.wait(timeout=1.0 if wait_until is None else min(max(wait_until - now, 0.0), 1.0))
            return None


class Backoff:
    """Exponential backoff for temporary errors: base, 2*base, 4*base, ... capped."""

    def __init__(self, base: float = 1.0, cap: float = 60.0):
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.base * (2 ** (self.failures - 1)), self.cap)

    def reset(self) -> None:
        self.failures = 0
