#!/usr/bin/env python3
"""P2 in detail (issue 12): a no-op `ipvlanctl apply` on a converged host, timed and profiled,
for one or more copies of the package side by side in the same VM session.

  scripts/vm-run -- python bench/noop.py --containers 1000 --out build/vm/p2 \
      [--variant old=build/vm/orig] [--variant new=.] [--repeats 3]

Builds the state once (bench/gen.py + `ipvlanctl apply` with the first variant), then for
each variant (NAME=DIR: DIR holds the `reconciler` package to run, via PYTHONPATH) runs the
no-op apply REPEATS times (wall time, the engine's phases, netlink writes) and once under
cProfile (DIR/NAME.prof), and prints the cumulative time of the observe path's functions.
Needs root and the VM's kernel (ipvlan); changes only the namespaces it creates (torn down
at the end with the same manifests and an empty directory).
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen  # noqa: E402

WATCH = (
    "cli.py:.*\\(main\\)", "engine.py:.*\\(apply\\)", "observe.py:.*\\(take_snapshot\\)",
    "observe.py:.*\\(translate\\)", "host.py:.*\\(_open_ns_sockets\\)", "host.py:.*\\(read_hosts_files\\)",
    "netlink.py:.*\\(dump\\)", "netlink.py:.*\\(dump_links\\)", "netlink.py:.*\\(dump_addrs\\)",
    "netlink.py:.*\\(dump_routes\\)", "netlink.py:.*\\(__init__\\)", "engine.py:.*\\(plan_for\\)",
    "engine.py:.*\\(plan\\)", "manifest/.*\\(load.*\\)", "\\(close_ns_socket\\)", "\\(netns_identity\\)",
    "targetdump.py:.*",
)


def ctl(variant_dir: str, *args: str, profile: str = "") -> tuple:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(variant_dir))
    pre = ["-m", "cProfile", "-o", profile] if profile else []
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *pre, "-m", "reconciler", *args], capture_output=True, text=True,
                       cwd="/", env=env)
    return p, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "vm", "p2"))
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all variants")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    ap.add_argument("--no-teardown", action="store_true", help="leave the namespaces (a throwaway VM)")
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in (args.variant or ["new=" + ROOT])]
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="p2-")
    mdir, state, empty = os.path.join(work, "m"), os.path.join(work, "s"), os.path.join(work, "empty")
    os.makedirs(empty)
    gen.write(mdir, args.containers, args.networks)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(f"python -c pass: {time.perf_counter() - t:.2f}s", flush=True)
    p, dt = ctl(variants[0][1], "apply", mdir, "--format", "json", "--state-dir", state)
    if p.returncode not in (0, 3):
        print(p.stdout[-2000:], p.stderr[-3000:])
        return 1
    o = json.loads(p.stdout)
    print(f"P1 apply ({variants[0][0]}): {dt:.2f}s engine {o['seconds']:.2f}s {o['phases']} "
          f"writes {o['netlink_writes']} converged {o['converged']}", flush=True)
    results = {"containers": args.containers, "p1_s": dt, "p1": o["phases"]}
    try:
        for rnd in range(args.rounds):  # interleaved rounds: the machine is shared
            for name, vdir in variants:
                for _ in range(args.repeats):
                    p, dt = ctl(vdir, "apply", mdir, "--format", "json", "--state-dir", state)
                    if p.returncode not in (0, 3):
                        print(p.stdout[-2000:], p.stderr[-3000:])
                        return 1
                    o = json.loads(p.stdout)
                    print(f"round {rnd} {name}: no-op {dt:.2f}s engine {o['seconds']:.2f}s "
                          f"{ {k: round(v, 2) for k, v in o['phases'].items()} } writes {o['netlink_writes']} "
                          f"changes {len(o['plan']['changes'])}", flush=True)
                    results.setdefault(name, []).append({"s": dt, "engine": o["seconds"], "phases": o["phases"],
                                                         "writes": o["netlink_writes"],
                                                         "changes": len(o["plan"]["changes"])})
        for name, vdir in variants if not args.no_profile else ():
            prof = os.path.join(args.out, f"{name}-{args.containers}.prof")
            p, dt = ctl(vdir, "apply", mdir, "--format", "json", "--state-dir", state, profile=prof)
            print(f"== {name} under cProfile: {dt:.2f}s", flush=True)
            st = pstats.Stats(prof)
            st.sort_stats("cumulative")
            for pat in WATCH:
                st.print_stats(pat)
            st.sort_stats("tottime").print_stats(25)
    finally:
        with open(os.path.join(args.out, f"noop-{args.containers}.json"), "w") as f:
            json.dump(results, f, indent=1)
        if not args.no_teardown:
            p, dt = ctl(variants[0][1], "apply", empty, "--format", "json", "--state-dir", state)
            print(f"teardown: {dt:.2f}s rc {p.returncode}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
