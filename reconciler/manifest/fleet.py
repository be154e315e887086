"""Semantic rules of fleet manifests (SPEC 5.1), run by ``semantic.check`` after the rules of
sections 2-3 built the single-host model.

Reads the top-level ``hosts:`` and ``bgp:`` sections, each container's ``host:`` and each
network's ``block_size``/``block_size6``, checks them fleet-wide (every problem located
file:line:col) and returns the state with ``hosts``, ``bgp``, ``Container.host`` and the
networks' block sizes filled in. Names, explicit addresses and aliases are already unique
across the whole directory (the rules of section 2 see every host's containers at once).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import Diagnostic
from ..fleet import block, block_count, block_index, block_size_of, default_block_size6, subnet_range
from ..model import Bfd, Bgp, BgpPeer, Container, DesiredState, Host, Location, Network, Warning_
from .yamlload import Document, Pos, YMap

if TYPE_CHECKING:  # pragma: no cover
    from .semantic import _Checker

# Cluster mode (SPEC 6): `ipvlanctl cluster push` loads with this set; hosts' ids and
# networks' block sizes may then be left out (the cluster assigns blocks, the push resolves
# the block sizes: CLUSTER_BLOCK_SIZE / CLUSTER_BLOCK_SIZE6). Every other command: unset.
CLUSTER_MODE: "contextvars.ContextVar[bool]" = contextvars.ContextVar("cluster_mode", default=False)
CLUSTER_BLOCK_SIZE = 26
CLUSTER_BLOCK_SIZE6 = 80


@contextlib.contextmanager
def cluster_mode():
    """Load manifests under the rules of cluster mode (SPEC 6) inside this block."""
    token = CLUSTER_MODE.set(True)
    try:
        yield
    finally:
        CLUSTER_MODE.reset(token)


def cluster_default_size(net: Network, fam: int) -> Optional[int]:
    """The block size a cluster push resolves for a network that gives none: /26 (IPv4),
    /80 (IPv6), or the longest range's prefix length when a range is smaller than that."""
    ranges = [subnet_range(s).prefixlen for s in net.subnets_of(fam)]
    if not ranges:
        return None
    base = CLUSTER_BLOCK_SIZE if fam == 4 else CLUSTER_BLOCK_SIZE6
    return min(max(base, max(ranges)), MAX_BITS[fam])


RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}
MAX_BITS = {4: 30, 6: 126}


class _Raw:
    """One entry of a top-level fleet section, as found in one file."""

    def __init__(self, name: str, doc: Document, value: Any, kpos: Pos, checked: bool):
        self.name, self.doc, self.value, self.kpos, self.checked = name, doc, value, kpos, checked

    @property
    def loc(self) -> Location:
        return self.doc.loc(self.kpos)

    def vpos(self, key: str) -> Pos:
        v = self.value
        return v.vpos.get(key, self.kpos) if isinstance(v, YMap) else self.kpos


def _collect(docs: Sequence[Document], schema_bad: Dict[int, Set[Tuple[Any, ...]]]):
    hosts: List[_Raw] = []
    bgps: List[_Raw] = []
    for i, doc in enumerate(docs):
        root = doc.root
        if not doc.ok or not isinstance(root, dict):
            continue
        bad = schema_bad.get(i, set())
        whole_bad = () in bad
        section = root.get("hosts")
        if isinstance(section, dict):
            for name, value in section.items():
                kpos = section.kpos.get(name, doc.root_pos) if isinstance(section, YMap) else doc.root_pos
                hosts.append(_Raw(name, doc, value, kpos, not whole_bad and ("hosts", name) not in bad))
        if "bgp" in root:
            kpos = root.kpos.get("bgp", doc.root_pos) if isinstance(root, YMap) else doc.root_pos
            bgps.append(_Raw("bgp", doc, root.get("bgp"), kpos, not whole_bad and ("bgp",) not in bad))
    return hosts, bgps


class _Fleet:
    def __init__(self, c: "_Checker", docs: Sequence[Document], schema_bad: Dict[int, Set[Tuple[Any, ...]]]):
        self.c = c
        self.raw_hosts, self.raw_bgps = _collect(docs, schema_bad)
        self.names: Dict[str, _Raw] = {}  # every declared host name (schema-valid or not)
        self.hosts: Dict[str, Host] = {}

    def err(self, doc: Document, pos: Pos, message: str) -> None:
        self.c.err(doc, pos, message)

    def err_at(self, loc: Location, message: str) -> None:
        self.c.diags.append(Diagnostic(loc, message, self.c.source_line(loc)))

    # ---- hosts: ------------------------------------------------------------------------------

    def host_entries(self) -> None:
        ids: Dict[int, Host] = {}
        addrs: Dict[Any, Host] = {}
        for r in self.raw_hosts:
            first = self.names.get(r.name)
            if first is not None:
                self.err(r.doc, r.kpos, f"host {r.name} is defined twice: here and at {first.loc} "
                         "(host names are unique across all manifest files)")
                continue
            self.names[r.name] = r
            if not r.checked:
                continue
            v = r.value if isinstance(r.value, dict) else {}
            ok = True
            hid = v.get("id")
            if hid is None and CLUSTER_MODE.get():
                pass  # the cluster assigns this host its blocks on demand (SPEC 6)
            elif hid is None:
                self.err(r.doc, r.kpos, f"host {r.name} has no id: in a file-synced fleet every host "
                         "needs its block number, `id:` 0-4095, unique")
                ok = False
            else:
                hid = int(hid)
                other = ids.get(hid)
                if other is not None:
                    self.err(r.doc, r.vpos("id"), f"host {r.name}: id {hid} is already the id of host "
                             f"{other.name} ({other.loc}); host ids are unique (each id is a block)")
                    ok = False
            address = address6 = None
            for key, fam in (("address", 4), ("address6", 6)):
                text = v.get(key)
                if text is None:
                    continue
                pos = r.vpos(key)
                a = self.c.parse_address(r.doc, pos, text, f"host {r.name}: {key}")
                if a is None:
                    ok = False
                    continue
                if a.version != fam:
                    other_key = "address6" if fam == 4 else "address"
                    self.err(r.doc, pos, f"host {r.name}: {key} {a} is IPv{a.version}; use {other_key} "
                             f"for IPv{a.version}")
                    ok = False
                    continue
                other = addrs.get(a)
                if other is not None:
                    self.err(r.doc, pos, f"host {r.name}: {key} {a} is already the address of host "
                             f"{other.name} ({other.loc}); underlay addresses are unique")
                    ok = False
                    continue
                if fam == 4:
                    address = a
                else:
                    address6 = a
            h = Host(r.name, hid, address, address6, loc=r.loc)  # type: ignore[arg-type]
            if address is not None:
                addrs[address] = h
            if address6 is not None:
                addrs[address6] = h
            if hid is not None and hid not in ids:
                ids[hid] = h
            if ok:
                self.hosts[r.name] = h

    # ---- bgp: --------------------------------------------------------------------------------

    def bgp(self) -> Optional[Bgp]:
        if not self.raw_bgps:
            return None
        first = self.raw_bgps[0]
        for r in self.raw_bgps[1:]:
            self.err(r.doc, r.kpos, f"bgp is defined twice: here and at {first.loc} (one bgp: section "
                     "for the whole fleet)")
        r = first
        if not r.checked:
            return None
        v = r.value if isinstance(r.value, dict) else {}
        if not self.names:
            if not self.c.incomplete:
                self.err(r.doc, r.kpos, "bgp: needs a fleet manifest: declare the hosts under a top-level "
                         "hosts: section (iBGP runs between them)")
            return None
        n = len(self.c.diags)
        for name, h in self.hosts.items():
            if h.address is None:
                self.err(self.names[name].doc, self.names[name].kpos,
                         f"host {name} has no address: with bgp: every host needs its underlay IPv4 "
                         "address (its BGP router id and next hop)")
        rrs = v.get("route_reflectors") or []
        ipos = getattr(rrs, "ipos", [])
        for i, name in enumerate(rrs):
            if name not in self.names:
                pos = ipos[i] if i < len(ipos) else r.vpos("route_reflectors")
                self.err(r.doc, pos, f"bgp: route reflector {name!r} is not a declared host"
                         f"{_hint(name, self.names)} (hosts: {', '.join(self.names)})")
        table = int(v.get("table", 200))
        if table in RESERVED_TABLES:
            self.err(r.doc, r.vpos("table"), f"bgp: table {table} is the kernel's {RESERVED_TABLES[table]} "
                     "table; choose another (default 200)")
        peers: List[BgpPeer] = []
        raw_peers = v.get("peers") or []
        ppos = getattr(raw_peers, "ipos", [])
        for i, p in enumerate(raw_peers):
            pos = p.vpos.get("address", r.kpos) if isinstance(p, YMap) else (ppos[i] if i < len(ppos) else r.kpos)
            a = self.c.parse_address(r.doc, pos, p["address"], f"bgp: peer {i + 1}: address")
            if a is not None:
                peers.append(BgpPeer(a, int(p["asn"]), loc=r.doc.loc(pos)))
        raw_bfd = v.get("bfd")
        bfd: Optional[Bfd] = None
        if raw_bfd is True or raw_bfd == {}:
            bfd = Bfd()
        elif isinstance(raw_bfd, dict):
            bfd = Bfd(int(raw_bfd.get("interval_ms", 300)), int(raw_bfd.get("multiplier", 3)))
        if len(self.c.diags) != n:
            return None
        return Bgp(
            asn=int(v["asn"]),
            route_reflectors=tuple(rrs),
            table=table,
            peers=tuple(peers),
            bfd=bfd,
            loc=r.loc,
        )

    # ---- containers' host: -------------------------------------------------------------------

    def container_hosts(self) -> Dict[str, str]:
        """container -> host, for every schema-valid container that names a declared host."""
        out: Dict[str, str] = {}
        seen: Set[str] = set()
        fleet_at = next(iter(self.names.values())).loc if self.names else None
        for e in self.c.entries.get("containers", ()):
            if e.name in seen or not e.checked:
                continue
            seen.add(e.name)
            host = e.get("host")
            if host is None:
                if fleet_at is not None:
                    self.err(e.doc, e.kpos, f"container {e.name} has no host: a fleet manifest (hosts: at "
                             f"{fleet_at}) needs host: on every container (one of {', '.join(self.names)})")
                continue
            if fleet_at is None:
                if not self.c.incomplete:
                    self.err(e.doc, e.vpos("host"), f"container {e.name}: host: {host} but no hosts: are "
                             "declared; host: belongs to fleet manifests (add a top-level hosts: section "
                             "or remove host:)")
                continue
            if host not in self.names:
                if not self.c.incomplete:
                    self.err(e.doc, e.vpos("host"), f"container {e.name}: unknown host {host!r}"
                             f"{_hint(host, self.names)} (hosts: {', '.join(self.names)})")
                continue
            out[e.name] = host
        return out

    # ---- networks' blocks --------------------------------------------------------------------

    def networks(self, state: DesiredState, chosen: Dict[str, str]) -> Dict[str, Network]:
        fleet = bool(self.names)
        entries = {}
        for e in self.c.entries.get("networks", ()):
            entries.setdefault(e.name, e)
        users: Dict[str, Set[str]] = {}  # network -> hosts with containers on it
        for cname, c in state.containers.items():
            h = chosen.get(cname)
            if h is not None:
                for att in c.attachments:
                    users.setdefault(att.network, set()).add(h)
        out: Dict[str, Network] = {}
        for name, net in state.networks.items():
            e = entries.get(name)
            if e is None:
                out[name] = net
                continue
            bs, bs6 = e.get("block_size"), e.get("block_size6")
            given = [k for k in ("block_size", "block_size6") if e.get(k) is not None]
            if not fleet or net.internal:
                for k in given:
                    why = ("it matters only in a fleet manifest (hosts:)" if not fleet else
                           "an internal network is per host (each host has its own isolated copy)")
                    self.c.warnings.append(Warning_(e.doc.loc(e.vpos(k)), f"network {name}: {k} is ignored: {why}"))
                out[name] = net
                continue
            n = len(self.c.diags)
            for s in net.subnets:
                if s.cidr is not None:
                    continue
                if s.family == 4:
                    self.err(e.doc, e.kpos, f"network {name}: a non-internal network of a fleet declares its "
                             "IPv4 subnet (every host must reach the same choice; the default pools are per host)")
                else:
                    self.err(e.doc, e.vpos("ipv6"), f"network {name}: ipv6: true needs a declared IPv6 subnet "
                             "in a fleet (the automatic ULA /64 is per host)")
            if bs is None and CLUSTER_MODE.get():
                bs = cluster_default_size(net, 4)  # resolved once by the push (SPEC 6)
            elif bs is None:
                self.err(e.doc, e.kpos, f"network {name}: a fleet manifest needs block_size on every "
                         f"non-internal network: the IPv4 prefix length of each host's block of its "
                         f"ranges{self.suggest(net, 4)}")
            else:
                bs = int(bs)
                self.fits(e, net, 4, bs, "block_size")
            if bs6 is not None:
                bs6 = int(bs6)
                if not net.ipv6:
                    self.err(e.doc, e.vpos("block_size6"), f"network {name}: block_size6 needs `ipv6: true`")
                else:
                    self.fits(e, net, 6, bs6, "block_size6")
            elif net.ipv6:
                bs6 = cluster_default_size(net, 6) if CLUSTER_MODE.get() else default_block_size6(net)
            if len(self.c.diags) != n:
                out[name] = net
                continue
            net = replace(net, block_size=bs, block_size6=bs6)
            out[name] = net
            self.too_few_blocks(net, users.get(name, set()))
        return out

    def suggest(self, net: Network, fam: int) -> str:
        ranges = [subnet_range(s) for s in net.subnets_of(fam)]
        ids = [h.id for h in self.hosts.values() if h.id is not None]
        if not ranges or not ids:
            return ""
        size = max(r.prefixlen for r in ranges) + max(ids).bit_length()
        if size > MAX_BITS[fam]:
            return ""
        return f", e.g. block_size: {size} (host ids up to {max(ids)} fit)"

    def fits(self, e, net: Network, fam: int, size: int, key: str) -> None:
        for s in net.subnets_of(fam):
            assert s.cidr is not None
            if size < s.cidr.prefixlen:
                self.err(e.doc, e.vpos(key), f"network {net.name}: {key} {size} is larger than subnet "
                         f"{s.cidr} (a block lies inside one subnet: {key} >= {s.cidr.prefixlen})")
                return

    def too_few_blocks(self, net: Network, users: Set[str]) -> None:
        for fam in (4, 6):
            size = block_size_of(net, fam)
            if size is None:
                continue
            for s in net.subnets_of(fam):
                rng = subnet_range(s)
                count = block_count(rng, size)
                short = sorted((h for h in (self.hosts.get(u) for u in users) if h is not None and h.id is not None
                                and h.id >= count), key=lambda h: (h.id, h.name))
                if not short:
                    continue
                what = "range" if s.ip_range is not None else "subnet"
                has = f"blocks 0-{count - 1}" if count else "no whole block"
                who = ", ".join(f"host {h.name} (id {h.id})" for h in short)
                self.err_at(s.loc, f"network {net.name}: {what} {rng} holds {count} block(s) of /{size} "
                            f"({has}), too few for {who} using the network (host k hands out addresses "
                            "from block k); use a larger range, a longer block size or smaller host ids")

    # ---- explicit addresses in other hosts' blocks ---------------------------------------------

    def explicit_addresses(self, networks: Dict[str, Network], containers: Dict[str, Container]) -> None:
        by_id = {h.id: h for h in self.hosts.values() if h.id is not None}
        underlay = {a: h for h in self.hosts.values() for a in (h.address, h.address6) if a is not None}
        centries = {}
        for e in self.c.entries.get("containers", ()):
            centries.setdefault(e.name, e)
        for c in containers.values():
            if c.host is None:
                continue
            for att in c.attachments:
                net = networks.get(att.network)
                if net is None:
                    continue
                for key, addr in (("ip", att.ip), ("ip6", att.ip6)):
                    if addr is None:
                        continue
                    if addr in underlay and not net.internal:
                        e = centries[c.name]
                        h = underlay[addr]
                        self.err(e.doc, _att_pos(e, att.network, key), f"container {c.name} network "
                                 f"{net.name}: {key} {addr} is the underlay address of host {h.name} ({h.loc})")
                        continue
                    size = block_size_of(net, addr.version)
                    if size is None:
                        continue
                    for s in net.subnets_of(addr.version):
                        rng = subnet_range(s)
                        k = block_index(rng, size, addr)
                        if k is None:
                            continue
                        owner = by_id.get(k)
                        if owner is None or owner.name == c.host:
                            break
                        e = centries[c.name]
                        pos = _att_pos(e, att.network, key)
                        self.err(e.doc, pos, f"container {c.name} (host {c.host}) network {net.name}: {key} "
                                 f"{addr} is in block {k} ({block(rng, size, k)}) of host {owner.name} "
                                 f"({owner.loc}); an explicit address inside a host's block must be one of "
                                 f"that host's containers (choose one in host {c.host}'s block, or outside "
                                 f"the range {rng}, or another host id)")
                        break


def _att_pos(e, network: str, key: str) -> Pos:
    raw = e.get("networks") or {}
    att = raw.get(network) if isinstance(raw, dict) else None
    if isinstance(att, YMap) and key in att.vpos:
        return att.vpos[key]
    return raw.kpos.get(network, e.kpos) if isinstance(raw, YMap) else e.kpos


def _hint(word: str, names) -> str:
    import difflib  # only for a misspelt name: not on a valid manifest's path

    m = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return f" (did you mean {m[0]}?)" if m else ""


def check(c: "_Checker", docs: Sequence[Document], schema_bad: Dict[int, Set[Tuple[Any, ...]]],
          state: DesiredState) -> DesiredState:
    """The fleet rules; returns ``state`` with the fleet parts filled in (problems go to the
    checker's diagnostics and warnings)."""
    f = _Fleet(c, docs, schema_bad)
    f.host_entries()
    bgp = f.bgp()
    chosen = f.container_hosts()
    if not f.names and not any(e.get("block_size") is not None or e.get("block_size6") is not None
                               for e in c.entries.get("networks", ())) and bgp is None:
        return state  # a single-host manifest: nothing to do here
    nwarn = len(c.warnings)
    networks = f.networks(state, chosen)
    containers = {n: (replace(ct, host=chosen[n]) if n in chosen else ct) for n, ct in state.containers.items()}
    f.explicit_addresses(networks, containers)
    return replace(
        state,
        networks=networks,
        containers=containers,
        hosts=dict(f.hosts),
        bgp=bgp,
        warnings=state.warnings + tuple(c.warnings[nwarn:]),
    )
