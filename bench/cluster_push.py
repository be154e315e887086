#!/usr/bin/env python3
"""C2: cluster-mode push-to-converged (SPEC 6) on 3 hosts for a one-container edit, with
1,000 containers in the fleet, against a real etcd.

Starts one etcd member on loopback ports (data directory on /dev/shm when it exists) and three
host agents, each a process of its own running the `watch --etcd` daemon (ClusterDaemon: the
etcd watch, allocation, status under a lease, plan, apply, verify -- the real code) on a
**simulated kernel**: observe returns the host's objects from memory and execute changes them as
a perfect kernel would (the fakes of tests/cluster/test_watch.py), so no netlink, namespaces or
ipvlan links are involved and no root is needed. The netlink monitor is off (nothing to
monitor), so every reconcile observes the whole simulated host.

The fleet: 3 hosts, one shared L2 network (10.80.0.0/20, default /26 blocks claimed on demand),
1,000 containers spread evenly, every automatic address allocated by the agents. Then --edits
one-container edits (a container added on one host, the next edit removes it again), each
pushed with `cluster push`'s code (fleet-wide validation, one transaction). Measured per edit:

  push   wall time of the push itself (validate 1,000 containers + the etcd transaction);
  host   from the start of the push to the moment that host wrote its status in etcd with the
         new revision as converged (the `at` of `status/<host>`, same machine clock): etcd
         watch -> re-read (revision, address records) -> allocation (one host) -> plan ->
         apply -> verify -> status. Every host reconciles on every edit: hosts files list
         every container of the fleet on shared networks;
  all    the slowest of the 3 hosts.

Checked at the end (C3): every address key is unique (by construction, the key is the
address), no address is in two hosts' simulated kernels, and every host's kernel addresses are
exactly its address keys.

    .venv/bin/python bench/cluster_push.py [--containers 1000] [--edits 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

HOSTS = ("h1", "h2", "h3")
HEAD = """\
version: 1
hosts:
  h1: {address: 192.168.1.11}
  h2: {address: 192.168.1.12}
  h3: {address: 192.168.1.13}
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.80.0.0/20, gateway: 10.80.0.1}]}
containers:
"""


def fleet_text(n: int, extra: str = "") -> str:
    lines = [f"  c{i:04d}: {{host: {HOSTS[i % 3]}, networks: {{lan: {{}}}}}}\n" for i in range(n)]
    return HEAD + "".join(lines) + extra


# ---- one host agent (a child process) -----------------------------------------------------------


def agent_main(args) -> int:
    """`watch --etcd` on a simulated kernel, until SIGTERM; then its kernel's addresses to --dump."""
    import ipaddress as ia

    import reconciler.kernel.apply as kapply
    import reconciler.kernel.observe as kobserve
    from reconciler.cluster.source import ClusterSource
    from reconciler.daemon import logs
    from reconciler.daemon.clusterwatch import ClusterDaemon
    from reconciler.kernel.apply import ApplyResult
    from reconciler.kernel.observe import Observation
    from reconciler.objects import HostFacts, HostLink, HostState, Kind
    from reconciler.plan import Op

    objects = {}
    facts = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False,
                                              addresses=(ia.ip_interface("192.168.1.%d/24" % (10 + int(args.agent[1:]))),))})

    def execute(actions, kernel, snap, *a, **kw):
        for x in actions:
            if x.op is Op.DELETE:
                gone = objects.pop(x.key, None)
                if gone is not None and gone.kind is Kind.NETNS:
                    for k in [k for k, o in objects.items() if getattr(o, "ns", None) == gone.name]:
                        del objects[k]
            else:
                objects[x.key] = x.after
        return ApplyResult(done=list(actions))

    kobserve.observe = lambda kernel, intents=(), *a, **kw: Observation(HostState(objects.values(), facts), None, {})
    kapply.execute = execute

    class FakeKernel:
        class counter:
            count = 0

        def close(self):
            pass

    reports = open(os.path.join(args.state_dir, "reports.jsonl"), "a")

    class BenchDaemon(ClusterDaemon):
        def start_monitor(self):  # a simulated kernel: nothing to monitor
            pass

        def report(self):
            super().report()
            d = self.desired
            if d is not None and self.converged_generation == self.generation:
                # converged: which revision, and does this host's state have the edited container
                # (its own, or another host's with its address, as its hosts files list it)?
                edit = "edit" in d.containers or "edit" in d.remote
                reports.write(json.dumps({"t": time.time(), "rev": self.converged_revision, "edit": edit}) + "\n")
                reports.flush()

    logs.setup("json", os.environ.get("BENCH_LOG", "warning"), stream=open(os.path.join(args.state_dir, "log.json"), "w"))
    src = ClusterSource(args.etcd, args.agent, args.state_dir, prefix=args.prefix, machine=f"machine-{args.agent}")
    src.host_addresses = lambda: {"eth0": (ia.ip_address("192.168.1.%d" % (10 + int(args.agent[1:]))),)}
    d = BenchDaemon(src, args.state_dir, etcd_url=args.etcd, status_file="", resync_interval=600,
                    kernel_factory=FakeKernel, debounce=args.debounce)
    code = d.run()
    addrs = sorted(str(o.address.ip) for o in objects.values() if o.kind is Kind.ADDRESS)
    with open(args.dump, "w") as f:
        json.dump({"addresses": addrs,
                   "containers": sorted(o.name for o in objects.values() if o.kind is Kind.NETNS)}, f)
    return code


# ---- the benchmark ------------------------------------------------------------------------------


def statuses(store, keys):
    out = {}
    for kv in store.range(keys.status())[0]:
        out[keys.tail(kv.key, keys.status())] = kv.json()
    return out


def wait_edit(tmp, revision: int, present: bool, since: float, timeout: float):
    """Per host: the first converged report at ``revision`` or later whose state has (or no
    longer has) the edited container -- with another host's address, where it is remote."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {}
        for h in HOSTS:
            with open(os.path.join(tmp, h, "reports.jsonl")) as f:
                for line in f:
                    r = json.loads(line)
                    if r["t"] >= since and (r["rev"] or 0) >= revision and r["edit"] == present:
                        got[h] = r["t"]
                        break
        if len(got) == len(HOSTS):
            return got
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for revision {revision} with the edit on every host")


def wait_converged(store, keys, revision: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = statuses(store, keys)
        if all(st.get(h, {}).get("revision") == revision for h in HOSTS):
            return st
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for revision {revision}: {statuses(store, keys)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--debounce", type=float, default=0.5, help="the agents' --debounce (default 0.5, the daemon's)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--agent", help=argparse.SUPPRESS)
    ap.add_argument("--etcd", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--state-dir", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent:
        return agent_main(args)

    from cluster_alloc import start_etcd

    from reconciler.cluster.keys import Keys
    from reconciler.cluster.revision import push
    from reconciler.cluster.store import Store

    tmp = tempfile.mkdtemp(prefix="ipvlan-bench-push-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    proc, url = start_etcd(tmp)
    agents = []
    try:
        store, keys = Store(url), Keys("/bench-push/")
        d = os.path.join(tmp, "fleet.d")
        os.makedirs(d)
        path = os.path.join(d, "fleet.yaml")
        with open(path, "w") as f:
            f.write(fleet_text(args.containers))
        t0 = time.time()
        r = push(store, keys, [d])
        first_push = time.time() - t0
        for h in HOSTS:
            sd = os.path.join(tmp, h)
            os.makedirs(sd)
            agents.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--agent", h, "--etcd", url, "--prefix", keys.prefix,
                 "--state-dir", sd, "--dump", os.path.join(sd, "dump.json"), "--debounce", str(args.debounce)],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(sd, "stderr"), "w")))
        st = wait_converged(store, keys, r.revision, 600)
        initial = max(st[h]["at"] for h in HOSTS) - t0
        rows = []
        for k in range(args.edits):
            host = HOSTS[k % 3]
            extra = f"  edit: {{host: {host}, networks: {{lan: {{}}}}}}\n" if k % 2 == 0 else ""
            with open(path, "w") as f:
                f.write(fleet_text(args.containers, extra))
            t0 = time.time()
            r = push(store, keys, [d])
            pushed = time.time() - t0
            st = wait_converged(store, keys, r.revision, 120)  # status in etcd: the pushed revision
            status = {h: st[h]["at"] - t0 for h in HOSTS}
            done = wait_edit(tmp, r.revision, bool(extra), t0, 120)  # and the edit with its address
            per = {h: done[h] - t0 for h in HOSTS}
            rows.append({"edit": "add" if extra else "remove", "host": host, "push_s": round(pushed, 3),
                         **{f"{h}_s": round(v, 3) for h, v in per.items()}, "all_s": round(max(per.values()), 3),
                         "status_all_s": round(max(status.values()), 3)})
            time.sleep(0.3)
    finally:
        for a in agents:
            a.send_signal(signal.SIGTERM)
        for a in agents:
            try:
                a.wait(60)
            except subprocess.TimeoutExpired:
                a.kill()
    # C3: no duplicates, kernels == keys
    held = {}
    for kv in store.range(keys.addrs())[0]:
        held[keys.tail(kv.key, keys.addrs()).split("/", 1)[1]] = kv.json()["host"]
    seen, dup, mismatch = {}, 0, 0
    for h in HOSTS:
        with open(os.path.join(tmp, h, "dump.json")) as f:
            dump = json.load(f)
        mine = {a for a in dump["addresses"] if ipaddress.ip_address(a) in ipaddress.ip_network("10.80.0.0/20")}
        for a in mine:
            dup += a in seen
            seen[a] = h
        mismatch += len(mine ^ {a for a, o in held.items() if o == h})
    proc.terminate()
    proc.wait()
    if os.environ.get("BENCH_KEEP"):
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"fleet: {args.containers} containers on 3 hosts; first push {first_push:.2f} s, initial converge "
          f"(allocating every address) {initial:.2f} s after it started; agents' debounce {args.debounce} s")
    print(f"{'edit':<7} {'host':<4} {'push s':>7} {'status s':>8} {'h1 s':>6} {'h2 s':>6} {'h3 s':>6} {'all s':>6}")
    for r in rows:
        print(f"{r['edit']:<7} {r['host']:<4} {r['push_s']:>7} {r['status_all_s']:>8} {r['h1_s']:>6} {r['h2_s']:>6} "
              f"{r['h3_s']:>6} {r['all_s']:>6}")
    alls = sorted(r["all_s"] for r in rows)
    print(f"push-to-converged on all 3 hosts: median {statistics.median(alls):.3f} s, max {alls[-1]:.3f} s; "
          f"push alone median {statistics.median(r['push_s'] for r in rows):.3f} s")
    print(f"C3: {len(held)} address keys, {dup} address(es) in two hosts' kernels, {mismatch} kernel/key mismatch(es)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"C2": {"containers": args.containers, "first_push_s": round(first_push, 3),
                              "initial_converge_s": round(initial, 3), "debounce_s": args.debounce, "edits": rows,
                              "median_all_s": statistics.median(alls), "max_all_s": alls[-1]},
                       "C3": {"keys": len(held), "duplicates": dup, "mismatches": mismatch}}, f, indent=2)
    return 1 if dup or mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
