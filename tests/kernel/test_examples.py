"""Every seed example, applied on the real kernel and checked the way the seed describes it."""
import os

import pytest

from enginekit import ROOT, Reconciler, addrs, default_route, links, netns_list, ping, routes, sh

EXAMPLES = os.path.join(ROOT, "manifests", "examples")


@pytest.fixture(scope="module")
def main_dir(tmp_path_factory):
    r = Reconciler(tmp_path_factory.mktemp("examples"))
    out = r.apply(paths=[EXAMPLES])
    yield r, out
    r.teardown()


def mode(ns, ifname="eth0"):
    return links(ns)[ifname]["linkinfo"]["info_data"]["mode"]


def test_examples_converge_and_reapply_is_a_noop(main_dir):
    r, out = main_dir
    assert out["converged"], out["verify"]
    again = r.apply(paths=[EXAMPLES])
    assert again["plan"]["changes"] == [] and again["netlink_writes"] == 0


def test_vlan_parents_created_with_their_ids(main_dir):
    host = links()
    for name, vid in (("eth0.20", 20), ("eth0.30", 30), ("eth0.114", 114), ("eth0.139", 139),
                      ("eth0.140", 140), ("foo", 40)):
        assert host[name]["linkinfo"]["info_kind"] == "vlan", name
        assert host[name]["linkinfo"]["info_data"]["id"] == vid, name
        assert host[name]["link"] == "eth0"
    dummies = [n for n, l in host.items() if l.get("linkinfo", {}).get("info_kind") == "dummy" and n.startswith("di-")]
    assert len(dummies) == 4  # isolated1-3 and ipnet210 have no parent


def test_l2_vlan_examples(main_dir):
    # ipvlan20 / ipvlan30: default via the gateway, containers on one VLAN ping each other
    assert mode("ivlan_test1") == "l2"
    assert addrs("ivlan_test1") == ["192.168.20.2/24"] and addrs("ivlan_test2") == ["192.168.20.3/24"]
    assert default_route("ivlan_test3") == {**default_route("ivlan_test3"), "gateway": "192.168.30.1", "dev": "eth0"}
    assert ping("ivlan_test1", "192.168.20.3")
    assert ping("ivlan_test3", "ivlan_test4")  # by name, through /etc/netns/<ns>/hosts
    assert not ping("ivlan_test1", "192.168.30.2")  # different VLANs need a router
    # ipvlan114: two subnets with explicit gateways, fixed addresses
    assert addrs("ipvlan114-1") == ["192.168.114.10/24"]
    assert default_route("ipvlan114-1")["gateway"] == "192.168.114.254"
    assert ping("ipvlan114-1", "192.168.114.11")
    # the manual VLAN 40 named foo
    assert links("ivlan_test5")["eth0"]["link_index"] == links()["foo"]["ifindex"]
    assert ping("ivlan_test5", "ivlan_test6")


def test_isolated_networks_have_no_default_route(main_dir):
    for ns in ("cid1", "cid2", "cid3"):
        assert default_route(ns) is None, ns
        assert addrs(ns), ns
    assert addrs("cid1") == ["192.168.10.2/24"]
    assert addrs("cid3")[0].endswith("/16")  # from the default pools


def test_l3_example_routes_between_subnets(main_dir):
    # ipnet210: no parent, L3, `default dev eth0` and reachability across its two subnets
    assert mode("ipnet210-a") == "l3"
    r = default_route("ipnet210-a")
    assert r["dev"] == "eth0" and "gateway" not in r
    assert ping("ipnet210-c", "10.1.214.10")  # 192.168.214.9 -> 10.1.214.10
    assert ping("ipnet210-d", "192.168.214.10")


def test_dual_stack_examples(main_dir):
    # v6ipvlan139: IPv6 only in the manifest; the first v6 address is ::1 as in the seed, plus v4
    v6 = [a for a in addrs("v6ipvlan139-1") if ":" in a]
    v4 = [a for a in addrs("v6ipvlan139-1") if ":" not in a]
    assert v6 == ["2001:db8:abc2::1/64"] and len(v4) == 1
    assert default_route("v6ipvlan139-1", 6)["gateway"] == "2001:db8:abc2::22"
    assert ping("v6ipvlan139-2", "2001:db8:abc2::1")
    flags = sh("ip -n v6ipvlan139-1 -6 addr show dev eth0").stdout
    assert "nodad" in flags
    # ipvlan140: two v4 subnets and one v6 subnet, explicit gateways
    assert default_route("ipvlan140-1")["gateway"] == "192.168.140.1"
    assert default_route("ipvlan140-1", 6)["gateway"] == "2001:db8:abc9::22"
    # ipnet110: L3 dual stack on eth0: default dev eth0 for both families
    assert mode("ipnet110-dual") == "l3"
    assert addrs("ipnet110-dual") == ["192.168.112.50/24", "2001:db8:abc6::50/64"]
    # the first addresses stay free as in Docker (L3 uses no gateway, but Docker reserves it)
    assert addrs("ipnet110-auto") == ["192.168.110.2/24", "2001:db8:abc6::2/64"]
    assert default_route("ipnet110-dual", 6)["dev"] == "eth0" and "gateway" not in default_route("ipnet110-dual", 6)
    assert any(x["dst"] == "192.168.110.0/24" for x in routes("ipnet110-dual"))
    assert ping("ipnet110-v4", "192.168.112.50")
    assert ping("ipnet110-v6", "2001:db8:abc6::50")


@pytest.mark.parametrize("alt", ["db_net", "db_net_ipv", "ipvlan40-eth0.40"])
def test_alternative_examples(alt, tmp_path, main_dir):
    """Last in this module: the main directory is torn down first (they share parents)."""
    main, _ = main_dir
    main.teardown()
    r = Reconciler(tmp_path, alt)
    path = os.path.join(EXAMPLES, "alt", alt)
    out = r.apply(paths=[path])
    assert out["converged"]
    if alt == "db_net":
        assert addrs("db_net-1") == ["192.168.1.2/24"]  # .1 is the gateway, .250 the host's eth0
        assert default_route("db_net-1")["gateway"] == "192.168.1.1"
        assert mode("db_net-1") == "l2"
    elif alt == "db_net_ipv":
        assert addrs("ipv1") == ["192.168.1.2/24"]
        assert default_route("ipv1")["gateway"] == "192.168.1.1"
        assert ping("ipv2", "ipv1")
        # "containers cannot ping the underlying host interface" (ipvlan filters it)
        assert not ping("ipv1", "192.168.1.250")
    elif alt == "ipvlan40-eth0.40":
        assert links()["eth0.40"]["linkinfo"]["info_data"]["id"] == 40
        assert ping("ivlan_test5", "ivlan_test6")
    r.teardown()
    assert not any(n in netns_list() for n in ("ipv1", "ipv2", "ivlan_test5"))
