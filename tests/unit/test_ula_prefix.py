"""The ULA prefix automatic IPv6 subnets come from: the manifest's `ula_prefix:` wins, a
host's live-state JSON carries the prefix it uses, and `plan --offline --live-state` plans
with that one, so a CI dry run shows what the host will do whatever its own machine id."""
from __future__ import annotations

import contextlib
import io
import ipaddress as ia
import json

import pytest

from reconciler import cli, engine, ipam
from reconciler.compile import compile_state
from reconciler.errors import ManifestError
from reconciler.livestate import load_state_json, state_json
from reconciler.manifest import load_texts, parse_text
from reconciler.objects import HostFacts, HostState
from reconciler.render import render_json
from reconciler.statedir import State, StateStore

N = ia.ip_network

# the host runs network old6 with container a; the change adds network new6 and container b:
# new6's IPv6 /64 is a new automatic choice from the host's ULA /48
BEFORE = """\
version: 1
networks:
  old6: {ipv6: true}
containers:
  a: {networks: {old6: {}}}
"""
AFTER = BEFORE + "  b: {networks: {new6: {}, old6: {}}}\n"
AFTER = AFTER.replace("networks:\n", "networks:\n  new6: {ipv6: true}\n", 1)


def _v6_subnets(resolved):
    return {n: str(s.cidr) for n, net in resolved.networks.items() for s in net.subnets if s.cidr.version == 6}


def _host(monkeypatch, machine: str):
    """A host converged to BEFORE under ``machine``: its live state and state directory."""
    monkeypatch.setattr(engine, "machine_id", lambda: machine)
    p = engine.plan_for(parse_text(BEFORE), HostState(), State())
    live = HostState(compile_state(p.resolved, HostFacts()).desired.objects.values(), HostFacts())
    return live, State(allocations=p.allocations)


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(list(argv)) in (0, 2)
    return out.getvalue()


def test_offline_plan_from_live_state_json_equals_the_hosts_plan(monkeypatch, tmp_path):
    live, state = _host(monkeypatch, "the-host")
    host_plan = engine.plan_for(parse_text(AFTER), live, state)
    assert ia.ip_network(_v6_subnets(host_plan.resolved)["new6"]).subnet_of(ipam.ula48_for("the-host"))
    # what `ipvlanctl status --format json` prints on the host
    status = state_json(live, ula_prefix=engine.host_ula_prefix(state))
    assert status["host"]["ula_prefix"] == str(ipam.ula48_for("the-host"))
    (tmp_path / "web1.json").write_text(json.dumps(status, indent=2))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.yaml").write_text(AFTER)
    # CI: another machine id, no state directory of the host
    monkeypatch.setattr(engine, "machine_id", lambda: "the-ci-runner")
    args = ("plan", str(tmp_path / "m"), "--offline", "--live-state", str(tmp_path / "web1.json"),
            "--state-dir", str(tmp_path / "ci-state"), "--format", "json")
    ci = _cli(*args)
    assert ci == render_json(host_plan.plan)
    assert "fd" in ci and json.loads(ci)["summary"]["add"] > 0  # the plan does create the IPv6 parts
    # a file from before the prefix was recorded: planned with the CI's own prefix, which differs
    del status["host"]["ula_prefix"]
    (tmp_path / "web1.json").write_text(json.dumps(status))
    assert _cli(*args) != ci


def test_status_json_round_trips_the_prefix_and_rejects_a_bad_one():
    facts = HostFacts(ula_prefix="fd12:3456:789a::/48")
    text = json.dumps(state_json(HostState(facts=facts)))
    assert load_state_json(text).facts.ula_prefix == "fd12:3456:789a::/48"
    assert load_state_json(json.dumps(state_json(HostState()))).facts.ula_prefix is None
    data = json.loads(text)
    data["host"]["ula_prefix"] = "fd12:3456:789a::/64"
    with pytest.raises(Exception, match="not a /48"):
        load_state_json(json.dumps(data), "web1.json")


def test_host_ula_prefix_is_the_recorded_one_else_the_machines(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "machine_id", lambda: "m1")
    assert engine.host_ula_prefix(State()) == str(ipam.ula48_for("m1"))
    rec = State(allocations=ipam.Allocations(ula48="fd00:1:2::/48"))
    assert engine.host_ula_prefix(rec) == "fd00:1:2::/48"
    store = StateStore(str(tmp_path))
    store.save(rec)
    assert store.load().allocations.ula48 == "fd00:1:2::/48"  # the state directory records it
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "allocations": {"ula48": "fd00:zz::/48"}}))
    broken = store.load()  # a mangled prefix: the file is rebuilt, not a traceback later
    assert broken.problem and "corrupt" in broken.problem and broken.allocations.ula48 is None


def test_manifest_ula_prefix_wins_over_machine_state_and_live_state(monkeypatch):
    d = parse_text(AFTER.replace("version: 1\n", "version: 1\nula_prefix: fd12:3456:789a::/48\n"))
    assert d.ula_prefix == N("fd12:3456:789a::/48")
    live, state = _host(monkeypatch, "the-host")  # old6 already has a /64 of the host's ULA
    facts = engine.ipam_facts(live)
    resolved, alloc = ipam.resolve(d, facts, state.allocations)
    assert alloc.ula48 == "fd12:3456:789a::/48"
    assert all(N(c).subnet_of(N("fd12:3456:789a::/48")) for c in _v6_subnets(resolved).values())
    # ... and over a live-state JSON's prefix too
    facts2 = ipam.IpamFacts(ula48=str(ipam.ula48_for("elsewhere")), machine_id="x")
    _, alloc2 = ipam.resolve(d, facts2, ipam.Allocations())
    assert alloc2.ula48 == "fd12:3456:789a::/48"
    # without the key, the host keeps the prefix its state directory recorded
    resolved3, alloc3 = ipam.resolve(parse_text(AFTER), ipam.IpamFacts(machine_id="x"), state.allocations)
    assert alloc3.ula48 == str(ipam.ula48_for("the-host"))


@pytest.mark.parametrize(
    "value, message",
    [
        ("fd12:3456:789a::/64", "3:13: ula_prefix fd12:3456:789a::/64 is not a /48"),
        ("2001:db8::/48", "3:13: ula_prefix 2001:db8::/48 is not inside fd00::/8"),
        ("fd12:3456:789a::1/48", "3:13: ula_prefix fd12:3456:789a::1/48 has host bits set"),
        ("10.0.0.0/8", "3:13: ula_prefix '10.0.0.0/8' is not an IPv6 prefix"),
    ],
)
def test_bad_ula_prefix_is_located(value, message):
    with pytest.raises(ManifestError) as e:
        parse_text(f"version: 1\nnetworks: {{}}\nula_prefix: {value}\n", "m.yaml")
    assert f"m.yaml:{message}" in str(e.value)


def test_one_ula_prefix_across_files():
    a = ("a.yaml", "version: 1\nula_prefix: fd12:3456:789a::/48\n")
    same = ("b.yaml", "version: 1\nula_prefix: fd12:3456:789a:0::/48\n")  # same /48, other spelling
    assert load_texts([a, same]).ula_prefix == N("fd12:3456:789a::/48")
    other = ("c.yaml", "version: 1\nula_prefix: fd12:3456:789b::/48\n")
    with pytest.raises(ManifestError, match=r"c\.yaml:2:13: ula_prefix fd12:3456:789b::/48 differs from "
                                            r"ula_prefix fd12:3456:789a::/48 \(a\.yaml:2:13\)"):
        load_texts([a, other])
