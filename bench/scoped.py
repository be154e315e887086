"""The daemon's scoped plan (reconciler/daemon/scope.py) on bench/gen.py's manifests, on the
host (no kernel, no root): what a one-container edit costs planned in full and scoped, and
long random equivalence runs against a simulated host.

    .venv/bin/python bench/scoped.py --containers 1000,10000        # edit cost, full vs scoped
    .venv/bin/python bench/scoped.py --equivalence 200 --steps 150   # 200 seeds x 150 steps

The edit is bench/run.py's P4 edit (one container on one L2 network given an explicit
address). The host is simulated: the live objects are exactly what the full plan wants
(a converged host), with the parents present. Times are CPU seconds of one process, best
of --rounds; the VM runs the same Python 20-25x slower (bench/README.md).

The long kernel version of the equivalence test runs in the VM:
    IPVLAN_SCOPED_STEPS=200 scripts/test kernel -k test_scoped_reconciles
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reconciler import engine  # noqa: E402
from reconciler.daemon.scope import ScopedPlanner  # noqa: E402
from reconciler.manifest import load_texts  # noqa: E402
from reconciler.objects import HostFacts, HostLink, HostState, Kind  # noqa: E402
from reconciler.statedir import State  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_gen", os.path.join(ROOT, "bench", "gen.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def converged_host(desired, state):
    facts = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False)})
    planned = engine.plan_for(desired, HostState((), facts), state)
    objs = list(planned.compiled.desired)
    links = dict(facts.links)
    for o in objs:
        if o.kind in (Kind.VLAN, Kind.DUMMY):
            links[o.name] = HostLink(o.name, 100 + len(links), "vlan" if o.kind is Kind.VLAN else "dummy", True, True,
                                     vid=getattr(o, "vid", None), link=getattr(o, "link", None))
    return HostState(objs, HostFacts(links=links)), State(allocations=planned.allocations)


def edit_cost(n: int, rounds: int) -> dict:
    texts = gen.generate(n, 20)
    items = sorted(texts.items())
    desired = load_texts(items)
    live, state = converged_host(desired, state=State())
    planner = ScopedPlanner()
    planner(desired, live, state)  # the base (an empty plan)
    assert planner.base is not None
    # bench/run.py's edit: a container on one L2 network gets an explicit address
    target = next(c for c in desired.containers.values() if len(c.attachments) == 1 and c.attachments[0].ip is None
                  and desired.networks[c.attachments[0].network].mode.value == "l2"
                  and not desired.networks[c.attachments[0].network].internal)
    att = target.attachments[0]
    base = str(desired.networks[att.network].subnets[0].cidr.network_address).rsplit(".", 2)[0]
    line = f"  {target.name}: {{networks: {{{att.network}: {{ip: {base}.250.10}}}}}}"
    edited = []
    for name, text in items:
        lines = [line if ln.startswith(f"  {target.name}:") else ln for ln in text.splitlines()]
        edited.append((name, "\n".join(lines) + "\n"))
    new = load_texts(edited)
    out = {"containers": n}
    for label, fn in (
        ("full", lambda: engine.plan_for(new, live, state)),
        ("scoped", lambda: _scoped(planner, new, live, state)),
    ):
        best = None
        for _ in range(rounds):
            t = time.process_time()
            planned = fn()
            dt = time.process_time() - t
            best = dt if best is None else min(best, dt)
        out[label] = best
        out[label + "_actions"] = len(planned.plan.actions)
    out["scope"] = planner.describe()
    return out


def _scoped(planner, desired, live, state):
    keep = planner.base
    planner.full = False
    try:
        return planner(desired, live, state)
    finally:
        planner.base = keep  # every round from the same base


def equivalence(seeds: int, steps: int, containers: int) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))
    import test_scoped_plan as t

    orig = t.World.__init__

    def init(self, rng, n):
        orig(self, rng, containers)

    t.World.__init__ = init
    compared = 0
    for seed in range(1000, 1000 + seeds):
        rng = random.Random(seed)
        world = t.World(rng, containers)
        planner = ScopedPlanner()
        desired = load_texts([("m.yaml", world.text())])
        first = planner(desired, world.host(), State())
        world.execute(first.plan)
        state = State(allocations=first.allocations)
        planner(desired, world.host(), state)
        for _ in range(steps):
            saved = (copy.deepcopy(world.containers), world.mode, world.flag, world.pad)
            what = world.edit()
            try:
                desired = load_texts([("m.yaml", world.text())])
            except t.ManifestError:
                world.containers, world.mode, world.flag, world.pad = saved
                continue
            planned = t.plan_both(planner, desired, world.host(), state)
            if planned is None:
                continue
            world.execute(planned.plan)
            state = State(allocations=planned.allocations)
            verify = t.plan_both(planner, desired, world.host(), state)
            assert verify is not None and verify.plan.empty, (seed, what)
            compared += 2
        print(f"seed {seed}: ok ({planner.counts['scoped']} scoped, {planner.counts['full']} full plans)", flush=True)
    print(f"equivalence: {seeds} seeds x {steps} steps: {compared} plans compared, all identical")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", default="1000,10000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--equivalence", type=int, default=0, metavar="SEEDS")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--world", type=int, default=30, help="containers in each equivalence world")
    args = ap.parse_args()
    if args.equivalence:
        equivalence(args.equivalence, args.steps, args.world)
        return
    import gc

    gc.disable()  # as one-shot commands run (bench/README.md fix 2); the daemon keeps it on
    for n in (int(x) for x in args.containers.split(",")):
        r = edit_cost(n, args.rounds)
        print(f"{n:>6} containers: one-container edit planned in full {r['full']:.3f} s CPU "
              f"({r['full_actions']} actions), scoped {r['scoped']:.4f} s ({r['scoped_actions']} actions, "
              f"{r['scope']}): {r['full'] / r['scoped']:.0f}x", flush=True)


if __name__ == "__main__":
    main()
