"""The daemon's scoped first observation on the real kernel (VM only; issue 12): with the
monitor's change log (``engine.Previous.changes``, asked by the daemon's memory) a reconcile with nothing changed lists
nothing, stats nothing, dumps nothing and opens no hosts file; a hosts file edited by hand is
reported by inotify at once (a reconcile trigger) and repaired by the next run; a namespace
replaced by hand (`ip netns del x; ip netns add x`, also with the very inode the old one had)
is dumped again, never taken for the old one. Lean: three containers."""
from __future__ import annotations

import threading
import time

import pytest

from enginekit import Reconciler, addrs, sh
from test_observation import (
    MANIFEST,
    NAMES,
    recording_observations,
    recreate_with_the_same_inode,
    remembering,
    run_apply,
    wait_for,
)

from reconciler.daemon.nlmonitor import NetlinkMonitor
from reconciler.errors import PlanError
from reconciler.kernel import host as host_mod
from reconciler.kernel import observe as obs_mod
from reconciler.kernel.host import Kernel, netns_identity


@pytest.fixture
def daemonlike(tmp_path, monkeypatch):
    r = Reconciler(tmp_path)
    r.write("obs.yaml", MANIFEST)
    assert r.apply()["converged"]
    events = []
    mkernel = Kernel()
    monitor = NetlinkMonitor(mkernel, lambda src, detail: events.append((src, detail)), netns_poll=0.2)
    monitor.start()
    monitor.set_namespaces(NAMES)
    wait_for(lambda: monitor.monitored() == NAMES, "the monitor to watch every namespace")
    wait_for(lambda: monitor._hosts is not None and monitor._hosts.alive, "the hosts watch")
    time.sleep(1.1)  # dumps below start after the sockets opened; files and /run/netns settle
    cache = remembering(monitor)  # the daemon's memory of observations, with the change log
    # what this thread's observation reads (the monitor's thread lists and stats too)
    seen = {"listed": 0, "stats": [], "opened": []}
    main = threading.current_thread()
    real_list, real_ident, real_open = Kernel.list_netns, obs_mod.netns_identity, open

    def list_netns(self):
        if threading.current_thread() is main:
            seen["listed"] += 1
        return real_list(self)

    def ident(path):
        seen["stats"].append(path)
        return real_ident(path)

    def opening(path, *a, **kw):
        if threading.current_thread() is main and str(path).startswith("/etc/netns/"):
            seen["opened"].append(path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(Kernel, "list_netns", list_netns)
    monkeypatch.setattr(obs_mod, "netns_identity", ident)
    monkeypatch.setattr(host_mod, "open", opening, raising=False)
    try:
        yield r, monitor, events, cache, seen
    finally:
        monitor.stop()
        mkernel.close()
        r.teardown()


def test_scoped_first_observation_reads_what_changed_and_finds_hand_edits(daemonlike, monkeypatch):
    r, monitor, events, cache, seen = daemonlike
    assert run_apply(r, cache).plan.empty  # full (no snapshot yet)
    out = run_apply(r, cache)
    assert out.plan.empty and out.reused == 3  # every namespace proven the monitor's once
    for v in seen.values():
        v.clear() if isinstance(v, list) else None
    seen["listed"] = 0
    out = run_apply(r, cache)
    assert out.plan.empty
    assert (out.reused, out.dumped) == (3, 0)
    assert (seen["listed"], seen["stats"], seen["opened"]) == (0, [], [])

    # a hand edit of a hosts file, in place and of the same size: inotify reports it (a
    # reconcile trigger, "found fast"), and the next run reads and repairs exactly that file
    path = "/etc/netns/obs2/hosts"
    text = open(path).read()
    with open(path, "r+") as f:
        f.seek(text.index("192.168.1.61\tobs1\n"))
        f.write("192.168.1.99\tobs1\n")
    wait_for(lambda: any(s == "netns" and path in d for s, d in events), "inotify to report the edit", 10)
    seen["opened"].clear()
    out = run_apply(r, cache)
    assert [(a.op.value, a.kind.label, a.key[1]) for a in out.plan.actions] == [("update", "hosts", "obs2")]
    assert out.converged and open(path).read() == text
    assert set(seen["opened"]) == {path}

    # replaced by hand before the monitor's poll could say anything: /run/netns's stamp moved
    old = netns_identity("/run/netns/obs1")
    sh("ip netns del obs1 && ip netns add obs1")
    with pytest.raises(PlanError, match="obs1"):  # not ours: the plan refuses to take it over
        run_apply(r, cache)
    sh("ip netns del obs1")
    assert run_apply(r, cache).converged and addrs("obs1") == ["192.168.1.61/24"]
    monitor.set_namespaces(NAMES)
    wait_for(lambda: monitor.monitored() == NAMES, "the monitor to watch obs1 again")
    time.sleep(1.1)
    assert run_apply(r, cache).plan.empty
    out = run_apply(r, cache)
    assert out.plan.empty and out.reused == 3

    # and replaced with the very inode the old one had, once the monitor let it go
    old = netns_identity("/run/netns/obs1")
    sh("ip netns del obs1")
    wait_for(lambda: "obs1" not in monitor.monitored(), "the monitor to let obs1 go")
    recreate_with_the_same_inode("obs1", old)
    observed = recording_observations(monkeypatch)
    with pytest.raises(PlanError, match="obs1"):
        run_apply(r, cache)
    assert (observed[0].dumped, observed[0].reused) == (1, 2)
    assert cache.snapshot is None  # the refused run left nothing to build on
    sh("ip netns del obs1")
    assert run_apply(r, cache).converged and addrs("obs1") == ["192.168.1.61/24"]
