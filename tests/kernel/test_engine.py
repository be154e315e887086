"""Reconcile engine on the real kernel (VM only): apply, idempotency, replace, delete,
pending parents, ownership, state loss. Every assertion reads kernel state."""
import json
import os
import shutil

import pytest

from enginekit import Reconciler, addrs, default_route, ipj, links, netns_list, ping, routes, sh


@pytest.fixture
def rec(tmp_path):
    r = Reconciler(tmp_path)
    yield r
    r.teardown()


L2_AND_L3 = """\
version: 1
networks:
  k20:
    parent: eth0.20
    subnets: [{subnet: 192.168.20.0/24, gateway: 192.168.20.1}]
  k3:
    ipvlan_mode: l3
    subnets: [{subnet: 192.168.214.0/24}, {subnet: 10.1.214.0/24}]
containers:
  ka: {networks: {k20: {ip: 192.168.20.10, aliases: [alpha]}}}
  kb: {networks: {k20: {}}}
  kc: {networks: {k3: {ip: 192.168.214.10}}}
  kd: {networks: {k3: {ip: 10.1.214.10}}}
"""


def test_apply_creates_what_the_seed_describes(rec):
    rec.write("a.yaml", L2_AND_L3)
    out = rec.apply()
    assert out["converged"] and out["exit_code"] == 0
    host = links()
    assert host["eth0.20"]["linkinfo"]["info_kind"] == "vlan"
    assert host["eth0.20"]["linkinfo"]["info_data"]["id"] == 20
    assert "UP" in host["eth0.20"]["flags"]
    assert set(netns_list()) >= {"ka", "kb", "kc", "kd"}
    ka = links("ka")["eth0"]
    assert ka["linkinfo"]["info_kind"] == "ipvlan"
    assert ka["linkinfo"]["info_data"]["mode"] == "l2"
    assert addrs("ka") == ["192.168.20.10/24"]
    assert addrs("kb") == ["192.168.20.2/24"]  # lowest free after the gateway
    r = default_route("ka")
    assert r["gateway"] == "192.168.20.1" and r["dev"] == "eth0"
    kc = links("kc")["eth0"]
    assert kc["linkinfo"]["info_data"]["mode"] == "l3"
    r = default_route("kc")
    assert r["dev"] == "eth0" and "gateway" not in r
    assert any(x["dst"] == "10.1.214.0/24" and x.get("scope") == "link" for x in routes("kc"))
    # connectivity: same L2 subnet, and L3 across subnets on one parent
    assert ping("ka", "192.168.20.2")
    assert ping("kc", "10.1.214.10") and ping("kd", "192.168.214.10")
    # names resolve through /etc/netns/<ns>/hosts (ip netns exec bind-mounts it)
    assert ping("kb", "alpha") and ping("kb", "ka")
    assert "192.168.20.10\tka alpha" in open("/etc/netns/kb/hosts").read()
    # no IPv6 on a v4-only network
    assert sh("ip netns exec ka cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6").stdout.strip() == "1"


def test_second_apply_is_a_noop_without_netlink_writes_or_flaps(rec):
    rec.write("a.yaml", L2_AND_L3)
    rec.apply()
    before = {ns: links(ns)["eth0"]["ifindex"] for ns in ("ka", "kb", "kc", "kd")}
    host_before = links()["eth0.20"]["ifindex"]
    out = rec.apply()
    assert out["plan"]["changes"] == []
    assert out["netlink_writes"] == 0
    assert {ns: links(ns)["eth0"]["ifindex"] for ns in before} == before
    assert links()["eth0.20"]["ifindex"] == host_before
    p = rec.plan("--detailed-exitcode")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "No changes" in p.stdout


def test_mode_change_replaces_endpoints_address_change_touches_one_container(rec):
    rec.write("a.yaml", L2_AND_L3)
    rec.apply()
    idx = {ns: links(ns)["eth0"]["ifindex"] for ns in ("ka", "kb", "kc", "kd")}
    rec.write("a.yaml", L2_AND_L3.replace("kd: {networks: {k3: {ip: 10.1.214.10}}}",
                                          "kd: {networks: {k3: {ip: 10.1.214.99}}}"))
    out = rec.apply()
    kinds = {(c["op"], c["kind"], c["id"].split("/")[0].split(" ")[0]) for c in out["result"]["done"]}
    touched = {k[2] for k in kinds if k[1] not in ("hosts",)}
    assert touched == {"kd"}, kinds
    assert addrs("kd") == ["10.1.214.99/24"]
    assert {ns: links(ns)["eth0"]["ifindex"] for ns in idx} == idx  # no link recreated
    # mode change: the network's endpoints are replaced, the other network untouched
    rec.write("a.yaml", L2_AND_L3.replace("  k20:\n", "  k20:\n    ipvlan_mode: l3\n"))
    out = rec.apply()
    replaced = sorted(c["id"] for c in out["plan"]["changes"] if c["op"] == "replace")
    assert replaced == ["ka/eth0", "kb/eth0"]
    assert links("ka")["eth0"]["linkinfo"]["info_data"]["mode"] == "l3"
    assert links("kc")["eth0"]["ifindex"] == idx["kc"]
    assert default_route("ka").get("gateway") is None
    assert addrs("ka") == ["192.168.20.10/24"]


def test_removal_removes_exactly_what_we_created(rec):
    sh("ip link add link eth0 name foo type vlan id 40 && ip link set foo up")
    sh("ip netns add handmade")
    try:
        rec.write("a.yaml", L2_AND_L3)
        rec.write("b.yaml", """\
            version: 1
            networks:
              ipvlan40: {parent: foo, subnets: [{subnet: 192.168.40.0/24, gateway: 192.168.40.1}]}
            containers:
              kf: {networks: {ipvlan40: {}}}
            """)
        rec.apply()
        dummies = [n for n, l in links().items() if n.startswith("di-")]
        assert len(dummies) == 1
        assert links("kf")["eth0"]["link_index"] == links()["foo"]["ifindex"]
        rec.clear()
        out = rec.apply()
        assert out["converged"]
        host = links()
        assert "eth0.20" not in host and not any(n.startswith("di-") for n in host)
        assert "foo" in host and host["foo"]["linkinfo"]["info_data"]["id"] == 40
        assert "handmade" in netns_list()
        assert not set(netns_list()) & {"ka", "kb", "kc", "kd", "kf"}
        assert not os.path.exists("/etc/netns/ka")
    finally:
        sh("ip link del foo", check=False)
        sh("ip netns del handmade", check=False)


def test_preexisting_eth0_dot_vlan_is_used_and_never_deleted(rec):
    sh("ip link add link eth0 name eth0.20 type vlan id 20 && ip link set eth0.20 up")
    try:
        rec.write("a.yaml", L2_AND_L3)
        out = rec.apply()
        assert not any(c["kind"] == "vlan" for c in out["plan"]["changes"])
        assert any("eth0.20" in n for n in out["plan"]["notes"])
        rec.clear()
        rec.apply()
        assert "eth0.20" in links()
    finally:
        sh("ip link del eth0.20", check=False)


def test_private_flag_isolates_and_l2_subnets_need_a_router(rec):
    rec.write("a.yaml", """\
        version: 1
        networks:
          priv: {parent: eth0.50, ipvlan_flag: private, subnets: [{subnet: 10.50.0.0/24}]}
          two:
            parent: eth0.60
            subnets: [{subnet: 10.60.0.0/24}, {subnet: 10.61.0.0/24}]
        containers:
          p1: {networks: {priv: {ip: 10.50.0.10}}}
          p2: {networks: {priv: {ip: 10.50.0.11}}}
          s1: {networks: {two: {ip: 10.60.0.10}}}
          s2: {networks: {two: {ip: 10.60.0.11}}}
          s3: {networks: {two: {ip: 10.61.0.10}}}
        """)
    rec.apply()
    assert links("p1")["eth0"]["linkinfo"]["info_data"].get("private") is True  # iproute2: {"private": true}
    assert not ping("p1", "10.50.0.11")
    assert ping("s1", "10.60.0.11")
    assert not ping("s1", "10.61.0.10")  # different L2 subnet, no router


def test_missing_parent_is_pending_exit_3_and_converges_when_it_appears(rec):
    rec.write("a.yaml", """\
        version: 1
        networks:
          late: {parent: eth7, subnets: [{subnet: 10.70.0.0/24}]}
          now: {subnets: [{subnet: 10.71.0.0/24}]}
        containers:
          w1: {networks: {late: {}}}
          w2: {networks: {now: {}}}
        """)
    out = rec.apply(expect=3)
    assert out["exit_code"] == 3
    assert any("parent eth7 does not exist" in p["reason"] for p in out["plan"]["pending"])
    assert addrs("w2") == ["10.71.0.2/24"]
    assert "eth0" not in links("w1")
    sh("ip link add eth7 type dummy && ip link set eth7 up")
    try:
        out = rec.apply()
        assert addrs("w1") == ["10.70.0.2/24"]
        assert links("w1")["eth0"]["linkinfo"]["info_kind"] == "ipvlan"
    finally:
        rec.teardown()
        sh("ip link del eth7", check=False)


def test_clash_with_unowned_namespace_is_an_error_and_changes_nothing(rec):
    sh("ip netns add ka")
    try:
        rec.write("a.yaml", L2_AND_L3)
        before_links = set(links())
        p = rec.cli("apply")
        assert p.returncode == 1
        assert "network namespace ka exists and is not managed" in p.stderr
        assert set(links()) == before_links
        assert "kb" not in netns_list()
        assert links("ka").keys() == {"lo"}
    finally:
        sh("ip netns del ka", check=False)


def test_status_json_feeds_offline_plan(rec, tmp_path, monkeypatch):
    rec.write("a.yaml", L2_AND_L3)
    rec.apply()
    st = rec.cli("status", "--format", "json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    names = {c["name"] for c in data["summary"]["containers"]}
    assert {"ka", "kb", "kc", "kd"} <= names
    with open(os.path.join(rec.state, "state.json")) as f:  # the ULA /48 the host's IPAM uses
        assert data["host"]["ula_prefix"] == json.load(f)["allocations"]["ula48"]
    live = tmp_path / "live.json"
    live.write_text(st.stdout)
    p = rec.plan("--offline", "--live-state", str(live), "--detailed-exitcode")
    assert p.returncode == 0, p.stdout + p.stderr
    # a new automatic IPv6 subnet: planned from another machine id, it is still the host's
    rec.write("b.yaml", "version: 1\nnetworks:\n  k6: {ipv6: true}\ncontainers:\n  kf: {networks: {k6: {}}}\n")
    online = rec.plan("--format", "json")
    import contextlib
    import io

    from reconciler import cli, engine

    monkeypatch.setattr(engine, "machine_id", lambda: "a-ci-runner")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # CI: no copy of the host's state directory
        cli.main(["plan", rec.dir, "--offline", "--live-state", str(live), "--format", "json",
                  "--state-dir", str(tmp_path / "ci-state")])
    assert out.getvalue() == online.stdout and data["host"]["ula_prefix"].split("::")[0] in online.stdout
    txt = rec.cli("status")
    assert "k20" in txt.stdout and "192.168.20.10/24" in txt.stdout


def test_lost_or_corrupt_state_is_rebuilt_without_moving_addresses(rec):
    rec.write("a.yaml", L2_AND_L3.replace("  kb: {networks: {k20: {}}}", "  kb: {networks: {k20: {}}}\n  ke: {networks: {k20: {}}}"))
    rec.apply()
    before = {ns: addrs(ns) for ns in ("kb", "ke")}
    shutil.rmtree(rec.state)
    out = rec.apply()
    assert out["plan"]["changes"] == []
    assert {ns: addrs(ns) for ns in before} == before
    with open(os.path.join(rec.state, "state.json"), "w") as f:
        f.write("{not json")
    out = rec.apply()
    assert out["plan"]["changes"] == []
    assert any("corrupt" in w for w in out["plan"]["warnings"])
    assert {ns: addrs(ns) for ns in before} == before


def test_hand_deleted_objects_are_repaired_by_the_next_apply(rec):
    rec.write("a.yaml", L2_AND_L3)
    rec.apply()
    sh("ip -n ka route del default")
    sh("ip -n kb addr flush dev eth0")
    sh("ip -n kc link del eth0")
    out = rec.apply()
    assert out["converged"]
    assert default_route("ka")["gateway"] == "192.168.20.1"
    assert addrs("kb") == ["192.168.20.2/24"]
    assert links("kc")["eth0"]["linkinfo"]["info_data"]["mode"] == "l3"
    assert ping("kc", "10.1.214.10")
