"""The daemon's scoped reconcile: plan only what a manifest edit (or drift the netlink
monitor saw) can have changed, and carry the rest over from the last converged reconcile.

``ScopedPlanner`` is a drop-in for ``engine.plan_for`` (the daemon's memory, ``memory.DaemonMemory``,
hands it to ``engine.apply(memory=...)`` as its ``planner``): same arguments, same result. It keeps a *base*: what the last plan that came out empty (a
converged host) was made of -- the desired state as loaded, IPAM's result and allocations,
the compiled objects of every namespace, the hosts-file blocks of every network, and the
live objects and host facts it was compared with. Against that base a new request is
planned for a *scope* of namespaces only:

* the containers whose manifest entry changed, appeared or went away (model equality:
  positions in the file do not count);
* every container on a network one of them is (or was) on: IPAM runs for all containers
  of those networks (so explicit addresses and previous choices are seen exactly as the
  full IPAM sees them), and their hosts files list the changed ones;
* every namespace whose live objects differ from the base's (the netlink monitor re-dumped
  it, or its hosts file changed): hand-made drift.

IPAM (those networks), compile (the changed containers and those IPAM moved), the hosts
files (those networks' members) and the diff (the scope's namespaces, desired and live)
run for the scope only; outside it the desired objects are the base's and the live ones
equal the base's, whose diff was empty, so the full plan would hold nothing there either.

Anything the scope cannot be sure of is planned in full (``engine.plan_for``), which also
records a new base when its plan is empty: no base yet; the daemon asked for a full plan
(start, SIGHUP, a retry, the periodic resync); anything but ``containers`` changed in the
desired state (networks, VLANs, ULA prefix, fleet or BGP parts); a fleet manifest, BGP or
host access (host-namespace objects follow container addresses); something pending or a
problem in the base; a host-namespace object or a host fact (links, routes, foreign
namespaces) that differs from the base's; the state directory's allocations not the
base's (a failed run merged them) or its problem flag; IPAM or compile reporting anything
(the full path reports it the way it always has); a scope larger than half the containers.
``last`` says which way the last plan went and why (the daemon logs it).

The scoped verify (``verify_scoped``, called by ``engine._Run.verify``): after a scoped plan
that was executed cleanly and changed no host link, only the scope's namespaces are dumped
again and their hosts files read (``kernel.partial.refresh_snapshot``), and only they are
compared with what the scoped plan wanted (``verify_plan``); an empty result makes the new
base (the live objects outside the scope are the first observation's, which the scoped plan
found equal to the base's). Anything else -- a full plan, a failure, a rollback, a host link
changed, BGP export tables -- verifies the way it always has.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import compress
from operator import is_not
from typing import Dict, List, Mapping, Optional, Set, Tuple

from .. import ipam
from ..compile import HostsBuilder, compile_state
from ..model import Container, DesiredState, Network
from ..objects import HostFacts, HostsFile, HostState, Key, Kind, KObject

# kinds whose key's second element is the namespace they live in
NS_KINDS = frozenset((Kind.NETNS, Kind.ENDPOINT, Kind.SYSCTL, Kind.ADDRESS, Kind.ROUTE, Kind.HOSTS))
# the desired state's parts besides ``containers`` (and ``warnings``, passed through)
TOP_LEVEL = ("networks", "vlans", "hosts", "bgp", "local_host", "ula_prefix", "remote")


class Fallback(Exception):
    """The scope cannot be planned on its own: plan everything (the message says why)."""


@dataclass
class Base:
    """What the last empty plan was made of (a converged host)."""

    desired: DesiredState
    resolved: Dict[str, Container]  # after IPAM
    networks: Mapping[str, Network]  # after IPAM
    allocations: ipam.Allocations
    objects: Dict[str, Tuple[KObject, ...]]  # namespace -> its desired objects, hosts file included
    members: Dict[str, Tuple[str, ...]]  # network -> its containers, in manifest order
    hosts_own: Dict[Tuple[str, str], str]  # HostsBuilder's tables
    hosts_span: Dict[Tuple[str, str], Tuple[int, int]]
    hosts_blocks: Dict[str, str]
    live: Dict[Key, KObject]
    facts: HostFacts
    notes: Tuple[str, ...]


@dataclass
class _Verify:
    """A non-empty scoped plan's scope, what it wants there, and its base-to-be."""

    scope: frozenset
    want: Tuple[KObject, ...]
    warnings: Tuple[str, ...]
    live: Dict[Key, KObject]  # the live objects the plan was made with
    live_keys: Tuple[Key, ...]  # those of them in the scope
    parts: Dict[str, object]  # Base's fields but ``live``


def eligible(desired: DesiredState) -> Optional[str]:
    """Why ``desired`` is always planned in full (None: it can be scoped)."""
    if desired.hosts or desired.local_host is not None or desired.remote:
        return "fleet manifest"
    if desired.bgp is not None:
        return "bgp"
    if any(n.host_access for n in desired.networks.values()):
        return "host access"
    return None


def _hosts_builder(own, span, blocks) -> HostsBuilder:
    hb = HostsBuilder.__new__(HostsBuilder)
    hb.own, hb.span, hb.blocks = own, span, blocks
    return hb


class ScopedPlanner:
    def __init__(self, max_fraction: float = 0.5, scoped_verify: bool = True):
        self.scoped_verify = scoped_verify  # False: every verify the usual way (to compare)
        self.base: Optional[Base] = None
        self.full = True  # the daemon sets it per reconcile: plan everything this time
        self.max_fraction = max_fraction
        self.last: Dict[str, object] = {}
        self.counts = {"scoped": 0, "full": 0}
        self._issued: Optional[Tuple[DesiredState, ipam.Allocations]] = None
        # a non-empty scoped plan: what its verify compares with and the base it then makes
        self._verify: Optional[_Verify] = None

    def describe(self) -> str:
        last = self.last
        if last.get("mode") == "scoped":
            return f"scoped({last['namespaces']} namespaces, {last['recompiled']} recompiled)"
        return f"full({last.get('reason', '')})"

    def __call__(self, desired: DesiredState, live: HostState, state, offline: bool = False, memo=None):
        from ..engine import plan_for

        reason = "requested"
        self._verify = None
        if not self.full:
            try:
                return self._scoped(desired, live, state)
            except Fallback as e:
                reason = str(e)
            except Exception as e:  # any error: the full path reports it as it always has
                reason = f"{type(e).__name__} in the scope"
        self.base = None
        planned = plan_for(desired, live, state, offline=offline, memo=memo)
        self.counts["full"] += 1
        self.last = {"mode": "full", "reason": reason}
        self._issued = (desired, planned.allocations)
        self._record_full(desired, live, planned)
        return planned

    # the full path's base ------------------------------------------------------------------
    def _record_full(self, desired: DesiredState, live: HostState, planned) -> None:
        compiled = planned.compiled
        if (compiled is None or not planned.plan.empty or planned.plan.pending or compiled.pending
                or compiled.problems or eligible(desired) is not None):
            return
        objects: Dict[str, List[KObject]] = {}
        for k, o in compiled.desired.objects.items():
            if k[0] in NS_KINDS:
                objects.setdefault(k[1], []).append(o)
        members: Dict[str, List[str]] = {}
        resolved = planned.resolved
        for c in resolved.containers.values():
            for att in c.attachments:
                members.setdefault(att.network, []).append(c.name)
        hb = HostsBuilder(resolved)
        self.base = Base(
            desired=desired,
            resolved=dict(resolved.containers),
            networks=resolved.networks,
            allocations=planned.allocations,
            objects={ns: tuple(v) for ns, v in objects.items()},
            members={n: tuple(v) for n, v in members.items()},
            hosts_own=hb.own,
            hosts_span=hb.span,
            hosts_blocks=hb.blocks,
            live=live.objects,
            facts=live.facts,
            notes=planned.plan.notes,
        )

    # the scoped path -----------------------------------------------------------------------
    def _scoped(self, desired: DesiredState, live: HostState, state):
        from ..engine import Planned, machine_id
        from ..plan import make_plan

        b = self.base
        if b is None:
            raise Fallback("no converged base")
        why = eligible(desired)
        if why:
            raise Fallback(why)
        if state.problem:
            raise Fallback("state directory problem")
        for f in TOP_LEVEL:
            if getattr(desired, f) != getattr(b.desired, f):
                raise Fallback(f"{f} changed")
        # the state directory's allocations: the base's, or (the verify) those this planner
        # gave the plan of this very desired state
        issued = self._issued
        if not (state.allocations == b.allocations
                or (issued is not None and state.allocations is issued[1] and desired is issued[0])):
            raise Fallback("allocations differ from the base's")
        if live.facts != b.facts:
            raise Fallback("host links, routes or foreign objects changed")

        # ---- what changed: manifest entries, and live namespaces (drift) -------------------
        old, new = b.desired.containers, desired.containers
        changed: Set[str] = set()
        if old is not new:
            for name, c in new.items():
                o = old.get(name)
                if o is not c and o != c:
                    changed.add(name)
        removed = set(old.keys() - new.keys())
        # hosts files list a network's containers in manifest order: the containers kept
        # must keep theirs (an added one may go anywhere: its networks are recomputed)
        if old is not new:
            if len(old) == len(new) and not removed:
                same_order = list(old) == list(new)
            else:
                same_order = [n for n in old if n in new] == [n for n in new if n in old]
            if not same_order:
                raise Fallback("containers reordered")
        drift: Set[str] = set()
        bl = b.live
        # a namespace dump reused from the last observation gives the very same objects:
        # find the others at C speed, then compare those (hosts files, re-dumped namespaces)
        keys = list(live.objects)
        others = compress(keys, map(is_not, live.objects.values(), map(bl.get, keys)))
        for k in others:
            if bl.get(k) != live.objects[k]:
                if k[0] not in NS_KINDS:
                    raise Fallback("a host-namespace object changed")
                drift.add(k[1])
        for k in bl.keys() - live.objects.keys():
            if k[0] not in NS_KINDS:
                raise Fallback("a host-namespace object changed")
            drift.add(k[1])

        # networks the edit touches: IPAM and hosts files of all their members
        touched: Set[str] = set()
        for name in changed | removed:
            for c in (old.get(name), new.get(name)):
                if c is not None:
                    touched.update(att.network for att in c.attachments)
        old_members: Set[str] = set()
        for n in touched:
            old_members.update(b.members.get(n, ()))
        cands = (old_members | changed) - removed
        pos = {name: i for i, name in enumerate(new)} if cands else {}
        sub_names = [name for name in sorted((c for c in cands if c in pos), key=pos.__getitem__)
                     if any(att.network in touched for att in new[name].attachments)]
        scope = changed | removed | drift | old_members | set(sub_names)
        if len(scope) > max(8, self.max_fraction * len(new)):
            raise Fallback(f"scope of {len(scope)} namespaces")

        # live objects of the scope (one pass)
        live_objs: List[KObject] = [o for k, o in live.objects.items() if k[1] in scope and k[0] in NS_KINDS]

        # ---- IPAM for the touched networks -------------------------------------------------
        recompile: Dict[str, Container] = {}
        resolved = b.resolved
        allocations = b.allocations
        if touched:
            sub = replace(
                desired,
                networks={n: net for n, net in desired.networks.items() if n in touched},
                containers={name: new[name] for name in sub_names},
                warnings=(),
            )
            sub_set = set(sub_names)
            net_of = {(o.ns, o.ifname): o.network for o in live_objs if o.kind is Kind.ENDPOINT}
            live_addrs: Dict[Tuple[str, str], List[object]] = {}
            for o in live_objs:
                if o.kind is Kind.ADDRESS and o.ns in sub_set:
                    net = net_of.get((o.ns, o.ifname))
                    if net:
                        live_addrs.setdefault((o.ns, net), []).append(o.address)
            facts = ipam.IpamFacts(
                host_routes=live.facts.routes,
                parent_addresses={n: tuple(a.ip for a in l.addresses) for n, l in live.facts.links.items()},
                live_addresses={k: tuple(v) for k, v in live_addrs.items()},
                machine_id=machine_id(),
                ula48=live.facts.ula_prefix,
            )
            sub_resolved, sub_alloc = ipam.resolve(sub, facts, state.allocations)
            for n in touched:
                if n in sub_resolved.networks and sub_resolved.networks[n] != b.networks.get(n):
                    raise Fallback(f"network {n} resolved differently")
            if sub_alloc.ula48 != allocations.ula48:
                raise Fallback("ULA prefix changed")
            resolved = dict(b.resolved)
            for name in removed:
                resolved.pop(name, None)
            addresses = dict(allocations.addresses)
            for name in removed:
                addresses.pop(name, None)
            for name in sub_names:
                rc = sub_resolved.containers[name]
                if name not in changed:
                    base_rc = b.resolved[name]
                    atts = tuple(r if r.network in touched else p for r, p in zip(rc.attachments, base_rc.attachments))
                    if atts == base_rc.attachments:
                        continue
                    rc = replace(base_rc, attachments=atts)
                resolved[name] = rc
                recompile[name] = rc
                entry = {n: v for n, v in allocations.addresses.get(name, {}).items() if n not in touched}
                entry.update(sub_alloc.addresses.get(name, {}))
                if entry:
                    addresses[name] = entry
                else:
                    addresses.pop(name, None)
            allocations = ipam.Allocations(ula48=allocations.ula48, subnets=allocations.subnets, addresses=addresses)
        if set(changed) - set(recompile):
            raise Fallback("a changed container is on no network IPAM saw")  # (not reached: every container has one)

        # ---- compile the changed containers --------------------------------------------------
        new_objects: Dict[str, List[KObject]] = {}
        if recompile:
            nets = {att.network for c in recompile.values() for att in c.attachments}
            compiled = compile_state(
                DesiredState(networks={n: b.networks[n] for n in nets}, vlans=desired.vlans, containers=recompile),
                live.facts,
            )
            if compiled.pending or compiled.problems:
                raise Fallback("compile reported pending work or problems")
            for k, o in compiled.desired.objects.items():
                if k[0] in NS_KINDS and k[0] is not Kind.HOSTS:
                    new_objects.setdefault(k[1], []).append(o)

        # ---- hosts files of the touched networks' members ----------------------------------
        own, span, blocks = b.hosts_own, b.hosts_span, b.hosts_blocks
        hosts_of: Dict[str, HostsFile] = {}
        if touched:
            own, span, blocks = dict(own), dict(span), dict(blocks)
            new_members: Dict[str, List[str]] = {n: [] for n in touched}
            for name in sub_names:
                for att in resolved[name].attachments:
                    if att.network in touched:
                        new_members[att.network].append(name)
            for n in touched:
                for m in b.members.get(n, ()):
                    own.pop((m, n), None)
                    span.pop((m, n), None)
                blocks.pop(n, None)
            hb = HostsBuilder(DesiredState(containers={name: resolved[name] for name in sub_names}))
            for n in touched:
                for m in new_members[n]:
                    own[(m, n)] = hb.own[(m, n)]
                    span[(m, n)] = hb.span[(m, n)]
                if n in hb.blocks:
                    blocks[n] = hb.blocks[n]
            merged = _hosts_builder(own, span, blocks)
            for name in sub_names:
                hosts_of[name] = HostsFile(ns=name, content=merged.content(resolved[name]))

        # ---- the scope's desired objects, and the diff ------------------------------------
        objects = b.objects
        want: List[KObject] = []
        updated: Dict[str, Tuple[KObject, ...]] = {}
        for ns in scope:
            if ns not in new:
                continue
            if ns in new_objects:
                objs = new_objects[ns]
            else:
                objs = [o for o in objects.get(ns, ()) if o.kind is not Kind.HOSTS]
            hf = hosts_of.get(ns)
            if hf is None:
                hf = next(o for o in objects[ns] if o.kind is Kind.HOSTS)
            updated[ns] = tuple(objs) + (hf,)
            want.extend(updated[ns])
        warnings = [str(w) for w in desired.warnings]
        plan = make_plan(HostState(want), HostState(live_objs, live.facts), warnings=warnings)
        plan = replace(plan, notes=b.notes)

        self.counts["scoped"] += 1
        self.last = {"mode": "scoped", "namespaces": len(scope), "recompiled": len(recompile)}
        self._issued = (desired, allocations)
        if touched or removed:
            resolved_state = replace(desired, networks=b.networks, containers=resolved)
        else:
            resolved_state = replace(desired, networks=b.networks, containers=b.resolved)
        objects = dict(objects)
        for name in removed:
            objects.pop(name, None)
        objects.update(updated)
        members = b.members
        if touched:
            members = dict(members)
            for n in touched:
                members[n] = tuple(new_members[n])
        parts = dict(desired=desired, resolved=resolved, networks=b.networks, allocations=allocations,
                     objects=objects, members=members, hosts_own=own, hosts_span=span, hosts_blocks=blocks,
                     facts=live.facts, notes=b.notes)
        if plan.empty:
            self.base = Base(live=live.objects, **parts)
        else:
            self._verify = _Verify(scope=frozenset(scope), want=tuple(want), warnings=tuple(warnings),
                                   live=live.objects, live_keys=tuple(o.key for o in live_objs), parts=parts)
        return Planned(plan=plan, resolved=resolved_state, allocations=allocations)

    # the scoped verify ----------------------------------------------------------------------
    def verify_plan(self, live_scope: List[KObject]):
        """The verify of the last (non-empty) scoped plan from the scope's live objects now:
        empty when the scope holds what that plan wanted; then the new base is made (outside
        the scope the live objects are those the plan was made with). None: no such plan."""
        from ..plan import make_plan

        v, self._verify = self._verify, None
        if v is None:
            return None
        facts = v.parts["facts"]
        plan = make_plan(HostState(v.want), HostState(live_scope, facts), warnings=list(v.warnings))
        plan = replace(plan, notes=v.parts["notes"])
        self.counts["verify_scoped"] = self.counts.get("verify_scoped", 0) + 1
        if plan.empty:
            live = dict(v.live)
            for k in v.live_keys:
                del live[k]
            for o in live_scope:
                live[o.key] = o
            self.base = Base(live=live, **v.parts)
        else:
            self.base = None  # the retry plans in full
        return plan

    def verify_scoped(self, kernel, intents, before):
        """``engine._Run.verify``'s scoped path: ``(verify plan, observation to keep)``, or
        None when the last plan was not a scoped one (verify the usual way). ``before``: the
        run's first observation (``kernel.observe.Observation``)."""
        from ..kernel.host import Snapshot
        from ..kernel.observe import Observation, translate
        from ..kernel.partial import refresh_snapshot

        v = self._verify
        if v is None or self.last.get("mode") != "scoped" or before.snapshot.exports or not self.scoped_verify:
            self._verify = None
            return None
        snap = refresh_snapshot(kernel, before.snapshot, v.scope, intents)
        mini = Snapshot(
            host=snap.host,
            namespaces={n: snap.namespaces[n] for n in v.scope if n in snap.namespaces},
            hosts_files={n: snap.hosts_files[n] for n in v.scope if n in snap.hosts_files},
        )
        live_mini, made_mini = translate(mini, intents)
        live_scope = [o for k, o in live_mini.objects.items() if k[0] in NS_KINDS]
        plan = self.verify_plan(live_scope)
        made = dict(before.made)
        for n in v.scope:
            made.pop(n, None)
        made.update(made_mini)
        obs = Observation(live=HostState(live_scope, live_mini.facts), snapshot=snap, made=made,
                          reused=len(snap.namespaces) - len(mini.namespaces), dumped=len(mini.namespaces))
        return plan, obs
