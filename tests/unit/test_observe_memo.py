"""kernel.observe.translate returns what it made of each namespace's dump (the daemon reuses
dumps, and passes it back): reused while it is the same dump and the host's links are the
same, made again when they change or when intents are in play; its input is never written
to. Pure: snapshots are built from records, no kernel."""
from __future__ import annotations

import socket

from reconciler.kernel.observe import translate
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


def snap(host: NsView, view: NsView) -> Snapshot:
    return Snapshot(host=host, namespaces={"c1": view}, hosts_files={})


def test_a_reused_dump_gives_the_same_objects_without_making_them_again():
    view = ns_view()
    first, made = translate(snap(host_view(), view))
    assert made["c1"].view is view and made["c1"].owned
    second, made2 = translate(snap(host_view(), view), previous=made)
    assert first.objects == second.objects
    kinds = sorted(k[0].label for k in second.objects if k[0] is not Kind.DUMMY)
    assert kinds == ["address", "endpoint", "netns", "route", "sysctl"]
    ep_first = first.get((Kind.ENDPOINT, "c1", "eth0"))
    assert second.get((Kind.ENDPOINT, "c1", "eth0")) is ep_first  # taken from what was made
    assert made2["c1"] is made["c1"]
    assert second.facts.foreign_links == {("c1", "extra0"): "dummy"}


def test_another_dump_of_the_namespace_is_translated_again():
    first, made = translate(snap(host_view(), ns_view()))
    again, _ = translate(snap(host_view(), ns_view()), previous=made)  # equal, but not the same dump
    assert again.objects == first.objects
    assert again.get((Kind.ENDPOINT, "c1", "eth0")) is not first.get((Kind.ENDPOINT, "c1", "eth0"))


def test_a_renamed_host_link_makes_the_objects_again():
    view = ns_view()
    _, made = translate(snap(host_view("eth0"), view))
    again, _ = translate(snap(host_view("uplink0"), view), previous=made)
    ep = again.get((Kind.ENDPOINT, "c1", "eth0"))
    assert isinstance(ep, Endpoint) and ep.parent == "uplink0"


def test_nothing_reused_nor_returned_while_intents_are_in_play():
    """Intents change what counts as ours; those runs never use nor return what was made."""
    view = ns_view()
    first, made = translate(snap(host_view(), view))
    intents = [(Kind.ENDPOINT, "c1", "extra0")]
    out, made2 = translate(snap(host_view(), view), intents, previous=made)
    assert made2 == {}
    assert out.facts.foreign_links == {("c1", "extra0"): "dummy"}  # not ipvlan: never ours
    assert out.get((Kind.ENDPOINT, "c1", "eth0")) is not None
    assert out.get((Kind.ENDPOINT, "c1", "eth0")) is not first.get((Kind.ENDPOINT, "c1", "eth0"))
