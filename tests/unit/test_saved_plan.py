"""Saved plans (`plan -o FILE`, `apply FILE`): the file format, its fingerprints, and the
refusals, through the real CLI and engine on a simulated host (observe returns a HostState,
execute applies the actions to it, as a perfect kernel would)."""
import contextlib
import io
import ipaddress as ia
import json
import os

import pytest

import reconciler.kernel.apply as kapply
import reconciler.kernel.observe as kobserve
from reconciler import engine, savedplan
from reconciler.cli import main
from reconciler.errors import UserError
from reconciler.kernel.apply import ApplyResult
from reconciler.objects import Address, HostFacts, HostLink, HostState, Kind, Netns
from reconciler.plan import Op
from reconciler.statedir import State

MANIFEST = """\
version: 1
networks:
  n20:
    parent: eth0.20
    subnets: [{subnet: 192.168.20.0/24, gateway: 192.168.20.1}]
containers:
  a: {networks: {n20: {ip: 192.168.20.10}}}
  b: {networks: {n20: {}}}
"""


def eth0(index=2, up=True, addrs=("192.168.1.250/24",)):
    return HostLink("eth0", index, "", up, False, addresses=tuple(ia.ip_interface(a) for a in addrs))


class FakeHost:
    """The host as observe reports it; execute changes it as the kernel would."""

    def __init__(self):
        self.objects = {}
        self.facts = HostFacts(links={"eth0": eth0()})
        self.executed = []  # action lists executed

    def live(self):
        return HostState(self.objects.values(), self.facts)

    def execute(self, actions, kernel, snap):
        self.executed.append(actions)
        for a in actions:
            if a.op is Op.DELETE:
                self.objects.pop(a.key, None)
            else:
                self.objects[a.key] = a.after
        return ApplyResult(done=list(actions))


class FakeKernel:
    class counter:
        count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def host(monkeypatch):
    h = FakeHost()
    monkeypatch.setattr(kobserve, "observe", lambda kernel, intents=(), *a, **kw: kobserve.Observation(h.live(), None, {}))
    monkeypatch.setattr(kapply, "execute", h.execute)
    monkeypatch.setattr("reconciler.cli._kernel", lambda: FakeKernel())
    return h


@pytest.fixture
def site(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.yaml").write_text(MANIFEST)
    return {"dir": str(d), "state": str(tmp_path / "state"), "file": str(tmp_path / "plan.json"),
            "tmp": tmp_path}


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def plan_o(site, *extra):
    return cli("plan", "-o", site["file"], site["dir"], "--state-dir", site["state"], *extra)


def apply_file(site, path=None):
    return cli("apply", path or site["file"], "--state-dir", site["state"])


def state_files(site):
    d = site["state"]
    if not os.path.isdir(d):
        return {}
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n != "lock"}


def test_plan_o_then_apply_file_applies_exactly_the_plan_and_converges(host, site):
    rc, out, err = plan_o(site)
    assert rc == 0, err
    assert "Saved the plan to" in out and "Plan: " in out
    data = json.load(open(site["file"]))
    assert data["format"] == savedplan.FORMAT
    assert data["manifests"]["files"] == [
        {"path": os.path.abspath(os.path.join(site["dir"], "a.yaml")),
         "sha256": savedplan._sha256(MANIFEST.encode())}
    ]
    saved_changes = data["plan"]["changes"]
    assert saved_changes and all(c["op"] == "create" for c in saved_changes)
    rc, out, err = apply_file(site)
    assert rc == 0, out + err
    assert "Apply complete!" in out and "Verified" in out
    # exactly the saved actions, in the saved order
    from reconciler.render import action_json

    assert len(host.executed) == 1
    assert json.loads(json.dumps([action_json(a) for a in host.executed[0]])) == saved_changes
    rc, out, err = cli("plan", "--detailed-exitcode", site["dir"], "--state-dir", site["state"])
    assert rc == 0, out + err


def test_saved_plan_json_output_keeps_stdout_json(host, site):
    rc, out, err = plan_o(site, "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["summary"]["add"] > 0
    assert "Saved the plan to" in err


def test_manifest_changed_after_plan_is_refused_naming_the_file(host, site):
    assert plan_o(site)[0] == 0
    before = state_files(site)
    path = os.path.join(site["dir"], "a.yaml")
    with open(path, "a") as f:
        f.write("  c: {networks: {n20: {}}}\n")
    rc, out, err = apply_file(site)
    assert rc == 1
    assert f"{os.path.abspath(path)}: changed" in err
    assert "the manifests changed since the plan was saved" in err and "nothing was changed" in err
    assert host.executed == [] and host.objects == {}
    assert state_files(site) == before


def test_manifest_added_or_removed_after_plan_is_refused(host, site):
    assert plan_o(site)[0] == 0
    extra = os.path.join(site["dir"], "b.yaml")
    with open(extra, "w") as f:
        f.write("version: 1\n")
    rc, _, err = apply_file(site)
    assert rc == 1 and f"{os.path.abspath(extra)}: added" in err
    os.unlink(extra)
    os.unlink(os.path.join(site["dir"], "a.yaml"))
    rc, _, err = apply_file(site)
    assert rc == 1 and "a.yaml: removed" in err
    assert host.executed == []


def test_broken_manifest_after_plan_says_changed_not_only_broken(host, site):
    assert plan_o(site)[0] == 0
    with open(os.path.join(site["dir"], "a.yaml"), "w") as f:
        f.write("version: [\n")
    rc, _, err = apply_file(site)
    assert rc == 1 and "a.yaml: changed" in err and "Traceback" not in err
    assert host.executed == []


def test_host_changed_after_plan_is_refused_saying_what_changed(host, site):
    assert plan_o(site)[0] == 0
    host.facts = HostFacts(links=host.facts.links, foreign_netns=("intruder",))
    rc, out, err = apply_file(site)
    assert rc == 1
    assert "the host changed since the plan was saved" in err
    assert "namespace intruder (not managed by ipvlan-reconciler) appeared" in err
    assert host.executed == [] and not os.path.exists(os.path.join(site["state"], "state.json"))


def test_managed_object_removed_by_hand_is_refused(host, site):
    assert plan_o(site)[0] == 0
    assert apply_file(site)[0] == 0
    # a converged host: an empty plan saved, then an address removed by hand
    assert plan_o(site)[0] == 0
    assert json.load(open(site["file"]))["plan"]["changes"] == []
    before = state_files(site)
    key = next(k for k in host.objects if k[0] is Kind.ADDRESS)
    del host.objects[key]
    rc, _, err = apply_file(site)
    assert rc == 1
    assert f"address {'/'.join(key[1:])} is gone" in err
    assert len(host.executed) == 1  # only the first apply
    assert state_files(site) == before


def test_tampered_file_is_refused(host, site):
    assert plan_o(site)[0] == 0
    data = json.load(open(site["file"]))
    data["plan"]["changes"] = data["plan"]["changes"][:1]  # e.g. someone trims the plan
    with open(site["file"], "w") as f:
        json.dump(data, f)
    rc, _, err = apply_file(site)
    assert rc == 1 and "corrupt or was edited" in err
    assert host.executed == []


@pytest.mark.parametrize("edit", ["live view", "live digest", "manifest digest", "state dir"])
def test_any_edit_of_the_fingerprints_is_refused(host, site, edit):
    assert plan_o(site)[0] == 0
    data = json.load(open(site["file"]))
    if edit == "live view":
        data["live"]["view"]["foreign_netns"].append("x")
    elif edit == "live digest":
        data["live"]["sha256"] = "0" * 64
    elif edit == "manifest digest":
        data["manifests"]["files"][0]["sha256"] = "0" * 64
    else:
        data["state_dir"] = "/elsewhere"
    with open(site["file"], "w") as f:
        json.dump(data, f)
    rc, _, err = apply_file(site)
    assert rc == 1 and "corrupt or was edited" in err
    assert host.executed == []


def test_hosts_file_edited_by_hand_is_refused(host, site):
    """A hosts file's content enters the fingerprint by its digest: a changed line counts."""
    assert apply_file_direct(site)[0] == 0
    assert plan_o(site)[0] == 0
    key = next(k for k in host.objects if k[0] is Kind.HOSTS)
    h = host.objects[key]
    assert len(h.content) > savedplan._LONG  # stored by digest, not as text
    host.objects[key] = type(h)(ns=h.ns, content=h.content.replace("192.168.20.10", "192.168.20.99"))
    rc, _, err = apply_file(site)
    assert rc == 1 and f"hosts {key[1]} changed (content)" in err


def apply_file_direct(site):
    return cli("apply", site["dir"], "--state-dir", site["state"])


def test_truncated_file_is_not_taken_for_a_plan_and_fails_cleanly(host, site):
    assert plan_o(site)[0] == 0
    raw = open(site["file"]).read()
    with open(site["file"], "w") as f:
        f.write(raw[: len(raw) // 2])
    rc, _, err = apply_file(site)
    assert rc == 1 and "Traceback" not in err and "internal error" not in err
    assert host.executed == []


def test_other_format_version_is_refused(host, site):
    assert plan_o(site)[0] == 0
    data = json.load(open(site["file"]))
    data["format"] = "ipvlan-reconciler-plan/2"
    with open(site["file"], "w") as f:
        json.dump(data, f)
    rc, _, err = apply_file(site)
    assert rc == 1 and "'ipvlan-reconciler-plan/2' is not supported" in err
    assert host.executed == []


def test_other_ipvlanctl_version_is_refused(host, site, monkeypatch):
    assert plan_o(site)[0] == 0
    monkeypatch.setattr(savedplan, "__version__", "99.0")
    rc, _, err = apply_file(site)
    assert rc == 1 and "saved by ipvlanctl" in err and "this is 99.0" in err


def test_other_state_dir_is_refused(host, site):
    assert plan_o(site)[0] == 0
    rc, _, err = cli("apply", site["file"], "--state-dir", str(site["tmp"] / "other"))
    assert rc == 1 and "--state-dir" in err
    assert host.executed == []


def test_other_machine_is_refused(host, site, monkeypatch):
    assert plan_o(site)[0] == 0
    monkeypatch.setattr(engine, "machine_id", lambda: "another-machine")
    rc, _, err = apply_file(site)
    assert rc == 1 and "machine id differs" in err
    assert host.executed == []


def test_plan_offline_o_is_refused(site):
    rc, _, err = cli("plan", "--offline", "-o", site["file"], site["dir"])
    assert rc == 1 and "--offline" in err
    assert not os.path.exists(site["file"])


def test_saved_plan_must_be_applied_alone(host, site):
    assert plan_o(site)[0] == 0
    rc, _, err = cli("apply", site["file"], site["dir"], "--state-dir", site["state"])
    assert rc == 1 and "apply it alone" in err
    assert host.executed == []


def test_json_manifest_file_is_not_taken_for_a_saved_plan(host, site):
    path = str(site["tmp"] / "m.yaml")
    with open(path, "w") as f:  # YAML is a superset of JSON: a manifest may be written as JSON
        json.dump({"version": 1, "networks": {"n20": {
            "parent": "eth0.20", "subnets": [{"subnet": "192.168.20.0/24"}]}}}, f)
    assert savedplan.sniff(path) is None
    rc, out, err = cli("apply", path, "--state-dir", site["state"])
    assert rc == 0, out + err
    assert len(host.executed) == 1


def test_plan_differing_on_an_unchanged_host_is_refused(host, site):
    """Belt and braces: equal fingerprints but another plan (a planner bug) -> refused."""
    assert plan_o(site)[0] == 0
    data = json.load(open(site["file"]))
    saved = savedplan.parse(site["file"], data)
    plan = engine.plan_for(engine.DesiredState(), host.live(), State()).plan
    with pytest.raises(UserError, match="it is a bug"):
        savedplan.check_plan(saved, plan)


def test_live_fingerprint_ignores_ifindex_and_host_link_up_only():
    ns = Netns("a")
    addr = Address("a", "eth0", ia.ip_interface("192.168.20.2/24"))
    base = savedplan.view_digest(savedplan.live_view(HostState([ns, addr], HostFacts(links={"eth0": eth0()})), State()))

    def digest(objects=(ns, addr), link=None, state=State()):
        facts = HostFacts(links={"eth0": link or eth0()})
        return savedplan.view_digest(savedplan.live_view(HostState(objects, facts), state))

    assert digest() == base  # deterministic
    assert digest(objects=(addr, ns)) == base  # order of observation does not matter
    assert digest(link=eth0(index=7, up=False)) == base  # not read by the planner
    assert digest(link=eth0(addrs=("192.168.1.251/24",))) != base  # IPAM reads host addresses
    assert digest(objects=(ns,)) != base
    assert digest(objects=(ns, Address("a", "eth0", ia.ip_interface("192.168.20.3/24")))) != base
    assert digest(state=State(intents=((Kind.NETNS, "a"),))) != base

    def with_facts(**kw):
        facts = HostFacts(links={"eth0": eth0()}, **kw)
        return savedplan.view_digest(savedplan.live_view(HostState((ns, addr), facts), State()))

    assert with_facts(routes=(ia.ip_network("10.9.0.0/16"),)) != base
    assert with_facts(foreign_links={("a", "veth0"): "veth"}) != base
    assert with_facts(foreign_netns=("x", "y")) == with_facts(foreign_netns=("y", "x")) != base


def test_fleet_host_is_passed_to_load_and_must_match(site):
    """A fleet plan made with --host h1 is loaded for h1 again; a desired state narrowed to
    another host (or none) is refused."""
    from reconciler.model import DesiredState

    files = savedplan.manifest_digests([site["dir"]])
    live = HostState(facts=HostFacts(links={"eth0": eth0()}))
    empty = engine.plan_for(DesiredState(), live, State()).plan
    data = savedplan.build([site["dir"]], files, DesiredState(local_host="h1"), live, State(), empty,
                           site["state"], engine.machine_id())
    savedplan.write(site["file"], data)
    seen = []

    def load(paths, host):
        seen.append((list(paths), host))
        return DesiredState(local_host=None)

    with pytest.raises(UserError, match="made for host 'h1', this run is for None"):
        savedplan.prepare_apply([site["file"]], site["state"], load)
    assert seen == [([os.path.abspath(site["dir"])], "h1")]
    desired, check = savedplan.prepare_apply([site["file"]], site["state"],
                                             lambda p, h: DesiredState(local_host=h))
    assert desired.local_host == "h1"
    check(live, State(), engine.Planned(plan=empty, resolved=desired, allocations=State().allocations))


FLEET = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "manifests", "examples", "fleet")


def test_fleet_plan_saved_for_a_host_applies_that_hosts_part_and_refuses_another_host(host, tmp_path):
    state, path = str(tmp_path / "state"), str(tmp_path / "plan.json")
    rc, out, err = cli("plan", "-o", path, FLEET, "--host", "h2", "--state-dir", state)
    assert rc == 0, out + err
    names = {c["id"] for c in json.load(open(path))["plan"]["changes"] if c["kind"] == "netns"}
    rc, out, err = cli("apply", path, "--host", "h1", "--state-dir", state)
    assert rc == 1 and "made for host 'h2', not 'h1'" in err
    assert host.executed == []
    rc, out, err = cli("apply", path, "--state-dir", state)  # no --host: the saved one
    # 3: converged, but l3a's BGP export waits (this fake eth0 lacks h2's address 192.168.1.12)
    assert rc == 3 and "192.168.1.12" in out, out + err
    executed = {a.key[1] for a in host.executed[0] if a.key[0].label == "netns"}
    assert executed == names and names  # h2's containers, and only them
