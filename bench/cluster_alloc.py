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

Each host's agent (its 8 worker threads) runs in a process of its own, as on three real hosts
(one Python process, one GIL per host); --threads: all 24 threads in one process (the bench's
first design: one GIL for all three "hosts").
--think MS: each worker pauses a random time (exponential, mean MS) between pairs; default 0,
a closed loop that saturates the machine (latency is then mostly queueing for the CPU).
--etcd-dir DIR: etcd's data directory under DIR (default /dev/shm: no fsync cost; give a disk
directory, e.g. /var/tmp, to include etcd's fsync per transaction).

Where an allocation's time goes (printed per fill, for all allocations and for the slowest 1 %):
  cpu     this thread's CPU time in the call (client code: requests, JSON, the agent);
  etcd    time in HTTP requests not spent on this thread's CPU: etcd's work (and fsync),
          loopback, and getting the GIL/CPU back once the reply is there;
  lock    waiting for the agent's lock (its 8 threads take candidates under it);
  other   the rest: runnable but not running (GIL held by another thread, CPU taken by other
          processes) outside HTTP and the lock;
  claims / retries: allocations that claimed a block / lost a transaction.
And etcd's side over the run: its CPU time per request, WAL fsync and backend commit means
(etcd's /metrics).

    .venv/bin/python bench/cluster_alloc.py [--pairs 40] [--threads] [--think MS] [--etcd-dir DIR] [--json FILE]
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
    """etcd on loopback ports, its data directory in ``tmp``: (process, URL)."""
    cp, pp = free_port(), free_port()
    url, peer = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    proc = subprocess.Popen(
        [shutil.which("etcd") or "etcd", "--name", "b1", "--data-dir", os.path.join(tmp, "b1"),
         "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--initial-cluster", f"b1={peer}", "--log-level", "error",
         "--metrics", "extensive",
         "--logger", "zap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/v3/maintenance/status", data=b"{}"), timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("etcd did not start")


_tl = threading.local()  # per worker thread: the current allocation's breakdown


def _acc(name, value):
    d = getattr(_tl, "acc", None)
    if d is not None:
        d[name] = d.get(name, 0.0) + value


class Counting(Store):
    """A Store that counts its requests (round trips to etcd) and times them per thread."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.requests = 0
        self._count_lock = threading.Lock()

    def _post(self, path, body):
        with self._count_lock:
            self.requests += 1
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return super()._post(path, body)
        finally:
            _acc("http", time.perf_counter() - w0)
            _acc("http_cpu", time.thread_time() - c0)
            if path == "kv/txn":
                _acc("txns", 1)


class TimedLock:
    """The agent's lock, timing how long a thread waits for it."""

    def __init__(self, lock):
        self._l = lock

    def __enter__(self):
        t0 = time.perf_counter()
        self._l.acquire()
        _acc("lock", time.perf_counter() - t0)
        return self

    def __exit__(self, *exc):
        self._l.release()


def etcd_stats(url: str, pid: int) -> dict:
    """etcd's CPU seconds (/proc) and its fsync/commit histograms' sums and counts (/metrics)."""
    out = {}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("grpc_server_handling_seconds") and 'grpc_method="Txn"' in line:
            kind = line.split("{", 1)[0].rsplit("_", 1)[1]  # bucket / sum / count
            if kind == "bucket":
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out.setdefault("txn_buckets", {})[le] = float(line.split()[-1])
            else:
                out[f"txn_{kind}"] = float(line.split()[-1])
        for name in ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds"):
            if line.startswith(name + "_sum "):
                out[name + "_sum"] = float(line.split()[1])
            elif line.startswith(name + "_count "):
                out[name + "_count"] = float(line.split()[1])
    return out


def host_workers(url: str, prefix: str, host: str, first: int, pairs: int, threads: int = 8, think: float = 0.0):
    """One host's agent and its worker threads: [(address, t_alloc, t_release, latency)], requests."""
    store = Counting(url)
    agent = Agent(store, Keys(prefix), host, f"machine-{host}")
    agent._lock = TimedLock(agent._lock)
    claim = agent._claim

    def counted_claim(*a, **kw):
        _acc("claims", 1)
        return claim(*a, **kw)

    agent._claim = counted_claim
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
                _tl.acc = {}
                t0, c0 = time.perf_counter(), time.thread_time()
                a = agent.allocate("lan", f"w{w}-{i}")
                t1, c1 = time.perf_counter(), time.thread_time()
                acc, _tl.acc = _tl.acc, None
                acc["cpu"] = c1 - c0
                got = time.monotonic()  # held from here (the key is written) ...
                rel = time.monotonic()  # ... until the release starts
                agent.release("lan", a)
                with lock:
                    out.append((str(a), got, rel, t1 - t0, acc))
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


def breakdown(events) -> dict:
    """Mean ms per allocation: cpu, etcd, lock, other; claims and lost transactions."""
    n = len(events) or 1
    tot = {"cpu": 0.0, "etcd": 0.0, "lock": 0.0, "other": 0.0, "claims": 0, "retries": 0}
    for e in events:
        wall, acc = e[3], e[4]
        etcd = acc.get("http", 0.0) - acc.get("http_cpu", 0.0)
        tot["cpu"] += acc.get("cpu", 0.0)
        tot["etcd"] += etcd
        tot["lock"] += acc.get("lock", 0.0)
        tot["other"] += wall - acc.get("cpu", 0.0) - etcd - acc.get("lock", 0.0)
        tot["claims"] += 1 if acc.get("claims") else 0
        # one txn per allocation, two per claim: more is a transaction lost to a conflict
        tot["retries"] += max(0, int(acc.get("txns", 0)) - 1 - int(acc.get("claims", 0)))
    out = {k: round(v * 1000 / n, 2) for k, v in tot.items() if k not in ("claims", "retries")}
    out.update(claims=tot["claims"], retries=tot["retries"], n=len(events))
    return out


def run_fill(url: str, fill: int, pairs: int, tmp: str, processes: bool = False, think: float = 0.0,
             etcd_pid: int = 0):
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
    e0 = etcd_stats(url, etcd_pid) if etcd_pid else {}
    load0 = os.getloadavg()[0]
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
    e1 = etcd_stats(url, etcd_pid) if etcd_pid else {}
    load1 = os.getloadavg()[0]
    events = [e for r, _ in results for e in r]
    requests = sum(n for _, n in results)
    # no address held by two workers at once (hosts included), none of the pre-filled ones
    by_addr = {}
    for a, got, rel, *_ in events:
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
    slow = [e for e in events if e[3] >= q[98]]
    etcd_side = {}
    if e0 and e1:
        etcd_side["cpu_ms_per_request"] = round((e1["cpu"] - e0["cpu"]) * 1000 / max(1, requests), 3)
        etcd_side["cpu_share_of_wall"] = round((e1["cpu"] - e0["cpu"]) / wall, 2)
        for name, key in (("etcd_disk_wal_fsync_duration_seconds", "fsync_ms"),
                          ("etcd_disk_backend_commit_duration_seconds", "commit_ms")):
            dn = e1.get(name + "_count", 0) - e0.get(name + "_count", 0)
            if dn:
                etcd_side[key] = round((e1[name + "_sum"] - e0[name + "_sum"]) * 1000 / dn, 3)
    if e0.get("txn_count") is not None and e1.get("txn_count") is not None:
        # etcd's own handling time of a transaction (server side, from its histogram)
        dn = e1["txn_count"] - e0["txn_count"]
        if dn:
            etcd_side["txn_server_mean_ms"] = round((e1["txn_sum"] - e0["txn_sum"]) * 1000 / dn, 3)
            b0, b1 = e0.get("txn_buckets", {}), e1.get("txn_buckets", {})
            for le in sorted((k for k in b1 if k != "+Inf"), key=float):
                if b1[le] - b0.get(le, 0) >= 0.99 * dn:
                    etcd_side["txn_server_p99_le_ms"] = float(le) * 1000
                    break
    return {"fill_percent": fill, "prefilled": target, "allocations": len(lat), "workers": 24,
            "processes": 3 if processes else 1, "think_ms": think * 1000,
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2), "allocations_per_s": round(len(lat) / wall, 1),
            "requests_per_pair": round(requests / len(lat), 2), "duplicates": 0,
            "load_1min": [round(load0, 1), round(load1, 1)], "time_all": breakdown(events),
            "time_slowest_1pct": breakdown(slow), "etcd": etcd_side}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=40, help="allocate+release pairs per worker")
    ap.add_argument("--fills", default="20,50,80")
    ap.add_argument("--threads", action="store_true",
                    help="all 24 workers as threads of one process (default: one process per host, as on real hosts)")
    ap.add_argument("--processes", action="store_true", help=argparse.SUPPRESS)  # the default now
    ap.add_argument("--think", type=float, default=0.0, metavar="MS",
                    help="mean pause of each worker between pairs (default 0: saturated, a closed loop)")
    ap.add_argument("--etcd-dir", metavar="DIR", help="etcd's data directory under DIR (default /dev/shm)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ipvlan-bench-etcd-",
                           dir=args.etcd_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None))
    proc, url = start_etcd(tmp)
    try:
        rows = [run_fill(url, int(f), args.pairs, tmp, not args.threads, args.think / 1000, proc.pid)
                for f in args.fills.split(",")]
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
    print("mean ms per allocation: cpu (client) / etcd (in HTTP, off this CPU) / lock / other (runnable, "
          "waiting for GIL or CPU); claims, lost txns")
    for r in rows:
        for what in ("time_all", "time_slowest_1pct"):
            b = r[what]
            print(f"{r['fill_percent']:>4}% {what[5:]:>12}: cpu {b['cpu']:>6} etcd {b['etcd']:>7} lock {b['lock']:>6} "
                  f"other {b['other']:>7}  claims {b['claims']} retries {b['retries']} (n={b['n']})")
        print(f"      etcd: {r['etcd']}  load {r['load_1min']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"C1": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
