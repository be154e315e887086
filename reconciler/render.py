"""Rendering: plans, apply results and `ipvlanctl status` as text for people (terraform-like)
and JSON for machines; the daemon's one-line summaries (log lines, systemd STATUS=).

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
from .objects import DummyLink, Endpoint, Kind, KObject, Sysctl, fmt
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


# apply's result and `ipvlanctl status` -------------------------------------------------

def result_text(out) -> str:
    """apply's report after the plan: errors, rollback, the verdict of verify, pending."""
    lines = []
    r = out.result
    if r is not None:
        for a, err in r.failed:
            lines.append(f"Error: {err}")
        if r.not_run:
            lines.append(f"Not run because of the error: {plural(len(r.not_run), 'action')}")
        if out.rollback is not None:
            rb = out.rollback
            lines.append(f"Rolled back {plural(len(rb.done), 'action')} of this run" +
                         (f"; {len(rb.failed)} could not be undone:" if rb.failed else "."))
            for a, err in rb.failed:
                lines.append(f"  rollback error: {err}")
        elif not r.ok:
            lines.append(f"Left in place (--no-rollback): {plural(len(r.done), 'action')} done before the error.")
    add, change, destroy = out.plan.counts()
    if r is not None and r.ok:
        lines.append(f"Apply complete! Objects: {add} added, {change} changed, {destroy} destroyed.")
    if out.verify is not None and not out.verify.empty:
        lines.append("Verify: the host does not match the manifests after apply:")
        lines.append(render_text(out.verify).rstrip())
    elif out.verify is not None and r is not None and r.ok:
        lines.append("Verified: the host matches the manifests.")
    if out.plan.pending:
        lines.append(f"{plural(len(out.plan.pending), 'object')} pending on missing parents (exit status 3).")
    return "\n".join(lines) + ("\n" if lines else "")


def result_json(out) -> dict:
    """`apply --format json`: the plan, what ran, rolled back and verified (docs/plan-json.md)."""
    def res(r):
        if r is None:
            return None
        return {
            "ok": r.ok,
            "done": [action_json(a) for a in r.done],
            "failed": [{"action": action_json(a), "error": e} for a, e in r.failed],
            "not_run": [action_json(a) for a in r.not_run],
        }

    return {
        "format_version": "1",
        "plan": plan_json(out.plan),
        "result": res(out.result),
        "rollback": res(out.rollback),
        "verify": plan_json(out.verify) if out.verify is not None else None,
        "converged": out.converged,
        "exit_code": out.exit_code,
        "netlink_writes": out.netlink_writes,
        "seconds": round(out.seconds, 6),
        "phases": {k: round(v, 6) for k, v in out.phases.items()},
    }


def status_text(data: dict) -> str:
    """`ipvlanctl status` for people, from the document `status --format json` prints."""
    s = data["summary"]
    out = []
    if not s["networks"] and not s["containers"]:
        links = [f"{o.get('name')} ({o['kind']})" for o in data.get("objects", ())
                 if o.get("kind") in ("vlan", "dummy")]
        if links:
            out.append(f"No containers managed on this host; managed links: {', '.join(links)}")
        else:
            out.append("Nothing managed on this host: no networks, containers or links created "
                       "by ipvlan-reconciler.")
    else:
        out.extend(_status_tables(s))
    return _status_daemon(data, out)


def _status_tables(s: dict) -> list:
    out = []
    out.append(f"{'NETWORK':<20} {'PARENT':<16} {'MODE':<5} {'FLAG':<8} CONTAINERS")
    for n in s["networks"]:
        out.append(f"{n['name']:<20} {n['parent']:<16} {n['mode']:<5} {n['flag']:<8} {len(n['containers'])}")
    out.append("")
    out.append(f"{'CONTAINER':<20} {'IF':<6} {'NETWORK':<20} {'STATE':<6} ADDRESSES")
    for c in s["containers"]:
        if not c["interfaces"]:
            out.append(f"{c['name']:<20} {'-':<6} {'-':<20} {'-':<6} -")
        for i in c["interfaces"]:
            out.append(
                f"{c['name']:<20} {i['ifname']:<6} {i['network']:<20} {'up' if i['up'] else 'down':<6} "
                f"{', '.join(i['addresses']) or '-'}"
            )
    return out


def _status_daemon(data: dict, out: list) -> str:
    bird = data.get("bird")
    if bird is not None:
        out.append("")
        if not bird.get("running"):
            out.append(f"BIRD: not running ({bird.get('error')}); this host's routes are not announced")
        else:
            sessions = bird.get("sessions", [])
            out.append(f"BIRD: running, {bird.get('established', 0)} of {len(sessions)} BGP session(s) established")
            for s_ in sessions:
                out.append(f"  {s_['name']:<24} {s_['state']:<6} {s_['info']}")
    extra = data.get("daemon")
    if extra:
        out.append("")
        out.append(f"daemon: last reconcile {extra.get('last_reconcile')} result {extra.get('last_result')}")
        out.append(
            f"  pid {extra.get('pid')} ({extra.get('phase')}), took {extra.get('last_duration_seconds')}s, "
            f"trigger {extra.get('last_trigger') or '-'}, last success {extra.get('last_success') or 'never'}"
        )
        manifest = extra.get("manifest") or {}
        if manifest.get("valid") is False:
            out.append("  manifests invalid (enforcing the last valid state):")
            out.extend(f"    {e}" for e in manifest.get("errors", [])[:10])
        if manifest.get("missing"):
            out.append(f"  manifest paths missing: {', '.join(manifest['missing'])}")
        for p in extra.get("pending", [])[:10]:
            out.append(f"  pending: {p}")
        if (extra.get("bird") or {}).get("error"):
            out.append(f"  BIRD: {extra['bird']['error']}")
        errors = extra.get("last_errors") or []
        if errors:
            e = errors[-1]
            out.append(f"  last error ({e.get('class')}, {e.get('ts')}): {str(e.get('message', '')).splitlines()[0] if e.get('message') else ''}")
    return "\n".join(out) + "\n"


# the daemon's log and systemd STATUS= line ----------------------------------------------

def action_line(a: Action) -> str:
    """One action on one line (the daemon's log and status file)."""
    return f"{a.op.symbol} {a.kind.label} {a.obj.describe()}"


def failure_lines(out: Any) -> List[str]:
    """Why a reconcile did not converge: failed actions, the rollback, what verify found."""
    lines: List[str] = []
    r = out.result
    if r is not None:
        for a, err in r.failed:
            lines.append(f"{action_line(a)}: {err}")
        if out.rollback is not None:
            lines.append(f"rolled back {plural(len(out.rollback.done), 'action')} of this run")
    if out.verify is not None and not out.verify.empty:
        lines.append(
            "verify: the host does not match the manifests after apply: "
            + "; ".join(action_line(a) for a in out.verify.actions[:10])
        )
    return lines


def daemon_status_line(s: Any, desired: Any) -> str:
    """systemd's STATUS= line from the daemon's status (``daemon.statusfile.DaemonStatus``) and
    the desired state in force (None before the first valid load)."""
    from .daemon.statusfile import iso

    if desired is None:
        if s.manifest_missing:
            return "waiting: manifest path missing"
        if s.manifest_valid is False:
            return f"manifest error: {s.manifest_errors[0] if s.manifest_errors else ''}"
        return "starting"
    parts = []
    res = s.last_result or "not reconciled yet"
    if res == "pending":
        parts.append(f"converged except {plural(len(s.pending), 'pending object')}")
    elif res in ("failed", "bug"):
        parts.append(f"error, retry at {iso(s.next_retry)}")
    elif res == "rejected":
        parts.append("refused (see log)")
    else:
        parts.append(res)
    parts.append(f"{plural(len(desired.networks), 'network')}, {plural(len(desired.containers), 'container')}")
    if s.last_reconcile:
        parts.append(f"last reconcile {iso(s.last_reconcile)} ({s.last_duration:.2f}s)")
    if s.manifest_valid is False:
        parts.append("manifests invalid: enforcing the last valid state")
    if s.manifest_missing:
        parts.append("manifest path missing")
    return "; ".join(parts)
