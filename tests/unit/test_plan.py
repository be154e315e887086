"""Planner: pure diff, ordering, every action kind, ownership clashes, pending parents."""
import ipaddress as ia

import pytest

from reconciler import engine
from reconciler.compile import compile_state
from reconciler.errors import PlanError
from reconciler.model import (
    Attachment,
    Container,
    DesiredState,
    Flag,
    Mode,
    Network,
    ParentKind,
    Subnet,
    Vlan,
    dummy_parent_name,
)
from reconciler.objects import (
    Address,
    DummyLink,
    Endpoint,
    HostFacts,
    HostLink,
    HostsFile,
    HostState,
    Kind,
    Netns,
    Route,
    Sysctl,
    VlanLink,
)
from reconciler.plan import Op, Plan, make_plan
from reconciler.render import plan_json, render_json, render_text
from reconciler.statedir import State

N = ia.ip_network
A = ia.ip_address


def net(name, **kw):
    kw.setdefault("parent", dummy_parent_name(name))
    kw.setdefault("parent_kind", ParentKind.DUMMY)
    kw.setdefault("internal", kw["parent_kind"] is ParentKind.DUMMY)
    return Network(name, **kw)


def desired_seedlike():
    nets = {
        "ipvlan20": net("ipvlan20", parent="eth0.20", parent_kind=ParentKind.VLAN,
                        subnets=(Subnet(N("192.168.20.0/24"), gateway=A("192.168.20.1")),)),
        "ipnet210": net("ipnet210", mode=Mode.L3,
                        subnets=(Subnet(N("192.168.214.0/24")), Subnet(N("10.1.214.0/24")))),
    }
    vlans = {"eth0.20": Vlan("eth0.20", "eth0", 20, declared=False)}
    cs = {
        "t1": Container("t1", (Attachment("ipvlan20", "eth0"),)),
        "t2": Container("t2", (Attachment("ipvlan20", "eth0", aliases=("db",)),)),
        "l3a": Container("l3a", (Attachment("ipnet210", "eth0", ip=A("192.168.214.10")),)),
        "l3b": Container("l3b", (Attachment("ipnet210", "eth0", ip=A("10.1.214.10")),)),
    }
    return DesiredState(nets, vlans, cs)


HOST = HostFacts(links={"eth0": HostLink("eth0", 2, "", True, False,
                                         addresses=(ia.ip_interface("192.168.1.250/24"),))})


def plan_of(desired, live=None, state=None, offline=False):
    live = live if live is not None else HostState(facts=HOST)
    return engine.plan_for(desired, live, state or State(), offline=offline)


def converged_live(desired):
    """The live state a perfect apply would leave: the compiled desired objects."""
    p = plan_of(desired)
    compiled = compile_state(p.resolved, HOST)
    return HostState(compiled.desired.objects.values(), HOST), p


def plan_after_edit(desired, container):
    """The plan on a host converged to ``desired`` once ``container`` replaces its namesake."""
    live, p = converged_live(desired)
    cs = dict(desired.containers)
    cs[container.name] = container
    return engine.plan_for(DesiredState(desired.networks, desired.vlans, cs), live, State(allocations=p.allocations)).plan


def test_empty_host_plan_creates_everything_in_dependency_order():
    p = plan_of(desired_seedlike()).plan
    assert all(a.op is Op.CREATE for a in p.actions)
    kinds = [a.kind for a in p.actions]
    assert kinds == sorted(kinds), "parents before namespaces before endpoints before addresses ..."
    keys = [a.key for a in p.actions]
    assert (Kind.VLAN, "eth0.20") in keys
    assert (Kind.DUMMY, dummy_parent_name("ipnet210")) in keys
    pos = {k: i for i, k in enumerate(keys)}
    for a in p.actions:  # every dependency that is in the plan comes first
        for dep in a.obj.requires():
            if dep in pos:
                assert pos[dep] < pos[a.key]


def test_l2_default_via_gateway_l3_default_dev_and_subnet_routes():
    p = plan_of(desired_seedlike())
    routes = {(a.obj.ns, str(a.obj.dst)): a.obj for a in p.plan.actions if a.kind is Kind.ROUTE}
    assert routes[("t1", "0.0.0.0/0")].gateway == A("192.168.20.1")
    assert routes[("l3a", "0.0.0.0/0")].gateway is None
    # L3 reaches the network's other subnet through its interface
    assert ("l3a", "10.1.214.0/24") in routes and routes[("l3a", "10.1.214.0/24")].gateway is None
    assert ("l3b", "192.168.214.0/24") in routes
    assert ("t1", "192.168.20.0/24") not in routes  # the kernel's own prefix route covers it


def test_l3_gateway_written_in_the_manifest_is_kept_free_not_routed():
    d = DesiredState({"n": net("n", mode=Mode.L3, subnets=(Subnet(N("10.9.0.0/24"), gateway=A("10.9.0.1")),))},
                     {}, {"c": Container("c", (Attachment("n", "eth0"),))})
    p = plan_of(d)
    routes = {(a.obj.ns, str(a.obj.dst)): a.obj for a in p.plan.actions if a.kind is Kind.ROUTE}
    assert routes[("c", "0.0.0.0/0")].gateway is None
    assert p.resolved.containers["c"].attachments[0].ip == A("10.9.0.2")


def test_second_plan_on_converged_host_is_empty():
    d = desired_seedlike()
    live, p = converged_live(d)
    state = State(allocations=p.allocations)
    again = engine.plan_for(d, live, state)
    assert again.plan.empty, render_text(again.plan)
    assert "No changes" in render_text(again.plan)


def test_mode_change_replaces_endpoints_and_recreates_their_addresses_and_routes():
    d = desired_seedlike()
    live, p = converged_live(d)
    nets = dict(d.networks)
    nets["ipvlan20"] = Network(**{**nets["ipvlan20"].__dict__, "mode": Mode.L3})
    d2 = DesiredState(nets, d.vlans, d.containers)
    plan = engine.plan_for(d2, live, State(allocations=p.allocations)).plan
    by = {(a.op, a.kind) for a in plan.actions}
    reps = [a for a in plan.actions if a.op is Op.REPLACE]
    assert {a.key for a in reps} == {(Kind.ENDPOINT, "t1", "eth0"), (Kind.ENDPOINT, "t2", "eth0")}
    assert reps[0].changes[0].field == "mode" and reps[0].changes[0].forces_replace
    assert (Op.CREATE, Kind.ADDRESS) in by  # addresses die with the old link
    new_routes = [a.obj for a in plan.actions if a.kind is Kind.ROUTE and a.op is not Op.DELETE]
    assert all(r.gateway is None for r in new_routes if r.ns in ("t1", "t2"))
    # nothing else is touched: not the other network's containers
    assert all(a.obj.netns in (None, "t1", "t2") or a.kind is Kind.HOSTS for a in plan.actions)
    assert not any(a.kind in (Kind.VLAN, Kind.NETNS) for a in plan.actions)
    text = render_text(plan)
    assert "-/+ endpoint t1/eth0" in text and "mode: l2 -> l3 (forces replacement)" in text


def test_address_change_touches_only_that_container():
    plan = plan_after_edit(desired_seedlike(), Container("l3a", (Attachment("ipnet210", "eth0", ip=A("192.168.214.77")),)))
    touched = {a.obj.netns or a.key[1] for a in plan.actions}
    # the address moves; hosts files of containers sharing the network learn the new address
    # its routes are re-created: the kernel flushes them with the link's last IPv4 address
    assert {(a.op, a.obj.ns) for a in plan.actions if a.kind is Kind.ROUTE} == {(Op.CREATE, "l3a")}
    assert {a.key for a in plan.actions if a.kind not in (Kind.HOSTS, Kind.ROUTE)} == {
        (Kind.ADDRESS, "l3a", "eth0", "192.168.214.10/24"),
        (Kind.ADDRESS, "l3a", "eth0", "192.168.214.77/24"),
    }
    ops = {a.key[3]: a.op for a in plan.actions if a.kind is Kind.ADDRESS}
    assert ops == {"192.168.214.10/24": Op.DELETE, "192.168.214.77/24": Op.CREATE}
    assert plan.actions[0].op is Op.DELETE  # deletions first
    assert touched <= {"l3a", "l3b"}


def test_removing_container_and_network_deletes_children_before_parents():
    d = desired_seedlike()
    live, p = converged_live(d)
    d2 = DesiredState({"ipvlan20": d.networks["ipvlan20"]}, d.vlans,
                      {"t1": d.containers["t1"], "t2": d.containers["t2"]})
    plan = engine.plan_for(d2, live, State(allocations=p.allocations)).plan
    assert [a.op for a in plan.actions] == [Op.DELETE] * len(plan.actions)
    keys = [a.key for a in plan.actions]
    # namespace deletion takes its endpoints, addresses and routes with it: not listed
    assert set(keys) == {
        (Kind.HOSTS, "l3a"), (Kind.HOSTS, "l3b"), (Kind.NETNS, "l3a"), (Kind.NETNS, "l3b"),
        (Kind.DUMMY, dummy_parent_name("ipnet210")),
    }
    kinds = [k[0] for k in keys]
    assert kinds == sorted(kinds, reverse=True)
    assert render_text(plan).rstrip().endswith("Plan: 0 to add, 0 to change, 5 to destroy.")


def test_update_actions_for_drift_link_down_and_route_gateway():
    d = desired_seedlike()
    live, p = converged_live(d)
    objs = dict(live.objects)
    ep = objs[(Kind.ENDPOINT, "t1", "eth0")]
    objs[ep.key] = Endpoint(**{**ep.__dict__, "up": False})
    r = objs[(Kind.ROUTE, "t2", "0.0.0.0/0")]
    objs[r.key] = Route(r.ns, r.dst, A("192.168.20.254"), r.ifname)
    ns = objs[(Kind.NETNS, "l3a")]
    objs[ns.key] = Netns("l3a", lo_up=False)
    sc = objs[(Kind.SYSCTL, "l3b", "eth0", "disable_ipv6")]
    objs[sc.key] = Sysctl("l3b", "eth0", "disable_ipv6", 0)
    vl = objs[(Kind.VLAN, "eth0.20")]
    objs[vl.key] = VlanLink("eth0.20", "eth0", 20, up=False)
    plan = engine.plan_for(d, HostState(objs.values(), HOST), State(allocations=p.allocations)).plan
    ups = {a.key: a for a in plan.actions}
    assert all(a.op is Op.UPDATE for a in plan.actions)
    assert ups[ep.key].changes[0].field == "up"
    assert ups[r.key].changes[0].after == A("192.168.20.1")
    assert ups[ns.key].changes[0].field == "lo_up"
    assert ups[sc.key].changes[0].after == 1
    assert ups[vl.key].changes[0].field == "up"
    assert plan.counts() == (0, 5, 0)


def test_missing_objects_are_recreated_after_drift():
    d = desired_seedlike()
    live, p = converged_live(d)
    objs = dict(live.objects)
    del objs[(Kind.ENDPOINT, "t1", "eth0")]
    for k in [k for k in objs if k[0] in (Kind.ADDRESS, Kind.ROUTE, Kind.SYSCTL) and k[1] == "t1"]:
        del objs[k]
    del objs[(Kind.VLAN, "eth0.20")]
    # the kernel deletes the slaves of a deleted VLAN
    for k in [k for k in objs if k[0] is Kind.ENDPOINT and k[1] == "t2"]:
        del objs[k]
    for k in [k for k in objs if k[0] in (Kind.ADDRESS, Kind.ROUTE, Kind.SYSCTL) and k[1] == "t2"]:
        del objs[k]
    plan = engine.plan_for(d, HostState(objs.values(), HOST), State(allocations=p.allocations)).plan
    assert {a.op for a in plan.actions} == {Op.CREATE}
    assert (Kind.VLAN, "eth0.20") == plan.actions[0].key
    assert {a.key for a in plan.actions if a.kind is Kind.ENDPOINT} == {
        (Kind.ENDPOINT, "t1", "eth0"), (Kind.ENDPOINT, "t2", "eth0")}


def test_vlan_replace_takes_its_endpoints_with_it():
    d = desired_seedlike()
    live, p = converged_live(d)
    vlans = {"eth0.20": Vlan("eth0.20", "eth1", 20, declared=False)}
    facts = HostFacts(links={**HOST.links, "eth1": HostLink("eth1", 3, "", True, False)})
    plan = engine.plan_for(DesiredState(d.networks, vlans, d.containers), HostState(live.objects.values(), facts),
                           State(allocations=p.allocations)).plan
    reps = {a.key: a for a in plan.actions if a.op is Op.REPLACE}
    assert (Kind.VLAN, "eth0.20") in reps
    assert reps[(Kind.ENDPOINT, "t1", "eth0")].reason == "its parent eth0.20 is replaced"


def test_name_clashes_with_unowned_objects_are_plan_errors():
    d = desired_seedlike()
    facts = HostFacts(
        links={**HOST.links, dummy_parent_name("ipnet210"): HostLink(dummy_parent_name("ipnet210"), 9, "dummy", True, False)},
        foreign_netns=("t1",),
    )
    live = HostState([HostsFile("t2", "hand made\n", owned=False)], facts)
    with pytest.raises(PlanError) as e:
        plan_of(d, live)
    msg = str(e.value)
    assert "network namespace t1 exists and is not managed" in msg
    assert f"dummy link {dummy_parent_name('ipnet210')} exists and is not managed" in msg
    assert "/etc/netns/t2/hosts exists and is not managed" in msg


def test_foreign_link_inside_our_namespace_is_a_plan_error():
    d = desired_seedlike()
    live, p = converged_live(d)
    objs = {k: o for k, o in live.objects.items() if not (k[0] is Kind.ENDPOINT and k[1] == "t1")}
    facts = HostFacts(links=HOST.links, foreign_links={("t1", "eth0"): "veth"})
    with pytest.raises(PlanError, match="link eth0 in namespace t1 is not managed"):
        engine.plan_for(d, HostState(objs.values(), facts), State(allocations=p.allocations))


def test_preexisting_matching_vlan_is_used_not_owned():
    d = desired_seedlike()
    facts = HostFacts(links={**HOST.links, "eth0.20": HostLink("eth0.20", 5, "vlan", True, False, vid=20, link="eth0")})
    plan = plan_of(d, HostState(facts=facts)).plan
    assert not any(a.kind is Kind.VLAN for a in plan.actions)
    assert any("eth0.20" in n and "not managed" in n for n in plan.notes)
    # and a pre-existing VLAN with another id is an error, not an adoption
    facts = HostFacts(links={**HOST.links, "eth0.20": HostLink("eth0.20", 5, "vlan", True, False, vid=21, link="eth0")})
    with pytest.raises(PlanError, match="vlan link eth0.20 exists and is not managed"):
        plan_of(d, HostState(facts=facts))


def test_missing_parent_is_pending_and_the_rest_converges():
    nets = {
        "ok": net("ok", subnets=(Subnet(N("10.9.0.0/24")),)),
        "waiting": net("waiting", parent="eth7", parent_kind=ParentKind.EXISTING, internal=False,
                       subnets=(Subnet(N("10.8.0.0/24"), gateway=A("10.8.0.1")),)),
    }
    cs = {"a": Container("a", (Attachment("ok", "eth0"), Attachment("waiting", "eth1"))),
          "b": Container("b", (Attachment("waiting", "eth0"),))}
    p = plan_of(DesiredState(nets, {}, cs)).plan
    assert [str(x) for x in p.pending][:1] == ["network waiting: parent eth7 does not exist"]
    assert any("container a on network waiting" in str(x) for x in p.pending)
    keys = {a.key for a in p.actions}
    assert (Kind.ENDPOINT, "a", "eth0") in keys and (Kind.ENDPOINT, "a", "eth1") not in keys
    assert (Kind.NETNS, "b") in keys and (Kind.ENDPOINT, "b", "eth0") not in keys
    assert "Pending (waiting for the host" in render_text(p)


def test_live_objects_of_pending_network_are_left_alone():
    nets = {"waiting": net("waiting", parent="eth7", parent_kind=ParentKind.EXISTING, internal=False,
                           subnets=(Subnet(N("10.8.0.0/24"), gateway=A("10.8.0.1")),))}
    cs = {"b": Container("b", (Attachment("waiting", "eth0"),))}
    d = DesiredState(nets, {}, cs)
    live = HostState([
        Netns("b"),
        Endpoint("b", "eth0", "#4", Mode.L2, Flag.BRIDGE, "waiting"),
        Address("b", "eth0", ia.ip_interface("10.8.0.2/24")),
        HostsFile("b", engine.compile_state(engine.ipam.resolve(d, engine.ipam.IpamFacts(), engine.ipam.Allocations())[0], HOST).desired.get((Kind.HOSTS, "b")).content),
    ], HOST)
    p = engine.plan_for(d, live, State()).plan
    assert not any(a.op is Op.DELETE for a in p.actions), render_text(p)


def test_vlan_cycle_is_reported():
    nets = {"n": net("n", parent="a", parent_kind=ParentKind.DECLARED_VLAN, internal=False,
                     subnets=(Subnet(N("10.0.0.0/24")),))}
    vlans = {"a": Vlan("a", "b", 10), "b": Vlan("b", "a", 11)}
    with pytest.raises(PlanError, match="cycle"):
        plan_of(DesiredState(nets, vlans, {}))


def test_vlan_on_vlan_is_ordered_after_its_lower_vlan():
    nets = {"n": net("n", parent="inner", parent_kind=ParentKind.DECLARED_VLAN, internal=False,
                     subnets=(Subnet(N("10.0.0.0/24")),))}
    vlans = {"inner": Vlan("inner", "outer", 10), "outer": Vlan("outer", "eth0", 100)}
    keys = [a.key for a in plan_of(DesiredState(nets, vlans, {})).plan.actions]
    assert keys.index((Kind.VLAN, "outer")) < keys.index((Kind.VLAN, "inner"))


def test_one_default_route_per_family_non_internal_first():
    nets = {
        "iso": net("iso", subnets=(Subnet(N("10.1.0.0/24")),)),
        "up": net("up", parent="eth0.20", parent_kind=ParentKind.VLAN, internal=False,
                  subnets=(Subnet(N("10.2.0.0/24")),)),
        "l3iso": net("l3iso", mode=Mode.L3, subnets=(Subnet(N("10.3.0.0/24")),)),
    }
    vlans = {"eth0.20": Vlan("eth0.20", "eth0", 20, declared=False)}
    cs = {"c": Container("c", (Attachment("l3iso", "eth0"), Attachment("iso", "eth1"), Attachment("up", "eth2")))}
    p = plan_of(DesiredState(nets, vlans, cs)).plan
    defaults = [a.obj for a in p.actions if a.kind is Kind.ROUTE and a.obj.is_default]
    assert len(defaults) == 1
    assert defaults[0].ifname == "eth2" and defaults[0].gateway == A("10.2.0.1")


def test_json_plan_is_stable_and_documented_shape():
    p = plan_of(desired_seedlike()).plan
    data = plan_json(p)
    assert data["format_version"] == "1"
    assert data["summary"] == {"add": len(p.actions), "change": 0, "destroy": 0, "pending": 0}
    first = data["changes"][0]
    assert set(first) == {"op", "kind", "id", "before", "after", "changed", "reason"}
    assert first == {"op": "create", "kind": "vlan", "id": "eth0.20", "before": None,
                     "after": {"name": "eth0.20", "link": "eth0", "vid": 20, "up": True, "marked": True},
                     "changed": [], "reason": None}
    assert render_json(p) == render_json(plan_of(desired_seedlike()).plan)


def test_text_plan_summary_line():
    text = render_text(plan_of(desired_seedlike()).plan)
    assert "  + vlan eth0.20 (link eth0, id 20)" in text
    assert "  + route t1 default via 192.168.20.1 dev eth0" in text
    assert text.rstrip().splitlines()[-1].startswith("Plan: ")
    assert "to add, 0 to change, 0 to destroy." in text


def test_hosts_file_lists_peers_on_shared_networks_only():
    p = plan_of(desired_seedlike())
    hosts = {a.obj.ns: a.obj.content for a in p.plan.actions if a.kind is Kind.HOSTS}
    t1 = hosts["t1"].splitlines()
    assert any(l.split() == ["192.168.20.3", "t2", "db"] for l in t1)
    assert not any("l3a" in l for l in t1)
    assert any(l.split() == ["192.168.20.2", "t1"] for l in t1)


def test_unowned_hosts_file_of_unrelated_namespace_is_never_deleted():
    live = HostState([HostsFile("someone-elses", "127.0.0.1 localhost\n", owned=False)], HOST)
    p = plan_of(DesiredState({}, {}, {}), live).plan
    assert p.empty


def test_replacing_the_only_address_recreates_the_routes_the_kernel_flushes():
    plan = plan_after_edit(desired_seedlike(), Container("l3b", (Attachment("ipnet210", "eth0", ip=A("10.1.214.99")),)))
    routes = {a.key: a.op for a in plan.actions if a.kind is Kind.ROUTE}
    assert routes == {(Kind.ROUTE, "l3b", "0.0.0.0/0"): Op.CREATE, (Kind.ROUTE, "l3b", "192.168.214.0/24"): Op.CREATE}
