"""IPAM: automatic subnets and addresses, stable across runs (SPEC 2.2).

Pure: given the desired state, what we allocated before (the state directory,
or what the kernel shows on our endpoints when the state was lost) and a few
host facts, return the desired state with every subnet and address concrete.

Rules:
- default IPv4 subnets come from Docker's default pools: 172.17.0.0/16 ...
  172.31.0.0/16, then 192.168.0.0/16 split into /20s; a pool is skipped when it
  overlaps another network's subnet, a host route or a parent's address;
- IPv6 default subnets are /64s of a stable per-host ULA /48: the manifest's
  `ula_prefix:` when given (automatic IPv6 subnets outside it move into it),
  else the host's as a live-state JSON records it (`plan --offline
  --live-state`), else the one in the state directory, else one derived from
  /etc/machine-id (so it survives a lost state directory);
- container addresses: the user's, else the one given before (if still valid),
  else the lowest free one inside ip_range (or the subnet); the network
  address, IPv4 broadcast, gateways, aux addresses and the parent's own
  addresses are never handed out; a released address is free at once;
- L3/L3S subnets are not routed through a gateway, but like Docker's IPAM we
  still keep their gateway (the given one, else the first usable address) out
  of automatic choices; an address recorded before (state or endpoint) keeps
  it, and an explicit `ip:` may take it when no `gateway:` was written.
"""
from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from . import fleet
from .errors import Diagnostic, ManifestError
from .model import (
    Container,
    DesiredState,
    IPAddress,
    IPNetwork,
    Mode,
    Network,
    Subnet,
)


def default_v4_pools() -> Iterator[ipaddress.IPv4Network]:
    for b in range(17, 32):
        yield ipaddress.IPv4Network(f"172.{b}.0.0/16")
    yield from ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=20)


@dataclass(frozen=True)
class IpamFacts:
    """Host facts IPAM needs (empty when planning offline)."""

    host_routes: Tuple[IPNetwork, ...] = ()
    parent_addresses: Mapping[str, Tuple[IPAddress, ...]] = field(default_factory=dict)
    # (container, network) -> addresses seen on our endpoint (used when the state is lost)
    live_addresses: Mapping[Tuple[str, str], Tuple[object, ...]] = field(default_factory=dict)
    machine_id: str = ""
    # the ULA /48 a host's live-state JSON says it uses (offline planning against that host)
    ula48: Optional[str] = None


@dataclass(frozen=True)
class Allocations:
    """Automatic choices, persisted in the state directory."""

    ula48: Optional[str] = None
    subnets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # network -> auto cidrs
    # container -> network -> {"ip": str, "ip6": str}
    addresses: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "ula48": self.ula48,
            "subnets": {k: list(v) for k, v in sorted(self.subnets.items())},
            "addresses": {
                c: {n: dict(sorted(a.items())) for n, a in sorted(nets.items())}
                for c, nets in sorted(self.addresses.items())
            },
        }

    @classmethod
    def from_json(cls, data: Optional[dict]) -> "Allocations":
        if not data:
            return cls()
        ula48 = data.get("ula48")
        if ula48 is not None:
            ula48 = str(ipaddress.IPv6Network(ula48))  # ValueError: the state file is corrupt
        return cls(
            ula48=ula48,
            subnets={k: tuple(v) for k, v in (data.get("subnets") or {}).items()},
            addresses={
                c: {n: dict(a) for n, a in nets.items()}
                for c, nets in (data.get("addresses") or {}).items()
            },
        )


def ula48_for(machine_id: str) -> ipaddress.IPv6Network:
    """A stable RFC 4193 /48 for this host: fd + 40 bits of sha256(machine-id)."""
    digest = hashlib.sha256(("ipvlan-reconciler:" + machine_id).encode()).digest()
    value = (0xFD << 120) | (int.from_bytes(digest[:5], "big") << 80)
    return ipaddress.IPv6Network((value, 48))


def ula_in_use(desired: DesiredState, facts: IpamFacts, previous: Allocations) -> ipaddress.IPv6Network:
    """The ULA /48 automatic IPv6 subnets come from: the manifest's `ula_prefix`, else the
    live-state JSON's (offline planning for a host), else the state directory's, else the
    machine-id's."""
    if desired.ula_prefix is not None:
        return desired.ula_prefix
    for recorded in (facts.ula48, previous.ula48):
        if recorded:
            return ipaddress.IPv6Network(recorded)
    return ula48_for(facts.machine_id)


def special_address(addr: IPAddress, net: IPNetwork) -> Optional[str]:
    """What ``addr`` is when no host of ``net`` may use it: the network and broadcast address
    of an IPv4 subnet up to /30, the subnet-router anycast address of an IPv6 one up to /126.
    The one statement of that rule (validate refuses them, IPAM skips them)."""
    if net.version == 4 and net.prefixlen <= 30:
        if addr == net.network_address:
            return "network address"
        if addr == net.broadcast_address:
            return "broadcast address"
    if net.version == 6 and net.prefixlen <= 126 and addr == net.network_address:
        return "subnet-router anycast address (::)"
    return None


def _usable_bounds(net: IPNetwork) -> Tuple[int, int]:
    first, last = net.network_address, net.broadcast_address
    return (int(first) + (special_address(first, net) is not None),
            int(last) - (special_address(last, net) is not None))


class _Pool:
    """Free addresses of one network and family; lowest free first, O(1) amortised."""

    where = ""  # words for an exhaustion message (a fleet host's blocks)

    def __init__(self, subnets: Sequence[Subnet]):
        self.subnets = subnets
        self.used: Set[int] = set()
        self.cursor: Dict[int, int] = {}

    def bounds(self, i: int, s: Subnet) -> Tuple[int, int]:
        """The lowest and highest address (as ints) handed out from subnet ``s``."""
        assert s.cidr is not None
        lo, hi = _usable_bounds(s.ip_range or s.cidr)
        slo, shi = _usable_bounds(s.cidr)
        return max(lo, slo), min(hi, shi)

    def reserve(self, addr: IPAddress) -> None:
        self.used.add(int(addr))

    def take(self, addr: IPAddress) -> bool:
        v = int(addr)
        if v in self.used:
            return False
        self.used.add(v)
        return True

    def allowed(self, addr: IPAddress) -> bool:
        for i, s in enumerate(self.subnets):
            assert s.cidr is not None
            if addr in s.cidr:
                lo, hi = self.bounds(i, s)
                return lo <= int(addr) <= hi
        return False

    def lowest_free(self) -> Optional[IPAddress]:
        for i, s in enumerate(self.subnets):
            assert s.cidr is not None
            lo, hi = self.bounds(i, s)
            v = self.cursor.get(i, lo)
            while v <= hi and v in self.used:
                v += 1
            self.cursor[i] = v
            if v <= hi:
                self.used.add(v)
                self.cursor[i] = v + 1
                return ipaddress.ip_address(v) if s.cidr.version == 4 else ipaddress.IPv6Address(v)
        return None


class _BlockPool(_Pool):
    """A fleet host's pool (SPEC 5.1): only its block of each subnet's range; inside it the
    usual exclusions (the subnet's network and broadcast address, gateways, aux addresses,
    the parent's addresses), not the block's own first and last address."""

    def __init__(self, subnets: Sequence[Subnet], blocks: Sequence[Optional[IPNetwork]], where: str):
        super().__init__(subnets)
        self.blocks = blocks
        self.where = where

    def bounds(self, i: int, s: Subnet) -> Tuple[int, int]:
        assert s.cidr is not None
        b = self.blocks[i]
        if b is None:
            return 1, 0  # the range has no block for this host (a validation error)
        slo, shi = _usable_bounds(s.cidr)
        return max(int(b.network_address), slo), min(int(b.broadcast_address), shi)


def _pool_for(desired: DesiredState, net: Network, subs: Sequence[Subnet]) -> _Pool:
    """The pool of one network and family: a fleet host's blocks, else the whole ranges.
    The fleet's underlay addresses (hosts' address/address6) are never handed out."""
    hid = fleet.local_host_id(desired)
    if hid is None or not subs or fleet.block_size_of(net, subs[0].version) is None:
        return _Pool(subs)
    blocks = [fleet.host_block(net, s, hid) for s in subs]
    size = fleet.block_size_of(net, subs[0].version)
    shown = ", ".join(str(b) for b in blocks if b is not None) or "none"
    pool = _BlockPool(subs, blocks, f" in block {hid} of host {desired.local_host} ({shown}; block size /{size})")
    for h in desired.hosts.values():
        for a in (h.address, h.address6):
            if a is not None and a.version == subs[0].version:
                pool.reserve(a)
    return pool


def _overlaps_any(net: IPNetwork, others: Sequence[IPNetwork]) -> bool:
    return any(net.version == o.version and net.overlaps(o) for o in others)


def resolve(
    desired: DesiredState, facts: IpamFacts, previous: Allocations
) -> Tuple[DesiredState, Allocations]:
    """Fill every automatic subnet, gateway and address. Raises ManifestError when a
    subnet runs out of addresses or the pools are exhausted."""
    problems: List[Diagnostic] = []
    ula = ula_in_use(desired, facts, previous)

    explicit: List[IPNetwork] = [
        s.cidr for n in desired.networks.values() for s in n.subnets if s.cidr is not None
    ]
    blocked_v4: List[IPNetwork] = [r for r in facts.host_routes if r.prefixlen > 0]
    for addrs in facts.parent_addresses.values():
        blocked_v4.extend(ipaddress.ip_network(a) for a in addrs)

    # ---- subnets -------------------------------------------------------------------------
    taken: List[IPNetwork] = list(explicit)
    chosen: Dict[Tuple[str, int], IPNetwork] = {}
    # first pass: keep previous automatic subnets (state, else what our endpoints show)
    for net in desired.networks.values():
        for s in net.subnets:
            if s.cidr is not None:
                continue
            fam = _family(s)
            prev = [ipaddress.ip_network(c) for c in previous.subnets.get(net.name, ())]
            prev = [p for p in prev if p.version == fam]
            if not prev:
                prev = _from_live(facts, desired, net.name, fam)
            if fam == 6 and desired.ula_prefix is not None:  # the manifest's prefix wins
                prev = [p for p in prev if p.subnet_of(desired.ula_prefix)]
            for p in prev:
                if not _overlaps_any(p, taken) and (fam == 6 or p.prefixlen > 0):
                    chosen[(net.name, fam)] = p
                    taken.append(p)
                    break
    # second pass: new choices, in manifest order
    v4_pools = list(default_v4_pools())
    for net in desired.networks.values():
        for s in net.subnets:
            if s.cidr is not None:
                continue
            fam = _family(s)
            if (net.name, fam) in chosen:
                continue
            pick: Optional[IPNetwork] = None
            if fam == 4:
                for cand in v4_pools:
                    if not _overlaps_any(cand, taken) and not _overlaps_any(cand, blocked_v4):
                        pick = cand
                        break
            else:
                start = int(hashlib.sha256(net.name.encode()).hexdigest()[:4], 16)
                for i in range(1 << 16):
                    sid = (start + i) & 0xFFFF
                    cand = ipaddress.IPv6Network((int(ula.network_address) | (sid << 64), 64))
                    if not _overlaps_any(cand, taken):
                        pick = cand
                        break
            if pick is None:
                problems.append(
                    Diagnostic(net.loc, f"network {net.name}: the default address pools are exhausted; give it a subnet")
                )
                continue
            chosen[(net.name, fam)] = pick
            taken.append(pick)

    networks: Dict[str, Network] = {}
    for net in desired.networks.values():
        subnets = []
        for s in net.subnets:
            if s.cidr is None:
                cidr = chosen.get((net.name, _family(s)))
                if cidr is None:
                    continue
                s = replace(s, cidr=cidr, auto=True)
            if net.mode is Mode.L2 and s.gateway is None:
                s = replace(s, gateway=next(iter(_first_usable(s.cidr))))
            subnets.append(s)
        networks[net.name] = replace(net, subnets=tuple(subnets))

    # ---- addresses ----------------------------------------------------------------------
    pools: Dict[Tuple[str, int], _Pool] = {}
    # L3/L3S gateways: not routed, but never handed out (Docker's IPAM reserves the gateway in
    # every mode); reserved after the previous choices, so an address given before stays put
    held_back: List[Tuple[_Pool, IPAddress]] = []
    for net in networks.values():
        for fam in (4, 6):
            subs = net.subnets_of(fam)
            if not subs:
                continue
            pool = _pool_for(desired, net, subs)
            for s in subs:
                if net.l3:
                    gw = s.gateway if s.gateway is not None else _l3_gateway(s.cidr)
                    if gw is not None:
                        held_back.append((pool, gw))
                elif s.gateway is not None:
                    pool.reserve(s.gateway)
                for _, a in s.aux_addresses:
                    pool.reserve(a)
            # host access addresses (SPEC 2.3): never handed out, every fleet host's
            for a in set(net.host_access) | {a for _, a in net.host_access_by_host}:
                if a.version == fam:
                    pool.reserve(a)
            for a in facts.parent_addresses.get(net.parent, ()):
                pool.reserve(a)
            pools[(net.name, fam)] = pool

    # explicit addresses first (validated unique by the manifest layer), other fleet hosts' too
    for c in list(desired.containers.values()) + list(desired.remote.values()):
        for att in c.attachments:
            for fam, addr in ((4, att.ip), (6, att.ip6)):
                if addr is not None and (att.network, fam) in pools:
                    pools[(att.network, fam)].take(addr)

    result: Dict[Tuple[str, str, int], IPAddress] = {}
    # previous automatic choices next, so they never move
    for c in desired.containers.values():
        for att in c.attachments:
            net = networks.get(att.network)
            if net is None:
                continue
            for fam, addr, key in ((4, att.ip, "ip"), (6, att.ip6, "ip6")):
                pool = pools.get((att.network, fam))
                if addr is not None or pool is None:
                    continue
                prev = previous.addresses.get(c.name, {}).get(att.network, {}).get(key)
                cands: List[IPAddress] = []
                if prev:
                    cands.append(ipaddress.ip_address(prev))
                for iface in facts.live_addresses.get((c.name, att.network), ()):
                    ip = getattr(iface, "ip", iface)
                    if ip.version == fam:
                        cands.append(ip)
                for cand in cands:
                    if cand.version == fam and pool.allowed(cand) and pool.take(cand):
                        result[(c.name, att.network, fam)] = cand
                        break
    for pool, gw in held_back:
        pool.reserve(gw)
    # then the lowest free address for everything still open, in manifest order
    for c in desired.containers.values():
        for att in c.attachments:
            for fam, addr in ((4, att.ip), (6, att.ip6)):
                pool = pools.get((att.network, fam))
                if addr is not None or pool is None or (c.name, att.network, fam) in result:
                    continue
                got = pool.lowest_free()
                if got is None:
                    problems.append(
                        Diagnostic(
                            att.loc,
                            f"container {c.name}: no free IPv{fam} address left on network {att.network}{pool.where}",
                        )
                    )
                    continue
                result[(c.name, att.network, fam)] = got

    if problems:
        raise ManifestError(problems)

    containers: Dict[str, Container] = {}
    addresses: Dict[str, Dict[str, Dict[str, str]]] = {}
    for c in desired.containers.values():
        atts = []
        for att in c.attachments:
            ip = att.ip if att.ip is not None else result.get((c.name, att.network, 4))
            ip6 = att.ip6 if att.ip6 is not None else result.get((c.name, att.network, 6))
            atts.append(replace(att, ip=ip, ip6=ip6))
            rec = {}
            if att.ip is None and ip is not None:
                rec["ip"] = str(ip)
            if att.ip6 is None and ip6 is not None:
                rec["ip6"] = str(ip6)
            if rec:
                addresses.setdefault(c.name, {})[att.network] = rec
        containers[c.name] = replace(c, attachments=tuple(atts))

    allocations = Allocations(
        ula48=str(ula),
        subnets={
            name: tuple(str(s.cidr) for s in net.subnets if s.auto and s.cidr is not None)
            for name, net in networks.items()
            if any(s.auto for s in net.subnets)
        },
        addresses=addresses,
    )
    return replace(desired, networks=networks, containers=containers), allocations


def _family(s: Subnet) -> int:
    fam = getattr(s, "family", None)
    if fam in (4, 6):
        return fam
    return s.cidr.version if s.cidr is not None else 4


def _first_usable(net: IPNetwork) -> Iterator[IPAddress]:
    lo, _ = _usable_bounds(net)
    yield ipaddress.ip_address(lo) if net.version == 4 else ipaddress.IPv6Address(lo)


def _l3_gateway(net: IPNetwork) -> Optional[IPAddress]:
    """The address an L3/L3S subnet without `gateway` keeps free: the first usable one, as
    Docker would make it the gateway; none in a /31, /32 (/127, /128), which have no spare."""
    lo, _ = _usable_bounds(net)
    if lo == int(net.network_address):
        return None
    return next(iter(_first_usable(net)))


def _from_live(facts: IpamFacts, desired: DesiredState, network: str, fam: int) -> List[IPNetwork]:
    """Rebuild a lost automatic subnet from the addresses on our endpoints."""
    seen: Counter = Counter()
    for (container, net), ifaces in facts.live_addresses.items():
        if net != network:
            continue
        for iface in ifaces:
            n = getattr(iface, "network", None)
            if n is not None and n.version == fam:
                seen[n] += 1
    return [n for n, _ in seen.most_common()]
