"""The pipeline: manifest -> observe -> ipam -> compile -> plan -> apply -> verify.

The CLI and the daemon both go through here. Kernel modules are imported only
when the kernel is used, so `plan --offline` runs unprivileged anywhere.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from . import ipam
from .compile import CompileMemo, Compiled, compile_state
from .errors import Bug, PlanError
from .livestate import load_state_json, read_state_file  # noqa: F401
from .model import DesiredState
from .objects import Address, Endpoint, HostState, Key, Kind
from .plan import Op, Plan, make_plan
from .state import State, StateStore

if TYPE_CHECKING:  # pragma: no cover
    from .kernel.apply import ApplyResult
    from .kernel.host import Held, Kernel, Snapshot, StillValid


def machine_id() -> str:
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(p) as f:
                v = f.read().strip()
                if v:
                    return v
        except OSError:
            continue
    return ""


def ipam_facts(live: HostState) -> ipam.IpamFacts:
    parent_addrs = {name: tuple(a.ip for a in l.addresses) for name, l in live.facts.links.items()}
    net_of: Dict[Tuple[str, str], str] = {}
    for o in live.of_kind(Kind.ENDPOINT):
        assert isinstance(o, Endpoint)
        net_of[(o.ns, o.ifname)] = o.network
    live_addrs: Dict[Tuple[str, str], List[object]] = {}
    for o in live.of_kind(Kind.ADDRESS):
        assert isinstance(o, Address)
        net = net_of.get((o.ns, o.ifname))
        if net:
            live_addrs.setdefault((o.ns, net), []).append(o.address)
    return ipam.IpamFacts(
        host_routes=live.facts.routes,
        parent_addresses=parent_addrs,
        live_addresses={k: tuple(v) for k, v in live_addrs.items()},
        machine_id=machine_id(),
        ula48=live.facts.ula_prefix,
    )


def host_ula_prefix(state: State) -> str:
    """The ULA /48 this host's IPAM uses now (the state directory's, else the machine-id's);
    `status --format json` records it for `plan --offline --live-state`."""
    facts = ipam.IpamFacts(machine_id=machine_id())
    return str(ipam.ula_in_use(DesiredState(), facts, state.allocations))


@dataclass(frozen=True)
class Planned:
    plan: Plan
    resolved: DesiredState
    allocations: ipam.Allocations
    # what compile made of ``resolved`` (the daemon's scoped reconcile keeps it as its base)
    compiled: Optional[Compiled] = None


def plan_for(
    desired: DesiredState,
    live: HostState,
    state: State,
    offline: bool = False,
    memo: Optional[CompileMemo] = None,
) -> Planned:
    resolved, allocations = ipam.resolve(desired, ipam_facts(live), state.allocations)
    compiled = compile_state(resolved, live.facts, offline=offline, memo=memo)
    warnings = [str(w) for w in desired.warnings]
    if state.problem:
        warnings.append(state.problem)
    plan = make_plan(
        compiled.desired,
        live,
        pending=compiled.pending,
        protected_networks=compiled.protected_networks,
        warnings=warnings,
        problems=compiled.problems,
    )
    return Planned(plan=plan, resolved=resolved, allocations=allocations, compiled=compiled)


def offline_live(live_state_file: Optional[str]) -> HostState:
    if not live_state_file:
        return HostState()
    return read_state_file(live_state_file)  # every problem with the file is a UserError


@dataclass
class ObservationCache:
    """The daemon's memory between reconciles: the last snapshot, and who can say which of
    its namespace dumps still hold (the netlink monitor). ``engine.apply`` reuses those and
    dumps the rest, and leaves its verify snapshot here for the next run. ``snapshot=None``
    asks for a full observation (the daemon's start, SIGHUP, the periodic resync).
    ``held`` says which namespace the caller holds a socket in under each name (the
    monitor's): only a dump of that very namespace (same netns cookie) is ever reused, so
    ``still_valid`` vouches for changes, never for identity; without ``held`` nothing is."""

    still_valid: "StillValid"
    snapshot: Optional["Snapshot"] = None
    # compile's per-container results, kept between runs too: besides the manifests they
    # depend only on which parents exist, which compile checks every time, so they survive
    # a full observation
    compile_memo: CompileMemo = field(default_factory=CompileMemo)
    reused: int = 0  # namespaces taken from the previous snapshot by the last run's observe
    dumped: int = 0  # namespaces dumped by the last run's observe (verify is not counted)
    held: Optional["Held"] = None


def wanted_export_tables(desired: DesiredState) -> Tuple[int, ...]:
    """The host-namespace table our BGP exports live in (SPEC 5.2): only a fleet state
    narrowed to this host, with ``bgp:``, has one; everything else pays no extra dump."""
    if desired.bgp is not None and desired.local_host is not None:
        return (desired.bgp.table,)
    return ()


def export_tables(desired: DesiredState, state: State) -> Tuple[int, ...]:
    """Tables to observe: the wanted one, and any the state directory says may still hold
    our exports (``bgp:`` removed or its table changed since)."""
    return tuple(sorted(set(wanted_export_tables(desired)) | set(state.export_tables)))


def observe_host(
    kernel: "Kernel",
    intents: Sequence[Key] = (),
    previous: Optional["Snapshot"] = None,
    still_valid: Optional["StillValid"] = None,
    cache: Optional[ObservationCache] = None,
    held: Optional["Held"] = None,
    tables: Sequence[int] = (),
) -> Tuple[HostState, "Snapshot"]:
    from .kernel.handlers import observe
    from .objects import MARKER

    intent_ns = {k[1] for k in intents if k[0] is Kind.NETNS}

    def is_ours(name, links) -> bool:
        if name in intent_ns:
            return True
        return any(l.name == "lo" and l.alias == MARKER for l in links)

    snap = kernel.snapshot(is_ours, previous=previous, still_valid=still_valid, held=held, tables=tables)
    if cache is not None:
        old = previous.namespaces if previous is not None else {}
        cache.reused = sum(1 for n, v in snap.namespaces.items() if old.get(n) is v)
        cache.dumped = len(snap.namespaces) - cache.reused
    return observe(snap, intents), snap


@dataclass
class ApplyOutcome:
    plan: Plan
    result: Optional["ApplyResult"] = None
    rollback: Optional["ApplyResult"] = None
    verify: Optional[Plan] = None
    netlink_writes: int = 0
    seconds: float = 0.0
    phases: Dict[str, float] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return (self.result is None or self.result.ok) and self.verify is not None and self.verify.empty

    @property
    def exit_code(self) -> int:
        if not self.converged:
            return 1
        return 3 if self.plan.pending else 0


def apply(
    desired: DesiredState,
    store: StateStore,
    kernel: "Kernel",
    rollback: bool = True,
    lock_timeout: float = 60.0,
    cache: Optional[ObservationCache] = None,
    check: Optional[Callable[[HostState, State, Planned], None]] = None,
    planner: Optional[Callable[..., Planned]] = None,
) -> ApplyOutcome:
    """Observe, plan, execute, verify -- under the writer lock.

    ``check`` (a saved plan, ``reconciler.savedplan``) sees the observed host, the state
    directory and the new plan before anything is written, and refuses by raising.

    With a ``cache`` (the daemon) namespaces it vouches for are not dumped again; verify
    re-dumps only what this run touched (everything after a failure or a change to a host
    link, whose deletion takes endpoints in other namespaces with it).

    ``planner`` (the daemon's ``daemon.scope.ScopedPlanner``) replaces ``plan_for`` for the
    plan and the verify: same arguments, same result."""
    from .kernel.apply import execute, rollback_plan

    t0 = time.monotonic()
    phases: Dict[str, float] = {}
    plan_for_ = planner or plan_for
    with store.lock(lock_timeout):
        state = store.load()
        tables = export_tables(desired, state)
        final_tables = wanted_export_tables(desired)
        t = time.monotonic()
        if cache is not None:
            live, snap = observe_host(kernel, state.intents, cache.snapshot, cache.still_valid, cache, cache.held, tables=tables)
            cache.snapshot = None  # until this run has a snapshot it can vouch for
        else:
            live, snap = observe_host(kernel, state.intents, tables=tables)
        phases["observe"] = time.monotonic() - t
        t = time.monotonic()
        memo = cache.compile_memo if cache is not None else None
        planned = plan_for_(desired, live, state, memo=memo)
        phases["plan"] = time.monotonic() - t
        if check is not None:
            check(live, state, planned)
        plan = planned.plan
        writes_before = kernel.counter.count
        out = ApplyOutcome(plan=plan)
        if plan.empty:
            if (planned.allocations != state.allocations or state.intents or state.problem
                    or state.export_tables != final_tables):
                store.save(State(allocations=planned.allocations, export_tables=final_tables))
            out.verify = plan_verify(plan)
            out.netlink_writes = kernel.counter.count - writes_before
            out.seconds = time.monotonic() - t0
            out.phases = phases
            if cache is not None:
                cache.snapshot = snap
            return out
        # write-ahead: what we are about to create, so a kill mid-way leaves no orphan
        # ... and what we are about to delete: deleting a namespace is umount + unlink, and a
        # kill between the two leaves a plain file in /run/netns that carries no marker
        intents = tuple(a.key for a in plan.actions if a.op in (Op.CREATE, Op.REPLACE, Op.DELETE)
                        and a.kind in (Kind.VLAN, Kind.DUMMY, Kind.NETNS, Kind.ENDPOINT))
        store.save(State(allocations=_merge_alloc(state.allocations, planned.allocations), intents=intents,
                         export_tables=tables))
        t = time.monotonic()
        result = execute(plan.actions, kernel, snap)
        phases["apply"] = time.monotonic() - t
        out.result = result
        if not result.ok:
            # From here on, intent records name only what this run really created: a failed
            # create made nothing of ours (EEXIST: the name is someone else's now, e.g. a
            # namespace added between plan and apply), and an intent naming it would make
            # every later run adopt -- and possibly delete -- that object.
            made = {a.key for a in result.done if a.op in (Op.CREATE, Op.REPLACE)}
            made |= {a.key for a, _ in result.failed if a.op is Op.DELETE}  # half-deleted: still ours
            intents = tuple(k for k in intents if k in made)
        if not result.ok and rollback and result.done:
            live2, snap2 = observe_host(kernel, intents, tables=tables)
            out.rollback = execute(rollback_plan(result.done), kernel, snap2)
            undone = {a.key for a in out.rollback.done}
            intents = tuple(k for k in intents if k not in undone)
        t = time.monotonic()
        if cache is not None and result.ok and out.rollback is None and not any(
            a.kind in (Kind.VLAN, Kind.DUMMY) for a in plan.actions
        ):
            touched = {a.key[1] for a in plan.actions if a.kind is not Kind.HOSTS}  # files: always re-read
            base = cache.still_valid

            def still_valid(name: str, view) -> bool:
                return name not in touched and base(name, view)

            live_after, snap_after = observe_host(kernel, intents, snap, still_valid, held=cache.held, tables=tables)
        else:
            live_after, snap_after = observe_host(kernel, intents, tables=tables)
        verify_state = State(allocations=planned.allocations)
        try:
            out.verify = plan_for_(desired, live_after, verify_state, memo=memo).plan
        except PlanError as e:
            if result.ok:
                raise Bug(f"verification could not plan after apply: {e}")
            # the failure itself can be such a clash (a name taken mid-apply): report it
            out.verify = Plan(warnings=tuple(f"verify: {p}" for p in e.problems))
        phases["verify"] = time.monotonic() - t
        if cache is not None and result.ok and out.verify.empty:
            cache.snapshot = snap_after
        if result.ok:
            store.save(State(allocations=planned.allocations, export_tables=final_tables))
        else:
            store.save(State(allocations=_merge_alloc(state.allocations, planned.allocations), intents=intents,
                             export_tables=tables))
        out.netlink_writes = kernel.counter.count - writes_before
        out.seconds = time.monotonic() - t0
        out.phases = phases
        return out


def plan_verify(plan: Plan) -> Plan:
    return Plan(pending=plan.pending)


def _merge_alloc(old: ipam.Allocations, new: ipam.Allocations) -> ipam.Allocations:
    """While a run is in flight keep both old and new choices reserved."""
    subnets = dict(old.subnets)
    subnets.update(new.subnets)
    addresses = {c: dict(n) for c, n in old.addresses.items()}
    for c, nets in new.addresses.items():
        addresses.setdefault(c, {}).update(nets)
    return ipam.Allocations(ula48=new.ula48 or old.ula48, subnets=subnets, addresses=addresses)
