"""The planner: a pure diff of desired and live kernel objects into ordered actions.

The plan is a value. ``ipvlanctl plan`` prints it; ``ipvlanctl apply`` executes
exactly this value (``reconciler.kernel.apply``), so a dry run and a real run
can never disagree.

Ordering: every deletion first, children before parents (routes, addresses,
endpoints, namespaces, then VLAN/dummy links); then creations, updates and
replacements, parents before children. Dependencies come from each object's
``requires()``; a cycle (e.g. two VLANs on each other) is a plan error.
"""
from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .compile import Pending
from .errors import PlanError
from .objects import (
    Endpoint,
    HostState,
    Key,
    Kind,
    KObject,
    VlanLink,
)


class Op(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"

    @property
    def symbol(self) -> str:
        return {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}[self.value]


@dataclass(frozen=True)
class Change:
    field: str
    before: object
    after: object
    forces_replace: bool = False


@dataclass(frozen=True)
class Action:
    op: Op
    key: Key
    before: Optional[KObject]
    after: Optional[KObject]
    changes: Tuple[Change, ...] = ()
    reason: str = ""

    @property
    def kind(self) -> Kind:
        return self.key[0]

    @property
    def obj(self) -> KObject:
        o = self.after if self.after is not None else self.before
        assert o is not None
        return o


@dataclass(frozen=True)
class Plan:
    actions: Tuple[Action, ...] = ()
    pending: Tuple[Pending, ...] = ()
    warnings: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()  # e.g. pre-existing links used as is

    @property
    def empty(self) -> bool:
        return not self.actions

    def counts(self) -> Tuple[int, int, int]:
        add = sum(1 for a in self.actions if a.op in (Op.CREATE, Op.REPLACE))
        change = sum(1 for a in self.actions if a.op is Op.UPDATE)
        destroy = sum(1 for a in self.actions if a.op in (Op.DELETE, Op.REPLACE))
        return add, change, destroy


def _diff_fields(before: KObject, after: KObject) -> Tuple[Tuple[Change, ...], bool]:
    changes: List[Change] = []
    replace = False
    for f in before.replace_fields:
        b, a = getattr(before, f), getattr(after, f)
        if b != a:
            changes.append(Change(f, b, a, forces_replace=True))
            replace = True
    for f in before.update_fields:
        b, a = getattr(before, f), getattr(after, f)
        if b != a:
            changes.append(Change(f, b, a))
    return tuple(changes), replace


def make_plan(
    desired: HostState,
    live: HostState,
    pending: Sequence[Pending] = (),
    protected_networks: Iterable[str] = (),
    warnings: Sequence[str] = (),
    problems: Sequence[str] = (),
) -> Plan:
    """Diff ``desired`` against ``live`` (our objects plus host facts). Raises PlanError
    when reaching the desired state would need to touch an object we do not own."""
    errors: List[str] = list(problems)
    notes: List[str] = []
    facts = live.facts
    protected = set(protected_networks)
    want: Dict[Key, KObject] = dict(desired.objects)

    # ---- ownership: clashes with objects we do not own ---------------------------------
    for key, obj in list(want.items()):
        kind = key[0]
        if kind in (Kind.VLAN, Kind.DUMMY):
            name = key[1]
            hl = facts.links.get(name)
            if hl is None or hl.owned:
                continue
            if (
                kind is Kind.VLAN
                and hl.kind == "vlan"
                and isinstance(obj, VlanLink)
                and hl.vid == obj.vid
                and hl.link == obj.link
            ):
                notes.append(f"vlan {name} (link {obj.link}, id {obj.vid}) exists and is not managed: used as is, never changed or deleted")
                del want[key]
                continue
            what = f"{hl.kind} link" if hl.kind else "link"
            errors.append(f"{what} {name} exists and is not managed by ipvlan-reconciler; rename or remove it")
        elif kind is Kind.ACCESS_LINK:
            hl = facts.links.get(key[1])
            if hl is not None and not hl.owned:
                what = f"{hl.kind} link" if hl.kind else "link"
                errors.append(f"{what} {key[1]} exists and is not managed by ipvlan-reconciler; rename or remove it")
        elif kind is Kind.NETNS and key[1] in facts.foreign_netns:
            errors.append(f"network namespace {key[1]} exists and is not managed by ipvlan-reconciler; remove it or rename the container")
        elif kind is Kind.ENDPOINT and (key[1], key[2]) in facts.foreign_links:
            errors.append(
                f"link {key[2]} in namespace {key[1]} is not managed by ipvlan-reconciler "
                f"({facts.foreign_links[(key[1], key[2])]}); remove it"
            )
        elif kind is Kind.HOSTS:
            cur = live.get(key)
            if cur is not None and not getattr(cur, "owned", True):
                errors.append(f"/etc/netns/{key[1]}/hosts exists and is not managed by ipvlan-reconciler; remove it")
    if errors:
        raise PlanError(errors)

    # ---- live objects we leave alone: those of pending networks -----------------------
    have: Dict[Key, KObject] = {}
    frozen_endpoints: Set[Tuple[str, str]] = set()
    for key, obj in live.objects.items():
        if getattr(obj, "owned", True) is False:
            continue  # not ours: never diffed, changed or deleted (clashes were reported above)
        if isinstance(obj, Endpoint) and obj.network in protected and key not in want:
            frozen_endpoints.add((obj.ns, obj.ifname))
            continue
        have[key] = obj
    if frozen_endpoints:
        have = {
            k: o for k, o in have.items()
            if not (o.kind in (Kind.SYSCTL, Kind.ADDRESS) and (o.ns, o.ifname) in frozen_endpoints)
            and not (o.kind is Kind.ROUTE and (o.ns, o.ifname) in frozen_endpoints)
        }

    actions: List[Action] = []
    # Removing the last IPv4 address of a link makes the kernel flush every route through
    # it (fib_disable_ip), even when a new address follows a moment later; routes on a link
    # whose addresses of a family are all replaced must be created again.
    live_addr_count: Dict[Tuple[str, str, int], int] = {}
    for o in have.values():
        if o.kind is Kind.ADDRESS:
            k3 = (o.ns, o.ifname, o.address.version)
            live_addr_count[k3] = live_addr_count.get(k3, 0) + 1
    deleted_addr_count: Dict[Tuple[str, str, int], int] = {}
    gone_links: Set[str] = set()  # host links deleted or replaced: their slaves vanish
    gone_ns: Set[str] = set()
    gone_endpoints: Set[Tuple[str, str]] = set()

    def handle(key: Key) -> None:
        after = want.get(key)
        before = have.get(key)
        kind = key[0]
        implicit_gone = False
        if before is not None:
            ns = before.netns
            if kind is not Kind.NETNS and ns is not None and ns in gone_ns:
                implicit_gone = True
            if kind in (Kind.ENDPOINT, Kind.ACCESS_LINK) and before.parent in gone_links:
                implicit_gone = True
            if kind is Kind.ACCESS_ROUTE and before.ifname in gone_links:
                implicit_gone = True
            if kind in (Kind.SYSCTL, Kind.ADDRESS, Kind.ROUTE) and (before.ns, before.ifname) in gone_endpoints:
                implicit_gone = True
            if kind is Kind.ROUTE and after is not None and (after.ns, after.ifname) in gone_endpoints:
                implicit_gone = True
            if kind is Kind.ROUTE:
                k3 = (before.ns, before.ifname, before.family)
                if k3 in deleted_addr_count and deleted_addr_count[k3] >= live_addr_count.get(k3, 0):
                    implicit_gone = True
        if after is None and before is None:
            return
        if after is None:
            assert before is not None
            if not implicit_gone:
                actions.append(Action(Op.DELETE, key, before, None))
                if kind is Kind.ADDRESS:
                    k3 = (before.ns, before.ifname, before.address.version)
                    deleted_addr_count[k3] = deleted_addr_count.get(k3, 0) + 1
            _mark_gone(before)
            return
        if before is None:
            actions.append(Action(Op.CREATE, key, None, after))
            return
        if implicit_gone:
            if kind in (Kind.ENDPOINT, Kind.ACCESS_LINK):
                actions.append(Action(Op.REPLACE, key, before, after, reason=f"its parent {before.parent} is replaced"))
                _mark_gone(before)
            elif kind is Kind.HOSTS:
                pass
            else:
                actions.append(Action(Op.CREATE, key, None, after))
            return
        changes, replace = _diff_fields(before, after)
        if replace and kind is Kind.ACCESS_LINK:
            # the host's leg goes with the deletions, before any endpoint is created: a
            # parent holds one driver, so a new macvlan endpoint next to the old ipvlan leg
            # (or the reverse) is refused (EBUSY)
            actions.append(Action(Op.DELETE, key, before, None, changes))
            actions.append(Action(Op.CREATE, key, None, after, changes))
            _mark_gone(before)
            return
        if replace:
            actions.append(Action(Op.REPLACE, key, before, after, changes))
            _mark_gone(before)
        elif changes:
            actions.append(Action(Op.UPDATE, key, before, after, changes))

    def _mark_gone(obj: KObject) -> None:
        if obj.kind in (Kind.VLAN, Kind.DUMMY, Kind.ACCESS_LINK):
            gone_links.add(obj.key[1])
        elif obj.kind is Kind.NETNS:
            gone_ns.add(obj.key[1])
        elif obj.kind is Kind.ENDPOINT:
            gone_endpoints.add((obj.ns, obj.ifname))

    # walk kinds in creation order so "gone" parents are known before their children;
    # VLANs on VLANs: a replaced lower VLAN takes its upper VLANs with it
    keys = sorted(set(want) | set(have), key=_sort_key)
    for key in keys:
        if key[0] is Kind.VLAN:
            obj = want.get(key) or have.get(key)
            if isinstance(obj, VlanLink) and obj.link in gone_links and key in have:
                before = have[key]
                if key in want:
                    actions.append(Action(Op.REPLACE, key, before, want[key], reason=f"its link {obj.link} is replaced"))
                gone_links.add(key[1])
                continue
        handle(key)

    rank = {k: i for i, k in enumerate(keys)}
    ordered = _order(actions, rank)
    return Plan(actions=tuple(ordered), pending=tuple(pending), warnings=tuple(warnings), notes=tuple(notes))


def _sort_key(key: Key) -> tuple:
    return (int(key[0]),) + tuple(str(k) for k in key[1:])


def _order(actions: List[Action], rank: Dict[Key, int]) -> List[Action]:
    """Deletions (children first), then the rest (parents first); topological within
    each phase on ``requires()``, ties broken by kind and key for a stable plan."""
    deletes = [a for a in actions if a.op is Op.DELETE]
    others = [a for a in actions if a.op is not Op.DELETE]
    return _toposort(deletes, rank, reverse=True) + _toposort(others, rank, reverse=False)


def _toposort(actions: List[Action], rank: Dict[Key, int], reverse: bool) -> List[Action]:
    if not actions:
        return []
    by_key = {a.key: a for a in actions}
    # edges: dep -> dependant (creation); reversed for deletion
    succ: Dict[Key, List[Key]] = {k: [] for k in by_key}
    indeg: Dict[Key, int] = {k: 0 for k in by_key}
    for a in actions:
        for dep in a.obj.requires():
            if dep in by_key and dep != a.key:
                src, dst = (a.key, dep) if reverse else (dep, a.key)
                succ[src].append(dst)
                indeg[dst] += 1

    # priority: kind order (reversed for deletions), then ``rank`` (the position in (kind,
    # key) order) -- one int per key, so the heap compares ints, not tuples
    n = len(by_key)
    size = len(rank) + 1
    if reverse:
        prio = {k: (64 - int(k[0])) * size + rank[k] for k in by_key}
    else:
        prio = {k: rank[k] for k in by_key}  # rank already orders by kind first
    key_of = {p: k for k, p in prio.items()}
    heap = [prio[k] for k in by_key if indeg[k] == 0]
    heapq.heapify(heap)
    out: List[Action] = []
    while heap:
        k = key_of[heapq.heappop(heap)]
        out.append(by_key[k])
        for s in succ[k]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, prio[s])
    if len(out) != n:
        stuck = sorted((k for k in by_key if indeg[k] > 0), key=_sort_key)
        raise PlanError([f"dependency cycle among: {', '.join(describe_key(k) for k in stuck)}"])
    return out


def describe_key(key: Key) -> str:
    return f"{key[0].label} " + "/".join(str(k) for k in key[1:])
