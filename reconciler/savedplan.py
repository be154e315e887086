"""Saved plans: `ipvlanctl plan -o FILE` writes one, `ipvlanctl apply FILE` applies exactly it.

The reviewed-in-CI, applied-at-the-window workflow (terraform's ``plan -out``). A saved plan
carries the plan (the JSON of docs/plan-json.md) together with fingerprints of everything it
was computed from:

* the manifests: every manifest file's path and the SHA-256 of the bytes that were parsed;
* the host: a canonical view of the observed live state the plan was diffed against (our
  objects, and the host facts the planner and IPAM read), the state directory's automatic
  choices and intent records, and a hash of the machine id (IPAM derives the ULA prefix from it).

``apply FILE`` takes the writer lock, re-reads the manifests and observes the host exactly as
``apply`` does, and refuses -- before anything is written -- when a fingerprint differs, saying
what changed. Then it plans again and requires the new plan to equal the saved one action for
action; only that plan, which is the saved one, is executed through the normal engine path
(intent records, rollback, verify). See docs/saved-plans.md.

Everything here is pure except reading the manifest files and the machine id and writing the
plan file; the kernel is read by the engine.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import __version__
from .atomicfile import write_atomic
from .errors import UserError
from .model import DesiredState
from .objects import HostState, KObject
from .plan import Plan, describe_key
from .render import jsonable, plan_json
from .statedir import State, key_to_json

FORMAT = "ipvlan-reconciler-plan/1"
FORMAT_PREFIX = "ipvlan-reconciler-plan/"
_SNIFF_BYTES = 4096


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- manifests ---------------------------------------------------------------------------


def manifest_digests(paths: Sequence[str]) -> List[Dict[str, str]]:
    """Every manifest file ``paths`` stand for (as the loader finds them, in load order)
    with the SHA-256 of its bytes; "" for a file that cannot be read or is not a regular
    file (the loader reports those). Callers digest before and after loading and require
    the two to agree, so the digests are those of the bytes the loader parsed."""
    import stat

    from .manifest import manifest_files

    files, _ = manifest_files(list(paths))
    out = []
    for path in files:
        digest = ""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    h = hashlib.sha256()
                    with os.fdopen(fd, "rb", closefd=False) as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
                    digest = h.hexdigest()
            finally:
                os.close(fd)
        except OSError:
            pass
        out.append({"path": os.path.abspath(path), "sha256": digest})
    return out


def manifests_changes(saved: Sequence[Dict[str, str]], now: Sequence[Dict[str, str]]) -> List[str]:
    """What differs between two manifest file lists, one line per file."""
    a = {f["path"]: f["sha256"] for f in saved}
    b = {f["path"]: f["sha256"] for f in now}
    out = []
    for p in sorted(set(a) | set(b)):
        if p not in b:
            out.append(f"{p}: removed")
        elif p not in a:
            out.append(f"{p}: added")
        elif a[p] != b[p]:
            out.append(f"{p}: changed" if b[p] else f"{p}: cannot be read")
    if not out and [f["path"] for f in saved] != [f["path"] for f in now]:
        out.append("the manifest files are loaded in another order")
    return out


# ---- the host ----------------------------------------------------------------------------


_LONG = 128


def _object_view(o: KObject) -> Dict[str, Any]:
    """An object's attributes; a long text (a hosts file's content: every container of its
    networks, so all of them together grow with the square of the containers) by its digest."""
    names = _FIELDS.get(type(o))
    if names is None:
        from dataclasses import fields

        # the fields objects are compared on (what the planner diffs), and who owns them
        names = _FIELDS[type(o)] = tuple(f.name for f in fields(o) if f.compare and f.name != "owned")
    d = {}
    for name in names:
        v = getattr(o, name)
        t = type(v)
        if t not in _PLAIN:
            v = str(v) if t in _IPTYPES else jsonable(v)
        if type(v) is str and len(v) > _LONG:
            v = "sha256:" + _sha256(v.encode("utf-8", "surrogateescape"))
        d[name] = v
    d["owned"] = getattr(o, "owned", True)
    return d


_FIELDS: Dict[type, Tuple[str, ...]] = {}
_PLAIN = (str, int, bool, type(None))
_IPTYPES = (ipaddress.IPv4Interface, ipaddress.IPv6Interface, ipaddress.IPv4Network, ipaddress.IPv6Network,
            ipaddress.IPv4Address, ipaddress.IPv6Address)


def live_view(live: HostState, state: State) -> Dict[str, Any]:
    """The canonical view of what a plan is computed from on this host: the observed objects
    (ours and the foreign ones observe reports), the host facts the planner and IPAM read,
    and the state directory's automatic choices and intent records.

    Left out on purpose: link ifindex numbers and the up/down state of host links we do not
    manage -- nothing in compile, IPAM or the planner reads them, and the executor resolves
    every name to an index from its own observation at apply time, so a link recreated
    with the same name, kind and addresses does not make a reviewed plan wrong."""
    from dataclasses import fields

    facts = live.facts
    objects = {describe_key(k): _object_view(o) for k, o in live.objects.items()}
    links = {}
    for l in facts.links.values():
        d = {}
        for f in fields(l):
            if f.name in _LINK_IGNORED:
                continue
            v = jsonable(getattr(l, f.name))
            d[f.name] = sorted(v, key=str) if isinstance(v, list) else v
        links[l.name] = d
    view: Dict[str, Any] = {
        "objects": objects,
        "links": links,
        "state": {
            "allocations": state.allocations.to_json(),
            "intents": sorted(key_to_json(k) for k in state.intents),
        },
    }
    # the other facts (routes, foreign namespaces and links, and any added later), as sorted lists
    for f in fields(facts):
        if f.name == "links":
            continue
        v = getattr(facts, f.name)
        if f.name == "foreign_links":
            items = [f"{ns}/{name} ({kind})" for (ns, name), kind in v.items()]
        elif isinstance(v, Mapping):
            items = [json.dumps(jsonable([k, x]), sort_keys=True) for k, x in v.items()]
        elif isinstance(v, (list, tuple, set, frozenset)):
            items = [x if isinstance(x, str) else json.dumps(jsonable(x), sort_keys=True) for x in v]
        else:
            items = [json.dumps(jsonable(v), sort_keys=True)]
        view[f.name] = sorted(items)
    return view


_LINK_IGNORED = ("index", "up")  # not read by compile, IPAM or the planner (see live_view)


def view_digest(view: Dict[str, Any]) -> str:
    return _sha256(_canonical(view))


def _describe_set_change(what: str, before: Sequence[str], after: Sequence[str]) -> List[str]:
    b, a = set(before), set(after)
    return ([what.format(x) + " appeared" for x in sorted(a - b)]
            + [what.format(x) + " is gone" for x in sorted(b - a)])


def host_changes(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """What differs between two live views, one line per object or fact."""
    out: List[str] = []
    so, no = saved.get("objects", {}), now.get("objects", {})
    for k in sorted(set(so) | set(no)):
        if k not in no:
            out.append(f"{k} is gone")
        elif k not in so:
            owner = "" if no[k].get("owned", True) else " (not managed by ipvlan-reconciler)"
            out.append(f"{k} appeared{owner}")
        elif so[k] != no[k]:
            fields_ = sorted(f for f in set(so[k]) | set(no[k]) if so[k].get(f) != no[k].get(f))
            out.append(f"{k} changed ({', '.join(fields_)})")
    sl, nl = saved.get("links", {}), now.get("links", {})
    for name in sorted(set(sl) | set(nl)):
        if name not in nl:
            out.append(f"host link {name} is gone")
        elif name not in sl:
            out.append(f"host link {name} appeared")
        elif sl[name] != nl[name]:
            fields_ = sorted(f for f in set(sl[name]) | set(nl[name]) if sl[name].get(f) != nl[name].get(f))
            out.append(f"host link {name} changed ({', '.join(fields_)})")
    known = {"objects", "links", "state", "routes", "foreign_netns", "foreign_links"}
    for k in sorted((set(saved) | set(now)) - known):
        out += _describe_set_change(k.replace("_", " ") + " {}", saved.get(k, []), now.get(k, []))
    out += _describe_set_change("host route {}", saved.get("routes", []), now.get("routes", []))
    out += _describe_set_change("namespace {} (not managed by ipvlan-reconciler)", saved.get("foreign_netns", []),
                                now.get("foreign_netns", []))
    out += _describe_set_change("link {} in a container namespace, not managed by ipvlan-reconciler,",
                                saved.get("foreign_links", []), now.get("foreign_links", []))
    ss, ns = saved.get("state", {}), now.get("state", {})
    if ss.get("allocations") != ns.get("allocations"):
        out.append("the state directory's automatic choices (subnets, addresses, ULA prefix) changed")
    if ss.get("intents") != ns.get("intents"):
        out.append("the state directory's intent records changed (a run was interrupted meanwhile?)")
    if not out and saved != now:
        out.append("the observed state differs")
    return out


def machine_hash(mid: str) -> str:
    """The machine id hashed with an application key (machine-id(5): never show it raw)."""
    return _sha256(("ipvlan-reconciler saved plan:" + mid).encode())


# ---- the file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedPlan:
    """A saved plan as read from its file (``data`` is the whole JSON object)."""

    path: str
    data: Dict[str, Any]

    @property
    def manifest_paths(self) -> List[str]:
        return list(self.data["manifests"]["paths"])

    @property
    def state_dir(self) -> str:
        return self.data["state_dir"]

    @property
    def local_host(self) -> Optional[str]:
        return self.data["host"].get("local_host")

    @property
    def plan(self) -> Dict[str, Any]:
        return self.data["plan"]


def build(
    paths: Sequence[str],
    files: Sequence[Dict[str, str]],
    desired: DesiredState,
    live: HostState,
    state: State,
    plan: Plan,
    state_dir: str,
    machine_id: str,
) -> Dict[str, Any]:
    """The saved plan's JSON object (pure)."""
    view = live_view(live, state)
    body: Dict[str, Any] = {
        "format": FORMAT,
        "ipvlanctl_version": __version__,
        "manifests": {
            "paths": [os.path.abspath(p) for p in paths],
            "files": list(files),
            "sha256": _sha256(_canonical(list(files))),
        },
        "state_dir": os.path.realpath(state_dir),
        "host": {
            "hostname": socket.gethostname(),
            "machine_id_sha256": machine_hash(machine_id),
            "local_host": desired.local_host,
        },
        "live": {"sha256": view_digest(view), "view": view},
        "plan": jsonable(plan_json(plan)),
    }
    body["sha256"] = _body_digest(body)
    return body


def _body_digest(data: Dict[str, Any]) -> str:
    """The digest of a saved plan: every key but itself, the live view by its own digest
    (checked too), so the view, most of a large file, is not encoded twice."""
    body = {k: v for k, v in data.items() if k != "sha256"}
    body["live"] = {"sha256": data["live"]["sha256"]}
    return _sha256(_canonical(body))


def dumps(data: Dict[str, Any]) -> str:
    # one line: json's C encoder is not used with indent, and the file can be large (read it
    # with `jq .plan.changes FILE`)
    return json.dumps(data, sort_keys=True) + "\n"


def write(path: str, data: Dict[str, Any]) -> None:
    """Write atomically: a reader (or a crash) never sees half a plan."""
    try:
        write_atomic(path, dumps(data), durable=True)
    except OSError as e:
        raise UserError(f"cannot write the saved plan {path}: {e.strerror or e}")


def sniff(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path`` if it is a saved plan (a JSON object whose "format" starts
    with ``ipvlan-reconciler-plan/``, any version); None for anything else -- a manifest,
    including a manifest written as JSON (YAML is a superset of JSON), has no such key."""
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            if not head.lstrip().startswith(b"{"):
                return None  # YAML manifests, the usual case: not read any further
            raw = head + f.read()
    except OSError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("format"), str) and data["format"].startswith(FORMAT_PREFIX):
        return data
    return None


def parse(path: str, data: Dict[str, Any]) -> SavedPlan:
    """Check a sniffed saved plan: its format version and its integrity digest."""
    if data.get("format") != FORMAT:
        raise UserError(
            f"{path}: saved plan format {data.get('format')!r} is not supported (this ipvlanctl "
            f"{__version__} reads {FORMAT!r}); make the plan again with this version"
        )
    try:
        ok = data.get("sha256") == _body_digest(data)
        ok = ok and data["live"]["sha256"] == view_digest(data["live"]["view"])
        ok = ok and data["manifests"]["sha256"] == _sha256(_canonical(data["manifests"]["files"]))
        for k in ("paths",):
            if not isinstance(data["manifests"][k], list):
                ok = False
        if not isinstance(data["state_dir"], str) or not isinstance(data["plan"].get("changes"), list):
            ok = False
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UserError(f"{path}: the saved plan is corrupt or was edited (its digest does not match "
                        "its content); make the plan again with `ipvlanctl plan -o`")
    if data.get("ipvlanctl_version") != __version__:
        raise UserError(
            f"{path}: the plan was saved by ipvlanctl {data.get('ipvlanctl_version')}, this is "
            f"{__version__}; make the plan again with this version"
        )
    return SavedPlan(path=path, data=data)


# ---- applying ----------------------------------------------------------------------------


class StalePlan(UserError):
    """The manifests or the host changed since the plan was saved: nothing was changed."""


def _stale(saved: SavedPlan, what: str, lines: Sequence[str], limit: int = 20) -> StalePlan:
    from .manifest.yamlload import printable  # names from the host may hold control characters

    shown = [f"  {printable(l)}" for l in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return StalePlan(
        f"{saved.path}: refused, nothing was changed: {what} changed since the plan was saved:\n"
        + "\n".join(shown)
        + "\nMake and review a new plan (`ipvlanctl plan -o FILE ...`), or apply the manifests directly."
    )


def check_context(saved: SavedPlan, state_dir: str, machine_id: str) -> None:
    """Refuse a plan saved for another state directory or another machine."""
    if os.path.realpath(state_dir) != saved.state_dir:
        raise UserError(
            f"{saved.path}: the plan was made with --state-dir {saved.state_dir}; apply it with the "
            f"same --state-dir (this run uses {os.path.realpath(state_dir)})"
        )
    if machine_hash(machine_id) != saved.data["host"]["machine_id_sha256"]:
        raise _stale(saved, "the host", [f"this is not the machine the plan was made on "
                                         f"({saved.data['host'].get('hostname')}): its machine id differs"])


def check_manifests(saved: SavedPlan, files: Sequence[Dict[str, str]], desired: Optional[DesiredState]) -> None:
    changes = manifests_changes(saved.data["manifests"]["files"], files)
    if changes:
        raise _stale(saved, "the manifests", changes)
    if desired is not None and desired.local_host != saved.local_host:
        raise _stale(saved, "the manifests", [f"the plan was made for host {saved.local_host!r}, "
                                              f"this run is for {desired.local_host!r}"])


def check_host(saved: SavedPlan, live: HostState, state: State) -> None:
    view = live_view(live, state)
    if view_digest(view) != saved.data["live"]["sha256"]:
        raise _stale(saved, "the host", host_changes(saved.data["live"]["view"], view))


def check_plan(saved: SavedPlan, plan: Plan) -> None:
    """Belt and braces: with equal inputs the plan is equal; if not, refuse (a bug, but a
    harmless one: nothing was changed)."""
    from .render import action_json

    want = saved.plan["changes"]
    got = [jsonable(action_json(a)) for a in plan.actions]
    got = json.loads(json.dumps(got))
    if got != want:
        n = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        raise _stale(saved, "the plan", [
            f"planning again on an unchanged host gives {len(got)} action(s), the saved plan has "
            f"{len(want)}; they differ from action {n + 1} on (please report this: it is a bug)"
        ])


# ---- the CLI's entry points --------------------------------------------------------------


def save(
    path: str,
    paths: Sequence[str],
    files: Sequence[Dict[str, str]],
    desired: DesiredState,
    live: HostState,
    state: State,
    plan: Plan,
    state_dir: str,
) -> None:
    """``plan -o``: ``files`` are the digests taken before loading; they must still hold, so
    they are the digests of what was planned."""
    from .engine import machine_id

    if manifest_digests(paths) != list(files):
        raise UserError("the manifests changed while they were being read; plan again")
    write(path, build(paths, files, desired, live, state, plan, state_dir, machine_id()))


def find(paths: Sequence[str]) -> Optional[SavedPlan]:
    """The saved plan among ``apply``'s PATH arguments, if there is one (it must be alone)."""
    for p in paths:
        data = sniff(p)
        if data is not None:
            if len(paths) > 1:
                raise UserError(f"{p} is a saved plan: apply it alone (`ipvlanctl apply {p}`), "
                                "without manifest paths (it names its own)")
            return parse(p, data)
    return None


def prepare_apply(
    paths: Sequence[str], state_dir: str, load: Callable[[Sequence[str], Optional[str]], DesiredState]
):
    """``apply PATH...``: None when the paths are manifests. For a saved plan: its context
    (state directory, machine) and manifests are checked, the manifests loaded with
    ``load(paths, host)`` -- ``host`` is the fleet host the plan was made for
    (``DesiredState.local_host``, None for a single-host manifest), which ``load`` must narrow
    to as ``plan --host`` did -- and (desired, check) returned. ``check`` is ``engine.apply``'s
    hook that compares the host and the new plan with the saved ones under the lock, before
    anything is written."""
    from .engine import machine_id

    saved = find(paths)
    if saved is None:
        return None
    check_context(saved, state_dir, machine_id())
    mpaths = saved.manifest_paths
    check_manifests(saved, manifest_digests(mpaths), None)
    desired = load(mpaths, saved.local_host)
    check_manifests(saved, manifest_digests(mpaths), desired)  # changed while loading?

    def check(live: HostState, state: State, planned) -> None:
        check_host(saved, live, state)
        check_plan(saved, planned.plan)

    return desired, check
