"""handlers.observe keeps what it made of a namespace's dump with the dump (the daemon reuses
dumps): reused while the host's links are the same, made again when they change or when
intents are in play. Pure: snapshots are built from records, no kernel."""
from __future__ import annotations

import socket

from reconciler.kernel.handlers import observe
from reconciler.kernel.host import NsView, Snapshot
from reconciler.kernel.netlink import RT_TABLE_MAIN, AddrRec, LinkRec, RouteRec
from reconciler.objects import MARKER, RTPROT, Endpoint, Kind

IFF_UP = 1


def host_view(parent_name: str = "eth0") -> NsView:
    v = NsView("", full=True)
    v.links = [LinkRec(index=1, name="lo", flags=IFF_UP), LinkRec(index=2, name=parent_name, flags=IFF_UP, kind="dummy")]
    return v


def ns_view() -> NsView:
    v = NsView("c1", identity=(1, 2), taken=1.0, full=True)
    v.links = [
        LinkRec(index=1, name="lo", flags=IFF_UP, alias=MARKER),
        LinkRec(index=7, name="eth0", flags=IFF_UP, kind="ipvlan", alias=f"{MARKER} net=n1", link=2,
                ipvlan_mode=0, ipvlan_flags=0, disable_ipv6=1),
        LinkRec(index=8, name="extra0", flags=0, kind="dummy"),
    ]
    v.addrs = [AddrRec(index=7, family=socket.AF_INET, prefixlen=24, packed=socket.inet_aton("10.1.0.2"), flags=0, scope=0)]
    v.routes = [RouteRec(family=socket.AF_INET, dst=None, dst_len=0, gateway="10.1.0.1", oif=7,
                         table=RT_TABLE_MAIN, protocol=RTPROT, scope=0, type=1)]
    return v


def test_a_reused_dump_gives_the_same_objects_without_making_them_again():
    view = ns_view()
    first = observe(Snapshot(host=host_view(), namespaces={"c1": view}, hosts_files={}))
    assert view.memo is not None
    second = observe(Snapshot(host=host_view(), namespaces={"c1": view}, hosts_files={}))
    assert first.objects == second.objects
    kinds = sorted(k[0].label for k in second.objects if k[0] is not Kind.DUMMY)
    assert kinds == ["address", "endpoint", "netns", "route", "sysctl"]
    ep_first = first.get((Kind.ENDPOINT, "c1", "eth0"))
    assert second.get((Kind.ENDPOINT, "c1", "eth0")) is ep_first  # taken from the memo
    assert second.facts.foreign_links == {("c1", "extra0"): "dummy"}


def test_a_renamed_host_link_makes_the_objects_again():
    view = ns_view()
    observe(Snapshot(host=host_view("eth0"), namespaces={"c1": view}, hosts_files={}))
    again = observe(Snapshot(host=host_view("uplink0"), namespaces={"c1": view}, hosts_files={}))
    ep = again.get((Kind.ENDPOINT, "c1", "eth0"))
    assert isinstance(ep, Endpoint) and ep.parent == "uplink0"


def test_no_memo_while_intents_are_in_play():
    """Intents change what counts as ours; those runs never use nor leave a memo."""
    view = ns_view()
    observe(Snapshot(host=host_view(), namespaces={"c1": view}, hosts_files={}))
    intents = [(Kind.ENDPOINT, "c1", "extra0")]
    out = observe(Snapshot(host=host_view(), namespaces={"c1": view}, hosts_files={}), intents)
    assert view.memo is None
    assert out.facts.foreign_links == {("c1", "extra0"): "dummy"}  # not ipvlan: never ours
    assert out.get((Kind.ENDPOINT, "c1", "eth0")) is not None
