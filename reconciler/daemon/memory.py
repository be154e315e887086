"""The daemon's memory: everything ``ipvlanctl watch`` keeps from one reconcile to the next,
in one place (issue 12).

* the manifest loader's memory (``loader``: today ``manifest.ParseCache``, files whose bytes
  did not change are not parsed again; the fingerprint primes it, ``fswatch.fingerprint``);
* the last observation of a converged host (``snapshot``, hosts-file stamps included, and
  ``made``: what observe made of each namespace's dump), which the next run builds on for
  the namespaces the netlink monitor vouches for;
* compile's per-container results (``compile_memo``);
* the scoped planner and its base (``scope``, daemon/scope.py), when scoping is on.

The engine sees it through ``engine.RunMemory`` (planner, compile memo, ``handover``,
``keep``). The netlink monitor is asked here, *before* each run (:meth:`for_run`), and its
answer travels to the engine as data (``engine.Previous``): the engine never calls into the
daemon's monitor. ``forget()`` (the daemon's start, SIGHUP, a retry, the periodic resync)
makes the next run observe every namespace afresh and plan everything; the compile memo and
the parse cache are kept (their entries are checked against their inputs on every use, so
they cannot make a result differ). ``ipvlanctl apply`` has none of this: the engine without a
memory dumps everything, plans in full and keeps nothing.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, Iterable, Mapping, Optional, Tuple

from ..compile import CompileMemo
from ..engine import Previous, plan_for

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import ApplyOutcome
    from ..kernel.host import HeldNs, Snapshot
    from ..kernel.observe import Observation


def vouch(
    monitor, snapshot: Optional["Snapshot"], now: float, names: Optional[Iterable[str]] = None
) -> Tuple[Dict[str, "HeldNs"], Dict[str, float]]:
    """Ask the netlink MONITOR, at NOW (a time.monotonic() taken before asking), which of our
    namespaces it holds and since when nothing that matters changed in each: ``(held,
    quiet)`` for ``engine.Previous``. ``quiet[name]`` is the time of the previous SNAPSHOT's
    dump of it when the monitor vouches for that dump, else NOW when it vouches for the
    namespace since NOW (a dump the run takes later still holds at its verify); a namespace
    with a change read after both is left out (dumped again). ``held`` is asked before
    ``unchanged_since``: a monitor socket replaced in between was opened after NOW, so the
    latter answers no. ``names``: ask about these only (default: every namespace monitored)."""
    held: Dict[str, "HeldNs"] = {}
    quiet: Dict[str, float] = {}
    views = snapshot.namespaces if snapshot is not None else {}
    for name in monitor.monitored() if names is None else names:
        h = monitor.held(name)
        if h is None:
            continue
        view = views.get(name)
        if view is not None and monitor.unchanged_since(name, view.taken):
            quiet[name] = view.taken
        elif monitor.unchanged_since(name, now):
            quiet[name] = now
        else:
            continue
        held[name] = h
    return held, quiet


class DaemonMemory:
    """Everything the daemon keeps between reconciles (module docstring). Until a netlink
    monitor is attached (:meth:`attach`) only the loader's memory is used and the daemon
    reconciles the way the CLI does (``for_run`` gives None)."""

    def __init__(self, scoped: bool = True, scoped_verify: bool = True, loader=None, scoped_observe: bool = True):
        from ..manifest import ParseCache

        # the manifest load's memory: a ParseCache (``manifest.load(paths, cache)``), or an
        # object with its own ``load(paths)`` (the incremental reload's); the daemon's
        # fingerprint primes it (``digest``)
        self.loader = loader if loader is not None else ParseCache()
        self.scoped = scoped  # False: every plan in full (IPVLAN_RECONCILER_SCOPE=0)
        self.scoped_verify = scoped_verify
        self.scoped_observe = scoped_observe  # False: the monitor's change log is not asked (to compare)
        self.monitor = None
        self.compile_memo: Optional[CompileMemo] = None
        self.scope = None  # daemon.scope.ScopedPlanner once attached, when scoped
        self.planner = plan_for
        self.snapshot: Optional["Snapshot"] = None
        self.made: Dict[str, object] = {}
        self.full = True  # the next run observes and plans everything
        self._previous: Optional[Previous] = None
        # the monitor's word given for ``snapshot`` (held, quiet), carried to the next run for
        # the namespaces its change log shows nothing for (see for_run)
        self._vouched: Optional[Tuple[Dict[str, "HeldNs"], Dict[str, float]]] = None

    def attach(self, monitor) -> None:
        """From now on MONITOR vouches for namespace dumps, and runs get this memory."""
        self.monitor = monitor
        self.compile_memo = CompileMemo()
        if self.scoped:
            from .scope import ScopedPlanner

            self.scope = ScopedPlanner(scoped_verify=self.scoped_verify)
            self.planner = self.scope
        self.forget()

    # what the daemon does with it ------------------------------------------------------------
    def load(self, paths):
        """The manifests of PATHS as one desired state, through the loader's memory."""
        own = getattr(self.loader, "load", None)
        if own is not None:
            return own(paths)
        from ..manifest import load

        return load(paths, self.loader)

    def forget(self) -> None:
        """The next run observes every namespace afresh and plans everything (its plan, if
        empty, makes the scoped planner's next base); the old snapshot and base go now."""
        self.full = True
        self.snapshot, self.made, self._previous, self._vouched = None, {}, None, None
        if self.scope is not None:
            self.scope.base = None

    def for_run(self) -> Optional["DaemonMemory"]:
        """What to hand ``engine.apply(memory=...)`` for the next reconcile: None without a
        monitor; else this memory, the monitor asked now (:func:`vouch`)."""
        if self.monitor is None:
            return None
        full, self.full = self.full, False
        snap = None if full else self.snapshot
        now = time.monotonic()
        # the monitor's change log, when it keeps one (``changes_since``: what changed since
        # the snapshot's mark), asked first: anything logged after this answer is the next's
        ask = getattr(self.monitor, "changes_since", None) if self.scoped_observe else None
        changes = ask(snap.mark if snap is not None else None) if ask is not None else None
        carried = self._vouched if snap is not None else None
        if carried is not None and changes is not None and changes.namespaces is not None:
            # proportional to the change: the word given last time still holds for a namespace
            # the log shows nothing for (no change, no socket opened or closed since); ask again
            # about the others and about those it did not vouch for then
            held, quiet = dict(carried[0]), dict(carried[1])
            todo = set(changes.namespaces) | {n for n in snap.namespaces if n not in held}
            for name in changes.namespaces:
                held.pop(name, None)
                quiet.pop(name, None)
            h, q = vouch(self.monitor, snap, now, sorted(todo))
            held.update(h)
            quiet.update(q)
        else:
            held, quiet = vouch(self.monitor, snap, now)
        self._vouched = (held, quiet)
        self._previous = Previous(snapshot=snap, made=self.made if snap is not None else {}, held=held, quiet=quiet,
                                  changes=changes)
        if self.scope is not None:
            self.scope.full = full
        return self

    # engine.RunMemory ------------------------------------------------------------------------
    def handover(self) -> Previous:
        prev, self._previous = self._previous or Previous(), None
        self.snapshot, self.made = None, {}  # until the run keeps an observation it can vouch for
        return prev

    def keep(self, obs: "Observation") -> None:
        self.snapshot, self.made = obs.snapshot, obs.made

    # reporting -------------------------------------------------------------------------------
    def stats(self, out: "ApplyOutcome") -> Mapping[str, object]:
        """Fields for the reconcile's log line: how much of the host the run dumped, and how
        its plan was scoped."""
        if self.monitor is None:
            return {}
        extra: Dict[str, object] = {"namespaces_dumped": out.dumped, "namespaces_reused": out.reused}
        if self.scope is not None and self.scope.last:
            extra["plan_scope"] = self.scope.describe()
        return extra
