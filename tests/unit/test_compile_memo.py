"""compile_state with the daemon's CompileMemo gives exactly what it gives without one, over
a sequence of edits that touch containers, networks, parent readiness and file positions;
and the memo really is used (unchanged containers keep their objects)."""
from __future__ import annotations

import ipaddress as ia
import random

import pytest

from reconciler import ipam
from reconciler.compile import CompileMemo, compile_state
from reconciler.errors import ManifestError
from reconciler.manifest import load_texts
from reconciler.objects import HostFacts, HostLink, Kind

BASE = """\
version: 1
networks:
  na: {parent: eth0.20, subnets: [{subnet: 10.20.0.0/24}]}
  nb: {parent: eth0, ipvlan_mode: l3, subnets: [{subnet: 10.30.0.0/24}, {subnet: 10.31.0.0/24}]}
  nc: {internal: true, ipv6: true, subnets: [{subnet: 10.40.0.0/24}]}
  nd: {parent: eth9, subnets: [{subnet: 10.50.0.0/24, gateway: 10.50.0.254}]}
containers:
  c1: {networks: {na: {ip: 10.20.0.11}, nc: {}}}
  c2: {networks: {nb: {ip: 10.30.0.12}}}
  c3: {networks: {nb: {ip: 10.31.0.13}, na: {aliases: [db]}}}
  c4: {networks: {nc: {}, nd: {}}}
  c5: {networks: {na: {}}}
"""

EDITS = [
    lambda t: t,
    lambda t: t.replace("10.20.0.11", "10.20.0.21"),  # one container readdressed
    lambda t: t.replace("ipvlan_mode: l3,", "ipvlan_mode: l3s,"),  # a network's mode
    lambda t: t.replace("ipvlan_mode: l3,", "ipvlan_mode: l2, ipvlan_flag: private,"),
    lambda t: t.replace("gateway: 10.50.0.254", "gateway: 10.50.0.1"),  # a gateway
    lambda t: t.replace("  c5: {networks: {na: {}}}\n", ""),  # a container removed
    lambda t: t if "  c6:" in t else t + "  c6: {networks: {nd: {ip: 10.50.0.66}, nb: {}}}\n",  # one added
    lambda t: t.replace("version: 1\n", "version: 1\n\n\n# moved down\n"),  # only positions change
    lambda t: t.replace("nc: {internal: true, ipv6: true,", "nc: {internal: true,"),  # ipv6 off
    lambda t: t.replace("{subnet: 10.31.0.0/24}", "{subnet: 10.32.0.0/24}").replace("10.31.0.13", "10.32.0.13"),
    lambda t: t.replace("10.30.0.12", "192.168.1.250").replace("10.30.0.0/24", "192.168.1.0/24"),  # on the parent
]


def facts(eth9: bool) -> HostFacts:
    links = {"eth0": HostLink("eth0", 2, "", True, False, addresses=(ia.ip_interface("192.168.1.250/24"),))}
    if eth9:
        links["eth9"] = HostLink("eth9", 3, "dummy", True, False)
    return HostFacts(links=links)


def compiled(text: str, f: HostFacts, memo=None):
    desired = load_texts([("m.yaml", text)])
    resolved, _ = ipam.resolve(desired, ipam.IpamFacts(), ipam.Allocations())
    return compile_state(resolved, f, memo=memo)


def same(a, b) -> None:
    assert list(a.desired.objects.items()) == list(b.desired.objects.items())
    assert (a.pending, a.problems, a.protected_networks) == (b.pending, b.problems, b.protected_networks)


@pytest.mark.parametrize("seed", range(6))
def test_memo_changes_nothing_over_random_edit_sequences(seed):
    rng = random.Random(seed)
    memo = CompileMemo()
    text = BASE
    compared = 0
    for _ in range(25):
        edit = rng.choice(EDITS)
        if rng.random() < 0.3:
            text = BASE
        text = edit(text)
        f = facts(eth9=rng.random() < 0.6)  # a parent that comes and goes
        try:
            plain = compiled(text, f)
        except ManifestError:  # an edit combination that is not a valid manifest: start over
            text = BASE
            continue
        same(compiled(text, f, memo), plain)
        compared += 1
    assert compared >= 15


def test_unchanged_containers_keep_their_objects_and_changed_ones_are_rebuilt():
    memo = CompileMemo()
    f = facts(eth9=True)
    first = compiled(BASE, f, memo)
    second = compiled(BASE.replace("10.20.0.11", "10.20.0.21"), f, memo)
    # c2 (untouched) keeps the very same objects; c1 (readdressed) gets new ones
    assert second.desired.objects[(Kind.ENDPOINT, "c2", "eth0")] is first.desired.objects[(Kind.ENDPOINT, "c2", "eth0")]
    assert second.desired.objects[(Kind.NETNS, "c1")] is not first.desired.objects[(Kind.NETNS, "c1")]
    # a network's change rebuilds its containers (c2 and c3 are on nb)
    third = compiled(BASE.replace("10.20.0.11", "10.20.0.21").replace("ipvlan_mode: l3,", "ipvlan_mode: l3s,"), f, memo)
    assert third.desired.objects[(Kind.ENDPOINT, "c2", "eth0")] is not second.desired.objects[(Kind.ENDPOINT, "c2", "eth0")]
    assert third.desired.objects[(Kind.ENDPOINT, "c2", "eth0")].mode.value == "l3s"
    # a parent gone: c4's attachment to nd is pending, and c4 is rebuilt without it
    fourth = compiled(BASE, facts(eth9=False), memo)
    assert (Kind.ENDPOINT, "c4", "eth1") not in fourth.desired.objects
    assert any("c4" in p.what for p in fourth.pending)
