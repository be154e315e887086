"""IPAM: default pools, lowest free address, stability, release, ULA."""
import ipaddress as ia

import pytest

from reconciler import ipam
from reconciler.errors import ManifestError
from reconciler.model import Attachment, Container, DesiredState, Mode, Network, ParentKind, Subnet, dummy_parent_name

N = ia.ip_network
A = ia.ip_address


def net(name, subnets, **kw):
    return Network(name, parent=kw.pop("parent", dummy_parent_name(name)),
                   parent_kind=kw.pop("parent_kind", ParentKind.DUMMY), subnets=tuple(subnets), **kw)


def cont(name, network, **kw):
    return Container(name, (Attachment(network, "eth0", **kw),))


def resolve(nets, cs, facts=None, prev=None):
    d = DesiredState({n.name: n for n in nets}, {}, {c.name: c for c in cs})
    return ipam.resolve(d, facts or ipam.IpamFacts(machine_id="m"), prev or ipam.Allocations())


def addr(d, c, fam=4):
    a = d.containers[c].attachments[0]
    return a.ip if fam == 4 else a.ip6


def test_default_pools_are_dockers_and_skip_host_routes_and_other_networks():
    pools = list(ipam.default_v4_pools())
    assert pools[0] == N("172.17.0.0/16") and pools[14] == N("172.31.0.0/16")
    assert pools[15] == N("192.168.0.0/20") and len(pools) == 15 + 16
    d, alloc = resolve(
        [net("a", [Subnet(None, auto=True)]), net("b", [Subnet(N("172.18.5.0/24"))]), net("c", [Subnet(None, auto=True)])],
        [], facts=ipam.IpamFacts(host_routes=(N("172.17.0.0/16"),), machine_id="m"))
    assert d.networks["a"].subnets[0].cidr == N("172.19.0.0/16")  # 17: host route, 18: network b
    assert d.networks["c"].subnets[0].cidr == N("172.20.0.0/16")
    assert alloc.subnets == {"a": ("172.19.0.0/16",), "c": ("172.20.0.0/16",)}


def test_l2_gateway_defaults_to_first_usable_and_is_never_handed_out():
    d, _ = resolve([net("n", [Subnet(N("192.168.1.0/24"))])], [cont("x", "n"), cont("y", "n")])
    assert d.networks["n"].subnets[0].gateway == A("192.168.1.1")
    assert addr(d, "x") == A("192.168.1.2") and addr(d, "y") == A("192.168.1.3")


@pytest.mark.parametrize("mode", [Mode.L3, Mode.L3S])
def test_l3_gets_no_gateway_but_first_address_is_kept_free_like_docker(mode):
    # the seed's ipnet110: Docker's IPAM reserves the gateway in every mode (containers start at .2)
    nets = [net("n", [Subnet(N("192.168.110.0/24")), Subnet(N("2001:db8:abc6::/64"), family=6)],
                mode=mode, ipv6=True)]
    d, alloc = resolve(nets, [cont("x", "n"), cont("y", "n")])
    assert d.networks["n"].subnets[0].gateway is None  # still no gateway route in L3
    assert (addr(d, "x"), addr(d, "x", 6)) == (A("192.168.110.2"), A("2001:db8:abc6::2"))
    assert (addr(d, "y"), addr(d, "y", 6)) == (A("192.168.110.3"), A("2001:db8:abc6::3"))
    assert alloc.addresses["x"]["n"] == {"ip": "192.168.110.2", "ip6": "2001:db8:abc6::2"}


def test_l3_given_gateway_is_kept_free_instead_of_the_first_address():
    nets = [net("n", [Subnet(N("10.0.0.0/24"), gateway=A("10.0.0.2"))], mode=Mode.L3)]
    d, _ = resolve(nets, [cont("x", "n"), cont("y", "n")])
    assert (addr(d, "x"), addr(d, "y")) == (A("10.0.0.1"), A("10.0.0.3"))


def test_l3_first_address_recorded_before_stays_with_its_container():
    """Hosts applied before the reservation keep their addresses: from the state directory,
    and, when it was lost, from what the endpoint shows."""
    nets = [net("n", [Subnet(N("10.0.0.0/24"))], mode=Mode.L3)]
    prev = ipam.Allocations(addresses={"x": {"n": {"ip": "10.0.0.1"}}})
    d, alloc = resolve(nets, [cont("y", "n"), cont("x", "n")], prev=prev)
    assert (addr(d, "x"), addr(d, "y")) == (A("10.0.0.1"), A("10.0.0.2"))
    assert alloc.addresses["x"]["n"] == {"ip": "10.0.0.1"}  # recorded again: kept on every re-apply
    d2, _ = resolve(nets, [cont("y", "n"), cont("x", "n")], prev=alloc)
    assert (addr(d2, "x"), addr(d2, "y")) == (A("10.0.0.1"), A("10.0.0.2"))
    facts = ipam.IpamFacts(live_addresses={("x", "n"): (ia.ip_interface("10.0.0.1/24"),)}, machine_id="m")
    d3, _ = resolve(nets, [cont("y", "n"), cont("x", "n")], facts=facts)
    assert (addr(d3, "x"), addr(d3, "y")) == (A("10.0.0.1"), A("10.0.0.2"))
    # once x is gone, the address is not handed out again
    d4, _ = resolve(nets, [cont("y", "n"), cont("z", "n")], prev=alloc)
    assert (addr(d4, "y"), addr(d4, "z")) == (A("10.0.0.2"), A("10.0.0.3"))


def test_l3_explicit_first_address_is_the_users_call():
    nets = [net("n", [Subnet(N("10.0.0.0/24"))], mode=Mode.L3)]
    d, _ = resolve(nets, [cont("x", "n"), cont("e", "n", ip=A("10.0.0.1"))])
    assert (addr(d, "e"), addr(d, "x")) == (A("10.0.0.1"), A("10.0.0.2"))


def test_l3_point_to_point_subnets_have_no_address_to_spare():
    nets = [net("n", [Subnet(N("10.0.0.7/32"))], mode=Mode.L3), net("m", [Subnet(N("10.0.1.0/31"))], mode=Mode.L3)]
    d, _ = resolve(nets, [cont("x", "n"), Container("y", (Attachment("m", "eth0"),))])
    assert addr(d, "x") == A("10.0.0.7") and addr(d, "y") == A("10.0.1.0")


def test_reserved_addresses_ip_range_and_parent_addresses():
    s = Subnet(N("10.0.0.0/24"), gateway=A("10.0.0.1"), ip_range=N("10.0.0.0/29"),
               aux_addresses=(("printer", A("10.0.0.2")),))
    nets = [net("n", [s], parent="eth0", parent_kind=ParentKind.EXISTING)]
    facts = ipam.IpamFacts(parent_addresses={"eth0": (A("10.0.0.3"),)}, machine_id="m")
    # usable in the /29: .1-.6; .1 gateway, .2 aux, .3 on the parent
    d, _ = resolve(nets, [cont("x", "n"), cont("y", "n"), cont("z", "n")], facts=facts)
    assert [addr(d, c) for c in "xyz"] == [A("10.0.0.4"), A("10.0.0.5"), A("10.0.0.6")]
    with pytest.raises(ManifestError, match="container w: no free IPv4 address left on network n"):
        resolve(nets, [cont(c, "n") for c in "xyzw"], facts=facts)


def test_ip_range_allocation():
    s = Subnet(N("10.0.0.0/24"), gateway=A("10.0.0.1"), ip_range=N("10.0.0.128/25"))
    d, _ = resolve([net("n", [s])], [cont("x", "n"), cont("y", "n")])
    assert addr(d, "x") == A("10.0.0.129") and addr(d, "y") == A("10.0.0.130")


def test_explicit_addresses_are_skipped_and_previous_ones_kept():
    nets = [net("n", [Subnet(N("10.0.0.0/24"))])]
    d, alloc = resolve(nets, [cont("a", "n"), cont("b", "n", ip=A("10.0.0.3")), cont("c", "n")])
    assert (addr(d, "a"), addr(d, "c")) == (A("10.0.0.2"), A("10.0.0.4"))
    # a disappears: c keeps .4, a newcomer gets the released .2 at once
    d2, _ = resolve(nets, [cont("b", "n", ip=A("10.0.0.3")), cont("c", "n"), cont("z", "n")], prev=alloc)
    assert addr(d2, "c") == A("10.0.0.4") and addr(d2, "z") == A("10.0.0.2")


def test_lost_state_is_rebuilt_from_live_addresses():
    nets = [net("n", [Subnet(None, auto=True)])]
    facts = ipam.IpamFacts(
        live_addresses={("a", "n"): (ia.ip_interface("172.25.0.9/16"),)}, machine_id="m")
    d, alloc = resolve(nets, [cont("b", "n"), cont("a", "n")], facts=facts)
    assert d.networks["n"].subnets[0].cidr == N("172.25.0.0/16")
    assert addr(d, "a") == A("172.25.0.9")
    assert addr(d, "b") == A("172.25.0.2")


def test_ula_is_stable_per_host_and_v6_auto_subnet_is_a_64():
    u1, u2 = ipam.ula48_for("host-a"), ipam.ula48_for("host-a")
    assert u1 == u2 and u1.prefixlen == 48 and str(u1).startswith("fd")
    assert ipam.ula48_for("host-b") != u1
    d, alloc = resolve([net("n", [Subnet(None, auto=True)], ipv6=True)], [])
    assert alloc.ula48 == str(ipam.ula48_for("m"))


def test_large_subnet_allocation_is_linear():
    nets = [net("n", [Subnet(N("10.0.0.0/16"))])]
    d, _ = resolve(nets, [cont(f"c{i}", "n") for i in range(3000)])
    got = [addr(d, f"c{i}") for i in range(3000)]
    assert len(set(got)) == 3000 and got[0] == A("10.0.0.2") and got[-1] == A("10.0.11.185")


def test_allocations_round_trip_json():
    _, alloc = resolve([net("n", [Subnet(None, auto=True)])], [cont("a", "n")])
    assert ipam.Allocations.from_json(alloc.to_json()) == alloc
