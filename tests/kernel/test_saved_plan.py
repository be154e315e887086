"""Saved plans on the real kernel (VM only): `plan -o FILE` then `apply FILE` converges; a host
changed by hand in between makes `apply FILE` refuse and change nothing."""
import json
import os

import pytest

from enginekit import Reconciler, addrs, ipj, netns_list, sh

MANIFEST = """\
version: 1
networks:
  sp3:
    ipvlan_mode: l3
    subnets: [{subnet: 10.7.0.0/24}]
containers:
  spa: {networks: {sp3: {ip: 10.7.0.10}}}
"""
MORE = """\
  spb: {networks: {sp3: {ip: 10.7.0.11}}}
"""


@pytest.fixture
def rec(tmp_path):
    r = Reconciler(tmp_path)
    yield r
    r.teardown()


def kernel_state() -> dict:
    """Everything `ip -j` shows that a reconciler run could change."""
    out = {"host": ipj("-d link show"), "netns": netns_list()}
    for ns in out["netns"]:
        out[ns] = {"links": ipj("-d link show", ns), "addr": ipj("addr show", ns),
                   "route4": ipj("-4 route show", ns), "route6": ipj("-6 route show", ns)}
    return out


def test_plan_o_then_apply_file_converges(rec, tmp_path):
    rec.write("a.yaml", MANIFEST)
    saved = str(tmp_path / "plan.json")
    p = rec.plan("-o", saved)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.load(open(saved))["format"] == "ipvlan-reconciler-plan/1"
    out = rec.apply(paths=[saved])
    assert out["converged"] and out["exit_code"] == 0
    assert [c["op"] for c in out["plan"]["changes"]] == [c["op"] for c in json.load(open(saved))["plan"]["changes"]]
    assert addrs("spa") == ["10.7.0.10/24"]
    p = rec.plan("--detailed-exitcode")
    assert p.returncode == 0, p.stdout + p.stderr


def test_apply_file_refuses_and_changes_nothing_when_the_host_changed(rec, tmp_path):
    rec.write("a.yaml", MANIFEST)
    rec.apply()
    rec.write("a.yaml", MANIFEST + MORE)
    saved = str(tmp_path / "plan.json")
    assert rec.plan("-o", saved).returncode == 0
    sh("ip -n spa addr del 10.7.0.10/24 dev eth0")  # by hand, between review and window
    sh("ip netns add sp-intruder")
    try:
        before = kernel_state()
        p = rec.cli("apply", paths=[saved])
        assert p.returncode == 1, p.stdout + p.stderr
        assert "the host changed since the plan was saved" in p.stderr
        assert "address spa/eth0/10.7.0.10/24 is gone" in p.stderr
        assert "namespace sp-intruder (not managed by ipvlan-reconciler) appeared" in p.stderr
        assert kernel_state() == before
        assert "spb" not in netns_list()
    finally:
        sh("ip netns del sp-intruder", check=False)
    assert not os.path.exists(os.path.join(rec.state, "state.json.tmp"))
