"""pyroute2 is the oracle of our netlink codec: the same real dumps, decoded by both.

Real objects of every kind and attribute observe reads -- ipvlan l2/l3/l3s with the bridge,
private and vepa flags, macvlan modes and MACs, a VLAN id, aliases, IPv4/IPv6 addresses with
flags and scopes (and the kernel's own link-local ones), routes with protocols, scopes,
gateways and tables (main, 200, 1000) -- in the host and two namespaces. Each namespace is
dumped with our codec (reconciler.kernel.netlink.NetlinkSocket) and with pyroute2's IPRoute,
and every field of our records must equal what pyroute2 read; the kernel-filtered dumps
observe uses must equal pyroute2's dump filtered here. The request side (every request
kind parsed back by pyroute2) is tests/unit/test_codec_oracle.py.
"""
from __future__ import annotations

import socket
import subprocess
import time

import pyroute2_oracle  # noqa: F401  isort: skip  (registers IFLA_IPVLAN_FLAGS; tests/)
from pyroute2 import IPRoute

from reconciler.kernel import netlink as nl
from reconciler.kernel.nsworker import NsWorker
from reconciler.objects import RTPROT

PARENTS = ("kt-cd0", "kt-cd1", "kt-cd2")
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}


# ---- pyroute2's reading, in the shape of our records ---------------------------------------
def pr_link(m) -> dict:
    info = m.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    rec = {"index": m["index"], "name": m.get_attr("IFLA_IFNAME"), "flags": m["flags"], "kind": kind,
           "alias": m.get_attr("IFLA_IFALIAS") or "", "link": m.get_attr("IFLA_LINK") or 0,
           "link_netnsid": m.get_attr("IFLA_LINK_NETNSID"), "vid": None, "ipvlan_mode": None,
           "ipvlan_flags": None, "disable_ipv6": None, "macvlan_mode": None, "mac": m.get_attr("IFLA_ADDRESS") or ""}
    if kind == "vlan":
        rec["vid"] = data.get_attr("IFLA_VLAN_ID")
    elif kind == "ipvlan":
        rec["ipvlan_mode"] = data.get_attr("IFLA_IPVLAN_MODE")
        rec["ipvlan_flags"] = data.get_attr("IFLA_IPVLAN_FLAGS") or 0
    elif kind == "macvlan":
        mode = data.get_attr("IFLA_MACVLAN_MODE")
        rec["macvlan_mode"] = MACVLAN_MODES.get(mode, mode)
    af = m.get_attr("IFLA_AF_SPEC")
    inet6 = af.get_attr("AF_INET6") if af is not None else None
    conf = inet6.get_attr("IFLA_INET6_CONF") if inet6 is not None else None
    if conf is not None:
        rec["disable_ipv6"] = conf["disable_ipv6"]
    return rec


def pr_addr(m) -> dict:
    fl = m.get_attr("IFA_FLAGS")
    return {"index": m["index"], "family": m["family"], "prefixlen": m["prefixlen"],
            "packed": socket.inet_pton(m["family"], m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")),
            "flags": fl if fl is not None else m["flags"], "scope": m["scope"]}


def pr_route(m) -> dict:
    t = m.get_attr("RTA_TABLE")
    return {"family": m["family"], "dst": m.get_attr("RTA_DST"), "dst_len": m["dst_len"],
            "gateway": m.get_attr("RTA_GATEWAY"), "oif": m.get_attr("RTA_OIF"),
            "table": t if t is not None else m["table"], "protocol": m["proto"], "scope": m["scope"],
            "type": m["type"]}


def _key(d: dict) -> tuple:
    return tuple(repr(v) for v in d.values())


def pyroute2_dump() -> dict:
    """This thread's namespace as pyroute2 reads it."""
    with IPRoute() as ipr:
        return {"links": sorted((pr_link(m) for m in ipr.get_links()), key=_key),
                "addrs": sorted((pr_addr(m) for m in ipr.get_addr()), key=_key),
                "routes": sorted((pr_route(m) for m in ipr.route("dump")), key=_key)}


def our_dump(sock: nl.NetlinkSocket) -> dict:
    return {"links": sorted((r.__dict__ for r in sock.dump_links()), key=_key),
            "addrs": sorted((r.__dict__ for r in sock.dump_addrs()), key=_key),
            "routes": sorted((r.__dict__ for r in sock.dump_routes()), key=_key)}


# ---- the objects -----------------------------------------------------------------------------
def _batch(lines, netns=None):
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, check=True, capture_output=True)


def build(host_eth0: str, a: str, b: str) -> None:
    # an ipvlan port's mode and flag belong to the parent (the last slave's win), so one dummy
    # parent per mode; macvlan ports on a VLAN of eth0 (a device is one kind of port or the other)
    _batch([
        *(f"link add {d} type dummy" for d in PARENTS),
        *(f"link set {d} up" for d in PARENTS),
        f"link add link {host_eth0} name kt-cv77 type vlan id 77",
        "link set kt-cv77 alias ipvlan-reconciler up",
        "link add link kt-cd0 name kt-ch0 type ipvlan mode l2 private",
        'link set kt-ch0 alias "ipvlan-reconciler host-access net=n1" up',
        "addr add 10.76.0.254/32 dev kt-ch0",
        "route add 10.76.0.5/32 dev kt-ch0 proto 149 scope link",
        "route add 10.76.0.6/32 dev kt-ch0 table 200 proto 149 scope link",
        f"link add link kt-cd0 name kt-ca0 netns {a} type ipvlan mode l2 private",
        f"link add link kt-cd1 name kt-ca1 netns {a} type ipvlan mode l3 vepa",
        f"link add link kt-cd2 name kt-ca2 netns {a} type ipvlan mode l3s bridge",
        f"link add link kt-cv77 name kt-cm0 netns {b} address 02:11:22:33:44:55 type macvlan mode private",
        f"link add link kt-cv77 name kt-cm1 netns {b} type macvlan mode vepa",
        f"link add link kt-cv77 name kt-cm2 netns {b} type macvlan mode bridge",
    ])
    _batch([
        'link set kt-ca0 alias "ipvlan-reconciler net=n1" up',
        "link set kt-ca1 up",
        "addr add 10.77.0.5/24 dev kt-ca0",
        "addr add 169.254.7.7/16 dev kt-ca0 scope link",
        "addr add fd77::5/64 dev kt-ca0 nodad",
        "addr add fd77::6/64 dev kt-ca1 nodad noprefixroute",
        "route add default via 10.77.0.1 dev kt-ca0 proto 149",
        "route add 10.78.0.0/16 dev kt-ca0 proto static scope link",
        "route add fd78::/64 via fd77::1 dev kt-ca0 proto 149",
        "route add 10.79.0.0/16 dev kt-ca1 table 200 proto 149",
        "route add 10.80.0.0/16 dev kt-ca1 table 1000 proto 149",
    ], netns=a)
    _batch([
        'link set kt-cm0 alias "ipvlan-reconciler net=m1" up',
        "link set kt-cm1 up",
        "addr add 10.81.0.5/24 dev kt-cm0",
        "addr add fd81::5/64 dev kt-cm0 nodad",
        "route add default via 10.81.0.1 dev kt-cm0 proto 149",
        "route add ::/0 via fd81::1 dev kt-cm0 proto 149",
    ], netns=b)


def _settled(worker, path, sock, attempts=40):
    """(ours, pyroute2's) dumps of one namespace, taken while it did not change: ours before
    and after pyroute2's must be equal (DAD and linkwatch settle for a while after a change)."""
    for _ in range(attempts):
        before = our_dump(sock)
        theirs = worker.run_in(path, pyroute2_dump) if path else pyroute2_dump()
        if our_dump(sock) == before:
            return before, theirs
        time.sleep(0.25)
    raise AssertionError("the namespace never settled")


def test_codec_decodes_real_dumps_as_pyroute2_does(host_eth0, netns_factory):
    a, b = netns_factory(), netns_factory()
    try:
        build(host_eth0, a, b)
        worker = NsWorker()
        # a link with IPv6 disabled: IFLA_AF_SPEC/AF_INET6/IFLA_INET6_CONF[DEVCONF_DISABLE_IPV6]
        worker.run_in(f"/run/netns/{b}", lambda: open("/proc/sys/net/ipv6/conf/kt-cm2/disable_ipv6", "w").write("1"))
        counter = nl.WriteCounter()
        socks = {"": nl.NetlinkSocket("host", counter)}
        for ns in (a, b):
            socks[ns] = worker.run_in(f"/run/netns/{ns}", lambda ns=ns: nl.NetlinkSocket(ns, counter))
        seen = {"kinds": set(), "ipvlan": set(), "macvlan": set(), "vid": set(), "tables": set(), "protocols": set(),
                "disable_ipv6": set(), "families": set()}
        for ns, sock in socks.items():
            ours, theirs = _settled(worker, f"/run/netns/{ns}" if ns else "", sock)
            for what in ("links", "addrs", "routes"):
                assert ours[what] == theirs[what], (ns or "host", what)
            # the filtered dumps observe takes (kernel-side filters): the same records
            main_ours = sorted((r.__dict__ for r in sock.dump_routes(table=nl.RT_TABLE_MAIN, protocol=RTPROT)), key=_key)
            assert main_ours == [r for r in theirs["routes"] if r["table"] == nl.RT_TABLE_MAIN and r["protocol"] == RTPROT]
            for t in (200, 1000):
                assert sorted((r.__dict__ for r in sock.dump_routes(table=t, protocol=RTPROT)), key=_key) == [
                    r for r in theirs["routes"] if r["table"] == t and r["protocol"] == RTPROT]
            for l in ours["links"]:
                seen["kinds"].add(l["kind"])
                seen["ipvlan"].add((l["ipvlan_mode"], l["ipvlan_flags"]))
                seen["macvlan"].add(l["macvlan_mode"])
                seen["vid"].add(l["vid"])
                seen["disable_ipv6"].add(l["disable_ipv6"])
            seen["families"] |= {(x["family"], nl.is_link_local(x["family"], x["packed"])) for x in ours["addrs"]}
            seen["tables"] |= {r["table"] for r in ours["routes"]}
            seen["protocols"] |= {r["protocol"] for r in ours["routes"]}
        # the comparison covered what it was built for (not vacuously equal)
        assert {"ipvlan", "macvlan", "vlan", "dummy"} <= seen["kinds"]
        assert {(0, 1), (1, 2), (2, 0)} <= seen["ipvlan"]  # l2 private, l3 vepa, l3s bridge
        assert {1, 2, 4} <= seen["macvlan"] and 77 in seen["vid"] and {0, 1} <= seen["disable_ipv6"]
        assert {(socket.AF_INET, False), (socket.AF_INET6, False), (socket.AF_INET6, True)} <= seen["families"]
        assert {nl.RT_TABLE_MAIN, 255, 200, 1000} <= seen["tables"] and {RTPROT, 4} <= seen["protocols"]
        for s in socks.values():
            s.close()
        worker.close()
    finally:
        for link in ("kt-cv77", *PARENTS):  # their ipvlan/macvlan ports go with them
            subprocess.run(["ip", "link", "del", link], capture_output=True)
