"""A fleet of three hosts (SPEC 5): each applies its own part of one shared manifest
directory; L3 container routes travel between the hosts over BGP (BIRD 2, SPEC 5.2).

The hosts are namespaces on the VM's kernel (tests/kernel/fleetkit.py): a bridge in ``kf-sw``,
per host ``kf-hN`` with a veth ``eth0`` on it (192.168.1.1N/24) and a private mount namespace
(its own /run/netns and /etc/netns), where ipvlanctl and BIRD run. One fleet is shared by the
whole module (everything in the VM is 20-25x slower); the tests run in file order and each
leaves the fleet converged for the next.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleetkit import Fleet, wait_for  # noqa: E402

FLEET = textwrap.dedent("""\
    version: 1
    hosts:
      h1: {id: 1, address: 192.168.1.11}
      h2: {id: 2, address: 192.168.1.12}
      h3: {id: 3, address: 192.168.1.13}
    bgp:
      asn: 64512
    networks:
      lan20:
        parent: eth0.20
        subnets:
          - subnet: 10.20.0.0/24
            ip_range: 10.20.0.0/25
            aux_addresses: {router: 10.20.0.254}
        block_size: 28
      l3a:
        ipvlan_mode: l3
        parent: eth0
        subnets: [{subnet: 10.40.0.0/16}]
        block_size: 24
    """)

CONTAINERS = {
    "web1": "  web1: {host: h1, networks: {l3a: {}, lan20: {}}}\n",
    "web2": "  web2: {host: h2, networks: {l3a: {}, lan20: {}}}\n",
    "web3": "  web3: {host: h3, networks: {l3a: {}, lan20: {}}}\n",
}

BGP_WAIT = 30  # hold time 6 s + connect retry 2 s + error wait up to 5 s, at VM speed


def write_containers(d: str, names) -> None:
    text = "version: 1\ncontainers:\n" + "".join(CONTAINERS[n] for n in names)
    tmp = os.path.join(d, ".containers.yaml.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(d, "containers.yaml"))


def apply_all(fleet, manifests, hosts=None):
    """ipvlanctl apply on several hosts at once (the VM is slow; the hosts are independent)."""
    hosts = hosts or fleet.hosts
    procs = [(h, subprocess.Popen(h.ipvlanctl_argv("apply", "--host", h.name, "--state-dir", h.state_dir,
                                                   "--format", "json", "--bird-config", h.bird_conf,
                                                   "--bird-socket", h.bird_sock, manifests),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
             for h in hosts]
    out = {}
    for h, p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, f"apply on {h.name}: exit {p.returncode}\n{stdout}\n{stderr}"
        out[h.name] = json.loads(stdout)
    return out


def addrs(host, container, net_if):
    """The container's global addresses on interface NET_IF (eth0 = l3a, eth1 = lan20)."""
    data = json.loads(host.sh(["ip", "-n", container, "-j", "addr", "show", "dev", net_if]).stdout)
    return [ipaddress.ip_address(a["local"]) for a in data[0]["addr_info"] if a["scope"] == "global"]


def containers_on(host):
    return sorted(host.sh(["ls", "/run/netns"]).stdout.split())


def ping(host, container, addr) -> bool:
    p = host.sh(["ip", "netns", "exec", container, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", str(addr)],
                check=False)
    return p.returncode == 0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(3, prefix="kf-", workdir=str(tmp_path_factory.mktemp("fleet")))
    try:
        d = os.path.join(f.dir, "manifests")
        os.makedirs(d)
        with open(os.path.join(d, "fleet.yaml"), "w") as fh:
            fh.write(FLEET)
        write_containers(d, ["web1", "web2", "web3"])
        f.manifests = d
        yield f
    finally:
        f.close()


def bird_up(fleet) -> None:
    """BIRD on every host, from the configuration bird-config renders (a test run alone with
    -k finds the fleet without it)."""
    for h in fleet.hosts:
        if h.bird is None or h.bird.poll() is not None:
            p = h.ipvlanctl("bird-config", "--host", h.name, fleet.manifests, check=True)
            h.start_bird(p.stdout)
    wait_for(lambda: all(h.established() == 2 for h in fleet.hosts), BGP_WAIT, "a full iBGP mesh")


def test_fleet_bird_routes_added_by_hand_propagate(fleet):
    """BIRD alone, from the configurations bird-config renders: a host route of ours in table
    200 on h1 shows up in h2's and h3's main tables via h1's address, and goes away again."""
    bird_up(fleet)
    h1, h2, h3 = fleet.hosts
    h1.sh(["ip", "route", "add", "10.40.9.9/32", "dev", "eth0", "proto", "149", "table", "200"])
    h1.sh(["ip", "route", "add", "10.40.9.10/32", "dev", "eth0", "proto", "static", "table", "200"])  # not ours
    wait_for(lambda: h2.bgp_routes().get("10.40.9.9") == "192.168.1.11"
             and h3.bgp_routes().get("10.40.9.9") == "192.168.1.11", 10, "the route on h2 and h3")
    assert "10.40.9.10" not in h2.bgp_routes()
    h1.sh(["ip", "route", "del", "10.40.9.9/32", "table", "200"])
    h1.sh(["ip", "route", "del", "10.40.9.10/32", "table", "200"])
    wait_for(lambda: "10.40.9.9" not in h2.bgp_routes() and "10.40.9.9" not in h3.bgp_routes(), 10,
             "the route gone from h2 and h3")


def test_fleet_each_host_applies_its_part_and_containers_talk_across_hosts(fleet):
    out = apply_all(fleet, fleet.manifests)
    for h in fleet.hosts:
        assert containers_on(h) == [f"web{h.n}"], h.name
        assert out[h.name]["bird"]["error"] is None, out[h.name]["bird"]  # the file BIRD runs with already
        # ours, in table 200, protocol 149, never in main
        table = h.routes("200")
        (mine,) = addrs(h, f"web{h.n}", "eth0")
        assert str(table[str(mine)]["protocol"]) in ("149", "ipvlan-reconciler"), table
        assert str(mine) not in {d for d, r in h.routes().items() if r.get("protocol") != "bird"}
    # automatic lan20 addresses: unique, each inside its host's /28 block of 10.20.0.0/25
    lan = {h.name: addrs(h, f"web{h.n}", "eth1")[0] for h in fleet.hosts}
    assert len(set(lan.values())) == 3
    for h in fleet.hosts:
        assert lan[h.name] in ipaddress.ip_network(f"10.20.0.{16 * h.n}/28"), lan
    l3 = {h.name: addrs(h, f"web{h.n}", "eth0")[0] for h in fleet.hosts}
    for h in fleet.hosts:
        assert l3[h.name] in ipaddress.ip_network(f"10.40.{h.n}.0/24"), l3
    h1, h2, h3 = fleet.hosts
    # the shared L2 VLAN: straight over the bridge
    assert ping(h1, "web1", lan["h2"]) and ping(h3, "web3", lan["h1"])
    # the L3 network: through the routes BIRD learnt
    wait_for(lambda: all(str(l3[o.name]) in h.bgp_routes() for h in fleet.hosts for o in fleet.hosts if o is not h),
             BGP_WAIT, "every host's L3 routes on every other host")
    assert h2.bgp_routes()[str(l3["h1"])] == "192.168.1.11"
    assert ping(h1, "web1", l3["h2"]) and ping(h2, "web2", l3["h3"]) and ping(h3, "web3", l3["h1"])
    fleet.l3 = l3


def test_fleet_removed_container_route_leaves_the_other_hosts(fleet):
    h1, h2, h3 = fleet.hosts
    gone = str(fleet.l3["h3"])
    write_containers(fleet.manifests, ["web1", "web2"])
    apply_all(fleet, fleet.manifests, [h3])
    assert containers_on(h3) == []
    assert gone not in h3.routes("200")
    wait_for(lambda: gone not in h1.bgp_routes() and gone not in h2.bgp_routes(), 10, "web3's route gone")
    write_containers(fleet.manifests, ["web1", "web2", "web3"])
    apply_all(fleet, fleet.manifests, [h3])
    back = str(addrs(h3, "web3", "eth0")[0])
    assert back == gone  # a released address is free again at once: the same one
    wait_for(lambda: back in h1.bgp_routes() and back in h2.bgp_routes(), 10, "web3's route back")


def test_fleet_partition_and_bird_stop_withdraw_routes_and_heal_alone(fleet):
    h1, h2, h3 = fleet.hosts
    r2, r3 = str(fleet.l3["h2"]), str(fleet.l3["h3"])
    h2.cut()  # carrier stays up: only BGP's hold timer notices
    try:
        wait_for(lambda: r2 not in h1.bgp_routes() and r2 not in h3.bgp_routes(), BGP_WAIT, "h2's route withdrawn")
        assert r3 in h1.bgp_routes()
    finally:
        h2.heal()
    wait_for(lambda: r2 in h1.bgp_routes() and r2 in h3.bgp_routes(), BGP_WAIT, "h2's route back after the heal")
    assert ping(h1, "web1", r2)
    h3.stop_bird()
    wait_for(lambda: r3 not in h1.bgp_routes() and r3 not in h2.bgp_routes(), BGP_WAIT, "h3's route withdrawn")
    st = json.loads(h3.ipvlanctl("status", "--host", "h3", "--state-dir", h3.state_dir, "--format", "json",
                                 "--bird-socket", h3.bird_sock, check=True).stdout)
    assert st["bird"]["running"] is False
    h3.start_bird()
    wait_for(lambda: r3 in h1.bgp_routes() and r3 in h2.bgp_routes(), BGP_WAIT, "h3's route back")
    st = json.loads(h1.ipvlanctl("status", "--host", "h1", "--state-dir", h1.state_dir, "--format", "json",
                                 "--bird-socket", h1.bird_sock, check=True).stdout)
    assert st["bird"]["running"] is True and st["bird"]["established"] == 2, st["bird"]


def test_fleet_watch_on_every_host_converges_one_edit(fleet):
    CONTAINERS["api1"] = "  api1: {host: h1, networks: {l3a: {}}}\n"
    CONTAINERS["api2"] = "  api2: {host: h2, networks: {l3a: {}}}\n"
    CONTAINERS["api3"] = "  api3: {host: h3, networks: {l3a: {}}}\n"
    bird_up(fleet)
    for h in fleet.hosts:
        h.start_watch(fleet.manifests)
    try:
        for h in fleet.hosts:
            wait_for(lambda h=h: (h.status() or {}).get("last_result") == "converged", 120, f"watch on {h.name} up")
        write_containers(fleet.manifests, ["web1", "web2", "web3", "api1", "api2", "api3"])
        wait_for(lambda: all(f"api{h.n}" in containers_on(h) and (h.status() or {}).get("last_result") == "converged"
                             for h in fleet.hosts), 120, "api1-3 created by the daemons")
        api = {h.name: str(addrs(h, f"api{h.n}", "eth0")[0]) for h in fleet.hosts}
        wait_for(lambda: all(api[o.name] in h.bgp_routes() for h in fleet.hosts for o in fleet.hosts if o is not h),
                 BGP_WAIT, "api1-3's routes on every other host")
        assert ping(fleet.hosts[0], "api1", api["h3"])
        # drift: an export route deleted by hand is put back by the daemon (and re-announced)
        h1 = fleet.hosts[0]
        h1.sh(["ip", "route", "del", f"{api['h1']}/32", "table", "200"])
        wait_for(lambda: api["h1"] in h1.routes("200") and api["h1"] in fleet.hosts[1].bgp_routes(), 60,
                 "api1's export route repaired by h1's daemon")
    finally:
        for h in fleet.hosts:
            h.stop_watch()


def test_fleet_validation_error_exits_1_and_changes_nothing(fleet):
    h1 = fleet.hosts[0]
    before = (containers_on(h1), sorted(h1.routes("200")))
    with open(os.path.join(fleet.manifests, "broken.yaml"), "w") as f:
        f.write("version: 1\ncontainers:\n  stray: {host: h9, networks: {l3a: {}}}\n")
    try:
        p = h1.apply(fleet.manifests, check=False)
        assert p.returncode == 1, p
        assert "broken.yaml:3:" in p.stderr, p.stderr
        assert (containers_on(h1), sorted(h1.routes("200"))) == before
    finally:
        os.unlink(os.path.join(fleet.manifests, "broken.yaml"))


def test_fleet_ipv6_l3_containers_reach_each_other_over_bgp(tmp_path):
    """Dual stack: hosts with address6 on eth0 announce their containers' /128s over an IPv6
    session; next hop = the announcing host's address6 (own small fleet: two hosts)."""
    f = Fleet(2, prefix="kf6-", workdir=str(tmp_path / "fleet6"), v6=True)
    try:
        d = os.path.join(f.dir, "manifests")
        os.makedirs(d)
        with open(os.path.join(d, "fleet.yaml"), "w") as fh:
            fh.write(textwrap.dedent("""\
                version: 1
                hosts:
                  h1: {id: 1, address: 192.168.1.11, address6: "2001:db8:1::11"}
                  h2: {id: 2, address: 192.168.1.12, address6: "2001:db8:1::12"}
                bgp: {asn: 64512}
                networks:
                  l3v6:
                    ipvlan_mode: l3
                    parent: eth0
                    ipv6: true
                    subnets: [{subnet: 10.41.0.0/16}, {subnet: "2001:db8:41::/64"}]
                    block_size: 24
                    block_size6: 80
                containers:
                  a1: {host: h1, networks: {l3v6: {}}}
                  a2: {host: h2, networks: {l3v6: {}}}
                """))
        f.manifests = d
        for h in f.hosts:
            p = h.ipvlanctl("bird-config", "--host", h.name, d, check=True)
            h.start_bird(p.stdout)
        apply_all(f, d)
        h1, h2 = f.hosts
        v6 = {h.name: next(a for a in addrs(h, f"a{h.n}", "eth0") if a.version == 6) for h in f.hosts}
        assert str(v6["h1"]) in h1.routes("200", "-6")
        wait_for(lambda: h2.bgp_routes("-6").get(str(v6["h1"])) == "2001:db8:1::11"
                 and h1.bgp_routes("-6").get(str(v6["h2"])) == "2001:db8:1::12", BGP_WAIT, "the /128s on the other host")
        assert ping(h1, "a1", v6["h2"]) and ping(h2, "a2", v6["h1"])
    finally:
        f.close()
