"""pyroute2 is the oracle of our netlink codec (reconciler.kernel.netlink), on the host.

Every request kind the handlers encode -- each kind's create, delete and update -- is parsed
back by pyroute2's message classes and must say exactly what the object asks for (the
expected values are computed from the object, not from our encoder). Records built by
pyroute2 (``msg.encode()``) decode with ours to the same fields. The real dumps of a kernel
are compared in tests/kernel/test_codec_oracle.py.
"""
from __future__ import annotations

import ipaddress
import socket

import pytest

from pyroute2_oracle import pyroute2_addr, pyroute2_link, pyroute2_reads, pyroute2_route  # tests/

from reconciler.kernel import netlink as nl
from reconciler.kernel.apply import Ctx
from reconciler.kernel.handlers import HANDLERS
from reconciler.kernel.host import NsView, Snapshot
from reconciler.kernel.netlink import LinkRec
from reconciler.model import Flag, MacvlanMode, Mode
from reconciler.objects import (
    MARKER,
    RTPROT,
    AccessLink,
    AccessRoute,
    Address,
    DummyLink,
    Endpoint,
    ExportRoute,
    Kind,
    Netns,
    Route,
    VlanLink,
)

REQ = nl.NLM_F_REQUEST | nl.NLM_F_ACK
CREATE_EXCL = REQ | nl.NLM_F_CREATE | nl.NLM_F_EXCL
CREATE_REPLACE = REQ | nl.NLM_F_CREATE | nl.NLM_F_REPLACE
NS_FD = 99
HOST_IDX = {"lo": 1, "eth0": 2, "eth0.20": 3, "ih-0123456789ab": 4}
NS_IDX = {"lo": 1, "eth0": 7}


def _link(typ, nlflags, attrs, index=0, flags=0, change=0):
    return {"nltype": typ, "nlflags": nlflags, "family": 0, "index": index, "flags": flags, "change": change,
            "attrs": attrs}


def _addr(typ, nlflags, index, cidr):
    iface = ipaddress.ip_interface(cidr)
    v6 = iface.version == 6
    attrs = {"IFA_LOCAL": str(iface.ip), "IFA_ADDRESS": str(iface.ip)}
    if v6:
        attrs["IFA_FLAGS"] = nl.IFA_F_NODAD
    return {"nltype": typ, "nlflags": nlflags, "family": socket.AF_INET6 if v6 else socket.AF_INET,
            "prefixlen": iface.network.prefixlen, "flags": nl.IFA_F_NODAD if v6 else 0, "scope": 0,
            "index": index, "attrs": attrs}


def _route(typ, nlflags, dst, scope, table=nl.RT_TABLE_MAIN, **attrs):
    net = ipaddress.ip_network(dst)
    if net.prefixlen:
        attrs = {"RTA_DST": str(net.network_address), **attrs}
    if table != nl.RT_TABLE_MAIN:
        attrs["RTA_TABLE"] = table
    return {"nltype": typ, "nlflags": nlflags, "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
            "dst_len": net.prefixlen, "src_len": 0, "tos": 0, "table": table if table < 256 else 0,
            "proto": RTPROT, "scope": scope, "type": nl.RTN_UNICAST, "flags": 0, "attrs": attrs}


# ---- the handlers' requests, through the real executor context ----------------------------
class _Sock:
    def __init__(self, label):
        self.label = label


class _Kernel:
    def __init__(self):
        self.host = _Sock("host")
        self.socks = {}

    def ns_socket(self, name):
        return self.socks.setdefault(name, _Sock(f"ns {name}"))

    def create_netns(self, name):
        return self.ns_socket(name)


class _Ctx(Ctx):
    def ns_fd(self, ns):
        return NS_FD


def _snapshot():
    host = NsView("", links=[LinkRec(index=i, name=n, flags=1) for n, i in HOST_IDX.items()])
    c1 = NsView("c1", links=[LinkRec(index=i, name=n, flags=1) for n, i in NS_IDX.items()])
    return Snapshot(host=host, namespaces={"c1": c1}, hosts_files={})


def handler_requests(op, *objs):
    """The requests (socket label, phase, bytes) one handler queues for ``op``."""
    ctx = _Ctx(_Kernel(), _snapshot())
    h = HANDLERS[objs[-1].kind]
    getattr(h, op)(ctx, *objs)
    return [(sock.label, phase, bytes(req.data)) for phase, q in sorted(ctx._queues.items()) for sock, req in q]


EP_L3_VEPA = Endpoint(ns="c1", ifname="eth1", parent="eth0", mode=Mode.L3, flag=Flag.VEPA, network="n1")
EP_MACVLAN = Endpoint(ns="c1", ifname="eth1", parent="eth0.20", mode=Mode.L2, flag=Flag.BRIDGE, network="m1",
                      driver="macvlan", macvlan_mode="private", mac="02:11:22:33:44:55")
EP_OLD = Endpoint(ns="c1", ifname="eth0", parent="eth0", mode=Mode.L2, flag=Flag.PRIVATE, network="n1")
ACCESS = AccessLink(name="ih-0123456789ab", parent="eth0", network="n1", mode=Mode.L2, flag=Flag.PRIVATE,
                    addresses=("10.1.0.254/32", "fd00::fe/128"))


def _linkinfo(kind, **data):
    info = {"IFLA_INFO_KIND": kind}
    if data:
        info["IFLA_INFO_DATA"] = data
    return {"IFLA_LINKINFO": info}


# (case id, handler op, objects, expected: [(socket, phase, pyroute2's reading)])
CASES = [
    ("vlan-create", "create", [VlanLink(name="eth0.30", link="eth0", vid=30)], [
        ("host", 0, _link(nl.RTM_NEWLINK, CREATE_EXCL, {"IFLA_IFNAME": "eth0.30", "IFLA_LINK": 2,
                                                        **_linkinfo("vlan", IFLA_VLAN_ID=30)}, flags=1, change=1)),
        ("host", 1, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFNAME": "eth0.30", "IFLA_IFALIAS": MARKER})),
    ]),
    ("vlan-delete", "delete", [VlanLink(name="eth0.20", link="eth0", vid=20)], [
        ("host", 0, _link(nl.RTM_DELLINK, REQ, {"IFLA_IFNAME": "eth0.20"})),
    ]),
    ("vlan-update", "update", [VlanLink(name="eth0.20", link="eth0", vid=20, up=True, marked=False),
                               VlanLink(name="eth0.20", link="eth0", vid=20, up=False)], [
        ("host", 0, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFNAME": "eth0.20", "IFLA_IFALIAS": MARKER}, change=1)),
    ]),
    ("dummy-create", "create", [DummyLink(name="di-1")], [
        ("host", 0, _link(nl.RTM_NEWLINK, CREATE_EXCL, {"IFLA_IFNAME": "di-1", **_linkinfo("dummy")}, flags=1, change=1)),
        ("host", 1, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFNAME": "di-1", "IFLA_IFALIAS": MARKER})),
    ]),
    ("netns-create", "create", [Netns(name="c2")], [
        ("ns c2", 0, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFALIAS": MARKER}, index=1, flags=1, change=1)),
    ]),
    ("endpoint-create-ipvlan", "create", [EP_L3_VEPA], [
        ("host", 0, _link(nl.RTM_NEWLINK, CREATE_EXCL, {
            "IFLA_IFNAME": "eth1", "IFLA_LINK": 2, "IFLA_NET_NS_FD": NS_FD,
            **_linkinfo("ipvlan", IFLA_IPVLAN_MODE=1, IFLA_IPVLAN_FLAGS=2)}, index=8, flags=1, change=1)),
        ("ns c1", 1, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFALIAS": EP_L3_VEPA.alias}, index=8)),
    ]),
    ("endpoint-create-macvlan", "create", [EP_MACVLAN], [
        ("host", 0, _link(nl.RTM_NEWLINK, CREATE_EXCL, {
            "IFLA_IFNAME": "eth1", "IFLA_LINK": 3, "IFLA_ADDRESS": "02:11:22:33:44:55", "IFLA_NET_NS_FD": NS_FD,
            **_linkinfo("macvlan", IFLA_MACVLAN_MODE="private")}, index=8, flags=1, change=1)),
        ("ns c1", 1, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFALIAS": EP_MACVLAN.alias}, index=8)),
    ]),
    ("endpoint-delete", "delete", [EP_OLD], [
        ("ns c1", 0, _link(nl.RTM_DELLINK, REQ, {}, index=7)),
    ]),
    ("endpoint-update", "update", [EP_OLD, Endpoint(**{**EP_OLD.__dict__, "up": False, "network": "n2"})], [
        ("ns c1", 0, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFALIAS": f"{MARKER} net=n2"}, index=7, change=1)),
    ]),
    ("address-create-v4", "create", [Address(ns="c1", ifname="eth0", address=ipaddress.ip_interface("10.1.0.5/24"))], [
        ("ns c1", 0, _addr(nl.RTM_NEWADDR, CREATE_EXCL, 7, "10.1.0.5/24")),
    ]),
    ("address-delete-v6", "delete", [Address(ns="c1", ifname="eth0", address=ipaddress.ip_interface("fd00::5/64"))], [
        ("ns c1", 0, _addr(nl.RTM_DELADDR, REQ, 7, "fd00::5/64")),
    ]),
    ("route-create-default-v4", "create", [Route(ns="c1", dst=ipaddress.ip_network("0.0.0.0/0"),
                                                 gateway=ipaddress.ip_address("10.1.0.1"), ifname="eth0")], [
        ("ns c1", 0, _route(nl.RTM_NEWROUTE, CREATE_REPLACE, "0.0.0.0/0", nl.RT_SCOPE_UNIVERSE,
                            RTA_GATEWAY="10.1.0.1", RTA_OIF=7)),
    ]),
    ("route-create-onlink-v4", "create", [Route(ns="c1", dst=ipaddress.ip_network("10.2.0.0/16"), gateway=None,
                                                ifname="eth0")], [
        ("ns c1", 0, _route(nl.RTM_NEWROUTE, CREATE_REPLACE, "10.2.0.0/16", nl.RT_SCOPE_LINK, RTA_OIF=7)),
    ]),
    ("route-update-v6", "update", [Route(ns="c1", dst=ipaddress.ip_network("fd01::/64"), gateway=None, ifname="eth0"),
                                   Route(ns="c1", dst=ipaddress.ip_network("fd01::/64"),
                                         gateway=ipaddress.ip_address("fd00::1"), ifname="eth0")], [
        ("ns c1", 0, _route(nl.RTM_NEWROUTE, CREATE_REPLACE, "fd01::/64", nl.RT_SCOPE_UNIVERSE,
                            RTA_GATEWAY="fd00::1", RTA_OIF=7)),
    ]),
    ("route-delete-v6", "delete", [Route(ns="c1", dst=ipaddress.ip_network("::/0"),
                                         gateway=ipaddress.ip_address("fd00::1"), ifname="eth0")], [
        ("ns c1", 0, _route(nl.RTM_DELROUTE, REQ, "::/0", nl.RT_SCOPE_UNIVERSE, RTA_GATEWAY="fd00::1", RTA_OIF=7)),
    ]),
    ("export-create", "create", [ExportRoute(table=200, dst=ipaddress.ip_network("10.1.0.5/32"), dev="eth0")], [
        ("host", 0, _route(nl.RTM_NEWROUTE, CREATE_REPLACE, "10.1.0.5/32", nl.RT_SCOPE_LINK, table=200, RTA_OIF=2)),
    ]),
    ("export-delete-big-table", "delete", [ExportRoute(table=1000, dst=ipaddress.ip_network("fd00::5/128"), dev="eth0")], [
        ("host", 0, _route(nl.RTM_DELROUTE, REQ, "fd00::5/128", nl.RT_SCOPE_LINK, table=1000)),
    ]),
    ("access-link-create", "create", [ACCESS], [
        ("host", 0, _link(nl.RTM_NEWLINK, CREATE_EXCL, {
            "IFLA_IFNAME": ACCESS.name, "IFLA_LINK": 2,
            **_linkinfo("ipvlan", IFLA_IPVLAN_MODE=0, IFLA_IPVLAN_FLAGS=1)}, index=5, flags=1, change=1)),
        ("host", 1, _link(nl.RTM_NEWLINK, REQ, {"IFLA_IFALIAS": ACCESS.alias}, index=5)),
        ("host", 1, _addr(nl.RTM_NEWADDR, CREATE_EXCL, 5, "10.1.0.254/32")),
        ("host", 1, _addr(nl.RTM_NEWADDR, CREATE_EXCL, 5, "fd00::fe/128")),
    ]),
    ("access-link-update", "update", [ACCESS, AccessLink(**{**ACCESS.__dict__, "addresses": ("10.1.0.253/32",)})], [
        ("host", 0, _addr(nl.RTM_DELADDR, REQ, 4, "10.1.0.254/32")),
        ("host", 0, _addr(nl.RTM_DELADDR, REQ, 4, "fd00::fe/128")),
        ("host", 1, _addr(nl.RTM_NEWADDR, CREATE_REPLACE, 4, "10.1.0.253/32")),
    ]),
    ("access-link-delete", "delete", [ACCESS], [
        ("host", 0, _link(nl.RTM_DELLINK, REQ, {"IFLA_IFNAME": ACCESS.name})),
    ]),
    ("access-route-create", "create", [AccessRoute(dst=ipaddress.ip_network("10.1.0.5/32"), ifname=ACCESS.name)], [
        ("host", 0, _route(nl.RTM_NEWROUTE, CREATE_REPLACE, "10.1.0.5/32", nl.RT_SCOPE_LINK, RTA_OIF=4)),
    ]),
    ("access-route-delete-v6", "delete", [AccessRoute(dst=ipaddress.ip_network("fd00::5/128"), ifname=ACCESS.name)], [
        ("host", 0, _route(nl.RTM_DELROUTE, REQ, "fd00::5/128", nl.RT_SCOPE_UNIVERSE, RTA_OIF=4)),
    ]),
]


@pytest.mark.parametrize("op,objs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_request_kind_parses_back_in_pyroute2_as_the_object_says(op, objs, expected):
    got = [(sock, phase, pyroute2_reads(data)) for sock, phase, data in handler_requests(op, *objs)]
    assert got == expected


def test_the_cases_cover_every_request_kind_the_handlers_encode():
    kinds = set()
    for _id, op, objs, _exp in CASES:
        for _s, _p, data in handler_requests(op, *objs):
            r = pyroute2_reads(data)
            kinds.add((r["nltype"], r["nlflags"]))
    assert kinds == {
        (nl.RTM_NEWLINK, CREATE_EXCL), (nl.RTM_NEWLINK, REQ), (nl.RTM_DELLINK, REQ),
        (nl.RTM_NEWADDR, CREATE_EXCL), (nl.RTM_NEWADDR, CREATE_REPLACE), (nl.RTM_DELADDR, REQ),
        (nl.RTM_NEWROUTE, CREATE_REPLACE), (nl.RTM_DELROUTE, REQ),
    }
    assert {HANDLERS[objs[-1].kind].kind for _i, _o, objs, _e in CASES} >= {
        k for k in HANDLERS if k not in (Kind.SYSCTL, Kind.HOSTS)  # /proc and /etc/netns files, not netlink
    }


@pytest.mark.parametrize("msg_type,kw,expected", [
    (nl.RTM_GETLINK, {}, {"family": 0, "index": 0, "flags": 0, "change": 0,
                          "attrs": {"IFLA_EXT_MASK": nl.RTEXT_FILTER_SKIP_STATS}}),
    (nl.RTM_GETADDR, {}, {"family": 0, "prefixlen": 0, "flags": 0, "scope": 0, "index": 0, "attrs": {}}),
    (nl.RTM_GETROUTE, {"table": nl.RT_TABLE_MAIN, "protocol": RTPROT},
     {"family": 0, "dst_len": 0, "src_len": 0, "tos": 0, "table": nl.RT_TABLE_MAIN, "proto": RTPROT, "scope": 0,
      "type": 0, "flags": 0, "attrs": {}}),
    (nl.RTM_GETROUTE, {"table": 1000}, {"family": 0, "dst_len": 0, "src_len": 0, "tos": 0, "table": 0, "proto": 0,
                                        "scope": 0, "type": 0, "flags": 0, "attrs": {}}),
])
def test_dump_requests_parse_back_in_pyroute2(msg_type, kw, expected):
    data = nl.dump_request(msg_type, 77, **kw)
    got = pyroute2_reads(data)
    assert got == {"nltype": msg_type, "nlflags": nl.NLM_F_REQUEST | nl.NLM_F_DUMP, **expected}
    assert int.from_bytes(data[8:12], "little") == 77


# ---- decoding: messages built by pyroute2 ---------------------------------------------------
def _decode(fn, data):
    return fn(data, 16, len(data))


@pytest.mark.parametrize("kind,data,want", [
    ("ipvlan", [("IFLA_IPVLAN_MODE", 2), ("IFLA_IPVLAN_FLAGS", 1)], {"ipvlan_mode": 2, "ipvlan_flags": 1}),
    ("ipvlan", [("IFLA_IPVLAN_MODE", 0)], {"ipvlan_mode": 0, "ipvlan_flags": 0}),
    ("macvlan", [("IFLA_MACVLAN_MODE", MacvlanMode.VEPA.kernel)], {"macvlan_mode": 2}),
    ("vlan", [("IFLA_VLAN_ID", 4094)], {"vid": 4094}),
    ("dummy", [], {}),
])
def test_decode_link_reads_what_pyroute2_encoded(kind, data, want):
    msg = pyroute2_link(nl.RTM_NEWLINK, 9, "eth9", flags=0x10003, alias=f"{MARKER} net=n1", link=2,
                        address="02:aa:bb:cc:dd:ee", kind=kind, data=data)
    rec = _decode(nl.decode_link, msg)
    base = {"index": 9, "name": "eth9", "flags": 0x10003, "kind": kind, "alias": f"{MARKER} net=n1", "link": 2,
            "link_netnsid": None, "vid": None, "ipvlan_mode": None, "ipvlan_flags": None, "disable_ipv6": None,
            "macvlan_mode": None, "mac": "02:aa:bb:cc:dd:ee"}
    assert rec.__dict__ == {**base, **want}
    assert rec.up


@pytest.mark.parametrize("cidr,scope,flags", [
    ("10.1.0.5/24", 0, nl.IFA_F_PERMANENT),
    ("169.254.7.7/16", nl.RT_SCOPE_LINK, 0),
    ("fd00::5/64", 0, nl.IFA_F_NODAD | nl.IFA_F_PERMANENT | 0x100),  # 0x100 only in IFA_FLAGS
    ("fe80::1/64", nl.RT_SCOPE_LINK, nl.IFA_F_PERMANENT),
])
def test_decode_addr_reads_what_pyroute2_encoded(cidr, scope, flags):
    iface = ipaddress.ip_interface(cidr)
    rec = _decode(nl.decode_addr, pyroute2_addr(nl.RTM_NEWADDR, 5, cidr, scope=scope, flags=flags))
    assert (rec.index, rec.family, rec.address, rec.prefixlen, rec.flags, rec.scope) == (
        5, socket.AF_INET6 if iface.version == 6 else socket.AF_INET, str(iface.ip), iface.network.prefixlen,
        flags, scope)
    assert nl.is_link_local(rec.family, rec.packed) == (iface.version == 6 and iface.ip.is_link_local)
    # observe's object, made from the bytes, is the one the text would have made
    assert (type(rec.interface), rec.interface, str(rec.interface)) == (type(iface), iface, cidr)


@pytest.mark.parametrize("dst,table,proto,scope,gateway,oif", [
    ("0.0.0.0/0", nl.RT_TABLE_MAIN, RTPROT, 0, "10.1.0.1", 7),
    ("10.2.0.0/16", nl.RT_TABLE_MAIN, 2, nl.RT_SCOPE_LINK, None, 7),
    ("10.1.0.5/32", 1000, RTPROT, nl.RT_SCOPE_LINK, None, 2),
    ("fd01::/64", 200, nl.RTPROT_BIRD, 0, "fd00::1", None),
])
def test_decode_route_reads_what_pyroute2_encoded(dst, table, proto, scope, gateway, oif):
    net = ipaddress.ip_network(dst)
    rec = _decode(nl.decode_route, pyroute2_route(nl.RTM_NEWROUTE, dst, table, proto, scope, gateway, oif))
    assert rec.__dict__ == {
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        "dst": str(net.network_address) if net.prefixlen else None, "dst_len": net.prefixlen,
        "gateway": gateway, "oif": oif, "table": table, "protocol": proto, "scope": scope, "type": nl.RTN_UNICAST,
    }


@pytest.mark.parametrize("address,want", [
    ("fe80::1", True), ("febf:ffff::1", True), ("fec0::1", False), ("fd00::1", False), ("::", False),
])
def test_is_link_local_is_fe80_slash_10(address, want):
    assert nl.is_link_local(socket.AF_INET6, address) is want
    assert nl.is_link_local(socket.AF_INET6, ipaddress.ip_address(address).packed) is want
    assert ipaddress.ip_address(address).is_link_local is want
    assert nl.is_link_local(socket.AF_INET, "169.254.1.1") is False
