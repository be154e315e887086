"""The daemon's scoped reconcile on the real kernel (VM only): a random sequence of edits --
containers added, removed, readdressed, moved between networks, aliased, lines moved, a
network's mode changed, a parent coming and going, hand-made drift -- each reconciled the way
the daemon does (netlink monitor, ``daemon.memory.DaemonMemory`` and its ScopedPlanner), then
judged by the full path: a fresh observation of every namespace and a full ``plan_for``
must find nothing to do and the same allocations. Lean: 20 steps here; the bench runs it
longer (IPVLAN_SCOPED_STEPS, IPVLAN_SCOPED_SEED; bench/README.md)."""
from __future__ import annotations

import os
import random
import time

from enginekit import Reconciler, sh

from reconciler import engine
from reconciler.daemon.memory import DaemonMemory
from reconciler.daemon.nlmonitor import NetlinkMonitor
from reconciler.kernel.host import Kernel
from reconciler.kernel.observe import observe
from reconciler.errors import ManifestError
from reconciler.manifest import load, load_texts
from reconciler.statedir import StateStore

STEPS = int(os.environ.get("IPVLAN_SCOPED_STEPS", "20"))
SEED = int(os.environ.get("IPVLAN_SCOPED_SEED", "12"))
PARENT = "sqp0"  # a parent the test makes come and go
NETWORKS = {
    "sqa": "{parent: eth0, subnets: [{subnet: 192.168.1.0/24, gateway: 192.168.1.1}]}",
    "sqb": "{parent: eth0.41, ipvlan_mode: MODE, subnets: [{subnet: 10.41.0.0/24}, {subnet: 10.42.0.0/24}]}",
    "sqc": "{internal: true}",
    "sqd": "{parent: " + PARENT + ", subnets: [{subnet: 10.43.0.0/24}]}",
}
SUBNET = {"sqa": "192.168.1", "sqb": "10.41.0", "sqd": "10.43.0"}


class Edits:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.mode = "l3"
        self.pad = 0
        self.containers = {}
        self.names = iter(f"sq{i}" for i in range(1000))
        while len(self.containers) < 5:
            self.add()
            try:
                load_texts([("m.yaml", self.text())])
            except ManifestError:  # an alias or address taken twice
                self.containers.popitem()

    def text(self) -> str:
        out = ["version: 1"] + ["# moved"] * self.pad + ["networks:"]
        out += [f"  {n}: {s.replace('MODE', self.mode)}" for n, s in NETWORKS.items()]
        out.append("containers:")
        for name, nets in self.containers.items():
            parts = ", ".join(f"{n}: {{{', '.join(f'{k}: {v}' for k, v in a.items())}}}" for n, a in nets.items())
            out.append(f"  {name}: {{networks: {{{parts}}}}}")
        return "\n".join(out) + "\n"

    def attachment(self, net: str) -> dict:
        a = {}
        if net in SUBNET and self.rng.random() < 0.3:
            a["ip"] = f"{SUBNET[net]}.{self.rng.randrange(20, 240)}"
        if self.rng.random() < 0.2:
            a["aliases"] = f"[al{self.rng.randrange(30)}]"
        return a

    def add(self) -> None:
        nets = self.rng.sample(sorted(NETWORKS), self.rng.choice((1, 1, 2)))
        self.containers[next(self.names)] = {n: self.attachment(n) for n in nets}

    def edit(self) -> str:
        rng, names = self.rng, list(self.containers)
        what = rng.choice(["add", "remove", "readdress", "readdress", "move", "pad", "mode", "parent",
                           "drift", "drift"])
        if what == "add" or len(names) < 3:
            self.add()
            return "add"
        if what == "remove":
            del self.containers[rng.choice(names)]
        elif what == "readdress":
            c = self.containers[rng.choice(names)]
            net = rng.choice(list(c))
            c[net] = self.attachment(net)
        elif what == "move":
            name = rng.choice(names)
            nets = dict(self.containers[name])
            del nets[rng.choice(list(nets))]
            new = rng.choice([n for n in NETWORKS if n not in nets])
            nets[new] = self.attachment(new)
            self.containers[name] = nets
        elif what == "pad":
            self.pad = rng.randrange(3)
        elif what == "mode":
            self.mode = rng.choice(["l2", "l3", "l3s"])
        return what


def drift(rng: random.Random, names) -> str:
    """A hand-made change in one of our namespaces."""
    ns = rng.choice(sorted(names))
    if rng.random() < 0.5:
        sh(f"ip -n {ns} addr flush dev eth0", check=False)
        return f"addresses of {ns} flushed"
    path = f"/etc/netns/{ns}/hosts"
    if os.path.exists(path):
        with open(path, "a") as f:
            f.write("10.9.9.9\tintruder\n")
    return f"hosts file of {ns} edited"


def judge(r: Reconciler, desired) -> None:
    """The full path: observe everything afresh and plan everything; nothing left to do."""
    store = StateStore(r.state)
    state = store.load()
    with Kernel() as k:
        live = observe(k, state.intents).live
    full = engine.plan_for(desired, live, state)
    assert full.plan.empty, [f"{a.op.value} {a.key}" for a in full.plan.actions]
    assert full.allocations == state.allocations


def test_scoped_reconciles_equal_full_ones_over_a_random_edit_sequence(tmp_path):
    rng = random.Random(SEED)
    r = Reconciler(tmp_path)
    edits = Edits(rng)
    sh(f"ip link add {PARENT} type dummy && ip link set {PARENT} up")
    mkernel = Kernel()
    monitor = NetlinkMonitor(mkernel, lambda src, detail: None, netns_poll=0.2)
    monitor.start()
    memory = DaemonMemory()  # the daemon's: observations, compile memo, scoped planner
    memory.attach(monitor)
    planner = memory.scope

    def reconcile(full: bool, what: str):
        desired = load([r.dir])
        if full:
            memory.forget()
        with Kernel() as k:
            out = engine.apply(desired, StateStore(r.state), k, memory=memory.for_run())
        assert out.converged, (what, out.plan.actions, out.verify and out.verify.actions)
        monitor.set_namespaces(desired.containers.keys())
        deadline = time.monotonic() + 10
        while sorted(monitor.monitored()) != sorted(desired.containers) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the monitor's sockets are open before the next dumps
        return desired

    try:
        r.write("m.yaml", edits.text())
        reconcile(True, "start")
        done = 0
        for step in range(STEPS):
            saved = ({k: dict(v) for k, v in edits.containers.items()}, edits.mode, edits.pad)
            what = edits.edit()
            if what == "parent":
                if os.path.exists(f"/sys/class/net/{PARENT}"):
                    sh(f"ip link del {PARENT}")
                else:
                    sh(f"ip link add {PARENT} type dummy && ip link set {PARENT} up")
            elif what == "drift":
                what = drift(rng, edits.containers)
                time.sleep(0.5)  # the monitor sees it
            r.write("m.yaml", edits.text())
            try:
                load([r.dir])
            except Exception:  # not a valid manifest (two explicit addresses collide): undo
                edits.containers, edits.mode, edits.pad = saved
                r.write("m.yaml", edits.text())
                continue
            desired = reconcile(False, f"step {step}: {what}")
            judge(r, desired)
            done += 1
        assert done >= STEPS // 2
        assert planner.counts["scoped"] >= done // 2, planner.counts  # the scoped path really ran
        assert planner.counts.get("verify_scoped", 0) >= done // 4, planner.counts  # and the scoped verify
    finally:
        monitor.stop()
        mkernel.close()
        r.teardown()
        sh(f"ip link del {PARENT}", check=False)
