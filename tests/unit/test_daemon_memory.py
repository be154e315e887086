"""The daemon's memory in one place (daemon/memory.py, issue 12): the one-shot engine.apply
keeps nothing and allocates no memory object; the daemon's memory asks its netlink monitor
before a run and hands the engine data (the engine never calls the monitor); forget() makes
the next run a full one, observation and plan."""
from __future__ import annotations

import types

import reconciler.compile as kcompile
import reconciler.kernel.apply as kapply
import reconciler.kernel.observe as kobserve
from reconciler import engine
from reconciler.daemon.memory import DaemonMemory, vouch
from reconciler.kernel.host import HeldNs
from reconciler.objects import Kind

from test_engine_steps import FakeKernel, Host, Store, desired, host  # noqa: F401 (host: a fixture)


class Monitor:
    """A netlink monitor as the memory sees it: which namespaces it holds, since when, and
    the last time it read a change in each. ``tripwire``: any question raises."""

    def __init__(self, held=None, changed=None):
        self.held_ns = dict(held or {})
        self.changed = dict(changed or {})
        self.tripwire = False
        self.asked = []

    def _ask(self, what):
        if self.tripwire:
            raise AssertionError(f"the monitor was asked {what} during a run")
        self.asked.append(what)

    def monitored(self):
        self._ask("monitored")
        return sorted(self.held_ns)

    def held(self, name):
        self._ask(("held", name))
        return self.held_ns.get(name)

    def unchanged_since(self, name, t):
        self._ask(("unchanged_since", name))
        h = self.held_ns.get(name)
        return h is not None and h.since < t and self.changed.get(name, h.since) < t


def test_the_one_shot_apply_keeps_nothing_and_makes_no_memory(tmp_path, host, monkeypatch):
    """The CLI's path: no memory object, no compile memo, observe asked for everything with
    nothing to build on, the full plan_for -- exactly the path before the daemon had one."""

    def refuse(*a, **k):
        raise AssertionError("the one-shot path made a memory object")

    monkeypatch.setattr(DaemonMemory, "__init__", refuse)
    monkeypatch.setattr(kcompile.CompileMemo, "__init__", refuse)
    memos = []
    real_plan_for = engine.plan_for

    def plan_for(*a, memo=None, **k):
        memos.append(memo)
        return real_plan_for(*a, memo=memo, **k)

    monkeypatch.setattr(engine, "plan_for", plan_for)
    store = Store(str(tmp_path))
    out = engine.apply(desired(), store, FakeKernel())
    assert out.converged and not out.plan.empty
    assert [p for _, p in host.observed] == [None, None]  # the first observation and verify's
    assert host.vouchers == [(None, None), (None, None)]  # nobody vouches for any dump
    assert memos == [None, None]  # plan and verify: no compile memo
    again = engine.apply(desired(), store, FakeKernel())
    assert again.plan.empty and host.observed[-1][1] is None  # nothing kept from the last run


def test_the_engine_gets_data_and_never_calls_the_monitor(tmp_path, host):
    """The daemon asks its monitor before the run (``for_run``); during the run the monitor
    may not be asked anything, and the vouches reach observe as data."""
    monitor = Monitor(held={"c1": HeldNs((1, 2), 7, since=0.0)})
    memory = DaemonMemory(scoped=False)
    memory.attach(monitor)
    store = Store(str(tmp_path))
    for _ in range(3):
        handed = memory.for_run()
        assert handed is memory and monitor.asked  # asked here, before the run
        monitor.asked.clear()
        monitor.tripwire = True
        out = engine.apply(desired(), store, FakeKernel(), memory=handed)
        monitor.tripwire = False
        assert out.converged
    still_valid, held = host.vouchers[-1]
    assert held("c1") == HeldNs((1, 2), 7, since=0.0) and held("c2") is None
    assert still_valid("c1", types.SimpleNamespace(taken=1e12)) and not still_valid("c2", types.SimpleNamespace(taken=1e12))


def test_forget_makes_the_next_run_observe_and_plan_everything(tmp_path, host):
    memory = DaemonMemory()
    memory.attach(Monitor())
    store = Store(str(tmp_path))

    def run():
        n = len(host.observed)
        out = engine.apply(desired(), store, FakeKernel(), memory=memory.for_run())
        assert out.converged
        return host.observed[n][1], memory.scope.last  # the first observation's previous snapshot

    previous, last = run()  # the first run after attach: full
    assert previous is None and last == {"mode": "full", "reason": "requested"}
    assert memory.scope.base is not None and memory.snapshot is not None
    previous, last = run()
    assert previous is not None and last["mode"] == "scoped"  # built on the last run, scoped
    memory.forget()
    assert memory.snapshot is None and memory.scope.base is None  # let go at once
    previous, last = run()
    assert previous is None and last == {"mode": "full", "reason": "requested"}
    previous, last = run()  # and back to building on the last run
    assert previous is not None and last["mode"] == "scoped"


def test_a_failed_run_leaves_nothing_to_build_on(tmp_path, monkeypatch):
    h = Host(fail_kind=Kind.ENDPOINT)
    monkeypatch.setattr(kobserve, "observe", h.observe)
    monkeypatch.setattr(kapply, "execute", h.execute)
    memory = DaemonMemory(scoped=False)
    memory.attach(Monitor())
    memory.snapshot = types.SimpleNamespace(namespaces={})
    memory.full = False
    out = engine.apply(desired(), Store(str(tmp_path)), FakeKernel(), memory=memory.for_run())
    assert not out.converged
    assert h.observed[0][1] is not None  # the first observation built on the kept snapshot
    assert memory.snapshot is None and memory.made == {}  # and nothing is kept after a failure


def test_vouch_is_the_monitors_word_as_data():
    """``quiet``: the previous dump's time when the monitor vouches for it, else the time of
    asking when it vouches from then on; a change read after both, or nobody holding the
    namespace, leaves it out (dumped again)."""
    monitor = Monitor(
        held={
            "a": HeldNs((1, 1), 11, since=1.0),
            "b": HeldNs((1, 2), 12, since=1.0),
            "c": HeldNs((1, 3), 13, since=1.0),
            "d": HeldNs((1, 4), 14, since=9.5),  # opened after NOW
        },
        changed={"b": 6.0, "c": 20.0},
    )
    snap = types.SimpleNamespace(namespaces={n: types.SimpleNamespace(taken=5.0) for n in "abcde"})
    held, quiet = vouch(monitor, snap, now=9.0)
    assert quiet == {"a": 5.0, "b": 9.0}
    assert held == {"a": monitor.held_ns["a"], "b": monitor.held_ns["b"]}
    # held is asked before unchanged_since for each namespace (see vouch's docstring)
    asks = [q for q in monitor.asked if isinstance(q, tuple) and q[1] == "a"]
    assert asks[0] == ("held", "a")
    prev = engine.Previous(snapshot=snap, held=held, quiet=quiet)
    assert prev.still_valid("a", snap.namespaces["a"])
    assert not prev.still_valid("b", snap.namespaces["b"])  # changed since that dump
    assert prev.still_valid("b", types.SimpleNamespace(taken=9.5))  # a dump this run takes
    assert not prev.still_valid("c", types.SimpleNamespace(taken=9.5))
    # without a snapshot (after forget) only the vouches from now on are given
    held, quiet = vouch(monitor, None, now=9.0)
    assert quiet == {"a": 9.0, "b": 9.0}


class LoggingMonitor(Monitor):
    """A monitor with a change log (``changes_since``): the names logged since a mark."""

    def __init__(self, held=None, changed=None):
        super().__init__(held, changed)
        self.log = []  # (seq, name)

    def changes_since(self, mark):
        self._ask(("changes_since", mark))
        seq = len(self.log)
        names = None if mark is None else frozenset(n for i, n in self.log if i > mark)
        return types.SimpleNamespace(mark=seq, namespaces=names, netns_dir=False, hosts=None)


def test_with_a_change_log_only_what_it_shows_is_asked_again_and_the_engine_gets_the_answer(tmp_path, host):
    names = ("a", "b", "c")
    monitor = LoggingMonitor(held={n: HeldNs((1, i), 10 + i, since=1.0) for i, n in enumerate(names)})
    memory = DaemonMemory(scoped=False)
    memory.attach(monitor)
    snap = types.SimpleNamespace(namespaces={n: types.SimpleNamespace(taken=5.0) for n in names}, mark=0)

    def run():
        """What a run does with the memory, besides observing: take it over, keep a snapshot."""
        monitor.asked.clear()
        prev = memory.for_run().handover()
        memory.keep(types.SimpleNamespace(snapshot=snap, made={}))
        return prev

    first = run()  # after attach: a full run, asked about everything
    assert first.snapshot is None and first.changes.namespaces is None
    assert ("held", "a") in monitor.asked
    assert set(first.quiet) == set(names)  # vouched for from the time of asking
    second = run()
    assert second.changes.namespaces == frozenset() and second.snapshot is snap
    assert second.quiet == first.quiet and second.held == first.held  # nothing logged: carried
    assert [q for q in monitor.asked if q[0] != "changes_since"] == []  # not asked per namespace
    monitor.log.append((1, "b"))
    monitor.changed["b"] = 6.0
    third = run()
    assert third.changes.namespaces == {"b"}
    assert {q[1] for q in monitor.asked if q[0] != "changes_since"} == {"b"}  # b only
    assert third.quiet["a"] == third.quiet["c"] == first.quiet["a"] and third.quiet["b"] > first.quiet["b"]
    assert not third.still_valid("b", types.SimpleNamespace(taken=6.5))  # b changed after that
    monitor.held_ns.pop("c")  # the monitor let c go (its socket closed: logged)
    monitor.log.append((2, "c"))
    fourth = run()
    assert set(fourth.held) == set(fourth.quiet) == {"a", "b"}

    # and the engine hands observe that very answer: data, asked before the run
    snap.mark = 1
    handed = memory.for_run()
    answer = handed._previous.changes
    monitor.tripwire = True
    engine.apply(desired(), Store(str(tmp_path)), FakeKernel(), memory=handed)
    monitor.tripwire = False
    assert answer.namespaces == {"c"} and host.changes[0](answer.mark) is answer

    # IPVLAN_RECONCILER_SCOPED_OBSERVE=0 (to compare): the change log is not asked
    memory.scoped_observe = False
    monitor.asked.clear()
    assert memory.for_run()._previous.changes is None
    assert ("changes_since", 1) not in monitor.asked and ("held", "a") in monitor.asked


def test_without_a_monitor_the_daemon_reconciles_as_the_cli_does():
    memory = DaemonMemory()
    assert memory.for_run() is None and memory.compile_memo is None and memory.scope is None
    assert memory.stats(engine.ApplyOutcome(plan=engine.Plan())) == {}


def test_the_loader_slot_takes_a_parse_cache_or_a_loader_with_its_own_load(tmp_path):
    from reconciler.manifest import ParseCache

    (tmp_path / "a.yaml").write_text("version: 1\nnetworks: {n1: {internal: true}}\n")
    memory = DaemonMemory()
    assert isinstance(memory.loader, ParseCache)
    assert list(memory.load([str(tmp_path)]).networks) == ["n1"]
    assert memory.loader.parsed == 1 and memory.load([str(tmp_path)]).networks and memory.loader.parsed == 0

    class Loader:
        def load(self, paths):
            return ("loaded", tuple(paths))

    memory.loader = Loader()
    assert memory.load(["x"]) == ("loaded", ("x",))
