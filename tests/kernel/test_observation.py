"""The daemon's memory of observations on the real kernel (VM only): a namespace dump is reused
only while the netlink monitor vouches for it, so a hand-made change is still found, and
what is reused really is not dumped again.

The engine is driven in-process with a real NetlinkMonitor (what `ipvlanctl watch` wires up);
every claim is checked against the kernel with `ip -j`.
"""
from __future__ import annotations

import time

import pytest

from enginekit import Reconciler, addrs, sh

import reconciler.kernel.observe as kobserve
from reconciler import engine
from reconciler.daemon.memory import DaemonMemory
from reconciler.daemon.nlmonitor import NetlinkMonitor
from reconciler.errors import PlanError
from reconciler.kernel.host import Kernel, netns_identity
from reconciler.manifest import load
from reconciler.statedir import StateStore

NAMES = ["obs1", "obs2", "obs3"]
MANIFEST = """\
version: 1
networks:
  obsnet:
    parent: eth0
    subnets:
      - subnet: 192.168.1.0/24
        gateway: 192.168.1.1
containers:
  obs1: {networks: {obsnet: {ip: 192.168.1.61}}}
  obs2: {networks: {obsnet: {ip: 192.168.1.62}}}
  obs3: {networks: {obsnet: {ip: 192.168.1.63}}}
"""


DUAL_STACK = """\
version: 1
networks:
  obsnet6:
    parent: eth0
    ipv6: true
    subnets:
      - subnet: 192.168.1.0/24
        gateway: 192.168.1.1
      - subnet: fd00:61::/64
        gateway: fd00:61::1
containers:
  obs1: {networks: {obsnet6: {ip: 192.168.1.61, ip6: "fd00:61::61"}}}
"""


def wait_for(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def watched(tmp_path):
    r = Reconciler(tmp_path)
    r.write("obs.yaml", MANIFEST)
    assert r.apply()["converged"]
    events = []
    mkernel = Kernel()
    monitor = NetlinkMonitor(mkernel, lambda src, detail: events.append(detail), netns_poll=0.2)
    monitor.start()
    monitor.set_namespaces(NAMES)
    wait_for(lambda: monitor.monitored() == NAMES, "the monitor to watch every namespace")
    time.sleep(0.2)  # dumps below must start after the sockets were opened
    try:
        yield r, monitor, events
    finally:
        monitor.stop()
        mkernel.close()
        r.teardown()


def run_apply(r: Reconciler, memory: DaemonMemory) -> engine.ApplyOutcome:
    with Kernel() as k:
        return engine.apply(load([r.dir]), StateStore(r.state), k, memory=memory.for_run())


def remembering(monitor) -> DaemonMemory:
    """The daemon's memory (observations and compile memo; plans in full) on MONITOR's word."""
    memory = DaemonMemory(scoped=False)
    memory.attach(monitor)
    return memory


class Blind:
    """MONITOR's sockets, with a word that vouches for everything it holds."""

    def __init__(self, monitor):
        self.monitored, self.held = monitor.monitored, monitor.held

    def unchanged_since(self, name, t):
        return True


def test_unchanged_namespaces_are_reused_and_a_hand_made_change_is_dumped(watched):
    r, monitor, events = watched
    cache = remembering(monitor)

    first = run_apply(r, cache)
    assert first.plan.empty and first.converged
    assert (first.dumped, first.reused) == (3, 0)  # nothing to reuse yet
    assert cache.snapshot is not None

    second = run_apply(r, cache)
    assert second.plan.empty and second.netlink_writes == 0
    assert (second.dumped, second.reused) == (0, 3)

    sh("ip -n obs2 addr del 192.168.1.62/24 dev eth0")
    wait_for(lambda: any("obs2" in e and "deleted" in e for e in events), "the monitor to report the deletion")
    third = run_apply(r, cache)
    assert (third.dumped, third.reused) == (1, 2)
    # the address, and the default route the kernel flushed with it: all in obs2
    assert ("create", "address") in [(a.op.value, a.kind.label) for a in third.plan.actions]
    assert {a.key[1] for a in third.plan.actions} == {"obs2"}
    assert third.converged
    assert addrs("obs2") == ["192.168.1.62/24"]  # repaired in the kernel

    # after our own repair (verify re-dumped obs2), the next run finds nothing to do
    fourth = run_apply(r, cache)
    assert fourth.plan.empty


def test_a_vouching_predicate_is_what_stands_between_reuse_and_a_stale_view(watched):
    """The same hand-made change, with a predicate that vouches for everything: the stale
    view is reused and the change goes unseen. This is why only the monitor may vouch, and
    why the daemon's periodic resync observes everything afresh (``DaemonMemory.forget``)."""
    r, monitor, _ = watched
    cache = remembering(Blind(monitor))
    assert run_apply(r, cache).plan.empty
    sh("ip -n obs3 addr del 192.168.1.63/24 dev eth0")
    blind = run_apply(r, cache)
    assert blind.plan.empty and blind.reused == 3
    assert addrs("obs3") == []
    cache.forget()  # what a resync does
    fresh = run_apply(r, cache)
    assert (fresh.dumped, fresh.reused) == (3, 0)
    assert ("create", "address") in [(a.op.value, a.kind.label) for a in fresh.plan.actions]
    assert {a.key[1] for a in fresh.plan.actions} == {"obs3"}
    assert addrs("obs3") == ["192.168.1.63/24"]


def recreate_with_the_same_inode(name: str, old, attempts: int = 20) -> None:
    """`ip netns add NAME` until the new namespace has the (dev, inode) OLD had. The kernel
    hands the lowest free nsfs inode number to the next namespace, but frees a deleted
    namespace's number only once its cleanup (a workqueue) has run."""
    for _ in range(attempts):
        sh(f"ip netns add {name}")
        if netns_identity(f"/run/netns/{name}") == old:
            return
        sh(f"ip netns del {name}")
        time.sleep(0.2)
    raise AssertionError(f"the kernel never gave the new {name} the old namespace's inode {old}")


def recording_observations(monkeypatch) -> list:
    """Every ``kernel.observe.observe`` result from now on, in order (a run that raises
    returns no outcome to read its counts from)."""
    seen = []
    real_observe = kobserve.observe

    def observing(*a, **k):
        seen.append(real_observe(*a, **k))
        return seen[-1]

    monkeypatch.setattr(kobserve, "observe", observing)
    return seen


def test_a_replaced_namespace_is_never_reused(watched, monkeypatch):
    """Deleted and re-created under the same name by hand, with the very (dev, inode) the
    old namespace had -- what the kernel does when nothing holds the old one any more: a
    different namespace all the same (its netns cookie), dumped again even though the
    predicate vouches for everything. It carries no marker now, so the plan refuses to take
    it over; the reused view would have said "ours, nothing to do"."""
    r, monitor, _ = watched
    cache = remembering(Blind(monitor))
    assert run_apply(r, cache).plan.empty
    again = run_apply(r, cache)
    assert again.plan.empty and again.reused == 3  # identity proven: reused
    old = netns_identity("/run/netns/obs1")
    sh("ip netns del obs1")
    # the monitor's socket keeps the old namespace (and its inode) alive until its next poll
    # of /run/netns lets it go; from then on the inode can be handed on
    wait_for(lambda: "obs1" not in monitor.monitored(), "the monitor to let obs1 go")
    recreate_with_the_same_inode("obs1", old)
    seen = recording_observations(monkeypatch)
    with pytest.raises(PlanError, match="obs1"):
        run_apply(r, cache)
    assert (seen[0].dumped, seen[0].reused) == (1, 2)  # the other two: still proven the same
    assert cache.snapshot is None  # the refused run left nothing to build on
    sh("ip netns del obs1")
    out = run_apply(r, cache)
    assert out.converged
    assert addrs("obs1") == ["192.168.1.61/24"]


def test_route_dumps_filtered_in_the_kernel_match_filtering_here(tmp_path):
    """The snapshot asks the kernel (strict checking) for main-table routes of protocol 149
    only; the same filter applied to an unfiltered dump gives the same routes, and the
    kernel really did leave the others out."""
    from reconciler.kernel.netlink import RT_TABLE_MAIN
    from reconciler.objects import RTPROT

    r = Reconciler(tmp_path)
    r.write("obs.yaml", DUAL_STACK)
    try:
        assert r.apply()["converged"]
        with Kernel() as k:
            sock = k.ns_socket("obs1")
            assert sock.strict
            everything = sock.dump_routes()
            ours = sock.dump_routes(table=RT_TABLE_MAIN, protocol=RTPROT)
            host_main = k.host.dump_routes(table=RT_TABLE_MAIN)
            host_all = k.host.dump_routes()
        key = lambda rt: (rt.family, rt.dst, rt.dst_len, rt.gateway, rt.oif)  # noqa: E731
        expected = [rt for rt in everything if rt.table == RT_TABLE_MAIN and rt.protocol == RTPROT]
        assert sorted(map(key, ours)) == sorted(map(key, expected))
        assert {(rt.family, rt.dst) for rt in ours} == {(2, None), (10, None)}  # both default routes
        assert len(everything) > len(ours)  # local-table and kernel routes exist, and were left out
        assert sorted(map(key, host_main)) == sorted(map(key, [rt for rt in host_all if rt.table == RT_TABLE_MAIN]))
        assert len(host_all) > len(host_main)
    finally:
        r.teardown()


def test_hosts_files_are_reused_while_unchanged_and_a_hand_edit_is_repaired(watched, monkeypatch):
    """Hosts files that had settled when read are not opened again while their stat stamp
    holds; editing one by hand -- in place, same size, the hardest case -- changes its
    stamp, and the next cached run reads and rewrites exactly that file."""
    from reconciler.kernel import host as host_mod

    r, monitor, _ = watched
    cache = remembering(monitor)
    time.sleep(1.1)  # the fixture's apply wrote the files: let them settle
    assert run_apply(r, cache).plan.empty  # a full read: every stamp recorded
    assert sorted(cache.snapshot.hosts_stamps) == NAMES

    opened = []
    real_open = open

    def counting(path, *a, **kw):
        opened.append(path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(host_mod, "open", counting, raising=False)
    assert run_apply(r, cache).plan.empty
    assert [p for p in opened if p.startswith("/etc/netns/")] == []  # all three taken from the cache

    path = "/etc/netns/obs2/hosts"
    text = real_open(path).read()
    assert "192.168.1.61\tobs1\n" in text
    with real_open(path, "r+") as f:  # in place, same size: only ctime/mtime tell
        f.seek(text.index("192.168.1.61\tobs1\n"))
        f.write("192.168.1.99\tobs1\n")
    opened.clear()
    out = run_apply(r, cache)
    # obs2's file only: read by observe, written (via a temporary file), read again by verify
    assert {p for p in opened if p.startswith("/etc/netns/") and p.endswith("/hosts")} == {path}
    assert [(a.op.value, a.kind.label, a.key[1]) for a in out.plan.actions] == [("update", "hosts", "obs2")]
    assert out.converged
    assert real_open(path).read() == text  # repaired
