"""Plan rendering: text for people (terraform-like), JSON for machines.

The JSON format is documented in docs/plan-json.md; ``format_version`` changes
when a field changes meaning or disappears (new fields may be added).
"""
from __future__ import annotations

import enum
import ipaddress
import json
from dataclasses import fields
from typing import Any, Dict, List, Optional

from .model import dummy_parent_name
from .objects import DummyLink, Endpoint, HostsFile, Kind, KObject, Sysctl, fmt
from .plan import Action, Op, Plan, describe_key

FORMAT_VERSION = "1"
HOSTS_LINES_SHOWN = 4  # hosts lines per hosts action in text plans, then "..."


def plural(n: int, noun: str, plural_form: Optional[str] = None) -> str:
    """``1 network``, ``2 networks``, ``0 networks`` (``plural_form`` for irregular nouns)."""
    return f"{n} {noun if n == 1 else (plural_form or noun + 's')}"


def validate_summary(desired: Any, hosts: str = "") -> str:
    """validate's OK line. VLAN links implied by ``eth0.N`` parents are counted apart from
    the ones declared under ``vlans:``; ``hosts``: a fleet's words (``fleetcli.validate_host``)."""
    vlans = desired.vlans.values()
    declared = sum(1 for v in vlans if getattr(v, "declared", True))
    implied = len(desired.vlans) - declared
    line = (f"OK: {plural(len(desired.networks), 'network')}, {plural(declared, 'VLAN')}, "
            f"{plural(len(desired.containers), 'container')}{hosts}")
    if implied:
        line += f"; {plural(implied, 'implied VLAN link')} (from eth0.N-style parents)"
    return line


def _dummy_networks(plan: Plan) -> Dict[str, str]:
    """Dummy parent name -> network, from the networks the plan's endpoints name (a dummy
    parent is named after its network's hash: see model.dummy_parent_name). A dummy whose
    network has no endpoint in the plan is shown without it."""
    names = set()
    for a in plan.actions:
        if a.key[0] is Kind.ENDPOINT:
            for o in (a.before, a.after):
                if o is not None:
                    names.add(o.network)
    return {dummy_parent_name(n): n for n in names}


def _obj_line(obj: KObject, dummies: Optional[Dict[str, str]] = None) -> str:
    kind = obj.kind
    if kind is Kind.ADDRESS or kind is Kind.ROUTE or kind is Kind.NETNS:  # the most numerous
        return obj.describe()
    if isinstance(obj, Endpoint):
        if obj.driver == "macvlan":
            mac = f" mac {obj.mac}" if obj.mac else ""
            return f"{obj.describe()} (macvlan {obj.macvlan_mode}{mac} on {obj.parent}, network {obj.network})"
        return (
            f"{obj.describe()} (ipvlan {obj.mode.value} {obj.flag.value} on {obj.parent}, "
            f"network {obj.network})"
        )
    if isinstance(obj, Sysctl):
        return f"{obj.describe()} = {obj.value}"
    if isinstance(obj, DummyLink):
        network = (dummies or {}).get(obj.name)
        if network:
            return f"{obj.describe()} (network {network})"
    return obj.describe()


def _printable(line: str) -> str:
    """A hosts line for the terminal: tabs as spaces, other control characters escaped (a
    file edited by hand may hold anything)."""
    line = line.replace("\t", " ")
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in line)


def _hosts_lines(before: Optional[str], after: Optional[str]) -> List[str]:
    """The lines a hosts file gains (+) and loses (-), the marker, comments and the loopback
    lines every file has left out; at most HOSTS_LINES_SHOWN, then "... and N more lines"
    (a changed file) or "..." (a created or deleted file: it is not read to the end)."""
    def entries(text: Optional[str]) -> List[str]:
        if not text:
            return []
        return [l for l in text.split("\n")
                if l.strip() and not l.lstrip().startswith(("#", "127.0.0.1", "::1"))]

    if before is None or after is None:  # created or deleted: its lines, cut short cheaply
        text, sign = (after or "", "+") if before is None else (before, "-")
        # only the head is looked at: a plan may create 10,000 files of 600 lines each, and
        # splitting or counting them all would cost more than the rest of the text plan
        cut = -1
        for _ in range(HOSTS_LINES_SHOWN + 3):  # the marker and two loopback lines come first
            cut = text.find("\n", cut + 1)
            if cut < 0:
                break
        head = entries(text if cut < 0 else text[:cut])
        more = len(head) > HOSTS_LINES_SHOWN or (cut >= 0 and text[cut + 1:cut + 2].strip() != "")
        shown = [f"{sign} {_printable(l)}" for l in head[:HOSTS_LINES_SHOWN]]
        if more:
            shown.append("...")
        return shown
    b, a = entries(before), entries(after)
    bs, as_ = set(b), set(a)
    changed = [f"+ {_printable(l)}" for l in a if l not in bs] + [f"- {_printable(l)}" for l in b if l not in as_]
    if len(changed) > HOSTS_LINES_SHOWN:
        rest = len(changed) - HOSTS_LINES_SHOWN
        changed = changed[:HOSTS_LINES_SHOWN] + [f"... and {plural(rest, 'more line')}"]
    return changed


def render_text(plan: Plan) -> str:
    out: List[str] = []
    for w in plan.warnings:
        out.append(f"Warning: {w}")
    for n in plan.notes:
        out.append(f"Note: {n}")
    if out:
        out.append("")
    if plan.empty:
        out.append("No changes. The host matches the manifests.")
    else:
        out.append("ipvlan-reconciler will perform the following actions:")
        out.append("")
        dummies = _dummy_networks(plan) if any(a.key[0] is Kind.DUMMY for a in plan.actions) else {}
        # "  +  vlan " per (op, kind), computed once: a 10,000-container plan has 75,000 actions
        prefixes = {(op, kind): f"  {op.symbol:>3} {kind.label} " for op in Op for kind in Kind}
        for a in plan.actions:
            op, kind = a.op, a.key[0]
            obj = a.after if a.after is not None else a.before
            line = prefixes[op, kind] + _obj_line(obj, dummies)
            if op is Op.REPLACE:
                line += " (forces replacement" + (f": {a.reason}" if a.reason else "") + ")"
            out.append(line)
            if kind is Kind.HOSTS and op is not Op.UPDATE:
                out.extend(f"        {l}" for l in _hosts_lines(
                    a.before.content if a.before is not None else None,
                    a.after.content if a.after is not None else None))
            for c in a.changes:
                if kind is Kind.HOSTS and c.field == "content":
                    out.append(f"        content: {_hosts_summary(c.before, c.after)}")
                    out.extend(f"          {l}" for l in _hosts_lines(c.before or "", c.after or ""))
                    continue
                tail = " (forces replacement)" if c.forces_replace else ""
                out.append(f"        {c.field}: {fmt(c.before)} -> {fmt(c.after)}{tail}")
    if plan.pending:
        out.append("")
        out.append("Pending (waiting for the host; retried by the daemon):")
        for p in plan.pending:
            out.append(f"  ! {p}")
    add, change, destroy = plan.counts()
    out.append("")
    if not plan.empty:
        out.append(f"Plan: {add} to add, {change} to change, {destroy} to destroy.")
    if plan.pending:
        out.append(f"{len(plan.pending)} pending.")
    return "\n".join(out).rstrip("\n") + "\n"


def _hosts_summary(before: Any, after: Any) -> str:
    b = set((before or "").splitlines())
    a = set((after or "").splitlines())
    return f"{plural(len(a - b), 'line')} added, {len(b - a)} removed"


def jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value if not isinstance(value, int) else value.label if hasattr(value, "label") else int(value)
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                          ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def object_json(obj: Optional[KObject]) -> Optional[Dict[str, Any]]:
    if obj is None:
        return None
    d: Dict[str, Any] = {}
    for f in fields(obj):
        if f.name == "owned":
            continue
        d[f.name] = jsonable(getattr(obj, f.name))
    return d


def action_json(a: Action) -> Dict[str, Any]:
    return {
        "op": a.op.value,
        "kind": a.kind.label,
        "id": describe_key(a.key).split(" ", 1)[1],
        "before": object_json(a.before),
        "after": object_json(a.after),
        "changed": [
            {"field": c.field, "before": jsonable(c.before), "after": jsonable(c.after),
             "forces_replacement": c.forces_replace}
            for c in a.changes
        ],
        "reason": a.reason or None,
    }


def plan_json(plan: Plan) -> Dict[str, Any]:
    add, change, destroy = plan.counts()
    return {
        "format_version": FORMAT_VERSION,
        "summary": {"add": add, "change": change, "destroy": destroy, "pending": len(plan.pending)},
        "changes": [action_json(a) for a in plan.actions],
        "pending": [{"object": p.what, "reason": p.reason} for p in plan.pending],
        "warnings": list(plan.warnings),
        "notes": list(plan.notes),
    }


def render_json(plan: Plan) -> str:
    """One change per line: diffable, and fast (the C encoder is used only without indent)."""
    data = plan_json(plan)
    changes = data.pop("changes")
    head = json.dumps(data)
    body = ",\n".join(json.dumps(c) for c in changes)
    return head[:-1] + ', "changes": [' + ("\n" + body + "\n" if body else "") + "]}\n"
