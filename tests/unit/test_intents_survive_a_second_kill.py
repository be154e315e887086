"""A namespace made by a run killed before it marked it is adopted through the run's
write-ahead intent. The next run marks it with an UPDATE; killed too, before that update,
it must not drop the intent: else the unmarked namespace is "not managed by
ipvlan-reconciler" forever and the container never converges (found by
tests/cluster/test_hosts.py's kill -9 test: "network namespace r8x0 exists and is not managed")."""
from __future__ import annotations

import ipaddress as ia

import reconciler.kernel.apply as kapply
from reconciler import engine
from reconciler.manifest import load
from reconciler.objects import HostFacts, HostLink, HostState, Kind, Netns
import reconciler.kernel.observe as kobserve
from reconciler.kernel.observe import Observation
from reconciler.statedir import State, StateStore

MANIFEST = """\
version: 1
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.50.0.0/24}]}
containers:
  web1: {networks: {lan: {ip: 10.50.0.5}}}
"""


class Killed(BaseException):
    pass


class Kernel:
    class counter:
        count = 0


def test_an_adopted_unmarked_namespace_stays_intended_through_a_second_kill(tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    desired = load([str(tmp_path / "m.yaml")])
    store = StateStore(str(tmp_path / "state"))
    key = (Kind.NETNS, "web1")
    with store.lock(5):
        store.save(State(intents=(key,)))  # the first run's write-ahead, then kill -9
    facts = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False,
                                              addresses=(ia.ip_interface("192.168.1.11/24"),))})
    seen = []

    def observe(kernel, intents=(), *a, **kw):
        seen.append(tuple(intents))
        # what observe reports for a namespace only an intent vouches for: ours, unmarked
        objs = [Netns("web1", lo_up=False, marked=False)] if key in intents else []
        return Observation(HostState(objs, facts), None, {})

    def killed(actions, kernel, snap):
        assert any(a.key == key for a in actions)  # the run would mark it ...
        raise Killed()  # ... but dies first

    monkeypatch.setattr(kobserve, "observe", observe)
    monkeypatch.setattr(kapply, "execute", killed)
    try:
        engine.apply(desired, store, Kernel())
    except Killed:
        pass
    assert seen == [(key,)]
    assert key in store.load().intents  # the next run still adopts (and marks) it
