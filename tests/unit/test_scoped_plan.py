"""The daemon's scoped planner (reconciler/daemon/scope.py) plans exactly what the full
``engine.plan_for`` plans, over long random sequences of edits -- containers added, removed,
readdressed, moved between networks, aliased, lines moved, network modes and flags changed,
a parent coming and going, hand-made drift in the live state -- against a simulated host
whose live objects are what the applied plans made of them. And it really is scoped: an
edit of one container on a big manifest plans a handful of namespaces, not all of them."""
from __future__ import annotations

import copy
import ipaddress as ia
import random
from dataclasses import replace

import pytest

from reconciler import engine
from reconciler.daemon.scope import NS_KINDS, ScopedPlanner
from reconciler.errors import ManifestError, PlanError
from reconciler.ipam import Allocations
from reconciler.manifest import load_texts
from reconciler.objects import HostFacts, HostLink, HostsFile, HostState, Kind
from reconciler.plan import Op
from reconciler.statedir import State

NETWORKS = {
    "na": "{parent: eth0.20, subnets: [{subnet: 10.20.0.0/24}]}",
    "nb": "{parent: eth0, ipvlan_mode: MODE, subnets: [{subnet: 10.30.0.0/24}, {subnet: 10.31.0.0/24}]}",
    "nc": "{internal: true, ipv6: true}",
    "nd": "{parent: eth9, ipvlan_flag: FLAG, subnets: [{subnet: 10.50.0.0/24, gateway: 10.50.0.254}]}",
    "ne": "{parent: eth0.30}",
}
SUBNET = {"na": "10.20.0", "nb": "10.30.0", "nd": "10.50.0"}


class World:
    """A manifest as Python values, rendered to YAML; and a simulated host."""

    def __init__(self, rng: random.Random, n: int):
        self.rng = rng
        rng.random()
        self.mode = "l3"
        self.flag = "bridge"
        self.pad = 0  # blank comment lines at the top: every position moves
        self.containers = {}  # name -> {network: {"ip": str|None, "aliases": [..]}}
        while len(self.containers) < n:
            self.add()
            try:
                load_texts([("m.yaml", self.text())])
            except ManifestError:  # an explicit address taken twice
                self.containers.popitem()
        self.live = {}
        self.links = {
            "eth0": HostLink("eth0", 2, "", True, False, addresses=(ia.ip_interface("192.168.1.250/24"),)),
            "eth9": HostLink("eth9", 3, "", True, False),
        }
        self.allocations = Allocations()

    # the manifest ------------------------------------------------------------------------------
    def text(self) -> str:
        lines = ["version: 1"] + ["# moved"] * self.pad + ["networks:"]
        for name, spec in NETWORKS.items():
            lines.append(f"  {name}: {spec.replace('MODE', self.mode).replace('FLAG', self.flag)}")
        lines.append("containers:")
        for name, nets in self.containers.items():
            parts = []
            for net, a in nets.items():
                fields = []
                if a.get("ip"):
                    fields.append(f"ip: {a['ip']}")
                if a.get("aliases"):
                    fields.append(f"aliases: [{', '.join(a['aliases'])}]")
                parts.append(f"{net}: {{{', '.join(fields)}}}")
            lines.append(f"  {name}: {{networks: {{{', '.join(parts)}}}}}")
        return "\n".join(lines) + "\n"

    def new_name(self) -> str:
        while True:
            name = f"c{self.rng.randrange(1000)}"
            if name not in self.containers:
                return name

    def attachment(self, net: str) -> dict:
        a: dict = {}
        if net in SUBNET and self.rng.random() < 0.3:
            a["ip"] = f"{SUBNET[net]}.{self.rng.randrange(2, 250)}"
        if self.rng.random() < 0.2:
            a["aliases"] = [f"al{self.rng.randrange(50)}"]
        return a

    def add(self) -> None:
        nets = self.rng.sample(sorted(NETWORKS), self.rng.choice((1, 1, 2)))
        self.containers[self.new_name()] = {n: self.attachment(n) for n in nets}

    def edit(self) -> str:
        """One random change; returns what it was."""
        rng = self.rng
        names = list(self.containers)
        if "eth9" not in self.links and rng.random() < 0.5:
            self.links["eth9"] = HostLink("eth9", 3, "", True, False)  # the parent is back
            return "parent"
        what = rng.choice(
            ["add", "add", "remove", "readdress", "readdress", "move", "alias", "reorder", "pad",
             "mode", "flag", "parent", "drift", "drift", "drift", "rename", "none"]
        )
        if what == "add" or not names:
            self.add()
        elif what == "remove":
            del self.containers[rng.choice(names)]
        elif what == "readdress":
            c = self.containers[rng.choice(names)]
            net = rng.choice(list(c))
            c[net] = self.attachment(net)
        elif what == "move":
            name = rng.choice(names)
            old = rng.choice(list(self.containers[name]))
            new = rng.choice([n for n in NETWORKS if n not in self.containers[name]] or [old])
            nets = dict(self.containers[name])
            del nets[old]
            nets[new] = self.attachment(new)
            self.containers[name] = nets
        elif what == "alias":
            c = self.containers[rng.choice(names)]
            net = rng.choice(list(c))
            c[net] = dict(c[net], aliases=[] if c[net].get("aliases") else [f"al{rng.randrange(50)}"])
        elif what == "reorder":
            items = list(self.containers.items())
            rng.shuffle(items)
            self.containers = dict(items)
        elif what == "rename":
            name = rng.choice(names)
            self.containers = {(self.new_name() if k == name else k): v for k, v in self.containers.items()}
        elif what == "pad":
            self.pad = rng.randrange(4)
        elif what == "mode":
            self.mode = rng.choice(["l2", "l3", "l3s"])
        elif what == "flag":
            self.flag = rng.choice(["bridge", "private", "vepa"])
        elif what == "parent":  # eth9 goes (network nd pending while it is away)
            self.links.pop("eth9", None)
        elif what == "drift":
            self.drift()
        return what

    # the simulated host ------------------------------------------------------------------------
    def drift(self) -> None:
        """Hand-made drift in a namespace of ours: an object deleted, a hosts file edited, or
        the whole namespace gone."""
        ns_keys = [k for k in self.live if k[0] in NS_KINDS]
        if not ns_keys:
            return
        k = self.rng.choice(ns_keys)
        roll = self.rng.random()
        if roll < 0.3:
            ns = k[1]
            for key in [key for key in self.live if key[0] in NS_KINDS and key[1] == ns]:
                del self.live[key]
        elif roll < 0.6 and (Kind.HOSTS, k[1]) in self.live:
            hf = self.live[(Kind.HOSTS, k[1])]
            self.live[hf.key] = replace(hf, content=hf.content + "10.9.9.9\tintruder\n")
        else:
            del self.live[k]

    def host(self) -> HostState:
        links = dict(self.links)
        for k, o in self.live.items():
            if k[0] in (Kind.VLAN, Kind.DUMMY):
                links[k[1]] = HostLink(k[1], 100 + len(links), "vlan" if k[0] is Kind.VLAN else "dummy", True, True,
                                       vid=getattr(o, "vid", None), link=getattr(o, "link", None))
        return HostState(self.live.values(), HostFacts(links=links))

    def execute(self, plan) -> None:
        for a in plan.actions:
            if a.op is Op.DELETE:
                self.live.pop(a.key, None)
                if a.kind is Kind.ADDRESS:  # the kernel flushes routes with a family's last address
                    o = a.before
                    fam = o.address.version
                    if not any(k[0] is Kind.ADDRESS and x.ns == o.ns and x.ifname == o.ifname
                               and x.address.version == fam for k, x in self.live.items()):
                        for key in [k for k, x in self.live.items() if k[0] is Kind.ROUTE and x.ns == o.ns
                                    and x.ifname == o.ifname and x.family == fam]:
                            del self.live[key]
                if a.kind is Kind.NETNS:
                    for key in [key for key in self.live if key[0] in NS_KINDS and key[1] == a.key[1]]:
                        del self.live[key]
                if a.kind is Kind.ENDPOINT:
                    self.unplug(a.key)
            else:
                if a.op is Op.REPLACE and a.kind is Kind.ENDPOINT:
                    self.unplug(a.key)
                self.live[a.key] = a.after

    def unplug(self, key) -> None:
        """A link deleted: its sysctls, addresses and routes go with it."""
        for k in [k for k, x in self.live.items() if k[0] in (Kind.SYSCTL, Kind.ADDRESS, Kind.ROUTE)
                  and x.ns == key[1] and x.ifname == key[2]]:
            del self.live[k]


def fingerprint(plan):
    return (
        sorted((a.op.value, repr(a.key), repr(a.before), repr(a.after)) for a in plan.actions),
        plan.pending,
        plan.warnings,
        plan.notes,
    )


def plan_both(planner, desired, live, state):
    """The full plan and the scoped one for the same request: the same, or the same error."""
    try:
        full = engine.plan_for(desired, live, state)
    except (PlanError, ManifestError) as e:
        planner.full = False
        with pytest.raises(type(e)):
            planner(desired, live, state)
        return None
    planner.full = False
    scoped = planner(desired, live, state)
    assert fingerprint(scoped.plan) == fingerprint(full.plan)
    assert scoped.allocations == full.allocations
    assert scoped.resolved.containers == full.resolved.containers
    return scoped  # (what engine.apply goes on with: its allocations are the verify's state)


@pytest.mark.parametrize("seed", range(8))
def test_scoped_plan_equals_full_plan_over_random_edit_sequences(seed):
    rng = random.Random(seed)
    world = World(rng, 14)
    planner = ScopedPlanner()
    planner.full = True  # the daemon's start
    desired = load_texts([("m.yaml", world.text())])
    first = planner(desired, world.host(), State())
    world.execute(first.plan)
    state = State(allocations=first.allocations)
    planner(desired, world.host(), state)  # verify: the base
    steps = 0
    for _ in range(60):
        snapshot = (copy.deepcopy(world.containers), world.mode, world.flag, world.pad)
        what = world.edit()
        try:
            desired = load_texts([("m.yaml", world.text())])
        except ManifestError:  # e.g. two explicit addresses collide: not a valid edit
            world.containers, world.mode, world.flag, world.pad = snapshot
            continue
        planned = plan_both(planner, desired, world.host(), state)
        if planned is None:
            continue
        world.execute(planned.plan)
        state = State(allocations=planned.allocations)
        # the verify: empty both ways (the simulated host does what the plan says); after a
        # non-empty scoped plan the daemon's scoped verify compares only the scope's
        # namespaces, and the base it then makes must keep the next plans equal to full ones
        live = world.host()
        if planner._verify is not None:
            scope = planner._verify.scope
            full = engine.plan_for(desired, live, state)
            assert full.plan.empty, (what, full.plan.actions)
            verify = planner.verify_plan([o for k, o in live.objects.items() if k[0] in NS_KINDS and k[1] in scope])
            assert verify is not None and verify.empty, (what, verify.actions)
            assert planner.base is not None
        else:
            verified = plan_both(planner, desired, live, state)
            assert verified is not None and verified.plan.empty, (what, verified.plan.actions)
        steps += 1
    assert steps >= 40
    assert planner.counts["scoped"] >= 40, planner.counts  # the scoped path really ran
    assert planner.counts.get("verify_scoped", 0) >= 20, planner.counts  # and its verify


def test_scoped_verify_sees_what_is_missing_in_the_scope_and_drops_the_base():
    rng = random.Random(3)
    world = World(rng, 14)
    planner = ScopedPlanner()
    desired = load_texts([("m.yaml", world.text())])
    first = planner(desired, world.host(), State())
    world.execute(first.plan)
    state = State(allocations=first.allocations)
    planner(desired, world.host(), state)  # the base
    name = next(iter(world.containers))
    world.containers.pop(name)  # a container removed: its namespace is in the scope
    desired = load_texts([("m.yaml", world.text())])
    planner.full = False
    planned = planner(desired, world.host(), state)
    assert planner.last["mode"] == "scoped" and not planned.plan.empty
    # the plan is not executed: the scope still holds the removed container's namespace
    live = world.host()
    scope = planner._verify.scope
    verify = planner.verify_plan([o for k, o in live.objects.items() if k[0] in NS_KINDS and k[1] in scope])
    assert name in {a.key[1] for a in verify.actions}
    assert fingerprint(verify) == fingerprint(planned.plan)  # the same work, still to do
    assert planner.base is None  # the retry plans everything


def test_one_edit_in_a_big_manifest_plans_a_few_namespaces():
    rng = random.Random(7)
    world = World(rng, 0)
    for i in range(300):
        world.containers[f"c{i}"] = {["na", "nb", "nc", "ne", "nd"][i % 5]: {}}
    planner = ScopedPlanner()
    desired = load_texts([("m.yaml", world.text())])
    first = planner(desired, world.host(), State())
    world.execute(first.plan)
    state = State(allocations=first.allocations)
    planner(desired, world.host(), state)
    world.containers["c7"] = {"nc": {"aliases": ["db"]}}
    desired = load_texts([("m.yaml", world.text())])
    planned = plan_both(planner, desired, world.host(), state)
    assert planner.last["mode"] == "scoped"
    assert planner.last["recompiled"] == 1
    # c7 and the 60 containers of its network, for their hosts files
    assert planner.last["namespaces"] == 60
    assert {a.key for a in planned.plan.actions} == {(Kind.HOSTS, f"c{i}") for i in range(2, 300, 5)}


def test_full_when_asked_and_when_the_networks_change():
    world = World(random.Random(3), 10)
    planner = ScopedPlanner()
    desired = load_texts([("m.yaml", world.text())])
    first = planner(desired, world.host(), State())
    assert planner.last == {"mode": "full", "reason": "requested"}
    world.execute(first.plan)
    state = State(allocations=first.allocations)
    planner.full = False
    planner(desired, world.host(), state)
    assert planner.last["mode"] == "full"  # no converged base before this empty plan
    planner(desired, world.host(), state)
    assert planner.last["mode"] == "scoped"
    world.mode = "l3s"
    planner(load_texts([("m.yaml", world.text())]), world.host(), state)
    assert planner.last == {"mode": "full", "reason": "networks changed"}


def test_drift_in_one_namespace_is_planned_in_that_namespace():
    world = World(random.Random(5), 10)
    planner = ScopedPlanner()
    desired = load_texts([("m.yaml", world.text())])
    first = planner(desired, world.host(), State())
    world.execute(first.plan)
    state = State(allocations=first.allocations)
    planner(desired, world.host(), state)
    name = next(iter(world.containers))
    hf = world.live[(Kind.HOSTS, name)]
    world.live[hf.key] = HostsFile(ns=name, content="tampered\n")
    planned = plan_both(planner, desired, world.host(), state)
    assert planner.last == {"mode": "scoped", "namespaces": 1, "recompiled": 0}
    assert [(a.op, a.key) for a in planned.plan.actions] == [(Op.UPDATE, (Kind.HOSTS, name))]
