"""BGP route export (SPEC 5.2): host routes of this host's L3 containers in table bgp.table.

Fleet states are built by hand (narrowed to one host, as ``reconciler.fleet.select`` does)."""
import ipaddress as ia

from reconciler import engine
from reconciler.compile import compile_state
from reconciler.livestate import load_state_json, state_json
from reconciler.model import (
    Attachment,
    Bgp,
    Container,
    DesiredState,
    Host,
    Mode,
    Network,
    ParentKind,
    Subnet,
    dummy_parent_name,
)
from reconciler.objects import ExportRoute, HostFacts, HostLink, HostState, Kind
from reconciler.plan import Op
from reconciler.render import render_text
from reconciler.statedir import State, StateStore

N = ia.ip_network
A = ia.ip_address

HOSTS = {
    "h1": Host("h1", 1, A("192.168.1.11"), A("2001:db8:1::11")),
    "h2": Host("h2", 2, A("192.168.1.12")),
}


def facts(eth0=("192.168.1.11/24", "2001:db8:1::11/64")):
    return HostFacts(links={
        "eth0": HostLink("eth0", 2, "", True, False, addresses=tuple(ia.ip_interface(a) for a in eth0)),
        "eth1": HostLink("eth1", 3, "", True, False, addresses=(ia.ip_interface("172.16.0.1/24"),)),
    })


def fleet(local="h1", bgp=Bgp(asn=64512), l3_parent="eth0", extra_nets=(), containers=None):
    nets = {
        "l3a": Network("l3a", mode=Mode.L3, parent=l3_parent, parent_kind=ParentKind.EXISTING, ipv6=True,
                       subnets=(Subnet(N("10.40.0.0/16")), Subnet(N("2001:db8:40::/64")))),
        "lan": Network("lan", parent="eth1", parent_kind=ParentKind.EXISTING,
                       subnets=(Subnet(N("172.16.0.0/24"), gateway=A("172.16.0.254")),)),
        "iso": Network("iso", mode=Mode.L3, parent=dummy_parent_name("iso"), internal=True,
                       subnets=(Subnet(N("10.99.0.0/24")),)),
    }
    for n in extra_nets:
        nets[n.name] = n
    if containers is None:
        containers = {
            "web1": Container("web1", (
                Attachment("l3a", "eth0", ip=A("10.40.1.5"), ip6=A("2001:db8:40::5")),
                Attachment("lan", "eth1", ip=A("172.16.0.10")),
                Attachment("iso", "eth2", ip=A("10.99.0.5")),
            ), host="h1"),
            "web2": Container("web2", (Attachment("l3a", "eth0", ip=A("10.40.2.5")),), host="h2"),
        }
    containers = {k: c for k, c in containers.items() if c.host == local}  # fleet.select
    return DesiredState(nets, {}, containers, hosts=HOSTS, bgp=bgp, local_host=local)


def exports(compiled):
    return sorted((o for o in compiled.desired if o.kind is Kind.EXPORT), key=lambda o: o.key)


def test_one_host_route_per_address_of_own_l3_containers_in_table():
    c = compile_state(fleet(), facts())
    assert [(o.table, str(o.dst), o.dev) for o in exports(c)] == [
        (200, "10.40.1.5/32", "eth0"),
        (200, "2001:db8:40::5/128", "eth0"),
    ]
    assert not c.pending


def test_table_from_manifest_and_no_exports_without_bgp_or_host():
    c = compile_state(fleet(bgp=Bgp(asn=64512, table=77)), facts())
    assert {o.table for o in exports(c)} == {77}
    assert exports(compile_state(fleet(bgp=None), facts())) == []
    single = DesiredState(fleet().networks, {}, {"web1": fleet().containers["web1"]})
    assert exports(compile_state(single, facts())) == []


def test_parent_without_host_address_is_pending_and_containers_still_converge():
    c = compile_state(fleet(), facts(eth0=("192.168.1.11/24",)))  # no address6 on eth0
    assert [str(o.dst) for o in exports(c)] == ["10.40.1.5/32"]
    assert [str(p) for p in c.pending] == [
        "bgp export of network l3a (IPv6): not announced: its parent eth0 does not carry the host's "
        "address 2001:db8:1::11"
    ]
    assert c.desired.get((Kind.ADDRESS, "web1", "eth0", "2001:db8:40::5/64")) is not None
    c = compile_state(fleet(local="h2"), facts())
    assert exports(c) == []
    assert "does not carry the host's address 192.168.1.12" in str(c.pending[0])


def test_l2_and_internal_networks_are_never_announced():
    objs = exports(compile_state(fleet(), facts()))
    assert not any(str(o.dst).startswith(("172.16.", "10.99.")) for o in objs)


def test_l3s_is_announced():
    l3s = Network("l3s", mode=Mode.L3S, parent="eth0", parent_kind=ParentKind.EXISTING,
                  subnets=(Subnet(N("10.41.0.0/24")),))
    cs = {"a": Container("a", (Attachment("l3s", "eth0", ip=A("10.41.0.7")),), host="h1")}
    d = fleet(extra_nets=(l3s,), containers=cs)
    assert [str(o.dst) for o in exports(compile_state(d, facts()))] == ["10.41.0.7/32"]


def test_plan_creates_exports_last_and_deletes_them_first():
    d = fleet()
    planned = engine.plan_for(d, HostState(facts=facts()), State())
    p = planned.plan
    kinds = [a.kind for a in p.actions]
    assert kinds[-2:] == [Kind.EXPORT, Kind.EXPORT]
    assert "+ export 10.40.1.5/32 dev eth0 table 200" in render_text(p)
    # converged, then the container leaves the manifest: its routes go first
    live = HostState(compile_state(planned.resolved, facts()).desired.objects.values(), facts())
    assert engine.plan_for(d, live, State()).plan.empty
    gone = DesiredState(d.networks, {}, {}, hosts=HOSTS, bgp=d.bgp, local_host="h1")
    p2 = engine.plan_for(gone, live, State()).plan
    assert [a.kind for a in p2.actions][:2] == [Kind.EXPORT, Kind.EXPORT]
    assert all(a.op is Op.DELETE for a in p2.actions if a.kind is Kind.EXPORT)


def test_exports_left_after_bgp_removed_are_deleted_and_dev_change_updates():
    live = HostState([ExportRoute(200, N("10.40.1.5/32"), "eth1")], facts())
    d = fleet()
    p = engine.plan_for(d, live, State()).plan
    (upd,) = [a for a in p.actions if a.kind is Kind.EXPORT and a.op is Op.UPDATE]
    assert upd.changes[0].field == "dev"
    nobgp = DesiredState(d.networks, {}, d.containers, hosts=HOSTS, bgp=None, local_host="h1")
    p = engine.plan_for(nobgp, live, State()).plan
    assert [(a.op, a.key) for a in p.actions if a.kind is Kind.EXPORT] == [(Op.DELETE, (Kind.EXPORT, 200, "10.40.1.5/32"))]


def test_export_tables_observed_only_for_a_fleet_with_bgp_or_leftovers():
    assert engine.export_tables(fleet(), State()) == (200,)
    assert engine.export_tables(DesiredState(), State()) == ()
    assert engine.export_tables(fleet(bgp=None), State()) == ()
    assert engine.export_tables(DesiredState(), State(export_tables=(77,))) == (77,)
    assert engine.export_tables(fleet(), State(export_tables=(77,))) == (77, 200)


def test_state_records_export_tables(tmp_path):
    store = StateStore(str(tmp_path))
    store.save(State(export_tables=(200,)))
    assert store.load().export_tables == (200,)
    store.save(State())
    assert "export_tables" not in (tmp_path / "state.json").read_text()
    assert store.load().export_tables == ()


def test_live_state_json_round_trip_keeps_exports():
    live = HostState([ExportRoute(200, N("10.40.1.5/32"), "eth0")], facts())
    import json

    again = load_state_json(json.dumps(state_json(live)))
    assert list(again) == list(live)


# ---- the engine: the export table is observed before and after a crash ------------------------


class FakeKernel:
    """Just enough of kernel.host.Kernel for engine.apply, with ``snapshot`` standing in for
    kernel.observe.take_snapshot: a host namespace with eth0 (192.168.1.11/24) and the routes
    of ours in the tables asked for."""

    def __init__(self, exports=()):
        from reconciler.kernel.netlink import WriteCounter

        self.counter = WriteCounter()
        self.exports = list(exports)
        self.tables_asked = []

    def snapshot(self, is_ours, previous=None, still_valid=None, tables=(), held=None, changes=None):
        import socket

        from reconciler.kernel.host import NsView, Snapshot
        from reconciler.kernel.netlink import AddrRec, LinkRec

        self.tables_asked.append(tuple(tables))
        host = NsView("", full=True)
        host.links = [LinkRec(index=2, name="eth0", flags=1), LinkRec(index=3, name="eth1", flags=1)]
        host.addrs = [AddrRec(2, socket.AF_INET, 24, socket.inet_aton("192.168.1.11"), 0, 0),
                      AddrRec(3, socket.AF_INET, 24, socket.inet_aton("172.16.0.1"), 0, 0)]
        return Snapshot(host=host, namespaces={}, hosts_files={},
                        exports=[r for r in self.exports if r.table in tables])


class Killed(BaseException):
    pass


def test_kill_mid_apply_leaves_no_export_behind_after_the_next_run(tmp_path, monkeypatch):
    """The table is written ahead to the state directory before anything is created; a run
    killed after creating routes, followed by a run without bgp:, still observes the table
    and deletes them. A single-host run never asks for the table."""
    import socket

    import reconciler.kernel.apply as kapply
    from reconciler.kernel.netlink import RouteRec

    store = StateStore(str(tmp_path))
    k = FakeKernel()

    def killed(actions, kernel, snap):
        # the kernel now holds the route (made before the kill)
        kernel.exports.append(RouteRec(socket.AF_INET, "10.40.1.5", 32, None, 2, 200, 149, 253, 1))
        raise Killed()

    monkeypatch.setattr(kapply, "execute", killed)
    monkeypatch.setattr("reconciler.kernel.observe.take_snapshot",
                        lambda kernel, is_ours, **kw: kernel.snapshot(is_ours, **kw))
    d = fleet()
    try:
        engine.apply(d, store, k)
    except Killed:
        pass
    assert store.load().export_tables == (200,)
    assert k.tables_asked == [(200,)]

    captured = []

    def record(actions, kernel, snap):
        from reconciler.kernel.apply import ApplyResult

        captured.extend(actions)
        kernel.exports = []
        return ApplyResult(done=list(actions))

    monkeypatch.setattr(kapply, "execute", record)
    nobgp = DesiredState({"l3a": d.networks["l3a"]}, {}, {}, hosts=HOSTS, bgp=None, local_host="h1")
    out = engine.apply(nobgp, store, k)
    assert [(a.op, a.key) for a in captured if a.kind is Kind.EXPORT] == [
        (Op.DELETE, (Kind.EXPORT, 200, "10.40.1.5/32"))
    ]
    assert out.converged, (out.verify, out.result)
    assert store.load().export_tables == ()  # nothing of ours can be there any more
    k.tables_asked.clear()
    engine.apply(DesiredState(), store, k)
    assert k.tables_asked and set(k.tables_asked) == {()}  # no extra dump: not a fleet with bgp
