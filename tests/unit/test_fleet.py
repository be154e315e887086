"""Fleet manifests (SPEC 5.1): block arithmetic, one host's part (select), per-host IPAM,
hosts files across hosts, --host and plan --offline --all-hosts."""
from __future__ import annotations

import contextlib
import io
import ipaddress as ia
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import cli, engine, fleet, ipam
from reconciler.compile import compile_state
from reconciler.errors import ManifestError
from reconciler.manifest import load, parse_text
from reconciler.objects import HostFacts, HostLink, HostState, Kind
from reconciler.statedir import State

N = ia.ip_network
A = ia.ip_address
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "manifests", "examples", "fleet")
HOST = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False,
                                         addresses=(ia.ip_interface("192.168.1.250/24"),))})


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def resolve(state, host, previous=None):
    return ipam.resolve(fleet.select(state, host), ipam.IpamFacts(), previous or ipam.Allocations())


# ---- block arithmetic ---------------------------------------------------------------------------


def test_blocks_of_the_spec_example_lan20():
    rng = N("10.20.0.0/25")
    assert fleet.block_count(rng, 28) == 8
    assert fleet.block(rng, 28, 0) == N("10.20.0.0/28")  # holds the gateway .1: a host with id 0
    assert fleet.block(rng, 28, 1) == N("10.20.0.16/28")  # h1
    assert fleet.block(rng, 28, 2) == N("10.20.0.32/28")  # h2
    assert fleet.block(rng, 28, 7) == N("10.20.0.112/28")
    assert fleet.block(rng, 28, 8) is None
    assert fleet.block_index(rng, 28, A("10.20.0.20")) == 1
    assert fleet.block_index(rng, 28, A("10.20.0.200")) is None  # outside the range
    assert fleet.block_count(N("10.20.0.0/29"), 28) == 0  # a range smaller than one block


def test_blocks_are_counted_from_the_range_start_and_ipv6_likewise():
    assert fleet.block(N("10.20.0.128/25"), 28, 1) == N("10.20.0.144/28")
    assert fleet.block(N("2001:db8::/64"), 80, 3) == N("2001:db8:0:0:3::/80")
    assert fleet.block_index(N("2001:db8::/64"), 80, A("2001:db8::3:0:0:9")) == 3
    assert fleet.block(N("2001:db8::/64"), 80, 1 << 16) is None


def test_default_block_size6_is_longest_prefix_plus_16_capped_at_126():
    s = parse_text(
        "version: 1\nhosts: {h1: {id: 1}}\nnetworks:\n"
        "  a: {parent: eth0, ipv6: true, block_size: 28, subnets: [{subnet: 10.0.0.0/24}, {subnet: '2001:db8::/64'}]}\n"
        "  b: {parent: eth1, ipv6: true, block_size: 28, subnets: [{subnet: 10.0.1.0/24}, {subnet: '2001:db8:1::/120'}]}\n"
        "  c: {parent: eth2, block_size: 28, subnets: [{subnet: 10.0.2.0/24}]}\n"
    )
    assert s.networks["a"].block_size6 == 80
    assert s.networks["b"].block_size6 == 126
    assert s.networks["c"].block_size6 is None and s.networks["c"].block_size == 28


# ---- the manifest ----------------------------------------------------------------------------------


def test_example_fleet_loads_with_hosts_bgp_and_container_hosts():
    s = load([EXAMPLE])
    assert s.fleet and list(s.hosts) == ["h1", "h2", "h3"]
    assert [h.id for h in s.hosts.values()] == [1, 2, 3]
    assert s.hosts["h2"].address == A("192.168.1.12")
    assert s.bgp is not None and s.bgp.asn == 64512 and s.bgp.table == 200 and s.bgp.bfd is None
    assert {c.name: c.host for c in s.containers.values()} == {
        "web1": "h1", "web2": "h2", "web3": "h3", "db1": "h1", "cache3": "h3"}
    assert s.networks["lan20"].block_size == 28 and s.networks["l3a"].block_size == 24


def test_bgp_options_are_read():
    s = parse_text(
        "version: 1\nhosts: {h1: {id: 1, address: 192.168.1.11}, h2: {id: 2, address: 192.168.1.12}}\n"
        "bgp: {asn: 64512, route_reflectors: [h1], table: 300, bfd: true,"
        " peers: [{address: 192.168.1.1, asn: 65000}]}\n"
    )
    assert s.bgp.route_reflectors == ("h1",) and s.bgp.table == 300
    assert s.bgp.bfd.interval_ms == 300 and s.bgp.bfd.multiplier == 3
    assert s.bgp.peers[0].address == A("192.168.1.1") and s.bgp.peers[0].asn == 65000


def test_single_host_manifest_ignores_block_size_with_a_warning():
    s = parse_text("version: 1\nnetworks:\n  n: {parent: eth0, subnets: [{subnet: 10.0.0.0/24}], block_size: 28}\n")
    assert not s.fleet and s.networks["n"].block_size is None
    assert any("block_size is ignored" in str(w) for w in s.warnings)


def test_internal_network_of_a_fleet_needs_no_block_size_or_subnet():
    s = parse_text(
        "version: 1\nhosts: {h1: {id: 1}, h2: {id: 2}}\nnetworks:\n  iso: {internal: true}\n"
        "containers:\n  a: {host: h1, networks: {iso: {}}}\n  b: {host: h2, networks: {iso: {}}}\n"
    )
    ra, _ = resolve(s, "h1")
    rb, _ = resolve(s, "h2")
    # each host has its own isolated copy: the same first address on both
    assert ra.containers["a"].attachments[0].ip == rb.containers["b"].attachments[0].ip


def test_schema_errors_in_one_host_do_not_hide_the_others():
    with pytest.raises(ManifestError) as ei:
        parse_text("version: 1\nhosts:\n  h1: {id: 5000}\n  h2: {id: 2}\ncontainers:\n  c: {host: h2}\n  d: {host: h1}\n")
    msgs = [f"{d.loc.line}:{d.loc.col}: {d.message}" for d in ei.value.diagnostics]
    assert msgs == ["3:12: host h1: id 5000 is out of range 0-4095"], msgs


# ---- select ----------------------------------------------------------------------------------------


FLEET = """\
version: 1
hosts:
  h1: {id: 1}
  h2: {id: 2}
vlans:
  v100: {link: eth1, id: 100}
  v200: {link: eth1, id: 200}
networks:
  lan: {parent: eth0.20, subnets: [{subnet: 10.20.0.0/24}], block_size: 28}
  only1: {parent: v100, subnets: [{subnet: 10.100.0.0/24}], block_size: 28}
  unused: {parent: v200, subnets: [{subnet: 10.200.0.0/24}], block_size: 28}
  iso: {internal: true, subnets: [{subnet: 10.99.0.0/24}]}
containers:
  a1: {host: h1, networks: {lan: {ip: 10.20.0.20, aliases: [db]}, only1: {}, iso: {ip: 10.99.0.5}}}
  a2: {host: h1, networks: {lan: {}}}
  b1: {host: h2, networks: {lan: {}, iso: {}}}
"""


def test_select_keeps_one_hosts_containers_and_what_they_use():
    s = parse_text(FLEET)
    h1 = fleet.select(s, "h1")
    assert list(h1.containers) == ["a1", "a2"]
    assert set(h1.networks) == {"lan", "only1", "iso"}
    assert set(h1.vlans) == {"eth0.20", "v100"}
    assert h1.local_host == "h1" and h1.hosts == s.hosts and h1.bgp == s.bgp and h1.remote == {}
    h2 = fleet.select(s, "h2")
    assert list(h2.containers) == ["b1"]
    assert set(h2.networks) == {"lan", "iso"} and set(h2.vlans) == {"eth0.20"}
    # a1's explicit address on the shared non-internal network, not its internal one
    assert list(h2.remote) == ["a1"]
    assert [(a.network, str(a.ip), a.aliases) for a in h2.remote["a1"].attachments] == [
        ("lan", "10.20.0.20", ("db",))]


def test_select_unknown_host_is_an_error_naming_the_known_ones():
    s = parse_text(FLEET)
    with pytest.raises(fleet.UnknownHost) as ei:
        fleet.select(s, "h9")
    assert "h9" in str(ei.value) and "h1, h2" in str(ei.value)
    assert ei.value.exit_code == 1


def test_narrow_leaves_single_host_states_alone_and_defaults_to_the_host_name(monkeypatch):
    single = parse_text("version: 1\nnetworks: {n: {}}\ncontainers: {c: {networks: {n: {}}}}\n")
    assert fleet.narrow(single, "anything") is single
    s = parse_text(FLEET)
    monkeypatch.setattr(fleet.socket, "gethostname", lambda: "h2.example.com")
    assert fleet.narrow(s, None).local_host == "h2"  # the short name when only it is declared
    monkeypatch.setattr(fleet.socket, "gethostname", lambda: "other")
    with pytest.raises(fleet.UnknownHost, match="this machine's host name 'other'"):
        fleet.narrow(s, None)


# ---- per-host IPAM ---------------------------------------------------------------------------------


def many(n_per_host=40):
    lines = ["version: 1", "hosts:"] + [f"  h{i}: {{id: {i}}}" for i in (1, 2, 3)]
    lines += ["networks:", "  lan: {parent: eth0.20, block_size: 26, subnets: [{subnet: 10.30.0.0/22,"
              " gateway: 10.30.0.1, aux_addresses: {router: 10.30.0.70}}]}", "containers:"]
    for i in (1, 2, 3):
        for j in range(n_per_host):
            lines.append(f"  c{i}_{j}: {{host: h{i}, networks: {{lan: {{}}}}}}")
    lines.append("  fixed: {host: h2, networks: {lan: {ip: 10.30.0.130}}}")  # inside h2's block
    return parse_text("\n".join(lines) + "\n")


def test_three_hosts_many_containers_never_collide_and_stay_in_their_blocks():
    s = many()
    seen = {}
    for host in ("h1", "h2", "h3"):
        r, alloc = resolve(s, host)
        blk = fleet.block(N("10.30.0.0/22"), 26, s.hosts[host].id)
        for c in r.containers.values():
            ip = c.attachments[0].ip
            assert ip in blk, (host, c.name, ip, blk)
            assert ip not in seen, (c.name, seen.get(ip))
            seen[ip] = c.name
        assert len(r.containers) == 40 + (host == "h2")
    assert A("10.30.0.70") not in seen  # the aux address inside h1's block is never handed out
    assert seen[A("10.30.0.64")] == "c1_0"  # a block's first address is an ordinary address
    assert A("10.30.0.130") not in [a for a, c in seen.items() if c != "fixed"]


def test_automatic_addresses_are_stable_across_runs_on_a_fleet_host():
    s = many(5)
    r1, alloc = resolve(s, "h3")
    r2, _ = resolve(s, "h3", alloc)
    assert r1.containers == r2.containers


def test_underlay_addresses_of_every_host_are_never_handed_out():
    text = ("version: 1\nhosts: {h1: {id: 0, address: 192.168.1.11}, h2: {id: 1, address: 192.168.1.2}}\n"
            "networks:\n  lan: {parent: eth0, block_size: 28, subnets: [{subnet: 192.168.1.0/24}]}\n"
            "containers:\n  a: {host: h1, networks: {lan: {}}}\n  b: {host: h1, networks: {lan: {}}}\n")
    r, _ = resolve(parse_text(text), "h1")
    # .1 is the gateway; h2's .2 lies in h1's block 0 and is not h1's to hand out
    assert [str(c.attachments[0].ip) for c in r.containers.values()] == ["192.168.1.3", "192.168.1.4"]


def test_exhausted_block_names_the_host_and_its_block():
    text = ("version: 1\nhosts: {h1: {id: 1}}\nnetworks:\n  lan: {parent: eth0, block_size: 29, "
            "subnets: [{subnet: 10.0.0.0/24}]}\ncontainers:\n" +
            "".join(f"  c{j}: {{host: h1, networks: {{lan: {{}}}}}}\n" for j in range(9)))
    with pytest.raises(ManifestError) as ei:  # validate counts the host's block (no kernel needed)
        parse_text(text)
    assert ("container c8 network lan: no automatic IPv4 address left on host h1: its block "
            "10.0.0.8/29 (block size /29, host id 1)") in str(ei.value)
    from reconciler.manifest import semantic

    with pytest.MonkeyPatch.context() as m:  # and IPAM, the backstop, says the same
        m.setattr(semantic._Checker, "exhaustion", lambda *a: None)
        state = parse_text(text)
    with pytest.raises(ManifestError) as ei:
        resolve(state, "h1")
    msg = str(ei.value)
    assert "container c8: no free IPv4 address left on network lan in block 1 of host h1 (10.0.0.8/29" in msg


def plan_after(state_text, host, edited_text):
    """Converge host on state_text (a perfect apply), then plan edited_text on it."""
    before = fleet.select(parse_text(state_text), host)
    p = engine.plan_for(before, HostState(facts=HOST), State())
    live = HostState(compile_state(p.resolved, HOST).desired.objects.values(), HOST)
    state = State(allocations=p.allocations)
    assert engine.plan_for(before, live, state).plan.empty
    after = fleet.select(parse_text(edited_text), host)
    return engine.plan_for(after, live, state)


def addr_changes(plan):
    return sorted((a.op.value, a.obj.describe()) for a in plan.actions if a.kind is Kind.ADDRESS)


MOVE = """\
version: 1
hosts: {h1: {id: 1}, h2: {id: 2}}
networks:
  lan: {parent: eth0.20, subnets: [{subnet: 10.20.0.0/24}], block_size: 28}
containers:
  a: {host: h1, networks: {lan: {}}}
  b: {host: h1, networks: {lan: {ip: 10.20.0.200}}}
  c: {host: h2, networks: {lan: {}}}
"""


def test_changing_a_hosts_id_moves_its_automatic_addresses_only():
    p = plan_after(MOVE, "h1", MOVE.replace("h1: {id: 1}", "h1: {id: 4}"))
    assert p.resolved.containers["a"].attachments[0].ip == A("10.20.0.64")
    assert p.resolved.containers["b"].attachments[0].ip == A("10.20.0.200")  # explicit: stays
    # the address is keyed by its value: the move is the old one deleted, the new one added
    assert addr_changes(p.plan) == [("create", "a/eth0 10.20.0.64/24"), ("delete", "a/eth0 10.20.0.16/24")]


def test_changing_a_block_size_moves_automatic_addresses_and_nothing_else_does():
    p = plan_after(MOVE, "h1", MOVE.replace("block_size: 28", "block_size: 27"))
    assert p.resolved.containers["a"].attachments[0].ip == A("10.20.0.32")
    assert addr_changes(p.plan)
    # another host's containers changing does not move anything here
    p = plan_after(MOVE, "h1", MOVE.replace("c: {host: h2, networks: {lan: {}}}",
                                            "c: {host: h2, networks: {lan: {}}}\n  d: {host: h2, networks: {lan: {}}}"))
    assert p.plan.empty


# ---- hosts files -----------------------------------------------------------------------------------


def hosts_files(state, host):
    r, _ = resolve(state, host)
    compiled = compile_state(r, None, offline=True)
    return {o.ns: o.content for o in compiled.desired.of_kind(Kind.HOSTS)}


def test_hosts_files_list_own_containers_and_other_hosts_explicit_addresses():
    s = parse_text(FLEET)
    files = hosts_files(s, "h2")
    assert list(files) == ["b1"]
    b1 = files["b1"]
    assert "10.20.0.20\ta1 db" in b1  # another host's explicit address on a shared network
    assert "a2" not in b1  # another host's automatic address is not known in file mode
    assert "10.99.0.5" not in b1  # internal networks list only this host's containers
    files = hosts_files(s, "h1")
    assert "b1" not in files["a1"] and "a2" in files["a1"]


# ---- command line ----------------------------------------------------------------------------------


def test_plan_all_hosts_text_prints_every_hosts_plan():
    rc, out, err = run_cli("plan", "--offline", "--all-hosts", "--detailed-exitcode", EXAMPLE)
    assert rc == 2, err
    parts = out.split("=== host ")
    assert [p.split(" ", 1)[0] for p in parts[1:]] == ["h1", "h2", "h3"]
    h1, h2, h3 = parts[1:]
    assert "netns web1" in h1 and "netns db1" in h1 and "web2" not in h1.split("hosts /etc")[0]
    assert "address web2/eth1 10.20.0.200/24" in h2 and "netns web1" not in h2
    assert "address web3/eth1 10.20.0.48/24" in h3 and "address cache3/eth0 10.20.0.49/24" in h3


def test_plan_all_hosts_json():
    rc, out, err = run_cli("plan", "--offline", "--all-hosts", "--format", "json", EXAMPLE)
    assert rc == 0, err
    data = json.loads(out)
    assert [(h["host"], h["id"]) for h in data["hosts"]] == [("h1", 1), ("h2", 2), ("h3", 3)]
    netns = {h["host"]: sorted(c["id"] for c in h["plan"]["changes"] if c["kind"] == "netns") for h in data["hosts"]}
    assert netns == {"h1": ["db1", "web1"], "h2": ["web2"], "h3": ["cache3", "web3"]}
    # the same as each host's own plan
    rc, one, _ = run_cli("plan", "--offline", "--host", "h2", "--format", "json", EXAMPLE)
    assert json.loads(one) == data["hosts"][1]["plan"]


def test_all_hosts_needs_offline_and_no_host():
    rc, _, err = run_cli("plan", "--all-hosts", EXAMPLE)
    assert rc == 1 and "--all-hosts needs --offline" in err
    rc, _, err = run_cli("plan", "--offline", "--all-hosts", "--host", "h1", EXAMPLE)
    assert rc == 1 and "leave out --host" in err


@pytest.mark.parametrize("command", [["plan", "--offline"], ["validate"]])
def test_unknown_host_is_exit_1_naming_the_known_hosts(command):
    rc, out, err = run_cli(*command, "--host", "h9", EXAMPLE)
    assert rc == 1
    assert "'h9' is not a host of this fleet manifest (hosts: h1, h2, h3)" in err
    assert "Traceback" not in err and out == ""


def test_apply_refuses_an_unknown_host_before_touching_anything(monkeypatch):
    monkeypatch.setattr(cli, "_kernel", lambda: pytest.fail("the kernel must not be touched"))
    rc, _, err = run_cli("apply", "--host", "h9", "--state-dir", "/nonexistent", EXAMPLE)
    assert rc == 1 and "not a host of this fleet manifest" in err


def test_plan_defaults_to_this_machines_host_name(monkeypatch):
    monkeypatch.setattr(fleet.socket, "gethostname", lambda: "h3")
    rc, out, err = run_cli("plan", "--offline", EXAMPLE)
    assert rc == 0, err
    assert "netns web3" in out and "netns web1" not in out


def test_single_host_manifest_ignores_host():
    path = os.path.join(ROOT, "manifests", "examples", "ipvlan20.yaml")
    plain = run_cli("plan", "--offline", "--format", "json", path)
    with_host = run_cli("plan", "--offline", "--format", "json", "--host", "whatever", path)
    assert plain == with_host and plain[0] == 0
    assert run_cli("validate", "--host", "whatever", path)[0] == 0


def test_validate_reports_hosts_and_the_selected_hosts_part():
    rc, out, _ = run_cli("validate", "--host", "h1", EXAMPLE)
    assert rc == 0
    assert out.strip() == (
        "OK: 2 networks, 0 VLANs, 5 containers, 3 hosts (host h1: 2 networks, 2 containers); "
        "1 implied VLAN link (from eth0.N-style parents)"
    )


def test_every_command_takes_host():
    parser = cli.build_parser()
    for argv in (["validate", "d"], ["plan", "d"], ["apply", "d"], ["watch", "d"], ["status"]):
        assert parser.parse_args(argv[:1] + ["--host", "h1"] + argv[1:]).host == "h1"


def test_daemon_applies_only_its_hosts_part(tmp_path):
    from reconciler.daemon.watch import Daemon

    d = Daemon([str(tmp_path)], str(tmp_path / "state"), status_file=None, host="h2",
               loader=lambda paths: load([EXAMPLE]), kernel_factory=lambda: None)
    assert list(d.load([str(tmp_path)]).containers) == ["web2"]
    d.host = "h9"
    with pytest.raises(fleet.UnknownHost):  # a UserError: the daemon keeps its last valid state
        d.load([str(tmp_path)])


def test_all_hosts_on_a_single_host_manifest_prints_its_one_plan():
    path = os.path.join(ROOT, "manifests", "examples", "ipvlan20.yaml")
    assert run_cli("plan", "--offline", "--all-hosts", path) == run_cli("plan", "--offline", path)


# ---- property: hosts never collide ------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.sets(st.integers(0, 15), min_size=2, max_size=5),
    prefix=st.integers(20, 24),
    extra=st.integers(4, 6),
    per_host=st.integers(1, 12),
    v6=st.booleans(),
)
def test_property_automatic_addresses_of_different_hosts_never_collide(ids, prefix, extra, per_host, v6):
    size = min(prefix + extra, 30)
    net = ia.ip_network(f"10.0.0.0/{prefix}")
    v6s = ", {subnet: 'fd00:1::/64'}" if v6 else ""
    lines = ["version: 1", "hosts:"] + [f"  h{i}: {{id: {i}}}" for i in sorted(ids)]
    lines += ["networks:", f"  lan: {{parent: eth0, block_size: {size}, ipv6: {str(v6).lower()}, "
              f"subnets: [{{subnet: {net}}}{v6s}]}}", "containers:"]
    for i in sorted(ids):
        lines += [f"  c{i}_{j}: {{host: h{i}, networks: {{lan: {{}}}}}}" for j in range(per_host)]
    from reconciler.manifest import semantic

    with pytest.MonkeyPatch.context() as m:  # validate would refuse a full block up front;
        m.setattr(semantic._Checker, "exhaustion", lambda *a: None)  # IPAM is what is tested
        s = parse_text("\n".join(lines) + "\n")
    seen = set()
    for i in sorted(ids):
        try:
            r, _ = resolve(s, f"h{i}")
        except ManifestError as e:  # a small block may run out: said so, never a collision
            assert "in block" in str(e)
            continue
        for c in r.containers.values():
            att = c.attachments[0]
            assert att.ip in fleet.block(net, size, i)
            if v6:
                assert att.ip6 in fleet.block(ia.ip_network("fd00:1::/64"), 80, i)
            for a in (att.ip, att.ip6):
                if a is not None:
                    assert a not in seen
                    seen.add(a)
