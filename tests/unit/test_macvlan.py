"""SPEC 2.3, the pure side: macvlan networks (model, netlink encoding checked by pyroute2,
observe, compile, plan) and host access (validation, IPAM reservation, compile, plan, the
fleet form, live-state round trip)."""
import ipaddress as ia
import json

import pytest

from reconciler import fleet, ipam
from reconciler.compile import compile_state
from reconciler.kernel import netlink as nl
from reconciler.kernel.handlers import endpoint_request_body
from reconciler.kernel.observe import translate
from reconciler.kernel.host import NsView, Snapshot
from reconciler.livestate import load_state_json, state_json
from reconciler.manifest import parse_text
from reconciler.model import Flag, MacvlanMode, Mode, access_link_name, endpoint_mac
from reconciler.objects import AccessLink, AccessRoute, Endpoint, HostFacts, HostLink, HostState, Kind
from reconciler.plan import Op, make_plan
from reconciler.render import render_text

MV = """\
version: 1
networks:
  mv:
    parent: eth0
    driver: macvlan
    subnets: [{subnet: 172.16.86.0/24, gateway: 172.16.86.1}]
    host_access: {ip: 172.16.86.250}
  pt: {parent: eth1, driver: macvlan, macvlan_mode: passthru, subnets: [{subnet: 10.9.0.0/24}]}
containers:
  a: {networks: {mv: {}, pt: {}}}
  b: {networks: {mv: {ip: 172.16.86.2}}}
"""

FACTS = HostFacts(links={n: HostLink(n, i, "", True, False) for i, n in ((2, "eth0"), (3, "eth1"))})


def desired(text=MV, facts=FACTS):
    state, _ = ipam.resolve(parse_text(text), ipam.IpamFacts(), ipam.Allocations())
    return state, compile_state(state, facts)


# ---- model ---------------------------------------------------------------------------------


def test_endpoint_mac_is_stable_locally_administered_unicast_and_distinct():
    mac = endpoint_mac("web1", "lan")
    assert mac == endpoint_mac("web1", "lan")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert len({endpoint_mac(c, n) for c in ("a", "b", "web1") for n in ("lan", "lan2")}) == 6
    assert endpoint_mac("a", "bc") != endpoint_mac("ab", "c")  # the separator matters


def test_macvlan_mode_kernel_values_are_the_uapi_ones():
    assert {m.value: m.kernel for m in MacvlanMode} == {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
    assert all(MacvlanMode.from_kernel(m.kernel) is m for m in MacvlanMode)


# ---- netlink encoding, parsed back by pyroute2 -----------------------------------------------


def _parse(body: bytes):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data = nl.request(nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body)
    msg = ifinfmsg(bytes(data))
    msg.decode()
    return msg


@pytest.mark.parametrize("mode", list(MacvlanMode))
def test_macvlan_request_parses_back_in_pyroute2(mode):
    mac = "" if mode is MacvlanMode.PASSTHRU else endpoint_mac("c1", "n1")
    ep = Endpoint(ns="c1", ifname="eth0", parent="eth0", mode=Mode.L2, flag=Flag.BRIDGE,
                  network="n1", driver="macvlan", macvlan_mode=mode.value, mac=mac)
    msg = _parse(endpoint_request_body(ep, 42, 7, 99))
    assert msg["index"] == 42
    assert msg.get_attr("IFLA_IFNAME") == "eth0"
    assert msg.get_attr("IFLA_LINK") == 7
    assert msg.get_attr("IFLA_NET_NS_FD") == 99
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "macvlan"
    assert info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_MACVLAN_MODE") == mode.value  # pyroute2 names the uapi value
    assert msg.get_attr("IFLA_ADDRESS") == (mac or None)


def test_decode_link_reads_macvlan_mode_and_mac_back():
    ep = Endpoint(ns="c1", ifname="eth0", parent="eth0", mode=Mode.L2, flag=Flag.BRIDGE,
                  network="n1", driver="macvlan", macvlan_mode="vepa", mac="02:11:22:33:44:55")
    body = bytes(endpoint_request_body(ep, 5, 2, None))
    rec = nl.decode_link(body, 0, len(body))
    assert (rec.kind, rec.macvlan_mode, rec.mac, rec.link) == ("macvlan", 2, "02:11:22:33:44:55", 2)


def _link(index, name, kind="", link=0, alias="", macvlan_mode=None, mac="", ipvlan_mode=None):
    return nl.LinkRec(index=index, name=name, flags=1, kind=kind, alias=alias, link=link,
                      macvlan_mode=macvlan_mode, mac=mac, ipvlan_mode=ipvlan_mode,
                      ipvlan_flags=0 if kind == "ipvlan" else None)


def _route(dst, oif):
    return nl.RouteRec(family=2, dst=dst, dst_len=32, gateway=None, oif=oif, table=254, protocol=149, scope=253, type=1)


def test_observe_then_plan_of_a_converged_host_is_empty():
    """What compile wants, observe reads back: driver, mode, MAC, the access link and routes."""
    state, comp = desired()
    want = comp.desired
    leg = next(o for o in want if isinstance(o, AccessLink))
    host = NsView("")
    host.links = [_link(1, "lo"), _link(2, "eth0"), _link(3, "eth1"),
                  _link(9, leg.name, "macvlan", 2, leg.alias, 4, leg.mac)]
    host.addrs = [nl.AddrRec(9, 2, 32, ia.ip_address("172.16.86.250").packed, 0x80, 0)]
    host.routes = [_route(str(r.dst.network_address), 9) for r in want if isinstance(r, AccessRoute)]
    namespaces = {}
    for ns in ("a", "b"):
        view = NsView(ns)
        view.links = [_link(1, "lo", alias="ipvlan-reconciler")]
        for ep in (o for o in want if isinstance(o, Endpoint) and o.ns == ns):
            parent = 2 if ep.parent == "eth0" else 3
            view.links.append(_link(10 + len(view.links), ep.ifname, "macvlan", parent, ep.alias,
                                    MacvlanMode(ep.macvlan_mode).kernel, ep.mac or "aa:bb:cc:dd:ee:ff"))
            view.links[-1].disable_ipv6 = 1
        namespaces[ns] = view
    live, _ = translate(Snapshot(host=host, namespaces=namespaces, hosts_files={}))
    for ep in (o for o in want if isinstance(o, Endpoint)):
        assert live.get(ep.key) == ep
    assert live.get(leg.key) == leg
    assert {o.key for o in live.of_kind(Kind.ACCESS_ROUTE)} == {o.key for o in want.of_kind(Kind.ACCESS_ROUTE)}
    assert live.facts.links[leg.name].owned


# ---- compile and plan -----------------------------------------------------------------------


def test_compile_macvlan_endpoints_and_host_access():
    state, comp = desired()
    a0 = comp.desired.get((Kind.ENDPOINT, "a", "eth0"))
    assert (a0.driver, a0.macvlan_mode, a0.mac) == ("macvlan", "bridge", endpoint_mac("a", "mv"))
    a1 = comp.desired.get((Kind.ENDPOINT, "a", "eth1"))
    assert (a1.macvlan_mode, a1.mac) == ("passthru", "")  # keeps the parent's MAC
    leg = comp.desired.get((Kind.ACCESS_LINK, access_link_name("mv")))
    assert (leg.parent, leg.driver, leg.macvlan_mode, leg.addresses) == ("eth0", "macvlan", "bridge", ("172.16.86.250/32",))
    assert leg.name.startswith("ih-") and len(leg.name) == 15
    routes = sorted(str(o.dst) for o in comp.desired.of_kind(Kind.ACCESS_ROUTE))
    # a got the first free address (.1 gateway, .2 b's explicit one); the host's .250 never handed out
    assert routes == ["172.16.86.2/32", "172.16.86.3/32"]
    assert not any(o.kind is Kind.ACCESS_ROUTE and o.dst.network_address == ia.ip_address("10.9.0.2") for o in comp.desired)


def test_host_access_address_is_never_handed_out():
    text = """\
version: 1
networks:
  n: {parent: eth0, subnets: [{subnet: 10.1.0.0/29}], host_access: {ip: 10.1.0.2}}
containers:
  a: {networks: {n: {}}}
  b: {networks: {n: {}}}
"""
    state, _ = desired(text)
    assert sorted(str(c.attachments[0].ip) for c in state.containers.values()) == ["10.1.0.3", "10.1.0.4"]


def test_host_access_address_on_the_parent_is_a_plan_problem():
    facts = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False, addresses=(ia.ip_interface("172.16.86.250/24"),)),
                             "eth1": HostLink("eth1", 3, "", True, False)})
    _, comp = desired(facts=facts)
    assert any("host_access address 172.16.86.250 is already present on the parent eth0" in p for p in comp.problems)


def test_driver_switch_is_a_replace_and_removing_host_access_deletes_leg_and_routes():
    _, old = desired()
    _, new = desired(MV.replace("driver: macvlan\n    subnets", "subnets").replace("    host_access: {ip: 172.16.86.250}\n", ""))
    plan = make_plan(new.desired, HostState(old.desired, FACTS))
    ops = {(a.op, a.key) for a in plan.actions}
    assert (Op.REPLACE, (Kind.ENDPOINT, "a", "eth0")) in ops
    replace = next(a for a in plan.actions if a.key == (Kind.ENDPOINT, "a", "eth0"))
    assert {c.field for c in replace.changes if c.forces_replace} >= {"driver", "macvlan_mode", "mac"}
    assert (Op.DELETE, (Kind.ACCESS_LINK, access_link_name("mv"))) in ops
    # the routes go with the link: never deleted one by one after it
    kinds = [a.kind for a in plan.actions if a.op is Op.DELETE]
    assert Kind.ACCESS_LINK in kinds
    assert "-/+ endpoint a/eth0" in render_text(plan)


def test_access_link_replaced_with_its_parent_vlan_and_unowned_name_clash():
    _, comp = desired()
    leg = comp.desired.get((Kind.ACCESS_LINK, access_link_name("mv")))
    facts = HostFacts(links={**FACTS.links, leg.name: HostLink(leg.name, 9, "macvlan", True, False)})
    from reconciler.errors import PlanError

    with pytest.raises(PlanError, match=f"macvlan link {leg.name} exists and is not managed"):
        make_plan(comp.desired, HostState((), facts))


def test_same_state_plans_nothing():
    _, comp = desired()
    assert make_plan(comp.desired, HostState(comp.desired, FACTS)).empty


def test_live_state_json_round_trips_access_objects():
    _, comp = desired()
    doc = json.dumps(state_json(HostState(comp.desired, FACTS)))
    back = load_state_json(doc)
    assert back.objects == comp.desired.objects


# ---- fleet ----------------------------------------------------------------------------------

FLEET = """\
version: 1
hosts:
  h1: {id: 1}
  h2: {id: 2}
networks:
  lan: {parent: eth0, driver: macvlan, subnets: [{subnet: 10.20.0.0/24}], block_size: 28,
        host_access: {h1: 10.20.0.201, h2: 10.20.0.202}}
containers:
  c1: {host: h1, networks: {lan: {}}}
  c2: {host: h2, networks: {lan: {}}}
"""


def test_fleet_host_access_uses_only_the_local_hosts_address():
    state = parse_text(FLEET)
    for host, addr in (("h1", "10.20.0.201"), ("h2", "10.20.0.202")):
        mine = fleet.select(state, host)
        assert mine.networks["lan"].host_access == (ia.ip_address(addr),)
        resolved, _ = ipam.resolve(mine, ipam.IpamFacts(), ipam.Allocations())
        comp = compile_state(resolved, FACTS)
        leg = comp.desired.get((Kind.ACCESS_LINK, access_link_name("lan")))
        assert leg.addresses == (f"{addr}/32",)


def test_access_link_driver_change_deletes_the_old_leg_before_endpoints_are_created():
    """Regression (VM): a new macvlan endpoint next to the old ipvlan leg is EBUSY."""
    _, old = desired()
    _, new = desired(MV.replace("driver: macvlan\n    subnets", "subnets"))
    plan = make_plan(new.desired, HostState(old.desired, FACTS))
    seq = [(a.op, a.key[0]) for a in plan.actions]
    leg_delete = seq.index((Op.DELETE, Kind.ACCESS_LINK))
    first_endpoint = min(i for i, (op, k) in enumerate(seq) if k is Kind.ENDPOINT and op is not Op.DELETE)
    assert leg_delete < first_endpoint
    assert (Op.CREATE, Kind.ACCESS_LINK) in seq
    assert all(k is not Kind.ACCESS_ROUTE or op is Op.CREATE for op, k in seq)  # they went with the link


def test_dual_stack_host_access_holds_a_slash_128_and_routes_both_families():
    text = """\
version: 1
networks:
  n:
    parent: eth0
    ipv6: true
    subnets: [{subnet: 10.1.0.0/24}, {subnet: "2001:db8:1::/64"}]
    host_access: {ip: 10.1.0.250, ip6: "2001:db8:1::250"}
containers:
  a: {networks: {n: {ip: 10.1.0.10, ip6: "2001:db8:1::10"}}}
"""
    _, comp = desired(text)
    leg = comp.desired.get((Kind.ACCESS_LINK, access_link_name("n")))
    assert leg.driver == "ipvlan" and leg.addresses == ("10.1.0.250/32", "2001:db8:1::250/128")
    assert sorted(str(o.dst) for o in comp.desired.of_kind(Kind.ACCESS_ROUTE)) == ["10.1.0.10/32", "2001:db8:1::10/128"]


def test_host_access_ip_key_takes_ipv4_only():
    from reconciler.errors import ManifestError

    with pytest.raises(ManifestError, match="host_access ip: 2001:db8:1::250 is IPv6; use ip6"):
        parse_text("""\
version: 1
networks:
  n: {parent: eth0, ipv6: true, subnets: [{subnet: "2001:db8:1::/64"}], host_access: {ip: "2001:db8:1::250"}}
""")


def test_passthru_allows_one_container_per_host_not_per_fleet():
    from reconciler.errors import ManifestError

    def fleet_text(second_host):
        return (
            "version: 1\nhosts:\n  h1: {id: 1, address: 192.168.1.11}\n  h2: {id: 2, address: 192.168.1.12}\n"
            "networks:\n  pt: {parent: eth1, driver: macvlan, macvlan_mode: passthru, block_size: 28,"
            " subnets: [{subnet: 10.9.0.0/24}]}\ncontainers:\n"
            "  a: {host: h1, networks: {pt: {}}}\n"
            f"  b: {{host: {second_host}, networks: {{pt: {{}}}}}}\n"
        )

    state = parse_text(fleet_text("h2"))  # each host's parent is its own: one container each
    assert {c.host for c in state.containers.values()} == {"h1", "h2"}
    with pytest.raises(ManifestError) as ei:
        parse_text(fleet_text("h1"))
    assert "at most one container on host h1" in str(ei.value)
