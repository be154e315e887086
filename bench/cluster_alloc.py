#!/usr/bin/env python3
"""C1: cluster-mode allocation latency (SPEC 6) against a real etcd.

Starts one etcd member on loopback ports in a temporary directory (/dev/shm when it exists),
pushes a fleet of 3 hosts sharing one /22 network (default /26 blocks: 16 blocks, 1,016
usable addresses after the network, broadcast and gateway addresses and 3 underlay addresses
outside it), fills the pool to 20 / 50 / 80 %, then runs 24 concurrent workers (8 threads per
host, each host one Agent as a host agent would) that each allocate and release again
--pairs times; reports p50/p99 of `Agent.allocate` (wall time per call, in ms) and the etcd
requests per allocate+release pair. Correctness is checked on the way: no address held by two
workers at the same time, every address key left matches an allocation.

--processes: each host's agent (its 8 threads) runs in a process of its own, as on three real
hosts (one Python process, one GIL per host); default: all 24 threads in one process.
--think MS: each worker pauses a random time (exponential, mean MS) between pairs; default 0,
a closed loop that saturates the machine (latency is then mostly queueing for the CPU).

    .venv/bin/python bench/cluster_alloc.py [--pairs 40] [--processes] [--json FILE]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reconciler.cluster.alloc import Agent  # noqa: E402
from reconciler.cluster.keys import Keys  # noqa: E402
from reconciler.cluster.revision import push  # noqa: E402
from reconciler.cluster.store import Store  # noqa: E402

FLEET = """\
version: 1
hosts:
  h1: {address: 192.168.1.11}
  h2: {address: 192.168.1.12}
  h3: {address: 192.168.1.13}
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.70.0.0/22, gateway: 10.70.0.1}]}
containers:
  web1: {host: h1, networks: {lan: {}}}
"""
POOL = 1024 - 3  # network, broadcast, gateway
HOSTS = ("h1", "h2", "h3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(tmp: str):
    cp, pp = free_port(), free_port()
    url, peer = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    proc = subprocess.Popen(
        [shutil.which("etcd") or "etcd", "--name", "b1", "--data-dir", os.path.join(tmp, "b1"),
         "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--initial-cluster", f"b1={peer}", "--log-level", "error",
         "--logger", "zap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/v3/maintenance/status", data=b"{}"), timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("etcd did not start")


class Counting(Store):
    """A Store that counts its requests (round trips to etcd)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.requests = 0
        self._count_lock = threading.Lock()

    def _post(self, path, body):
        with self._count_lock:
            self.requests += 1
        return super()._post(path, body)


def host_workers(url: str, prefix: str, host: str, first: int, pairs: int, threads: int = 8, think: float = 0.0):
    """One host's agent and its worker threads: [(address, t_alloc, t_release, latency)], requests."""
    store = Counting(url)
    agent = Agent(store, Keys(prefix), host, f"machine-{host}")
    agent.bind()
    agent.allocate("lan", f"warm-{host}")  # caches loaded (as a running agent has them)
    store.requests = 0
    out, errors = [], []
    lock = threading.Lock()

    def worker(w):
        import random

        rnd = random.Random(w)
        try:
            for i in range(pairs):
                if think:  # an exponential pause between pairs (mean ``think`` s): not saturated
                    time.sleep(rnd.expovariate(1 / think))
                t0 = time.perf_counter()
                a = agent.allocate("lan", f"w{w}-{i}")
                t1 = time.perf_counter()
                got = time.monotonic()  # held from here (the key is written) ...
                rel = time.monotonic()  # ... until the release starts
                agent.release("lan", a)
                with lock:
                    out.append((str(a), got, rel, t1 - t0))
        except Exception as e:
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(first + w,)) for w in range(threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if errors:
        raise SystemExit(f"host {host}: worker errors: {errors[:3]}")
    return out, store.requests


def _host_proc(args):
    return host_workers(*args)


def run_fill(url: str, fill: int, pairs: int, tmp: str, processes: bool = False, think: float = 0.0):
    store, keys = Store(url), Keys(f"/bench-{fill}/")
    d = os.path.join(tmp, f"fleet{fill}")
    os.makedirs(d)
    with open(os.path.join(d, "fleet.yaml"), "w") as f:
        f.write(FLEET)
    push(store, keys, [d])
    agents = {h: Agent(store, keys, h, f"machine-{h}") for h in HOSTS}
    for a in agents.values():
        a.bind()
    held = {}
    lock = threading.Lock()
    target = POOL * fill // 100

    def prefill(host, n):
        for i in range(n):
            a = agents[host].allocate("lan", f"pre-{host}-{i}")
            with lock:
                assert a not in held, a
                held[a] = host

    ts = [threading.Thread(target=prefill, args=(h, target // 3 + (1 if i < target % 3 else 0)))
          for i, h in enumerate(HOSTS)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    jobs = [(url, keys.prefix, h, 8 * i, pairs, 8, think) for i, h in enumerate(HOSTS)]
    t0 = time.perf_counter()
    if processes:
        with multiprocessing.get_context("fork").Pool(len(HOSTS)) as pool:
            results = pool.map(_host_proc, jobs)
    else:
        results = [None] * len(HOSTS)

        def run(i):
            results[i] = host_workers(*jobs[i])

        ts = [threading.Thread(target=run, args=(i,)) for i in range(len(HOSTS))]
        [t.start() for t in ts]
        [t.join() for t in ts]
    wall = time.perf_counter() - t0
    events = [e for r, _ in results for e in r]
    requests = sum(n for _, n in results)
    # no address held by two workers at once (hosts included), none of the pre-filled ones
    by_addr = {}
    for a, got, rel, _ in events:
        by_addr.setdefault(a, []).append((got, rel))
    prefilled = {str(a) for a in held}
    dups = sum(1 for a in by_addr if a in prefilled)
    for spans in by_addr.values():
        spans.sort()
        dups += sum(1 for x, y in zip(spans, spans[1:]) if y[0] < x[1])
    if dups:
        raise SystemExit(f"fill {fill}%: {dups} address(es) handed out twice")
    remaining = {ipaddress.ip_address(keys.tail(kv.key, keys.addrs("lan"))) for kv in store.range(keys.addrs("lan"))[0]}
    warm = {a for a in remaining if a not in held}
    if len(warm) != len(HOSTS) or remaining - warm != set(held):
        raise SystemExit(f"fill {fill}%: address keys do not match the allocations")
    lat = sorted(e[3] for e in events)
    q = statistics.quantiles(lat, n=100)
    return {"fill_percent": fill, "prefilled": target, "allocations": len(lat), "workers": 24,
            "processes": 3 if processes else 1, "think_ms": think * 1000,
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2), "allocations_per_s": round(len(lat) / wall, 1),
            "requests_per_pair": round(requests / len(lat), 2), "duplicates": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=40, help="allocate+release pairs per worker")
    ap.add_argument("--fills", default="20,50,80")
    ap.add_argument("--processes", action="store_true", help="one process per host (as on real hosts)")
    ap.add_argument("--think", type=float, default=0.0, metavar="MS",
                    help="mean pause of each worker between pairs (default 0: saturated, a closed loop)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ipvlan-bench-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    proc, url = start_etcd(tmp)
    try:
        rows = [run_fill(url, int(f), args.pairs, tmp, args.processes, args.think / 1000) for f in args.fills.split(",")]
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'fill':>5} {'prefilled':>9} {'allocs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'allocs/s':>9} "
          f"{'req/pair':>8} {'dups':>4}")
    for r in rows:
        print(f"{r['fill_percent']:>4}% {r['prefilled']:>9} {r['allocations']:>6} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8} {r['max_ms']:>8} {r['allocations_per_s']:>9} {r['requests_per_pair']:>8} "
              f"{r['duplicates']:>4}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"C1": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
