"""Live state as JSON: what `ipvlanctl status --format json` prints and
`ipvlanctl plan --offline --live-state FILE` reads back. Pure."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from .errors import UserError, printable, printable_path
from .manifest.yamlload import Unreadable, read_regular
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


def state_json(live: HostState, ula_prefix: Optional[str] = None) -> Dict[str, Any]:
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
            o.network or "?", {"name": o.network or "?", "parent": o.parent, "driver": o.driver,
                               "mode": o.macvlan_mode if o.driver == "macvlan" else o.mode.value,
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
    if name == "addresses" and isinstance(v, list):
        return tuple(v)
    return v


_SIMPLE_TYPES = {
    "str": (str,), "int": (int,), "bool": (bool,),
    "Optional[str]": (str, type(None)), "Optional[int]": (int, type(None)),
}


def _check_types(where: str, cls: Any, values: Dict[str, Any]) -> None:
    """Refuse a value of the wrong JSON type (a name that is a number...) here, with its
    place, rather than as a traceback deep in the planner."""
    for f in dataclasses.fields(cls):
        want = _SIMPLE_TYPES.get(str(f.type))
        if want is None or f.name not in values:
            continue
        v = values[f.name]
        if not isinstance(v, want) or (bool not in want and isinstance(v, bool)):
            raise _Malformed(f"{where}: {f.name} must be {' or '.join(_JSON_TYPE[t] for t in want)}, not {v!r:.60}")


_JSON_TYPE = {str: "a string", int: "an integer", bool: "true or false", type(None): "null"}


_INIT = re.compile(r"[\w.]*__init__[(][)] ")  # "Netns.__init__() got an unexpected keyword..."


class _Malformed(ValueError):
    pass


def _obj(where: str, d: Any) -> Dict[str, Any]:
    if not isinstance(d, dict):
        raise _Malformed(f"{where} must be an object, not {type(d).__name__}")
    return d


def _list(where: str, d: Any) -> List[Any]:
    if not isinstance(d, list):
        raise _Malformed(f"{where} must be a list, not {type(d).__name__}")
    return d


def _key(where: str, d: Dict[str, Any], key: str) -> Any:
    if key not in d:
        raise _Malformed(f"{where} has no {key!r}")
    return d[key]


def read_state_file(path: str) -> HostState:
    """``plan --offline --live-state FILE``: the file read and parsed; every problem is a
    UserError naming the file and what is wrong (missing, a directory, not UTF-8, not JSON,
    not a live state, a malformed entry)."""
    name = printable_path(path)

    def bad(what: str) -> UserError:
        return UserError(f"{name}: --live-state: {what}")

    try:
        data = read_regular(path, MAX_STATE_BYTES + 1,
                            "not a file (the JSON printed by `ipvlanctl status --format json`)")
    except Unreadable as e:
        raise bad(str(e)) from None
    if len(data) > MAX_STATE_BYTES:
        raise bad(f"larger than {MAX_STATE_BYTES // (1024 * 1024)} MiB: refused")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): not the JSON printed by "
                  "`ipvlanctl status --format json`") from None
    return load_state_json(text, path)


MAX_STATE_BYTES = 256 * 1024 * 1024


def load_state_json(text: str, source: str = "<live-state>") -> HostState:
    name = printable_path(source)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{name}: not JSON: {e}")
    except RecursionError:
        raise UserError(f"{name}: not JSON: nested too deeply")
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{name}: not the output of `ipvlanctl status --format json` (format_version {FORMAT_VERSION})")
    objs: List[KObject] = []
    try:
        for i, d in enumerate(_list("objects", data.get("objects", []))):
            where = f"objects[{i}]"
            d = _obj(where, d)
            label = _key(where, d, "kind")
            try:
                kind = Kind[str(label).upper()]
                cls = CLASS_OF_KIND[kind]
            except KeyError:
                raise _Malformed(f"{where}: unknown kind {label!r:.60}") from None
            where = f"{where} ({kind.label})"
            _check_types(where, cls, d)
            try:
                kwargs = {k: _value(kind, k, v) for k, v in d.items() if k != "kind"}
                objs.append(cls(**kwargs))
            except TypeError as e:
                raise _Malformed(f"{where}: {_INIT.sub('', str(e))}") from None
            except ValueError as e:
                raise _Malformed(f"{where}: {e}") from None
        host = _obj("host", data.get("host", {}))
        links = {}
        for i, l in enumerate(_list("host.links", host.get("links", []))):
            where = f"host.links[{i}]"
            l = _obj(where, l)
            values = dict(
                name=_key(where, l, "name"), index=_key(where, l, "index"), kind=l.get("kind", ""),
                up=l.get("up", True), owned=l.get("managed", False), vid=l.get("vlan_id"), link=l.get("link"),
            )
            _check_types(where, HostLink, values)
            addresses = []
            for a in _list(f"{where}.addresses", l.get("addresses", [])):
                try:
                    addresses.append(ipaddress.ip_interface(a))
                except (TypeError, ValueError) as e:
                    raise _Malformed(f"{where}.addresses: {e}") from None
            links[values["name"]] = HostLink(addresses=tuple(addresses), **values)
        routes = []
        for r in _list("host.routes", host.get("routes", [])):
            try:
                routes.append(ipaddress.ip_network(r))
            except (TypeError, ValueError) as e:
                raise _Malformed(f"host.routes: {e}") from None
        foreign_netns = _list("host.foreign_netns", host.get("foreign_netns", []))
        if not all(isinstance(n, str) for n in foreign_netns):
            raise _Malformed("host.foreign_netns must be a list of names")
        foreign_links = {}
        for i, f in enumerate(_list("host.foreign_links", host.get("foreign_links", []))):
            where = f"host.foreign_links[{i}]"
            f = _obj(where, f)
            ns, ifname, kind_ = _key(where, f, "netns"), _key(where, f, "name"), _key(where, f, "kind")
            if not all(isinstance(v, str) for v in (ns, ifname, kind_)):
                raise _Malformed(f"{where}: netns, name and kind must be strings")
            foreign_links[(ns, ifname)] = kind_
        facts = HostFacts(
            links=links,
            routes=tuple(routes),
            foreign_netns=tuple(foreign_netns),
            foreign_links=foreign_links,
            ula_prefix=_ula_prefix_field(host.get("ula_prefix")),
        )
    except _Malformed as e:
        raise UserError(f"{name}: malformed live state: {printable(str(e))}") from None
    return HostState(objs, facts)


def _ula_prefix(v: Any) -> Optional[str]:
    """The host's ULA /48 (None in files written before it was recorded)."""
    if v is None:
        return None
    net = ipaddress.IPv6Network(v)  # ValueError / TypeError: malformed
    if net.prefixlen != 48:
        raise ValueError(f"ula_prefix {v} is not a /48")
    return str(net)


def _ula_prefix_field(v: Any) -> Optional[str]:
    try:
        return _ula_prefix(v)
    except (TypeError, ValueError) as e:
        raise _Malformed(f"host.ula_prefix: {e}") from None
