#!/usr/bin/env python3
"""Fleet benchmarks (SPEC 5): BGP route propagation, partition handling, IPAM across hosts.

    F1  route propagation: 50 changes (add, then remove) of a host route in table 200 on h1
        (protocol 149, as ipvlanctl installs them), each timed until h2's main table shows
        it (BIRD's route) or no longer shows it. Target p99 <= 100 ms.
    F2  partition with BFD (300 ms x 3): h2 silenced by its switch port (carrier stays up);
        time until h1 withdraws h2's route, and after the heal until it is back.
        Targets withdraw <= 1 s, back <= 10 s.
    F3  IPAM: 3 hosts x 300 containers on a shared L2 and an L3 network, then random adds
        and removes, each host resolving only its own part (`fleet.select` + `ipam.resolve`,
        like `apply --host`): duplicate addresses across hosts after every step. Target 0.

F1 and F2 need root, BIRD 2 (`bird`, `birdc`) and veth/bridge/namespaces: they run on the
host kernel (no ipvlan needed; the "hosts" are namespaces, tests/kernel/fleetkit.py; nothing
is done to the root namespace's links) or in the VM. F3 is pure Python, anywhere.

    sudo .venv/bin/python bench/fleet.py [--only F1,F2,F3] [--changes 50] [--partitions 5] [--json FILE]

Figures are printed as a table (bench/README.md "Fleet" has the measured ones); the exit
status is 1 only when something measured is wrong (a route that never arrived, a duplicate).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import select
import socket
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "kernel"))

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTPROT_BIRD = 12

FLEET_YAML = """\
version: 1
hosts:
  h1: {id: 1, address: 192.168.1.11}
  h2: {id: 2, address: 192.168.1.12}
  h3: {id: 3, address: 192.168.1.13}
bgp:
  asn: 64512
%(bfd)s
networks:
  l3a: {ipvlan_mode: l3, parent: eth0, subnets: [{subnet: 10.40.0.0/16}], block_size: 23}
  lan: {parent: eth0.20, subnets: [{subnet: 10.20.0.0/16, ip_range: 10.20.0.0/18}], block_size: 22}
"""


def pct(values: List[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


# ---- netlink in a host's namespace ---------------------------------------------------------------


def in_netns(name: str, fn):
    """Run ``fn`` with this thread inside network namespace NAME (sockets made there stay
    there), then come back."""
    from reconciler.kernel.nsworker import setns

    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(fd)
        try:
            return fn()
        finally:
            setns(home)
    finally:
        os.close(fd)
        os.close(home)


class RouteWatch:
    """A netlink socket in a host's namespace, subscribed to IPv4 route changes."""

    def __init__(self, netns: str):
        def make():
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((0, RTMGRP_IPV4_ROUTE))
            return s

        self.sock = in_netns(netns, make)

    def wait(self, dst: str, present: bool, timeout: float) -> Optional[float]:
        """time.monotonic() when BIRD's route to DST appears (present) or goes (not present)
        in the main table; None after ``timeout``."""
        from reconciler.kernel.netlink import decode_route

        want = RTM_NEWROUTE if present else RTM_DELROUTE
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data = self.sock.recv(1 << 20)
            now = time.monotonic()
            pos = 0
            while pos + 16 <= len(data):
                length = int.from_bytes(data[pos:pos + 4], sys.byteorder)
                typ = int.from_bytes(data[pos + 4:pos + 6], sys.byteorder)
                if length < 16:
                    break
                if typ == want:
                    rec = decode_route(data, pos + 16, pos + length)
                    if rec.dst == dst and rec.protocol == RTPROT_BIRD and rec.table == 254:
                        return now
                pos += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def start_fleet(n: int, bfd: bool):
    from fleetkit import Fleet, wait_for

    from reconciler import bird
    from reconciler.manifest import load

    fleet = Fleet(n, prefix=f"kfb{os.getpid()}-")
    try:
        d = os.path.join(fleet.dir, "manifests")
        os.makedirs(d)
        with open(os.path.join(d, "fleet.yaml"), "w") as f:
            f.write(FLEET_YAML % {"bfd": "  bfd: {interval_ms: 300, multiplier: 3}" if bfd else ""})
        state = load([d])
        for h in fleet.hosts:
            h.start_bird(bird.render(state, h.name))
        wait_for(lambda: all(h.established() == n - 1 for h in fleet.hosts), 60, "a full iBGP mesh")
    except BaseException:
        fleet.close()
        raise
    return fleet


def route_cmd(op: str, dst: str) -> List[str]:
    return ["ip", "route", op, f"{dst}/32", "dev", "eth0", "proto", "149", "table", "200"]


def f1(changes: int) -> Dict[str, object]:
    from pyroute2 import IPRoute

    fleet = start_fleet(2, bfd=False)
    try:
        h1, h2 = fleet.hosts
        ipr = in_netns(h1.netns, IPRoute)  # writes in h1's namespace without a process per change
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        watch = RouteWatch(h2.netns)
        lat: Dict[str, List[float]] = {"add": [], "remove": []}
        missed = 0
        for i in range(changes):
            dst = f"10.40.1.{10 + i % 200}"
            add = i % 2 == 0
            t0 = time.monotonic()
            if add:
                ipr.route("add", dst=f"{dst}/32", oif=eth0, table=200, proto=149, scope=253)
            else:
                prev = f"10.40.1.{10 + (i - 1) % 200}"
                dst = prev
                ipr.route("del", dst=f"{dst}/32", oif=eth0, table=200, proto=149, scope=253)
            t1 = watch.wait(dst, add, 10.0)
            if t1 is None:
                missed += 1
                continue
            lat["add" if add else "remove"].append((t1 - t0) * 1000)
            time.sleep(0.05)
        watch.close()
        ipr.close()
        every = lat["add"] + lat["remove"]
        return {
            "changes": changes, "missed": missed,
            "p50_ms": round(statistics.median(every), 2) if every else None,
            "p99_ms": round(pct(every, 99), 2) if every else None,
            "max_ms": round(max(every), 2) if every else None,
            "add_p50_ms": round(statistics.median(lat["add"]), 2) if lat["add"] else None,
            "remove_p50_ms": round(statistics.median(lat["remove"]), 2) if lat["remove"] else None,
        }
    finally:
        fleet.close()


def f2(partitions: int) -> Dict[str, object]:
    from fleetkit import wait_for

    fleet = start_fleet(3, bfd=True)
    try:
        h1, h2, h3 = fleet.hosts
        dst = "10.40.4.7"
        h2.sh(route_cmd("add", dst))
        wait_for(lambda: dst in h1.bgp_routes(), 10, "h2's route on h1")
        watch = RouteWatch(h1.netns)
        down: List[float] = []
        up: List[float] = []
        missed = 0
        for _ in range(partitions):
            t0 = time.monotonic()
            h2.cut()
            t1 = watch.wait(dst, False, 15.0)
            if t1 is None:
                missed += 1
            else:
                down.append(t1 - t0)
            time.sleep(1.0)
            t0 = time.monotonic()
            h2.heal()
            t1 = watch.wait(dst, True, 30.0)
            if t1 is None:
                missed += 1
            else:
                up.append(t1 - t0)
            wait_for(lambda: h1.established() == 2 and h2.established() == 2, 30, "sessions back")
        watch.close()
        return {
            "partitions": partitions, "missed": missed,
            "withdraw_max_s": round(max(down), 3) if down else None,
            "withdraw_p50_s": round(statistics.median(down), 3) if down else None,
            "back_max_s": round(max(up), 3) if up else None,
            "back_p50_s": round(statistics.median(up), 3) if up else None,
        }
    finally:
        fleet.close()


def f3(per_host: int, steps: int, seed: int = 1) -> Dict[str, object]:
    from reconciler import fleet as fleetmod
    from reconciler import ipam
    from reconciler.manifest import load

    rnd = random.Random(seed)
    hosts = ["h1", "h2", "h3"]
    present = {h: {f"c{h}-{i}" for i in range(per_host)} for h in hosts}
    serial = per_host
    allocations = {h: ipam.Allocations() for h in hosts}
    duplicates = 0
    outside = 0
    checks = 0
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "fleet.yaml"), "w") as f:
            f.write(FLEET_YAML % {"bfd": ""})

        def write() -> None:
            lines = ["version: 1", "containers:"]
            for h in hosts:
                for c in sorted(present[h]):
                    lines.append(f"  {c}: {{host: {h}, networks: {{lan: {{}}, l3a: {{}}}}}}")
            with open(os.path.join(d, "containers.yaml"), "w") as f:
                f.write("\n".join(lines) + "\n")

        def resolve(h: str, state) -> Dict[str, ipaddress.IPv4Address]:
            mine = fleetmod.select(state, h)
            resolved, allocations[h] = ipam.resolve(mine, ipam.IpamFacts(), allocations[h])
            out = {}
            for c in resolved.containers.values():
                for att in c.attachments:
                    out[f"{c.name}/{att.network}"] = att.ip
            return out

        def check(addrs: Dict[str, Dict[str, ipaddress.IPv4Address]]) -> None:
            nonlocal duplicates, outside, checks
            checks += 1
            seen: Dict[ipaddress.IPv4Address, str] = {}
            for h, per in addrs.items():
                k = int(h[1:])
                blocks = {"lan": ipaddress.ip_network(f"10.20.{4 * k}.0/22"),
                          "l3a": ipaddress.ip_network(f"10.40.{2 * k}.0/23")}
                for key, ip in per.items():
                    if ip in seen:
                        duplicates += 1
                    seen[ip] = key
                    if ip not in blocks[key.split("/")[1]]:
                        outside += 1

        write()
        state = load([d])
        addrs = {h: resolve(h, state) for h in hosts}
        check(addrs)
        t0 = time.monotonic()
        for _ in range(steps):
            h = rnd.choice(hosts)
            if present[h] and rnd.random() < 0.5:
                present[h].discard(rnd.choice(sorted(present[h])))
            else:
                serial += 1
                present[h].add(f"c{h}-{serial}")
            write()
            state = load([d])
            addrs[h] = resolve(h, state)  # only the host whose part changed applies
            check(addrs)
        seconds = time.monotonic() - t0
    return {"hosts": 3, "containers_per_host": per_host, "steps": steps, "checks": checks,
            "duplicates": duplicates, "outside_own_block": outside, "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="F1,F2,F3")
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=5)
    ap.add_argument("--containers", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    only = {x.strip().upper() for x in args.only.split(",")}
    results: Dict[str, object] = {}
    wrong = False
    if "F1" in only:
        r = f1(args.changes)
        results["F1"] = r
        print(f"F1 route propagation ({r['changes']} changes): p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
              f"max {r['max_ms']} ms; target p99 <= 100 ms: {'met' if r['p99_ms'] is not None and r['p99_ms'] <= 100 else 'NO'}"
              f"{'; MISSED ' + str(r['missed']) if r['missed'] else ''}")
        wrong |= bool(r["missed"])
    if "F2" in only:
        r = f2(args.partitions)
        results["F2"] = r
        print(f"F2 partition with BFD 300 ms x 3 ({r['partitions']} cuts): withdrawn max {r['withdraw_max_s']} s "
              f"(target <= 1 s), back max {r['back_max_s']} s (target <= 10 s)"
              f"{'; MISSED ' + str(r['missed']) if r['missed'] else ''}")
        wrong |= bool(r["missed"])
    if "F3" in only:
        r = f3(args.containers, args.steps)
        results["F3"] = r
        print(f"F3 IPAM 3 hosts x {r['containers_per_host']} containers, {r['steps']} random adds/removes: "
              f"{r['duplicates']} duplicate addresses, {r['outside_own_block']} outside the host's block "
              f"({r['checks']} checks, {r['seconds']} s)")
        wrong |= bool(r["duplicates"] or r["outside_own_block"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
