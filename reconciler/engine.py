"""The pipeline: manifest -> observe -> ipam -> compile -> plan -> apply -> verify.

The CLI and the daemon both go through here. Kernel modules are imported only
when the kernel is used, so `plan --offline` runs unprivileged anywhere.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from . import ipam
from .compile import CompileMemo, Compiled, compile_state
from .errors import Bug, PlanError
from .livestate import read_state_file
from .model import DesiredState
from .objects import Address, Endpoint, HostState, Key, Kind
from .plan import Op, Plan, make_plan
from .statedir import State, StateStore

if TYPE_CHECKING:  # pragma: no cover
    from .kernel.apply import ApplyResult
    from .kernel.host import HeldNs, Kernel, Snapshot
    from .kernel.observe import Made, Observation


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


@dataclass(frozen=True)
class Previous:
    """What a long-running caller (the daemon) hands one ``engine.apply`` run from the last,
    as data: the last run's snapshot, what observe made of it, and what the caller vouches
    for -- asked of its netlink monitor before the run, so the engine never calls back into
    it. ``held``: the namespace the caller holds a socket in under each name; ``quiet``: for
    each name, a time (``time.monotonic()``) from which no change that matters (nor a lost
    event) had been seen in it when the caller was asked. A dump of NAME taken at or after
    that time, of the namespace held under NAME (same netns cookie, ``same_namespace``), is
    reused instead of dumped again; a change seen after the caller was asked is its next
    trigger (docs/daemon.md, "The daemon's memory"). ``snapshot=None``: dump every
    namespace (the daemon's start, SIGHUP, a retry, the periodic resync)."""

    snapshot: Optional["Snapshot"] = None
    made: "Made" = field(default_factory=dict)  # kernel.observe.translate's, for ``snapshot``
    held: Mapping[str, "HeldNs"] = field(default_factory=dict)
    quiet: Mapping[str, float] = field(default_factory=dict)
    # the monitor's change log since ``snapshot``'s mark (``kernel.host.Changes``, when the
    # monitor keeps one): the first observation is then scoped to it (kernel/observe.py)
    changes: Optional[object] = None

    def still_valid(self, name: str, view) -> bool:
        """kernel.host.StillValid: nothing that matters changed in NAME since VIEW's dump."""
        q = self.quiet.get(name)
        return q is not None and q <= view.taken

    def vouch_only(self) -> "Previous":
        """The same vouches without the snapshot (a run keeps these for its verify)."""
        return Previous(held=self.held, quiet=self.quiet)


class RunMemory(Protocol):
    """What a long-running caller keeps between ``engine.apply`` runs, seen from the engine:
    the daemon's ``daemon.memory.DaemonMemory``. ``engine.apply(memory=None)`` -- the CLI --
    keeps nothing and allocates nothing for it."""

    #: plans (and verifies): ``plan_for``, or the daemon's scoped planner (same arguments and
    #: result; may have ``verify_scoped``, daemon/scope.py)
    planner: Callable[..., Planned]
    #: compile's per-container results, kept between runs (``compile.CompileMemo``)
    compile_memo: Optional[CompileMemo]

    def handover(self) -> Previous:
        """The last run's observation and the caller's vouches, once: the memory lets go of
        the snapshot (a run that fails leaves nothing to build on)."""
        ...  # pragma: no cover

    def keep(self, obs: "Observation") -> None:
        """This run's last observation of a converged host: the next run may build on it."""
        ...  # pragma: no cover


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


@dataclass
class ApplyOutcome:
    plan: Plan
    result: Optional["ApplyResult"] = None
    rollback: Optional["ApplyResult"] = None
    verify: Optional[Plan] = None
    netlink_writes: int = 0
    seconds: float = 0.0
    phases: Dict[str, float] = field(default_factory=dict)
    reused: int = 0  # namespace dumps the first observation took from the previous run's
    dumped: int = 0  # namespaces the first observation dumped (verify is not counted)

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
    check: Optional[Callable[[HostState, State, Planned], None]] = None,
    memory: Optional[RunMemory] = None,
) -> ApplyOutcome:
    """Observe, plan, record intents, execute (rolling back on failure), verify, save --
    under the writer lock. Each step is a method of :class:`_Run`; the state directory is
    read once, written ahead of execution (the intents) and written once at the end.

    ``check`` (a saved plan, ``reconciler.savedplan``) sees the observed host, the state
    directory and the new plan before anything is written, and refuses by raising.

    ``memory`` (the daemon's, :class:`RunMemory`): namespaces it vouches for are not dumped
    again, verify re-dumps only what this run touched (everything after a failure or a
    change to a host link, whose deletion takes endpoints in other namespaces with it), its
    planner and compile memo plan, and the run's last observation is handed back to it.
    Without it (the CLI) nothing is kept: every namespace is dumped, ``plan_for`` plans."""
    run = _Run(desired, kernel, memory)
    with store.lock(lock_timeout):
        state = store.load()
        first = run.observe(state)
        planned = run.plan(state, first)
        if check is not None:
            check(first.live, state, planned)
        on_disk = state
        if planned.plan.empty:
            run.out.verify = plan_verify(planned.plan)
            run.remember(first)
        else:
            on_disk = run.record_intents(state, planned, first.live)
            store.save(on_disk)  # write-ahead: see record_intents
            run.execute(first, rollback)
            run.remember(run.verify(first))
        final = run.final_state(state)
        if final != on_disk:
            store.save(final)
    return run.finish()


class _Run:
    """One apply's steps and what they leave for the next (``apply`` runs them in order)."""

    def __init__(self, desired: DesiredState, kernel: "Kernel", memory: Optional[RunMemory] = None):
        self.desired = desired
        self.kernel = kernel
        self.memory = memory
        # the daemon's scoped planner and compile memo, else the full plan and no memo
        self.plan_for = memory.planner if memory is not None else plan_for
        self.memo = memory.compile_memo if memory is not None else None
        self.vouched: Optional[Previous] = None  # the memory's vouches, for verify
        self.t0 = time.monotonic()
        self.writes_before = kernel.counter.count
        self.phases: Dict[str, float] = {}
        self.tables: Tuple[int, ...] = ()  # observed: the wanted export table and leftovers
        self.planned: Optional[Planned] = None
        self.intents: Tuple[Key, ...] = ()  # keys recorded as ours while the run is in flight
        self.carried: Tuple[Key, ...] = ()  # intents an earlier killed run left, still present
        self.out = ApplyOutcome(plan=Plan())

    def _timed(self, phase: str, t: float) -> None:
        self.phases[phase] = time.monotonic() - t

    def observe(self, state: State) -> "Observation":
        """The host now; with the daemon's memory, reusing the dumps it vouches for."""
        from .kernel.observe import observe

        t = time.monotonic()
        self.tables = export_tables(self.desired, state)
        if self.memory is not None:
            prev = self.memory.handover()
            ch = prev.changes
            extra = {} if ch is None else {"changes": lambda mark: ch}  # asked before the run: data
            obs = observe(self.kernel, state.intents, prev.snapshot, prev.still_valid, prev.held.get,
                          tables=self.tables, made=prev.made, **extra)
            self.vouched = prev.vouch_only()  # the old snapshot is not held past this point
        else:
            obs = observe(self.kernel, state.intents, tables=self.tables)
        self.out.reused, self.out.dumped = obs.reused, obs.dumped
        self._timed("observe", t)
        return obs

    def plan(self, state: State, obs: "Observation") -> Planned:
        t = time.monotonic()
        self.planned = self.plan_for(self.desired, obs.live, state, memo=self.memo)
        self.out.plan = self.planned.plan
        self._timed("plan", t)
        return self.planned

    def record_intents(self, state: State, planned: Planned, live: HostState) -> State:
        """The write-ahead record, saved before anything is executed: what we are about to
        create, so a kill mid-way leaves no orphan, and what we are about to delete (deleting
        a namespace is umount + unlink, and a kill between the two leaves a plain file in
        /run/netns that carries no marker); and what an earlier killed run left to this one
        (``carried``): an object it made but had not marked yet exists only through its intent
        until this run's UPDATE marks it. Old and new automatic choices stay reserved."""
        self.carried = tuple(k for k in state.intents if live.get(k) is not None)
        self.intents = tuple(dict.fromkeys(self.carried + tuple(
            a.key for a in planned.plan.actions if a.op in (Op.CREATE, Op.REPLACE, Op.DELETE)
            and a.kind in (Kind.VLAN, Kind.DUMMY, Kind.NETNS, Kind.ENDPOINT))))
        return State(allocations=_merge_alloc(state.allocations, planned.allocations), intents=self.intents,
                     export_tables=self.tables)

    def execute(self, obs: "Observation", rollback: bool) -> None:
        """Run the plan; on failure keep only the intents of what this run really made, and
        (``rollback``) undo what it did."""
        from .kernel.apply import execute, rollback_plan
        from .kernel.observe import observe

        t = time.monotonic()
        result = self.out.result = execute(self.out.plan.actions, self.kernel, obs.snapshot)
        self._timed("apply", t)
        if result.ok:
            return
        # From here on, intent records name only what this run really created: a failed
        # create made nothing of ours (EEXIST: the name is someone else's now, e.g. a
        # namespace added between plan and apply), and an intent naming it would make
        # every later run adopt -- and possibly delete -- that object.
        made = {a.key for a in result.done if a.op in (Op.CREATE, Op.REPLACE)}
        made |= {a.key for a, _ in result.failed if a.op is Op.DELETE}  # half-deleted: still ours
        made |= set(self.carried) - {a.key for a in result.done if a.op is Op.DELETE}  # maybe unmarked still
        self.intents = tuple(k for k in self.intents if k in made)
        if rollback and result.done:
            now = observe(self.kernel, self.intents, tables=self.tables)
            self.out.rollback = execute(rollback_plan(result.done), self.kernel, now.snapshot)
            undone = {a.key for a in self.out.rollback.done}
            self.intents = tuple(k for k in self.intents if k not in undone)

    def verify(self, before: "Observation") -> Optional["Observation"]:
        """Observe again and plan: an empty plan is a converged host. With the memory, after a
        clean run that changed no host link, only the namespaces it touched are dumped. The
        observation, when it may be kept for the next run (else None)."""
        from .kernel.observe import observe

        t = time.monotonic()
        plan, result, v = self.out.plan, self.out.result, self.vouched
        assert result is not None and self.planned is not None
        if v is not None and result.ok and self.out.rollback is None and not any(
            a.kind in (Kind.VLAN, Kind.DUMMY) for a in plan.actions
        ):
            scoped = getattr(self.plan_for, "verify_scoped", None)  # the daemon's scoped planner
            got = scoped(self.kernel, self.intents, before) if scoped is not None and not self.tables else None
            if got is not None:  # only the plan's scope dumped and compared (daemon/scope.py)
                self.out.verify, after = got
                self._timed("verify", t)
                return after if self.out.verify.empty else None
            touched = {a.key[1] for a in plan.actions if a.kind is not Kind.HOSTS}  # files: always re-read
            base = v.still_valid

            def still_valid(name: str, view) -> bool:
                return name not in touched and base(name, view)

            after = observe(self.kernel, self.intents, before.snapshot, still_valid, v.held.get, tables=self.tables,
                            made=before.made)
        else:
            after = observe(self.kernel, self.intents, tables=self.tables)
        try:
            self.out.verify = self.plan_for(self.desired, after.live, State(allocations=self.planned.allocations),
                                            memo=self.memo).plan
        except PlanError as e:
            if result.ok:
                raise Bug(f"verification could not plan after apply: {e}")
            # the failure itself can be such a clash (a name taken mid-apply): report it
            self.out.verify = Plan(warnings=tuple(f"verify: {p}" for p in e.problems))
        self._timed("verify", t)
        return after if result.ok and self.out.verify.empty else None

    def remember(self, obs: Optional["Observation"]) -> None:
        """The daemon's memory keeps an observation the next run may build on."""
        if self.memory is not None and obs is not None:
            self.memory.keep(obs)

    def final_state(self, state: State) -> State:
        """What the state directory holds after this run. Converged or not executed: the
        new automatic choices, no intents, only the wanted export table. Failed: old and new
        choices, the intents of what may be ours, every table that may hold our exports."""
        assert self.planned is not None
        result = self.out.result
        if result is None or result.ok:
            return State(allocations=self.planned.allocations, export_tables=wanted_export_tables(self.desired))
        return State(allocations=_merge_alloc(state.allocations, self.planned.allocations), intents=self.intents,
                     export_tables=self.tables)

    def finish(self) -> ApplyOutcome:
        self.out.netlink_writes = self.kernel.counter.count - self.writes_before
        self.out.seconds = time.monotonic() - self.t0
        self.out.phases = self.phases
        return self.out


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
