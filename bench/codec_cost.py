"""What pyroute2 would cost in place of our netlink codec (docs/ARCHITECTURE.md, Libraries).

  sudo .venv/bin/python bench/codec_cost.py [--rounds N]

Encodes an address request N times with pyroute2's message classes and with
reconciler.kernel.netlink, then dumps one small namespace (lo, a veth pair, two macvlans,
six addresses, a dozen routes: what one container's namespace holds, plus some) N times
with each: links, addresses and every route. The namespace is a private one this process
unshares (root; nothing outside it is touched). Prints microseconds per message and
milliseconds per dump, best of three runs of N.
"""
from __future__ import annotations

import argparse
import socket
import time


def best(fn, rounds: int) -> float:
    out = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        out.append((time.perf_counter() - t) / rounds)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()

    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    from reconciler.kernel import netlink as nl
    from reconciler.kernel.nsworker import CLONE_NEWNET, unshare

    def pyroute2_encode():
        m = ifaddrmsg()
        m["header"]["type"] = nl.RTM_NEWADDR
        m["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL
        m["family"], m["prefixlen"], m["index"] = socket.AF_INET, 24, 5
        m["attrs"] = [("IFA_LOCAL", "10.1.0.5"), ("IFA_ADDRESS", "10.1.0.5")]
        m.encode()

    packed = socket.inet_pton(socket.AF_INET, "10.1.0.5")

    def our_encode():
        nl.addr_request(nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_EXCL, 5, socket.AF_INET, packed, 24)

    enc_pr = best(pyroute2_encode, args.rounds * 10)
    enc_ours = best(our_encode, args.rounds * 10)

    unshare(CLONE_NEWNET)  # this (main) thread only: a private namespace to fill
    with IPRoute() as ipr:
        ipr.link("set", index=1, state="up")
        ipr.link("add", ifname="v0", kind="veth", peer="v1")
        v0 = ipr.link_lookup(ifname="v0")[0]
        ipr.link("set", index=v0, state="up")
        for i, mode in enumerate(("private", "vepa")):
            ipr.link("add", ifname=f"m{i}", kind="macvlan", link=v0, macvlan_mode=mode)
            idx = ipr.link_lookup(ifname=f"m{i}")[0]
            ipr.link("set", index=idx, state="up", ifalias=f"ipvlan-reconciler net=n{i}")
            ipr.addr("add", index=idx, address=f"10.{i}.0.5", prefixlen=24)
            ipr.addr("add", index=idx, address=f"fd0{i}::5", prefixlen=64, flags=0x02)
            ipr.route("add", dst=f"10.9{i}.0.0/16", gateway=f"10.{i}.0.1", oif=idx, proto=149)
    time.sleep(2)  # DAD and linkwatch settle

    def pyroute2_dump():
        with IPRoute() as ipr:
            return list(ipr.get_links()), list(ipr.get_addr()), list(ipr.route("dump"))

    sock = nl.NetlinkSocket("bench", nl.WriteCounter())

    def our_dump():
        return sock.dump_links(), sock.dump_addrs(), sock.dump_routes()

    ipr = IPRoute()

    def pyroute2_dump_reused():
        return list(ipr.get_links()), list(ipr.get_addr()), list(ipr.route("dump"))

    links, addrs, routes = our_dump()
    dump_pr = best(pyroute2_dump, args.rounds)
    dump_pr_reused = best(pyroute2_dump_reused, args.rounds)
    dump_ours = best(our_dump, args.rounds)
    print(f"encode one RTM_NEWADDR: pyroute2 {enc_pr * 1e6:.1f} us, ours {enc_ours * 1e6:.1f} us")
    print(f"dump one namespace ({len(links)} links, {len(addrs)} addresses, {len(routes)} routes): "
          f"pyroute2 {dump_pr * 1e3:.2f} ms (new IPRoute each), {dump_pr_reused * 1e3:.2f} ms (one IPRoute), "
          f"ours {dump_ours * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
