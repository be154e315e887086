"""Every manifest directory under manifests/ validates on its own and mirrors the seed."""
from __future__ import annotations

import contextlib
import io
import ipaddress
import os

import pytest

from reconciler import cli
from reconciler.manifest import load
from reconciler.model import Mode, ParentKind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(ROOT, "manifests")
EXAMPLES = os.path.join(MANIFESTS, "examples")


def manifest_dirs():
    out = []
    for d, _, files in os.walk(MANIFESTS):
        if any(f.endswith((".yaml", ".yml")) for f in files):
            out.append(os.path.relpath(d, ROOT))
    return sorted(out)


def test_there_are_example_directories():
    dirs = manifest_dirs()
    assert "manifests/examples" in dirs and len(dirs) >= 5


@pytest.mark.parametrize("path", manifest_dirs())
def test_directory_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["validate", path])
    assert rc == 0, err.getvalue()
    assert out.getvalue().startswith("OK: ")
    assert err.getvalue() == ""  # no warnings either


def test_every_example_file_names_its_seed_example():
    for d in manifest_dirs():
        for f in os.listdir(os.path.join(ROOT, d)):
            if f.endswith((".yaml", ".yml")):
                with open(os.path.join(ROOT, d, f), encoding="utf-8") as fh:
                    # the fleet example is SPEC 5's (many hosts), which the seed does not cover
                    first = "# SPEC 5" if d == os.path.join("manifests", "examples", "fleet") else "# Seed example"
                    # the macvlan examples are SPEC 2.3's (Docker's macvlan documentation)
                    if d == os.path.join("manifests", "examples", "macvlan"):
                        first = "# SPEC 2.3"
                    assert fh.readline().startswith(first), f"{d}/{f}"


def test_main_directory_has_the_seed_networks_and_containers():
    s = load([EXAMPLES])
    assert set(s.networks) == {
        "ipnet110", "isolated1", "isolated2", "isolated3", "ipvlan20", "ipvlan30", "ipvlan114",
        "ipnet210", "v6ipvlan139", "ipvlan140", "ipvlan40",
    }
    for c in ["cid1", "cid2", "cid3", "ivlan_test1", "ivlan_test2", "ivlan_test3", "ivlan_test4",
              "ivlan_test5", "ivlan_test6"]:
        assert c in s.containers
    assert len([c for c in s.containers if c.startswith("ipnet210-")]) == 4
    assert len([c for c in s.containers if c.startswith("ipnet110-")]) == 4
    # parents
    assert s.networks["ipnet110"].parent == "eth0" and s.networks["ipnet110"].mode is Mode.L3
    assert s.networks["ipvlan40"].parent_kind is ParentKind.DECLARED_VLAN
    assert s.vlans["foo"].link == "eth0" and s.vlans["foo"].vid == 40
    assert s.vlans["eth0.20"].declared is False
    for n in ("isolated1", "isolated2", "isolated3", "ipnet210"):
        assert s.networks[n].parent_kind is ParentKind.DUMMY and s.networks[n].internal
    # ipvlan114: two subnets, explicit gateways, the seed's two addresses
    gws = [str(x.gateway) for x in s.networks["ipvlan114"].subnets]
    assert gws == ["192.168.114.254", "192.168.116.254"]
    assert sorted(str(c.attachments[0].ip) for n, c in s.containers.items() if n.startswith("ipvlan114")) == [
        "192.168.114.10", "192.168.114.11"]
    # ipvlan140: the seed's out-of-subnet ip6 is moved into 2001:db8:abc9::/64
    ip6 = s.containers["ipvlan140-1"].attachments[0].ip6
    assert ip6 in ipaddress.ip_network("2001:db8:abc9::/64")
    # v6ipvlan139: IPv6 subnet plus an IPv4 placeholder from the pools
    assert [(x.family, x.auto) for x in s.networks["v6ipvlan139"].subnets] == [(6, False), (4, True)]


def test_db_net_is_the_hosts_lan():
    s = load([os.path.join(EXAMPLES, "alt", "db_net")])
    n = s.networks["db_net"]
    assert n.parent == "eth0" and n.parent_kind is ParentKind.EXISTING and n.mode is Mode.L2
    assert str(n.subnets[0].cidr) == "192.168.1.0/24" and str(n.subnets[0].gateway) == "192.168.1.1"
    s = load([os.path.join(EXAMPLES, "alt", "db_net_ipv")])
    assert str(s.networks["db_net_ipv"].subnets[0].gateway) == "192.168.1.1"  # the default
    assert set(s.containers) == {"ipv1", "ipv2"}
