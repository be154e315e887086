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

from .objects import Endpoint, KObject, fmt
from .plan import Action, Op, Plan, describe_key

FORMAT_VERSION = "1"


def _obj_line(obj: KObject) -> str:
    if isinstance(obj, Endpoint):
        return (
            f"{obj.describe()} (ipvlan {obj.mode.value} {obj.flag.value} on {obj.parent}, "
            f"network {obj.network})"
        )
    return obj.describe()


def render_text(plan: Plan, color: bool = False) -> str:
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
        for a in plan.actions:
            label = a.kind.label
            sym = a.op.symbol
            line = f"  {sym:>3} {label} {_obj_line(a.obj)}"
            if a.op is Op.REPLACE:
                line += " (forces replacement" + (f": {a.reason}" if a.reason else "") + ")"
            out.append(line)
            for c in a.changes:
                if a.kind.label == "hosts" and c.field == "content":
                    out.append(f"        content: {_hosts_summary(c.before, c.after)}")
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
    return f"{len(a - b)} line(s) added, {len(b - a)} removed"


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
