"""engine.apply's steps on a simulated host (observe returns a HostState, execute applies the
actions as a perfect kernel would, or fails one): the state directory is read once, written
ahead of execution and written once at the end, only when that changes it; the daemon's
memory keeps the observation verify made."""
from __future__ import annotations

import ipaddress as ia
import types

import pytest

import reconciler.kernel.apply as kapply
import reconciler.kernel.observe as kobserve
from reconciler import engine
from reconciler.kernel.apply import ApplyResult
from reconciler.objects import HostFacts, HostLink, HostState, Kind
from reconciler.plan import Op
from reconciler.statedir import State, StateStore


class Counter:
    count = 0


class FakeKernel:
    counter = Counter()


class Store(StateStore):
    def __init__(self, directory):
        super().__init__(directory)
        self.saved = []

    def save(self, state):
        self.saved.append(state)
        super().save(state)


class Host:
    def __init__(self, fail_kind=None):
        self.objects = {}
        self.facts = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False,
                                                       addresses=(ia.ip_interface("192.168.1.250/24"),))})
        self.fail_kind = fail_kind
        self.observed = []  # (intents, previous snapshot) per observe
        self.vouchers = []  # (still_valid, held) per observe
        self.changes = []  # the change-log callable per observe (the daemon's, else None)

    def observe(self, kernel, intents=(), previous=None, still_valid=None, held=None, tables=(), made=None, changes=None):
        self.observed.append((tuple(intents), previous))
        self.vouchers.append((still_valid, held))
        self.changes.append(changes)
        snap = types.SimpleNamespace(namespaces={})  # a kernel.host.Snapshot with no namespace
        return kobserve.Observation(HostState(self.objects.values(), self.facts), snap, {"x": made}, 0, 0)

    def execute(self, actions, kernel, snap):
        r = ApplyResult()
        for i, a in enumerate(actions):
            if a.kind is self.fail_kind:
                r.failed.append((a, "boom"))
                r.not_run.extend(actions[i + 1:])
                return r
            if a.op is Op.DELETE:
                self.objects.pop(a.key, None)
            else:
                self.objects[a.key] = a.after
            r.done.append(a)
        return r


MANIFEST = """\
version: 1
networks:
  n20:
    parent: eth0.20
    subnets: [{subnet: 192.168.20.0/24, gateway: 192.168.20.1}]
containers:
  c1: {networks: {n20: {}}}
"""

_desired = []


def desired():
    if not _desired:
        import os
        import tempfile

        from reconciler.manifest import load

        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "a.yaml"), "w") as f:
                f.write(MANIFEST)
            _desired.append(load([d]))
    return _desired[0]


@pytest.fixture
def host(monkeypatch):
    h = Host()
    monkeypatch.setattr(kobserve, "observe", h.observe)
    monkeypatch.setattr(kapply, "execute", h.execute)
    return h


def test_a_run_writes_ahead_then_once_and_a_converged_host_not_at_all(tmp_path, host):
    store = Store(str(tmp_path))
    out = engine.apply(desired(), store, FakeKernel())
    assert out.converged and out.exit_code == 0
    ahead, final = store.saved
    assert (Kind.NETNS, "c1") in ahead.intents and (Kind.ENDPOINT, "c1", "eth0") in ahead.intents
    assert final == State(allocations=final.allocations) and final.allocations.addresses["c1"]
    assert set(out.phases) == {"observe", "plan", "apply", "verify"}
    store.saved.clear()
    again = engine.apply(desired(), store, FakeKernel())
    assert again.plan.empty and again.converged and store.saved == []  # nothing to record
    assert set(again.phases) == {"observe", "plan"}


def test_a_failed_run_keeps_the_intents_of_what_it_may_have_made(tmp_path, monkeypatch):
    h = Host(fail_kind=Kind.ENDPOINT)
    monkeypatch.setattr(kobserve, "observe", h.observe)
    monkeypatch.setattr(kapply, "execute", h.execute)
    store = Store(str(tmp_path))
    out = engine.apply(desired(), store, FakeKernel(), rollback=False)
    assert not out.converged and out.rollback is None
    ahead, final = store.saved
    # the namespace and the VLAN were made before the failure: still recorded as ours; the
    # endpoint's create failed (its name may be someone else's): not
    assert (Kind.ENDPOINT, "c1", "eth0") in ahead.intents
    assert set(final.intents) == set(ahead.intents) - {(Kind.ENDPOINT, "c1", "eth0")}
    assert store.load().intents == final.intents


def test_rollback_undoes_and_forgets_the_intents(tmp_path, monkeypatch):
    h = Host(fail_kind=Kind.ENDPOINT)
    monkeypatch.setattr(kobserve, "observe", h.observe)
    monkeypatch.setattr(kapply, "execute", h.execute)
    store = Store(str(tmp_path))
    out = engine.apply(desired(), store, FakeKernel(), rollback=True)
    assert out.rollback is not None and out.rollback.ok
    assert store.load().intents == ()
    assert [i for i, _ in h.observed][1] != ()  # rollback observes with the intents of this run


class QuietMonitor:
    """A netlink monitor that holds nothing and so vouches for nothing."""

    def monitored(self):
        return []


def test_the_memory_keeps_the_verify_observation(tmp_path, host):
    from reconciler.daemon.memory import DaemonMemory

    memory = DaemonMemory(scoped=False)
    memory.attach(QuietMonitor())
    store = Store(str(tmp_path))
    engine.apply(desired(), store, FakeKernel(), memory=memory.for_run())
    first_verify = memory.snapshot
    assert first_verify is not None and memory.made == {"x": None}
    engine.apply(desired(), store, FakeKernel(), memory=memory.for_run())
    assert host.observed[-1][1] is first_verify  # the next run starts from it
