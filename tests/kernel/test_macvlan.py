"""SPEC 2.3 on the real kernel (VM only): macvlan networks in every mode and host access
(the host's own leg on a network) on ipvlan L2/L3 and macvlan bridge. Real pings; every
assertion reads kernel state. One module, few applies: the VM is slow."""
import os

import pytest

from enginekit import ROOT, Reconciler, addrs, ipj, links, ping, sh
from reconciler.model import access_link_name, endpoint_mac


@pytest.fixture
def rec(tmp_path):
    r = Reconciler(tmp_path)
    yield r
    r.teardown()


def host_ping(addr: str) -> bool:
    return sh(f"ping -n -q -c 3 -i 0.2 -W 2 {addr}", check=False).returncode == 0


def mac_of(ns: str, ifname: str = "eth0") -> str:
    return links(ns)[ifname]["address"]


MODES = """\
version: 1
networks:
  mvb: {parent: eth0.81, driver: macvlan, subnets: [{subnet: 10.81.0.0/24}]}
  mvp: {parent: eth0.82, driver: macvlan, macvlan_mode: private, subnets: [{subnet: 10.82.0.0/24}]}
  mvv: {parent: eth0.83, driver: macvlan, macvlan_mode: vepa, subnets: [{subnet: 10.83.0.0/24}]}
  mvt: {parent: eth0.84, driver: macvlan, macvlan_mode: passthru, subnets: [{subnet: 10.84.0.0/24}]}
containers:
  mb1: {networks: {mvb: {ip: 10.81.0.10}}}
  mb2: {networks: {mvb: {ip: 10.81.0.11}}}
  mp1: {networks: {mvp: {ip: 10.82.0.10}}}
  mp2: {networks: {mvp: {ip: 10.82.0.11}}}
  mv1: {networks: {mvv: {ip: 10.83.0.10}}}
  mv2: {networks: {mvv: {ip: 10.83.0.11}}}
  mt1: {networks: {mvt: {ip: 10.84.0.10}}}
"""


def test_macvlan_modes_macs_and_idempotency(rec):
    rec.write("a.yaml", MODES)
    out = rec.apply()
    assert out["converged"], out
    for ns, mode in (("mb1", "bridge"), ("mp1", "private"), ("mv1", "vepa"), ("mt1", "passthru")):
        info = links(ns)["eth0"]["linkinfo"]
        assert info["info_kind"] == "macvlan" and info["info_data"]["mode"] == mode, (ns, info)
    # stable, derived, locally administered unicast MACs; passthru keeps the parent's
    macs = {ns: mac_of(ns) for ns in ("mb1", "mb2", "mp1", "mp2", "mv1", "mv2")}
    for ns, mac in macs.items():
        net = {"b": "mvb", "p": "mvp", "v": "mvv"}[ns[1]]
        assert mac == endpoint_mac(ns, net), ns
        assert int(mac[:2], 16) & 0x03 == 0x02, mac
    assert mac_of("mt1") == links()["eth0.84"]["address"]
    # bridge: containers talk; private and vepa (no hairpin switch upstream): they do not
    assert ping("mb1", "10.81.0.11")
    assert not ping("mp1", "10.82.0.11")
    assert not ping("mv1", "10.83.0.11")
    # an unchanged manifest: no write (observe reads driver, mode and MAC back)
    again = rec.apply()
    assert again["plan"]["changes"] == [] and again["netlink_writes"] == 0
    # delete everything and re-apply: the same MACs (ARP caches upstream stay right)
    rec.clear()
    rec.apply()
    assert "mb1" not in sh("ip netns list").stdout
    rec.clear()
    rec.write("a.yaml", MODES)
    rec.apply()
    assert {ns: mac_of(ns) for ns in macs} == macs


ACCESS = """\
version: 1
networks:
  hl2: {parent: eth0.85, subnets: [{subnet: 10.85.0.0/24}], host_access: {ip: 10.85.0.250}}
  hl3: {parent: eth0.86, ipvlan_mode: l3, subnets: [{subnet: 10.86.0.0/24}], host_access: {ip: 10.86.0.250}}
  hmv: {parent: eth0.87, driver: macvlan, subnets: [{subnet: 10.87.0.0/24}], host_access: {ip: 10.87.0.250}}
  hls: {parent: eth0.88, ipvlan_mode: l3s, subnets: [{subnet: 10.88.0.0/24}], host_access: {ip: 10.88.0.250}}
containers:
  ha: {networks: {hl2: {ip: 10.85.0.10}}}
  hb: {networks: {hl3: {ip: 10.86.0.10}}}
  hc: {networks: {hmv: {ip: 10.87.0.10}}}
  hd: {networks: {hmv: {}}}
  he: {networks: {hls: {ip: 10.88.0.10}}}
"""


def access_routes():
    return sorted((r["dst"], r["dev"]) for r in ipj("-4 route show proto 149") if r["dev"].startswith("ih-"))


def test_host_access_on_ipvlan_l2_l3_l3s_and_macvlan_bridge(rec):
    rec.write("a.yaml", ACCESS)
    out = rec.apply()
    assert out["converged"], out
    host = links()
    for net, parent, kind in (("hl2", "eth0.85", "ipvlan"), ("hl3", "eth0.86", "ipvlan"), ("hmv", "eth0.87", "macvlan")):
        leg = host[access_link_name(net)]
        assert leg["linkinfo"]["info_kind"] == kind and leg["link"] == parent
        assert leg["ifalias"] == f"ipvlan-reconciler host-access net={net}"
    assert addrs(None, access_link_name("hl2")) == ["10.85.0.250/32"]
    assert access_routes() == sorted([
        ("10.85.0.10", access_link_name("hl2")), ("10.86.0.10", access_link_name("hl3")),
        ("10.87.0.10", access_link_name("hmv")), ("10.87.0.2", access_link_name("hmv")),  # hd: automatic
        ("10.88.0.10", access_link_name("hls")),
    ])
    # the host reaches its containers and they reach the host's address
    for ns, addr, hostaddr in (("ha", "10.85.0.10", "10.85.0.250"), ("hb", "10.86.0.10", "10.86.0.250"),
                               ("hc", "10.87.0.10", "10.87.0.250"), ("he", "10.88.0.10", "10.88.0.250")):
        assert host_ping(addr), ns
        assert ping(ns, hostaddr), ns
    # re-apply (what a restarted daemon's first run does): nothing written, no flap
    index = host[access_link_name("hmv")]["ifindex"]
    again = rec.apply()
    assert again["plan"]["changes"] == [] and again["netlink_writes"] == 0
    assert links()[access_link_name("hmv")]["ifindex"] == index
    # removing host_access removes the leg and its routes
    rec.write("a.yaml", ACCESS.replace(", host_access: {ip: 10.85.0.250}", ""))
    rec.apply()
    assert access_link_name("hl2") not in links()
    assert not any(dev == access_link_name("hl2") for _, dev in access_routes())
    assert not host_ping("10.85.0.10")
    # switching a network's driver is a replace, and converges (the leg follows)
    rec.write("a.yaml", ACCESS.replace("hl3: {parent: eth0.86, ipvlan_mode: l3,", "hl3: {parent: eth0.86, driver: macvlan,"))
    p = rec.plan()
    assert "-/+ endpoint hb/eth0" in p.stdout, p.stdout
    out = rec.apply()
    assert out["converged"], out
    assert links("hb")["eth0"]["linkinfo"]["info_kind"] == "macvlan"
    assert links()[access_link_name("hl3")]["linkinfo"]["info_kind"] == "macvlan"
    assert host_ping("10.86.0.10") and ping("hb", "10.86.0.250")


def test_macvlan_examples_converge_ping_and_reapply_is_a_noop(tmp_path):
    """manifests/examples/macvlan: Docker's macvlan documentation (bridge, 802.1Q trunk, dual
    stack) and the seed's VLAN examples with driver: macvlan."""
    r = Reconciler(tmp_path)
    examples = os.path.join(ROOT, "manifests", "examples", "macvlan")
    try:
        out = r.apply(paths=[examples])
        assert out["converged"], out
        assert links("mvlan_test5")["eth0"]["link_index"] == links()["foo"]["ifindex"]
        assert links("macvlan50-1")["eth0"]["linkinfo"]["info_kind"] == "macvlan"
        assert ping("mvlan_test1", "mvlan_test2") and ping("mvlan_test3", "mvlan_test4")
        assert ping("mvlan_test5", "mvlan_test6") and ping("macvlan50-1", "macvlan50-2")
        assert not ping("mvlan_test1", "192.168.30.2")  # other VLAN: needs a router
        assert ping("macvlan216-1", "2001:db8:abc8::21") and ping("macvlan216-1", "192.168.216.11")
        assert addrs("my-macvlan-alpine") == ["172.16.86.2/24"]
        assert host_ping("172.16.86.2") and ping("my-macvlan-alpine", "172.16.86.254")  # host access
        again = r.apply(paths=[examples])
        assert again["plan"]["changes"] == [] and again["netlink_writes"] == 0
    finally:
        r.teardown()


def test_daemon_restart_with_a_host_leg_writes_nothing(tmp_path, host_eth0):
    """A parent with a host leg and containers survives a daemon restart unchanged."""
    from test_daemon import Daemon, converged

    d = Daemon(tmp_path)
    try:
        d.write("a.yaml", """\
            version: 1
            networks:
              dmv: {parent: eth0.91, driver: macvlan, subnets: [{subnet: 10.91.0.0/24}], host_access: {ip: 10.91.0.250}}
            containers:
              dm1: {networks: {dmv: {ip: 10.91.0.10}}}
            """)
        d.start()
        d.wait_status(converged, "converged")
        before = {n: l["ifindex"] for n, l in links(detail=False).items()}
        assert access_link_name("dmv") in before and host_ping("10.91.0.10")
        assert d.stop() == 0
        d.start()
        st = d.wait_status(lambda st: st.get("pid") == d.proc.pid and converged(st), "restarted")
        assert st["last_netlink_writes"] == 0 and st["last_actions"] == []
        assert {n: l["ifindex"] for n, l in links(detail=False).items()} == before
        assert host_ping("10.91.0.10") and ping("dm1", "10.91.0.250")
    finally:
        d.teardown()
