"""Live state as JSON: what `ipvlanctl status --format json` prints and
`ipvlanctl plan --offline --live-state FILE` reads back. Pure."""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Dict, List, Optional, Tuple

from .errors import UserError
from .model import Flag, Mode
from .objects import (
    CLASS_OF_KIND,
    Endpoint,
    HostFacts,
    HostLink,
    HostState,
    Kind,
    KObject,
)
from .render import object_json

FORMAT_VERSION = "1"


def state_json(
    live: HostState, extra: Optional[Dict[str, Any]] = None, ula_prefix: Optional[str] = None
) -> Dict[str, Any]:
    """``ula_prefix``: the ULA /48 the host's IPAM uses (default: the one in ``live.facts``)."""
    objects = []
    for o in sorted(live, key=lambda o: (int(o.kind),) + tuple(str(k) for k in o.key[1:])):
        if getattr(o, "owned", True) is False:
            continue
        d = object_json(o)
        d["kind"] = o.kind.label
        objects.append(d)
    facts = live.facts
    out: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "host": {
            "links": [
                {
                    "name": l.name,
                    "index": l.index,
                    "kind": l.kind,
                    "up": l.up,
                    "managed": l.owned,
                    "vlan_id": l.vid,
                    "link": l.link,
                    "addresses": [str(a) for a in l.addresses],
                }
                for l in sorted(facts.links.values(), key=lambda l: l.index)
            ],
            "routes": [str(r) for r in facts.routes],
            "foreign_netns": list(facts.foreign_netns),
            "foreign_links": [
                {"netns": ns, "name": name, "kind": kind} for (ns, name), kind in sorted(facts.foreign_links.items())
            ],
            "ula_prefix": ula_prefix if ula_prefix is not None else facts.ula_prefix,
        },
        "objects": objects,
        "summary": summary(live),
    }
    if extra:
        out.update(extra)
    return out


def summary(live: HostState) -> Dict[str, Any]:
    """Networks and containers as an operator thinks of them."""
    networks: Dict[str, Dict[str, Any]] = {}
    containers: Dict[str, Dict[str, Any]] = {}
    addrs: Dict[Tuple[str, str], List[str]] = {}
    for o in live:
        if o.kind is Kind.ADDRESS:
            addrs.setdefault((o.ns, o.ifname), []).append(str(o.address))
    for o in live.of_kind(Kind.NETNS):
        containers[o.name] = {"name": o.name, "interfaces": []}
    for o in live.of_kind(Kind.ENDPOINT):
        assert isinstance(o, Endpoint)
        net = networks.setdefault(
            o.network or "?", {"name": o.network or "?", "parent": o.parent, "mode": o.mode.value,
                               "flag": o.flag.value, "containers": []}
        )
        net["containers"].append(o.ns)
        c = containers.setdefault(o.ns, {"name": o.ns, "interfaces": []})
        c["interfaces"].append(
            {"ifname": o.ifname, "network": o.network, "up": o.up, "addresses": sorted(addrs.get((o.ns, o.ifname), []))}
        )
    for n in networks.values():
        n["containers"].sort()
    return {
        "networks": [networks[k] for k in sorted(networks)],
        "containers": [containers[k] for k in sorted(containers)],
    }


def _value(kind: Kind, name: str, v: Any) -> Any:
    if v is None:
        return None
    if name == "mode":
        return Mode(v)
    if name == "flag":
        return Flag(v)
    if name == "address":
        return ipaddress.ip_interface(v)
    if name == "dst":
        return ipaddress.ip_network(v)
    if name == "gateway":
        return ipaddress.ip_address(v)
    return v


def load_state_json(text: str, source: str = "<live-state>") -> HostState:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{source}: not JSON: {e}")
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{source}: not the output of `ipvlanctl status --format json` (format_version {FORMAT_VERSION})")
    objs: List[KObject] = []
    try:
        for d in data.get("objects", []):
            kind = Kind[d["kind"].upper()]
            cls = CLASS_OF_KIND[kind]
            kwargs = {k: _value(kind, k, v) for k, v in d.items() if k != "kind"}
            objs.append(cls(**kwargs))
        host = data.get("host", {})
        links = {}
        for l in host.get("links", []):
            links[l["name"]] = HostLink(
                name=l["name"], index=l["index"], kind=l.get("kind", ""), up=l.get("up", True),
                owned=l.get("managed", False), vid=l.get("vlan_id"), link=l.get("link"),
                addresses=tuple(ipaddress.ip_interface(a) for a in l.get("addresses", [])),
            )
        facts = HostFacts(
            links=links,
            routes=tuple(ipaddress.ip_network(r) for r in host.get("routes", [])),
            foreign_netns=tuple(host.get("foreign_netns", [])),
            foreign_links={(f["netns"], f["name"]): f["kind"] for f in host.get("foreign_links", [])},
            ula_prefix=_ula_prefix(host.get("ula_prefix")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: malformed live state: {e}")
    return HostState(objs, facts)


def _ula_prefix(v: Any) -> Optional[str]:
    """The host's ULA /48 (None in files written before it was recorded)."""
    if v is None:
        return None
    net = ipaddress.IPv6Network(v)  # ValueError / TypeError: malformed
    if net.prefixlen != 48:
        raise ValueError(f"ula_prefix {v} is not a /48")
    return str(net)
