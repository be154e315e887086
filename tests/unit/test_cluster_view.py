"""The daemon's interface of cluster mode (reconciler.cluster.view.host_view): pure, no etcd."""
from __future__ import annotations

import ipaddress

import pytest

from reconciler.cluster.revision import resolve_grid
from reconciler.cluster.view import AddressRecord, Need, host_view
from reconciler.errors import ManifestError
from reconciler.fleet import UnknownHost
from reconciler.manifest import load_texts
from reconciler.manifest.fleet import cluster_mode

FLEET = """\
version: 1
hosts:
  h1: {id: 0, address: 192.168.1.11}
  h2: {address: 192.168.1.12}
networks:
  lan: {parent: eth0, ipv6: true, subnets: [{subnet: 10.50.0.0/20}, {subnet: "fd00:50::/64"}]}
  iso: {internal: true}
containers:
  a1: {host: h1, networks: {lan: {}, iso: {}}}
  a2: {host: h1, networks: {lan: {ip: 10.50.8.5}}}
  b1: {host: h2, networks: {lan: {}}}
"""
FILES = [("fleet.yaml", FLEET)]
ip = ipaddress.ip_address


def grid():
    with cluster_mode():
        return resolve_grid(load_texts(FILES))


def rec(addr, host, container, explicit=False):
    return AddressRecord("lan", ip(addr), host, container, explicit)


def test_grid_defaults_resolved():
    g = grid()
    assert (g["lan"]["block_size"], g["lan"]["block_size6"]) == (26, 80)
    assert "iso" not in g  # internal networks stay per host


def test_missing_addresses_are_needs_and_keep_the_container_out():
    v = host_view(FILES, grid(), "h1", [rec("10.50.0.2", "h1", "a1")])
    assert v.needs == (Need("a1", "lan", 6), Need("a2", "lan", 6))
    assert set(v.state.containers) == set()
    assert v.state.local_host == "h1"


def test_full_view_fills_automatic_addresses_and_lists_the_whole_fleet():
    records = [rec("10.50.0.2", "h1", "a1"), rec("fd00:50::2", "h1", "a1"), rec("fd00:50::3", "h1", "a2"),
               rec("10.50.8.5", "h1", "a2", explicit=True), rec("10.50.0.70", "h2", "b1"),
               rec("fd00:50:0:0:1::9", "h2", "b1")]
    v = host_view(FILES, grid(), "h1", records)
    assert v.needs == () and v.stale == ()
    a1 = {a.network: a for a in v.state.containers["a1"].attachments}
    assert (a1["lan"].ip, a1["lan"].ip6) == (ip("10.50.0.2"), ip("fd00:50::2"))
    assert a1["iso"].ip is None  # internal: per-host IPAM as in file mode
    a2 = v.state.containers["a2"].attachments[0]
    assert (a2.ip, a2.ip6) == (ip("10.50.8.5"), ip("fd00:50::3"))
    # hosts files: the other host's automatic addresses are known in cluster mode
    b1 = v.state.remote["b1"].attachments[0]
    assert (b1.ip, b1.ip6) == (ip("10.50.0.70"), ip("fd00:50:0:0:1::9"))
    assert v.state.networks["lan"].block_size == 26


def test_stale_records_are_returned_for_release():
    records = [rec("10.50.0.2", "h1", "a1"), rec("10.50.0.3", "h1", "a1"), rec("10.50.0.4", "h1", "gone"),
               rec("10.50.0.5", "h1", "a2"), rec("10.50.0.70", "h2", "b1")]
    v = host_view(FILES, grid(), "h1", records)
    # a second address for a1's slot, a container the revision no longer has, and an automatic
    # record for an attachment whose address is explicit now; never another host's record
    assert {str(r.address) for r in v.stale} == {"10.50.0.3", "10.50.0.4", "10.50.0.5"}


def test_record_of_another_host_for_my_container_is_ignored():
    v = host_view(FILES, grid(), "h1", [rec("10.50.0.70", "h2", "a1")])
    assert Need("a1", "lan", 4) in v.needs


def test_unknown_host_and_invalid_revision():
    with pytest.raises(UnknownHost):
        host_view(FILES, grid(), "h9", [])
    with pytest.raises(ManifestError):
        host_view([("fleet.yaml", FLEET.replace("host: h2", "host: h7"))], grid(), "h1", [])


def test_cluster_mode_only_inside_cluster_push():
    """Outside cluster mode the same files lack ids and block sizes (file-synced fleet rules)."""
    with pytest.raises(ManifestError, match="has no id"):
        load_texts(FILES)


def test_grid_keeps_the_default_gateway_free():
    """A subnet without gateway: the first usable address is never handed out (file-mode IPAM
    makes it the L2 gateway, keeps it free on L3)."""
    r = grid()["lan"]["ranges"]
    assert r[0]["reserved"] == ["10.50.0.0", "10.50.0.1", "10.50.15.255"]
    assert r[1]["reserved"] == ["fd00:50::", "fd00:50::1"]
