"""`watch --etcd` with --bird-config (the fleet's BGP support of file mode, in cluster mode), and
the agent never handing out an address this host's parent link carries (SPEC 6), against a
real etcd with the real engine on the simulated host of test_watch.py."""
from __future__ import annotations

import contextlib
import io
import ipaddress as ia

from reconciler.birdctl import BirdSync
from reconciler.cli import main
from reconciler.cluster.alloc import Agent
from reconciler.cluster.revision import push
from reconciler.kernel.host import Kernel
from reconciler.kernel.hostaddrs import host_addresses

from .helpers import write
from .test_watch import FLEET, daemon, host, quiet_logs, step  # noqa: F401  (fixtures)

BGP_FLEET = """\
version: 1
hosts:
  h1: {id: 0, address: 192.168.1.11}
  h2: {id: 1, address: 192.168.1.12}
bgp: {asn: 64512}
networks:
  l3a: {ipvlan_mode: l3, parent: eth0, subnets: [{subnet: 10.60.0.0/16}], block_size: 24}
containers:
  web1: {host: h1, networks: {l3a: {}}}
  web2: {host: h2, networks: {l3a: {}}}
"""


def test_watch_etcd_keeps_bird_config_identical_to_file_mode(tmp_path, etcd, store, keys, host, capsys):
    d = write(tmp_path, BGP_FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    conf = tmp_path / "bird.conf"
    dm.bird_sync = BirdSync(str(conf), str(tmp_path / "no-bird.ctl"), host="h1")
    step(dm, "start")
    assert dm.status.last_result == "converged", dm.status.last_errors
    # the same file `bird-config` makes from the same manifests in file mode
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bird-config", "--host", "h1", d]) == 0
    assert conf.read_text() == out.getvalue()
    assert "protocol bgp" in out.getvalue() and "192.168.1.12" in out.getvalue()
    # BIRD not running: reported, never a reconcile failure
    assert dm.status.bird["error"] and dm.status.last_result == "converged"
    # a new revision with a third host: the peers follow the revision
    write(tmp_path, BGP_FLEET.replace("  h2: {id: 1, address: 192.168.1.12}\n",
                                      "  h2: {id: 1, address: 192.168.1.12}\n  h3: {address: 192.168.1.13}\n"))
    push(store, keys, [d])
    step(dm)
    assert "192.168.1.13" in conf.read_text()


def test_watch_etcd_takes_bird_config():
    from reconciler.cli import build_parser

    ns = build_parser().parse_args(["watch", "--etcd", "http://127.0.0.1:2379", "--host", "h1",
                                    "--bird-config", "/etc/bird/bird.conf", "--bird-socket", "/run/b.ctl"])
    from reconciler.daemon.clusterwatch import build
    from reconciler.daemon.settings import WatchSettings

    ns.state_dir = "/nonexistent-state"
    dm = build(WatchSettings.from_args(ns))
    assert dm.bird_sync.path == "/etc/bird/bird.conf" and dm.bird_sync.socket == "/run/b.ctl"
    assert dm.bird_sync.host == "h1"
    assert dm.source.host_addresses == dm.read_host_addresses  # the parent's addresses are read


def _parent_has(host, *addrs):
    import dataclasses

    l = host.facts.links["eth0"]
    host.facts.links["eth0"] = dataclasses.replace(l, addresses=l.addresses + tuple(ia.ip_interface(a) for a in addrs))


def test_agent_never_hands_out_the_parents_own_address(tmp_path, etcd, store, keys, host):
    push(store, keys, [write(tmp_path, FLEET)])
    dm = daemon(tmp_path, etcd.url, keys)
    _parent_has(host, "10.50.0.2/20", "10.50.0.3/20")  # e.g. the host's leg on lan and a VIP
    dm.source.host_addresses = lambda: {n: tuple(a.ip for a in l.addresses) for n, l in host.facts.links.items()}
    step(dm, "start")
    assert dm.status.last_result == "converged", dm.status.last_errors
    assert host.addresses() == ["10.50.0.4"]  # block 10.50.0.0/26: .1 gateway, .2 and .3 on eth0


def test_an_address_the_parent_gained_later_is_replaced_and_its_key_released(tmp_path, etcd, store, keys, host):
    push(store, keys, [write(tmp_path, FLEET)])
    dm = daemon(tmp_path, etcd.url, keys)
    dm.source.host_addresses = lambda: {n: tuple(a.ip for a in l.addresses) for n, l in host.facts.links.items()}
    step(dm, "start")
    assert host.addresses() == ["10.50.0.2"]
    _parent_has(host, "10.50.0.2/20")  # someone put web1's address on the parent
    step(dm, "resync")
    assert dm.status.last_result == "converged", dm.status.last_errors
    assert host.addresses() == ["10.50.0.3"]
    held = Agent(store, keys, "h1", "machine-h1").addresses()
    assert {str(a): v["container"] for (_, a), v in held.items()} == {"10.50.0.3": "web1"}


def test_host_addresses_reads_the_host_namespace():
    k = Kernel()
    try:
        got = host_addresses(k)
    finally:
        k.close()
    assert ia.ip_address("127.0.0.1") in got["lo"]


def test_host_access_addresses_are_never_handed_out(tmp_path, store, keys):
    """SPEC 2.3: a host's leg on a network (host_access) is reserved like an aux address, in
    the grid every host allocates from."""
    fleet = FLEET.replace("  lan: {parent: eth0, subnets: [{subnet: 10.50.0.0/20, gateway: 10.50.0.1}]}",
                          "  lan: {parent: eth0, ipvlan_flag: bridge, subnets: [{subnet: 10.50.0.0/20, "
                          "gateway: 10.50.0.1}], host_access: {h1: 10.50.0.2, h2: 10.50.0.4}}")
    push(store, keys, [write(tmp_path, fleet)])
    a = Agent(store, keys, "h2", "m2")
    a.bind()
    got = [str(a.allocate("lan", f"c{i}")) for i in range(3)]
    assert got == ["10.50.0.3", "10.50.0.5", "10.50.0.6"]
