"""CPU of the daemon's FIRST observation of a reconcile at N namespaces, simulated on the host
(no root, no kernel): issue 12, bench/README.md "Eighth pass".

    .venv/bin/python bench/obs_sim.py --namespaces 1000 10000 [--repeat 5] [--profile FILE]

What is real: ``kernel.observe.observe`` (take_snapshot + translate) with the daemon's
arguments -- the previous snapshot, what was made of it, the monitor's vouching -- the
/run/netns directory (N plain files in a temporary directory: listed, ``stat``ed for real)
and /etc/netns/NAME/hosts (N real files, settled: their ctime more than a second old).
What is simulated: each namespace's dump (a lo with our marker, one ipvlan endpoint, an
IPv4 and an IPv6 address, a default route; prebuilt records, no netlink) and the netlink
monitor (nothing changed anywhere, every namespace held with its cookie since long ago;
``changes`` answers "only namespace c00000 changed" when this version of observe takes it).
Each measured observation follows a one-namespace change (c00000 re-dumped, as after an
edit of one container), like a P4 edit's first observation in the daemon.
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import socket
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reconciler.kernel import observe as obs_mod  # noqa: E402
from reconciler.kernel.host import HeldNs, Kernel  # noqa: E402
from reconciler.kernel.netlink import IFF_UP, AddrRec, LinkRec, RouteRec  # noqa: E402
from reconciler.objects import HOSTS_MARKER, MARKER, RTPROT  # noqa: E402


class Sock:
    def __init__(self, links, addrs, routes):
        self.links, self.addrs, self.routes = links, addrs, routes

    def dump_links(self):
        return list(self.links)

    def dump_addrs(self):
        return list(self.addrs)

    def dump_routes(self, table=254, protocol=None):
        return [r for r in self.routes if protocol is None or r.protocol == protocol]

    def close(self):
        pass


def ns_records(i: int):
    links = [
        LinkRec(index=1, name="lo", flags=IFF_UP, alias=MARKER),
        LinkRec(index=2, name="eth0", flags=IFF_UP, kind="ipvlan", alias=f"{MARKER} net=n{i % 10}", link=2,
                link_netnsid=0, ipvlan_mode=1, ipvlan_flags=0, disable_ipv6=0),
    ]
    addrs = [
        AddrRec(index=2, family=socket.AF_INET, prefixlen=16, packed=bytes([10, 1, i >> 8 & 255, i & 255]),
                flags=0, scope=0),
        AddrRec(index=2, family=socket.AF_INET6, prefixlen=64,
                packed=bytes.fromhex("fd00000000000000") + i.to_bytes(8, "big"), flags=0, scope=0),
    ]
    routes = [RouteRec(socket.AF_INET, None, 0, "10.1.0.1", 2, 254, RTPROT, 0, 1)]
    return links, addrs, routes


class SimKernel(Kernel):
    def __init__(self, d: str, n: int):  # no sockets, no worker thread
        self.netns_dir, self.etc_netns = os.path.join(d, "netns"), os.path.join(d, "etc")
        os.makedirs(self.netns_dir)
        self.names = [f"c{i:05d}" for i in range(n)]
        self.recs = {name: ns_records(i) for i, name in enumerate(self.names)}
        self.cookies = {name: 1000 + i for i, name in enumerate(self.names)}
        for name in self.names:
            open(self.ns_path(name), "w").close()
            os.makedirs(os.path.join(self.etc_netns, name))
            with open(os.path.join(self.etc_netns, name, "hosts"), "w") as f:
                f.write(f"{HOSTS_MARKER}\n10.1.0.2\t{name}\n")
        self.host = Sock([LinkRec(index=1, name="lo", flags=IFF_UP),
                          LinkRec(index=2, name="eth0", flags=IFF_UP)], [], [])
        self._ns, self._ns_ids, self.dumped = {}, {}, 0

    def open_ns_sockets_lenient(self, names):
        out = {}
        for n in names:
            st = os.stat(self.ns_path(n))
            out[n] = self._ns[n] = Sock(*self.recs[n])
            self._ns_ids[n] = ((st.st_dev, st.st_ino), self.cookies[n])
            self.dumped += 1
        return out


class SimMonitor:
    """Nothing changed but ``touched``; every namespace held since long ago."""

    def __init__(self, k: SimKernel):
        self.k = k
        self.ids = {n: (os.stat(k.ns_path(n)).st_dev, os.stat(k.ns_path(n)).st_ino) for n in k.names}
        self.touched = set()
        self.seq = 0

    def unchanged_since(self, name, t):
        return name not in self.touched

    def held(self, name):
        return HeldNs(self.ids[name], self.k.cookies[name], 0.0)

    def changes_since(self, mark):
        from reconciler.daemon.nlmonitor import Changes

        self.seq += 1
        return Changes(mark=self.seq, namespaces=frozenset(self.touched) if mark is not None else None,
                       netns_dir=False, hosts=frozenset())


def run(n: int, repeat: int, profile: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        k = SimKernel(d, n)
        mon = SimMonitor(k)
        time.sleep(1.2)  # hosts files settled: their stamps are recorded, their content reused
        new = "changes" in inspect.signature(obs_mod.observe).parameters
        extra = {"changes": mon.changes_since} if new else {}
        o = obs_mod.observe(k, (), **extra)  # the full observation (start, resync)
        for _ in range(2):  # the next ones build on it (vouched, stamps recorded)
            o = obs_mod.observe(k, (), o.snapshot, lambda name, v: mon.unchanged_since(name, v.taken), mon.held,
                                made=o.made, **extra)
        times = []
        prof = cProfile.Profile() if profile else None
        for _ in range(repeat):
            mon.touched = {"c00000"}
            k.dumped = 0
            t = time.process_time()
            if prof:
                prof.enable()
            o = obs_mod.observe(k, (), o.snapshot, lambda name, v: mon.unchanged_since(name, v.taken), mon.held,
                                made=o.made, **extra)
            if prof:
                prof.disable()
            times.append(time.process_time() - t)
            assert k.dumped == 1 and o.dumped == 1, (k.dumped, o.dumped)
            assert len(o.live) == 7 * n, len(o.live)  # netns, endpoint, sysctl, 2 addresses, route, hosts
        times.sort()
        print(f"{'new' if new else 'old'} observe at {n}: median {times[len(times) // 2] * 1000:.1f} ms CPU "
              f"(min {times[0] * 1000:.1f}, max {times[-1] * 1000:.1f}; {repeat} runs, 1 namespace re-dumped)")
        if prof:
            prof.dump_stats(f"{profile}.{n}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespaces", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", default="", help="write cProfile stats to FILE.N")
    args = ap.parse_args()
    for n in args.namespaces:
        run(n, args.repeat, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
