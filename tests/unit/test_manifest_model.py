"""The desired-state model the manifest layer builds: defaults and parent resolution."""
from __future__ import annotations

import ipaddress

import pytest

from reconciler.manifest import load_texts, parse_text
from reconciler.model import Flag, Location, Mode, ParentKind, Subnet, Vlan, dummy_parent_name


def net(text: str, name: str = "n"):
    return parse_text("version: 1\nnetworks:\n" + text, "m.yaml").networks[name]


def test_defaults_mode_flag_and_isolation():
    n = net("  n:\n")
    assert n.mode is Mode.L2 and n.flag is Flag.BRIDGE
    assert n.parent == dummy_parent_name("n") and n.parent.startswith("di-") and len(n.parent) == 15
    assert n.parent_kind is ParentKind.DUMMY and n.internal is True
    assert n.ipv6 is False
    assert n.loc == Location("m.yaml", 3, 3)


def test_explicit_mode_and_flag():
    n = net("  n: {parent: eth1, ipvlan_mode: l3s, ipvlan_flag: vepa}\n")
    assert n.mode is Mode.L3S and n.flag is Flag.VEPA and n.l3


def test_internal_true_is_a_dummy_parent():
    n = net("  n: {internal: true, subnets: [{subnet: 10.0.0.0/24}]}\n")
    assert n.internal and n.parent_kind is ParentKind.DUMMY and n.parent == dummy_parent_name("n")


def test_no_subnet_gets_one_ipv4_placeholder():
    (s,) = net("  n:\n").subnets
    assert s.cidr is None and s.auto and s.family == 4 and s.version == 4


def test_ipv6_only_subnets_also_get_an_ipv4_placeholder():
    # the seed's v6ipvlan139: an IPv6 subnet, and IPv4 from the default pools
    n = net("  n:\n    ipv6: true\n    subnets: [{subnet: \"2001:db8:abc2::/64\", gateway: \"2001:db8:abc2::22\"}]\n")
    v6, v4 = n.subnets
    assert v6.cidr == ipaddress.ip_network("2001:db8:abc2::/64") and not v6.auto and v6.family == 6
    assert v6.gateway == ipaddress.ip_address("2001:db8:abc2::22")
    assert v4.cidr is None and v4.auto and v4.family == 4


def test_ipv6_without_ipv6_subnet_gets_an_ipv6_placeholder():
    n = net("  n:\n    ipv6: true\n    subnets: [{subnet: 10.0.0.0/24}]\n")
    v4, v6 = n.subnets
    assert v4.cidr == ipaddress.ip_network("10.0.0.0/24")
    assert v6.cidr is None and v6.auto and v6.family == 6 and v6.version == 6
    n = net("  n: {ipv6: true}\n")
    assert [(s.cidr, s.family) for s in n.subnets] == [(None, 4), (None, 6)]


def test_l2_gateway_defaults_to_first_usable_address():
    n = net("  n:\n    subnets:\n      - subnet: 192.168.1.0/24\n      - subnet: 2001:db8::/64\n    ipv6: true\n")
    assert [str(s.gateway) for s in n.subnets] == ["192.168.1.1", "2001:db8::1"]


def test_l2_explicit_gateway_kept():
    n = net("  n:\n    subnets: [{subnet: 192.168.114.0/24, gateway: 192.168.114.254}]\n")
    assert str(n.subnets[0].gateway) == "192.168.114.254"


@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_l3_gateway_is_not_routed_only_reserved_with_a_warning(mode):
    state = parse_text(
        f"version: 1\nnetworks:\n  n:\n    ipvlan_mode: {mode}\n"
        "    subnets: [{subnet: 10.1.214.0/24, gateway: 10.1.214.1}]\n",
        "m.yaml",
    )
    # kept so IPAM never hands it out; compile gives L3 'default dev' routes regardless
    assert str(state.networks["n"].subnets[0].gateway) == "10.1.214.1"
    (w,) = state.warnings
    assert w.loc == Location("m.yaml", 5, 48)
    assert "gateway 10.1.214.1 is ignored" in w.message
    assert str(w).startswith("m.yaml:5:48: warning: ")


def test_l3_without_gateway_has_none_and_no_warning():
    state = parse_text("version: 1\nnetworks:\n  n: {ipvlan_mode: l3, subnets: [{subnet: 10.0.0.0/24}]}\n")
    assert state.networks["n"].subnets[0].gateway is None and state.warnings == ()


def test_l3_explicit_ip_may_take_the_first_address_when_no_gateway_is_written():
    state = parse_text(
        "version: 1\nnetworks:\n  n: {ipvlan_mode: l3, subnets: [{subnet: 10.0.0.0/24}]}\n"
        "containers:\n  c: {networks: {n: {ip: 10.0.0.1}}}\n"
    )
    assert str(state.containers["c"].attachments[0].ip) == "10.0.0.1"


def test_subnet_fields():
    (s,) = net(
        "  n:\n    subnets:\n      - subnet: 192.168.20.0/24\n        ip_range: 192.168.20.128/25\n"
        "        aux_addresses: {printer: 192.168.20.5, router: 192.168.20.6}\n"
    ).subnets
    assert s.ip_range == ipaddress.ip_network("192.168.20.128/25")
    assert s.aux_addresses == (
        ("printer", ipaddress.ip_address("192.168.20.5")),
        ("router", ipaddress.ip_address("192.168.20.6")),
    )
    assert not s.auto and s.loc == Location("m.yaml", 5, 9)


def test_parent_existing():
    n = net("  n: {parent: bond0}\n")
    assert n.parent == "bond0" and n.parent_kind is ParentKind.EXISTING and not n.internal


def test_parent_link_vid_implies_a_vlan():
    state = parse_text("version: 1\nnetworks:\n  n:\n    parent: eth0.20\n", "m.yaml")
    n = state.networks["n"]
    assert n.parent == "eth0.20" and n.parent_kind is ParentKind.VLAN and not n.internal
    v = state.vlans["eth0.20"]
    assert (v.name, v.link, v.vid, v.declared) == ("eth0.20", "eth0", 20, False)
    assert v.loc == Location("m.yaml", 4, 13)


def test_parent_declared_vlan():
    state = parse_text("version: 1\nvlans:\n  foo: {link: eth0, id: 40}\nnetworks:\n  n: {parent: foo}\n")
    assert state.networks["n"].parent_kind is ParentKind.DECLARED_VLAN
    assert state.vlans == {"foo": Vlan("foo", "eth0", 40, declared=True)}


def test_declared_vlan_named_like_link_vid_is_declared():
    state = parse_text("version: 1\nvlans:\n  eth0.40: {link: eth0, id: 40}\nnetworks:\n  n: {parent: eth0.40}\n")
    assert state.networks["n"].parent_kind is ParentKind.DECLARED_VLAN
    assert list(state.vlans.values()) == [Vlan("eth0.40", "eth0", 40, declared=True)]


def test_unused_declared_vlan_is_still_desired():
    state = parse_text("version: 1\nvlans:\n  foo: {link: eth0, id: 40}\n")
    assert list(state.vlans) == ["foo"] and state.networks == {}


def test_attachments_in_manifest_order_with_ifnames():
    state = parse_text(
        "version: 1\nnetworks:\n  a:\n  b:\n  c:\ncontainers:\n  x:\n    networks:\n"
        "      c: {aliases: [web, www.example.internal]}\n      a:\n      b: {}\n",
        "m.yaml",
    )
    atts = state.containers["x"].attachments
    assert [(a.network, a.ifname) for a in atts] == [("c", "eth0"), ("a", "eth1"), ("b", "eth2")]
    assert atts[0].aliases == ("web", "www.example.internal")
    assert atts[0].ip is None and atts[0].ip6 is None
    assert atts[1].loc == Location("m.yaml", 10, 7)


def test_explicit_addresses():
    state = parse_text(
        "version: 1\nnetworks:\n  n:\n    ipv6: true\n    subnets:\n      - subnet: 192.168.112.0/24\n"
        "      - subnet: 2001:db8:abc6::/64\ncontainers:\n  x:\n    networks:\n      n:\n"
        "        ip: 192.168.112.50\n        ip6: 2001:db8:abc6::50\n"
    )
    (a,) = state.containers["x"].attachments
    assert a.ip == ipaddress.ip_address("192.168.112.50")
    assert a.ip6 == ipaddress.ip_address("2001:db8:abc6::50")


def test_container_without_networks_is_just_a_namespace():
    state = parse_text("version: 1\ncontainers:\n  x:\n  y: {}\n  z: {networks: {}}\n")
    assert [c.attachments for c in state.containers.values()] == [(), (), ()]


def test_order_of_networks_and_containers_is_the_users():
    state = parse_text("version: 1\nnetworks:\n  z:\n  a:\n  m:\ncontainers:\n  q:\n  b:\n")
    assert list(state.networks) == ["z", "a", "m"] and list(state.containers) == ["q", "b"]


def test_files_merge_in_the_given_order():
    state = load_texts(
        [
            ("a.yaml", "version: 1\nnetworks:\n  n1:\n"),
            ("b.yaml", "version: 1\nnetworks:\n  n2:\ncontainers:\n  c: {networks: {n1: }}\n"),
        ]
    )
    assert list(state.networks) == ["n1", "n2"] and list(state.containers) == ["c"]
    assert state.containers["c"].loc.file == "b.yaml"


def test_networks_on_different_parents_may_share_a_subnet():
    state = parse_text(
        "version: 1\nnetworks:\n  a: {parent: eth0.10, subnets: [{subnet: 10.0.0.0/24}]}\n"
        "  b: {parent: eth0.20, subnets: [{subnet: 10.0.0.0/24}]}\n"
    )
    assert len(state.networks) == 2


def test_same_ip_on_different_networks_is_fine():
    state = parse_text(
        "version: 1\nnetworks:\n  a: {parent: eth0.10, subnets: [{subnet: 10.0.0.0/24}]}\n"
        "  b: {parent: eth0.20, subnets: [{subnet: 10.0.0.0/24}]}\n"
        "containers:\n  x: {networks: {a: {ip: 10.0.0.5}}}\n  y: {networks: {b: {ip: 10.0.0.5}}}\n"
    )
    assert len(state.containers) == 2


def test_merge_keys_share_settings():
    state = parse_text(
        "version: 1\nnetworks:\n  a: &base {parent: eth0.10, ipvlan_mode: l3}\n"
        "  b:\n    <<: *base\n    parent: eth0.20\n"
    )
    b = state.networks["b"]
    assert b.mode is Mode.L3 and b.parent == "eth0.20"


def test_subnet_family_field_is_additive():
    # model change: Subnet.family records the family of an automatic subnet (cidr None)
    assert Subnet(cidr=None, auto=True).version == 4
    assert Subnet(cidr=None, auto=True, family=6).version == 6
    assert Subnet(cidr=ipaddress.ip_network("2001:db8::/64")).version == 6


def test_empty_directory_is_an_error_a_manifest_declaring_nothing_is_an_empty_state(tmp_path):
    from reconciler.errors import ManifestError
    from reconciler.manifest import load

    # SPEC 3: a directory that yields no manifest could destroy every container: an error
    with pytest.raises(ManifestError) as ei:
        load([str(tmp_path)])
    assert [str(d.loc) for d in ei.value.diagnostics] == [str(tmp_path)]
    assert "no manifest file" in ei.value.diagnostics[0].message
    (tmp_path / "empty.yaml").write_text("version: 1\n")
    state = load([str(tmp_path)])
    assert state.networks == {} and state.vlans == {} and state.containers == {}


def test_directory_loading_rules(tmp_path):
    from reconciler.manifest import load, manifest_files

    (tmp_path / "b.yml").write_text("version: 1\nnetworks:\n  b:\n")
    (tmp_path / "a.yaml").write_text("version: 1\nnetworks:\n  a:\n")
    (tmp_path / ".#a.yaml").write_text("garbage: [")  # an editor's lock/temp file
    (tmp_path / "notes.txt").write_text("not a manifest")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.yaml").write_text("version: 1\nnetworks:\n  c:\n")  # not recursive
    files, problems = manifest_files([str(tmp_path), str(tmp_path / "a.yaml")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.yaml", "b.yml"] and problems == []
    assert list(load([str(tmp_path)]).networks) == ["a", "b"]
    assert list(load([str(tmp_path), str(sub / "c.yaml")]).networks) == ["a", "b", "c"]


def test_aux_names_are_per_subnet():
    # like Docker's per-subnet aux addresses: a 'router' in every subnet is fine
    n = net(
        "  n:\n    subnets:\n      - {subnet: 10.0.0.0/24, aux_addresses: {router: 10.0.0.254}}\n"
        "      - {subnet: 10.0.1.0/24, aux_addresses: {router: 10.0.1.254}}\n"
    )
    assert [s.aux_addresses[0][0] for s in n.subnets] == ["router", "router"]
