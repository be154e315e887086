"""The kernel harness works: real ipvlan/vlan/dummy links made with pyroute2, the kernel's own
report of them (`ip -j -d link show` and pyroute2 dumps), and real pings between namespaces.

These are the facts the reconciler builds on; if one fails here, engine tests cannot be trusted.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Registers the extended ipvlan link kind (IFLA_IPVLAN_FLAGS); must come before pyroute2 use.
import pyroute2_oracle as linkkinds  # noqa: E402  isort: skip  (tests/, on pytest's pythonpath)
from pyroute2 import IPRoute  # noqa: E402

MODES = linkkinds.IPVLAN_MODE  # l2=0 l3=1 l3s=2
FLAGS = linkkinds.IPVLAN_FLAG  # bridge=0 private=1 vepa=2


def link_info(ip_json, ifname, netns=None):
    links = ip_json(["-d", "link", "show", "dev", ifname], netns=netns)
    assert len(links) == 1, links
    return links[0]


def add_ipvlan(ipr, parent, ifname, mode="l2", flag="bridge"):
    parent_index = ipr.link_lookup(ifname=parent)[0]
    ipr.link("add", ifname=ifname, kind="ipvlan", link=parent_index,
             ipvlan_mode=MODES[mode], ipvlan_flags=FLAGS[flag])
    return ipr.link_lookup(ifname=ifname)[0]


def ipvlan_endpoint(ipr, parent, netns, addrs, mode="l2", flag="bridge", routes=()):
    """An ipvlan slave of PARENT moved into NETNS as eth0, up, with ADDRS and ROUTES."""
    tmp = "kt-" + netns[-10:]
    index = add_ipvlan(ipr, parent, tmp, mode, flag)
    ipr.link("set", index=index, net_ns_fd=netns)
    with IPRoute(netns=netns) as nr:
        index = nr.link_lookup(ifname=tmp)[0]
        nr.link("set", index=index, ifname="eth0")
        for addr in addrs:
            address, prefixlen = addr.split("/")
            extra = {"flags": 0x02} if ":" in address else {}  # IFA_F_NODAD for IPv6
            nr.addr("add", index=index, address=address, prefixlen=int(prefixlen), **extra)
        nr.link("set", index=index, state="up")
    for route in routes:
        subprocess.run(["ip", "-n", netns, *route.split()], check=True)


def ipvlan_data(msg):
    """IFLA_INFO_DATA of a pyroute2 link dump as {attr name: value}."""
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    assert data is not None, msg
    return dict(data["attrs"])


# ---------------------------------------------------------------------------------------------


def test_vm_environment(host_eth0, ip_json, run, netns_factory):
    assert os.environ.get("IPVLAN_RECONCILER_VM") == "1"
    assert os.geteuid() == 0
    for module in ("ipvlan", "8021q", "dummy"):
        assert os.path.isdir(f"/sys/module/{module}"), module
    eth0 = link_info(ip_json, host_eth0)
    assert eth0["linkinfo"]["info_kind"] == "dummy"
    assert "UP" in eth0["flags"]
    ns = netns_factory()
    assert ns in run("ip netns list")
    assert ip_json("link show", netns=ns)[0]["ifname"] == "lo"


@pytest.mark.parametrize("flag", list(FLAGS))
@pytest.mark.parametrize("mode", list(MODES))
def test_ipvlan_mode_and_flag_reach_the_kernel(mode, flag, host_eth0, ip_json):
    ifname = f"kt-{mode}-{flag[:4]}"
    with IPRoute() as ipr:
        index = add_ipvlan(ipr, host_eth0, ifname, mode, flag)
        data = ipvlan_data(ipr.get_links(index)[0])
    # pyroute2 decodes both attributes back (IFLA_IPVLAN_FLAGS only with linkkinds registered)
    assert data["IFLA_IPVLAN_MODE"] == MODES[mode]
    assert data["IFLA_IPVLAN_FLAGS"] == FLAGS[flag]
    # and iproute2 reads the same from the kernel: {"mode": "l3", "private": true}
    link = link_info(ip_json, ifname)
    assert link["link"] == host_eth0
    assert link["linkinfo"]["info_kind"] == "ipvlan"
    info = link["linkinfo"]["info_data"]
    assert info["mode"] == mode
    assert info.get(flag) is True, info
    assert not any(info.get(other) for other in FLAGS if other != flag), info


def test_vlan_link(host_eth0, ip_json):
    with IPRoute() as ipr:
        parent = ipr.link_lookup(ifname=host_eth0)[0]
        ipr.link("add", ifname=f"{host_eth0}.42", kind="vlan", link=parent, vlan_id=42)
        index = ipr.link_lookup(ifname=f"{host_eth0}.42")[0]
        ipr.link("set", index=index, state="up")
        data = ipvlan_data(ipr.get_links(index)[0])
    assert data["IFLA_VLAN_ID"] == 42
    link = link_info(ip_json, f"{host_eth0}.42")
    assert link["link"] == host_eth0
    assert link["linkinfo"]["info_kind"] == "vlan"
    assert link["linkinfo"]["info_data"]["id"] == 42
    assert link["linkinfo"]["info_data"]["protocol"] == "802.1Q"
    assert "UP" in link["flags"]


def test_dummy_link_is_an_ipvlan_parent(ip_json):
    with IPRoute() as ipr:
        ipr.link("add", ifname="kt-dummy0", kind="dummy")
        ipr.link("set", index=ipr.link_lookup(ifname="kt-dummy0")[0], state="up")
        add_ipvlan(ipr, "kt-dummy0", "kt-dummy0-v", "l3", "private")
    assert link_info(ip_json, "kt-dummy0")["linkinfo"]["info_kind"] == "dummy"
    slave = link_info(ip_json, "kt-dummy0-v")
    assert slave["link"] == "kt-dummy0"
    assert slave["linkinfo"]["info_data"] == {"mode": "l3", "private": True}


def test_l2_bridge_slaves_in_two_namespaces_ping_each_other(host_eth0, netns_factory, ping, ip_json):
    a, b = netns_factory(), netns_factory()
    with IPRoute() as ipr:
        ipvlan_endpoint(ipr, host_eth0, a, ["192.168.1.11/24", "fd00:1::11/64"])
        ipvlan_endpoint(ipr, host_eth0, b, ["192.168.1.12/24", "fd00:1::12/64"])
    eth0 = link_info(ip_json, "eth0", netns=a)
    assert eth0["linkinfo"]["info_kind"] == "ipvlan"
    assert eth0["linkinfo"]["info_data"]["mode"] == "l2"
    assert "UP" in eth0["flags"]
    assert ping(a, "192.168.1.12") and ping(b, "192.168.1.11")
    assert ping(a, "fd00:1::12") and ping(b, "fd00:1::11")


@pytest.mark.parametrize("flag", ["private", "vepa"])
def test_l2_private_and_vepa_slaves_cannot_reach_each_other(flag, host_eth0, netns_factory, ping, run, ip_json):
    """private drops slave-to-slave traffic; vepa sends it out of the parent for an external
    switch to hairpin, and a dummy parent has none. Switching the port to bridge in place
    (same links, same addresses) makes the same ping work: the flag was the only difference."""
    a, b = netns_factory(), netns_factory()
    with IPRoute() as ipr:
        ipvlan_endpoint(ipr, host_eth0, a, ["192.168.1.21/24"], flag=flag)
        ipvlan_endpoint(ipr, host_eth0, b, ["192.168.1.22/24"], flag=flag)
    assert link_info(ip_json, "eth0", netns=a)["linkinfo"]["info_data"] == {"mode": "l2", flag: True}
    assert not ping(a, "192.168.1.22")
    assert not ping(b, "192.168.1.21")
    run(["ip", "-n", a, "link", "set", "dev", "eth0", "type", "ipvlan", "mode", "l2", "bridge"])
    assert link_info(ip_json, "eth0", netns=b)["linkinfo"]["info_data"] == {"mode": "l2", "bridge": True}
    for ns in (a, b):  # forget the FAILED neighbour entries the refused pings left
        run(["ip", "-n", ns, "neigh", "flush", "all"])
    assert ping(a, "192.168.1.22") and ping(b, "192.168.1.21")


def test_l3_pair_on_different_subnets_routes_with_default_dev_eth0(host_eth0, netns_factory, ping, ip_json):
    a, b = netns_factory(), netns_factory()
    with IPRoute() as ipr:
        ipvlan_endpoint(ipr, host_eth0, a, ["192.168.214.10/24", "fd00:214::10/64"], mode="l3")
        ipvlan_endpoint(ipr, host_eth0, b, ["10.1.214.10/24", "fd00:215::10/64"], mode="l3")
    assert link_info(ip_json, "eth0", netns=b)["linkinfo"]["info_data"]["mode"] == "l3"
    # without a route the other subnet is unreachable ...
    assert not ping(a, "10.1.214.10")
    for ns in (a, b):
        subprocess.run(["ip", "-n", ns, "route", "add", "default", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "-6", "route", "add", "default", "dev", "eth0"], check=True)
    routes = ip_json("route show default", netns=a)
    assert len(routes) == 1 and routes[0]["dev"] == "eth0" and "gateway" not in routes[0], routes
    # ... with `default dev eth0` the l3 port routes between the subnets
    assert ping(a, "10.1.214.10") and ping(b, "192.168.214.10")
    assert ping(a, "fd00:215::10") and ping(b, "fd00:214::10")


def test_cleanup_removes_links_and_namespaces_a_test_left(kernel_cleanup, host_eth0, run, ip_json):
    run("ip netns add kt-leftover")
    run("ip link add kt-left-d type dummy")
    run(["ip", "link", "add", "link", host_eth0, "name", "kt-left-v", "type", "ipvlan", "mode", "l2"])
    run("ip link set kt-left-v netns kt-leftover")
    run(["ip", "link", "add", "link", host_eth0, "name", f"{host_eth0}.77", "type", "vlan", "id", "77"])
    run(["ip", "addr", "add", "192.168.1.99/24", "dev", host_eth0])
    os.makedirs("/etc/netns/kt-leftover", exist_ok=True)
    removed = kernel_cleanup.sweep()
    assert "netns kt-leftover" in removed and "link kt-left-d" in removed, removed
    names = {l["ifname"] for l in ip_json("link show")}
    assert not names & {"kt-left-d", f"{host_eth0}.77"}, names
    assert "kt-leftover" not in run("ip netns list")
    assert not os.path.exists("/etc/netns/kt-leftover")
    addrs = [a["local"] for a in ip_json(["addr", "show", "dev", host_eth0])[0]["addr_info"]]
    assert "192.168.1.99" not in addrs and "192.168.1.250" in addrs
    # the ipvlan slave died with its namespace: eth0 has no slaves left
    assert not [l for l in ip_json("-d link show") if l.get("link") == host_eth0]


CONFTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py")


def _inner_pytest(tmp_path, test_source, env_overrides):
    """Run pytest on a scratch kernel-test directory that uses this conftest."""
    d = tmp_path / "inner"
    d.mkdir()
    (d / "conftest.py").write_text(open(CONFTEST).read())
    (d / "test_inner.py").write_text(textwrap.dedent(test_source))
    env = dict(os.environ, **env_overrides)
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(d)],
        capture_output=True, text=True, env=env, cwd=str(d), timeout=300,
    )


def test_skipped_or_xfailed_kernel_tests_fail(tmp_path):
    proc = _inner_pytest(tmp_path, """\
        import pytest

        def test_skips():
            pytest.skip("no ipvlan here")

        @pytest.mark.xfail(reason="known bug")
        def test_xfails():
            assert False

        def test_passes():
            pass
        """, {})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed, 1 passed" in out, out
    assert "skip is not allowed for kernel tests: no ipvlan here" in out, out
    assert "xfail is not allowed for kernel tests" in out, out


def _harness_module(request):
    for plugin in request.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == CONFTEST:
            return plugin
    raise AssertionError("tests/kernel/conftest.py is not loaded")


def test_kernel_tests_refuse_to_run_outside_the_vm(request, monkeypatch):
    """Without the VM marker the harness reports a problem, so `_require_vm` fails every
    kernel test (checked in-process: a second pytest under emulation costs a minute)."""
    harness = _harness_module(request)
    monkeypatch.setattr(harness, "_ENV_STATE", None)
    monkeypatch.delenv("IPVLAN_RECONCILER_VM")
    env = harness.environment()
    assert not env["in_vm"]
    assert any("IPVLAN_RECONCILER_VM=1 is not set" in p for p in env["problems"]), env
    assert env["ipvlan_works"] is None  # no probing unless told we are in the VM
    with pytest.raises(pytest.fail.Exception, match="kernel tests must run in the VM: use scripts/test kernel"):
        harness.require_vm()
