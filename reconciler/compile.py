"""Compile a resolved desired state into the kernel objects that realise it.

Pure. Needs the host's links (facts) only to know which parents exist: a
network whose parent is missing is *pending* -- it and its containers'
attachments are left out (and left alone), everything else converges.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from .model import DesiredState, MacvlanMode, Mode, Network, ParentKind, access_link_name, endpoint_mac
from .objects import (
    HOSTS_MARKER,
    AccessLink,
    AccessRoute,
    Address,
    DummyLink,
    Endpoint,
    ExportRoute,
    HostFacts,
    HostsFile,
    HostState,
    KObject,
    Netns,
    Route,
    Sysctl,
    VlanLink,
)


@dataclass(frozen=True)
class Pending:
    """Something that cannot be realised until the host changes (a parent appears)."""

    what: str  # "network db_net" / "container c1 on network db_net" / "vlan eth0.20"
    reason: str

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


@dataclass(frozen=True)
class Compiled:
    desired: HostState
    pending: Tuple[Pending, ...] = ()
    # keys of live objects that belong to pending work and must be left alone
    protected_networks: frozenset = field(default_factory=frozenset)
    problems: Tuple[str, ...] = ()


DEFAULT_DST = {4: ipaddress.IPv4Network("0.0.0.0/0"), 6: ipaddress.IPv6Network("::/0")}


def compile_state(
    desired: DesiredState, facts: Optional[HostFacts], offline: bool = False, memo: Optional["CompileMemo"] = None
) -> Compiled:
    """``facts`` None or ``offline``: assume every existing-kind parent is present. With a
    ``memo`` (the daemon) a container equal to last time's, on networks equal to last time's
    and as ready, gets last time's objects (the result is the same either way)."""
    objs: List[KObject] = []
    pending: List[Pending] = []
    problems: List[str] = []
    links = facts.links if facts is not None else {}

    def link_exists(name: str) -> bool:
        return offline or name in links

    # ---- VLAN links and parents ----------------------------------------------------------
    used_parents = {n.parent for n in desired.networks.values()}
    vlan_ok: Dict[str, bool] = {}

    def vlan_ready(name: str, seen: Tuple[str, ...] = ()) -> bool:
        if name in vlan_ok:
            return vlan_ok[name]
        v = desired.vlans[name]
        if v.link in seen:
            problems.append(f"vlan {name}: link cycle {' -> '.join(seen + (name, v.link))}")
            vlan_ok[name] = False
            return False
        if v.link in desired.vlans:
            ok = vlan_ready(v.link, seen + (name,))
        else:
            ok = link_exists(v.link)
        vlan_ok[name] = ok
        return ok

    for v in desired.vlans.values():
        if not v.declared and v.name not in used_parents:
            continue  # an implied VLAN exists only while a network uses it
        if not vlan_ready(v.name):
            pending.append(Pending(f"vlan {v.name}", f"its link {v.link} does not exist"))
            continue
        objs.append(VlanLink(name=v.name, link=v.link, vid=v.vid))

    ready_networks: Dict[str, Network] = {}
    protected: Set[str] = set()
    for net in desired.networks.values():
        if net.parent_kind is ParentKind.DUMMY:
            objs.append(DummyLink(name=net.parent))
            ready_networks[net.name] = net
        elif net.parent_kind in (ParentKind.VLAN, ParentKind.DECLARED_VLAN):
            if vlan_ready(net.parent):
                ready_networks[net.name] = net
            else:
                protected.add(net.name)
                pending.append(Pending(f"network {net.name}", f"parent {net.parent} cannot be created: its link {desired.vlans[net.parent].link} does not exist"))
        else:
            if link_exists(net.parent):
                ready_networks[net.name] = net
            else:
                protected.add(net.name)
                pending.append(Pending(f"network {net.name}", f"parent {net.parent} does not exist"))

    # plan-time checks that need the host: addresses on the parent
    if facts is not None:
        for net in ready_networks.values():
            parent = links.get(net.parent)
            if parent is None:
                continue
            paddrs = [a.ip for a in parent.addresses]
            for s in net.subnets:
                if s.cidr is None:
                    continue
                if net.l3:
                    hit = [str(a) for a in paddrs if a.version == s.cidr.version and a in s.cidr]
                    if hit:
                        problems.append(
                            f"network {net.name} ({net.loc}): {net.mode.value} subnet {s.cidr} overlaps "
                            f"the parent {net.parent}'s own address {', '.join(hit)}; L3 needs a subnet apart "
                            "from the host's"
                        )

    # ---- containers ------------------------------------------------------------------------
    hosts = HostsBuilder(desired)

    parent_addr_index = {
        name: {a.ip for a in l.addresses} for name, l in links.items()
    } if facts is not None else {}

    # A container's objects (all but its hosts file) depend only on the container, its
    # networks and which of them are ready; the daemon keeps them between runs (CompileMemo).
    previous = memo.containers if memo is not None else {}
    changed_nets: Set[str] = set()
    if memo is not None:
        changed_nets = {n for n, net in desired.networks.items() if memo.networks.get(n) != net}
    kept: Dict[str, tuple] = {}
    for c in desired.containers.values():
        ready: List[bool] = []
        for att in c.attachments:
            net = desired.networks[att.network]
            ok = att.network in ready_networks
            ready.append(ok)
            if not ok:
                pending.append(Pending(f"container {c.name} on network {att.network}", "waiting for the network's parent"))
                continue
            for ip in (att.ip, att.ip6):
                if ip is not None and ip in parent_addr_index.get(net.parent, ()):
                    problems.append(
                        f"container {c.name} ({att.loc}): address {ip} is already present on the parent {net.parent}"
                    )
        hit = previous.get(c.name)
        if (
            hit is not None
            and hit[1] == ready
            and hit[0] == c
            and not any(att.network in changed_nets for att in c.attachments)
        ):
            c_objs, c_problems = hit[2], hit[3]
        else:
            c_objs, c_problems = _container_objects(c, desired, ready)
        if memo is not None:
            kept[c.name] = (c, ready, c_objs, c_problems)
        objs.extend(c_objs)
        problems.extend(c_problems)
        objs.append(HostsFile(ns=c.name, content=hosts.content(c)))
    if memo is not None:
        memo.containers = kept
        memo.networks = dict(desired.networks)

    if desired.bgp is not None and desired.local_host is not None:
        objs.extend(_exports(desired, ready_networks, facts, offline, pending))
    objs.extend(_access_objects(desired, ready_networks, parent_addr_index, problems))

    return Compiled(
        desired=HostState(objs),
        pending=tuple(pending),
        protected_networks=frozenset(protected),
        problems=tuple(problems),
    )


def _container_objects(c, desired: DesiredState, ready: List[bool]) -> Tuple[Tuple[KObject, ...], Tuple[str, ...]]:
    """The kernel objects of one container on its ready networks, without its hosts file,
    and the problems found on the way (an address in none of its network's subnets)."""
    objs: List[KObject] = [Netns(name=c.name)]
    problems: List[str] = []
    defaults: Dict[int, Tuple[Tuple[int, int], Route]] = {}
    route_objs: Dict[str, Route] = {}
    for position, att in enumerate(c.attachments):
        if not ready[position]:
            continue
        net = desired.networks[att.network]
        objs.append(
            Endpoint(ns=c.name, ifname=att.ifname, parent=net.parent, network=net.name, **_link_kind(net, c.name))
        )
        objs.append(Sysctl(ns=c.name, ifname=att.ifname, name="disable_ipv6", value=0 if net.ipv6 else 1))
        for fam, ip in ((4, att.ip), (6, att.ip6)):
            if ip is None:
                continue
            sub = next((s for s in net.subnets_of(fam) if ip in s.cidr), None)
            if sub is None:
                problems.append(f"container {c.name}: {ip} is in no subnet of network {net.name}")
                continue
            # from the int: given an address object, ipaddress formats and re-parses it
            iface = (ipaddress.IPv4Interface if fam == 4 else ipaddress.IPv6Interface)((int(ip), sub.cidr.prefixlen))
            objs.append(Address(ns=c.name, ifname=att.ifname, address=iface))
            # default route candidate: non-internal first, then attachment order
            if net.l3:
                cand = Route(ns=c.name, dst=DEFAULT_DST[fam], gateway=None, ifname=att.ifname)
            elif not net.internal and sub.gateway is not None:
                cand = Route(ns=c.name, dst=DEFAULT_DST[fam], gateway=sub.gateway, ifname=att.ifname)
            else:
                cand = None
            if cand is not None:
                rank = (1 if net.internal else 0, position)
                if fam not in defaults or rank < defaults[fam][0]:
                    defaults[fam] = (rank, cand)
            # L3: every other subnet of the network is reachable through this interface
            if net.l3:
                for s in net.subnets_of(fam):
                    if s is sub or ip in s.cidr:
                        continue
                    r = Route(ns=c.name, dst=s.cidr, gateway=None, ifname=att.ifname)
                    route_objs.setdefault(str(r.dst), r)
    for fam in sorted(defaults):
        r = defaults[fam][1]
        route_objs[str(r.dst)] = r
    objs.extend(route_objs.values())
    return tuple(objs), tuple(problems)


def _exports(
    desired: DesiredState,
    ready_networks: Dict[str, Network],
    facts: Optional[HostFacts],
    offline: bool,
    pending: List[Pending],
) -> List[KObject]:
    """SPEC 5.2: one host route per address of this host's containers on each ready
    non-internal L3/L3S network, in table ``bgp.table``. A family of a network is announced
    only when the network's parent carries the host's underlay address of that family
    (traffic for an L3 slave must arrive on its parent); otherwise that family's export is
    pending with the reason, and the containers converge all the same."""
    assert desired.bgp is not None and desired.local_host is not None
    host = desired.hosts.get(desired.local_host)
    if host is None:
        return []
    table = desired.bgp.table
    links = facts.links if facts is not None else {}
    announced: Dict[Tuple[str, int], bool] = {}
    for net in ready_networks.values():
        if not net.l3 or net.internal:
            continue
        for fam, addr in ((4, host.address), (6, host.address6)):
            if not net.subnets_of(fam):
                continue
            parent = links.get(net.parent)
            if addr is None:
                ok, why = False, f"host {host.name} has no address{'' if fam == 4 else '6'}"
            elif parent is None:
                ok = offline or facts is None  # nothing known about the host: assume so
                why = f"parent {net.parent} does not exist"
            else:
                ok = any(a.ip == addr for a in parent.addresses)
                why = f"its parent {net.parent} does not carry the host's address {addr}"
            announced[(net.name, fam)] = ok
            if not ok:
                what = "IPv4" if fam == 4 else "IPv6"
                pending.append(Pending(f"bgp export of network {net.name} ({what})", f"not announced: {why}"))
    out: Dict[str, KObject] = {}
    for c in desired.containers.values():
        if c.host is not None and c.host != desired.local_host:
            continue
        for att in c.attachments:
            net = ready_networks.get(att.network)
            if net is None:
                continue
            for fam, ip in ((4, att.ip), (6, att.ip6)):
                if ip is None or not announced.get((net.name, fam)):
                    continue
                if not any(ip in s.cidr for s in net.subnets_of(fam)):
                    continue  # reported by _container_objects
                dst = (ipaddress.IPv4Network if fam == 4 else ipaddress.IPv6Network)((int(ip), 32 if fam == 4 else 128))
                r = ExportRoute(table=table, dst=dst, dev=net.parent)
                out.setdefault(str(dst), r)
    return list(out.values())


def _link_kind(net: Network, owner: str) -> Dict[str, object]:
    """The driver fields of a link of ``net`` (a container's endpoint, or the host's access
    link): ipvlan mode and flag, or macvlan mode and the stable MAC derived from ``owner``
    (none on passthru: the link keeps the parent's)."""
    if not net.macvlan:
        return {"driver": "ipvlan", "mode": net.mode, "flag": net.flag, "macvlan_mode": "", "mac": ""}
    passthru = net.macvlan_mode is MacvlanMode.PASSTHRU
    return {
        "driver": "macvlan",
        "mode": Mode.L2,
        "flag": net.flag,
        "macvlan_mode": net.macvlan_mode.value,
        "mac": "" if passthru else endpoint_mac(owner, net.name),
    }


def _access_objects(desired: DesiredState, ready: Dict[str, Network], parent_addrs, problems: List[str]) -> List[KObject]:
    """SPEC 2.3 host access: per ready network with this host's address(es), the host's own
    link on the parent holding them, and a host route through it to each address of this
    host's containers on that network."""
    out: List[KObject] = []
    for net in ready.values():
        if not net.host_access:
            continue
        hit = [str(a) for a in net.host_access if a in parent_addrs.get(net.parent, ())]
        if hit:
            problems.append(
                f"network {net.name} ({net.host_access_loc}): host_access address {', '.join(hit)} is already "
                f"present on the parent {net.parent}; the host's leg needs an address of its own"
            )
            continue
        name = access_link_name(net.name)
        fams = {a.version for a in net.host_access}
        out.append(AccessLink(
            name=name,
            parent=net.parent,
            network=net.name,
            **_link_kind(net, name),
            addresses=tuple(sorted(f"{a}/{a.max_prefixlen}" for a in net.host_access)),
        ))
        for c in desired.containers.values():
            for att in c.attachments:
                if att.network != net.name:
                    continue
                for ip in (att.ip, att.ip6):
                    if ip is not None and ip.version in fams:
                        dst = (ipaddress.IPv4Network if ip.version == 4 else ipaddress.IPv6Network)((int(ip), ip.max_prefixlen))
                        out.append(AccessRoute(dst=dst, ifname=name))
    return out


@dataclass
class CompileMemo:
    """What compile_state made of each container last time, for the daemon: reused while the
    container, its networks and their readiness are equal to what they were."""

    containers: Dict[str, tuple] = field(default_factory=dict)  # name -> (container, ready, objects, problems)
    networks: Dict[str, Network] = field(default_factory=dict)


def _host_names(name: str, aliases) -> Tuple[str, ...]:
    """The container's name and its aliases, each once: resolvers compare host names
    regardless of case, so an alias repeating a name (in any case) is left out."""
    if not aliases:
        return (name,)
    seen = {name.lower()}
    out = [name]
    for a in aliases:
        low = a.lower()
        if low not in seen:
            seen.add(low)
            out.append(a)
    return tuple(out)


class HostsBuilder:
    """/etc/hosts for each container: itself, then every container sharing a network.

    Each network's block of lines is formatted once and shared by all its
    containers (a container's file is its own lines plus its networks' blocks
    minus itself), so building N files costs O(N) formatting, not O(N^2)."""

    HEADER = "\n".join([HOSTS_MARKER, "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]) + "\n"

    def __init__(self, desired: DesiredState):
        self.own: Dict[Tuple[str, str], str] = {}  # (container, network) -> its lines on that network
        self.span: Dict[Tuple[str, str], Tuple[int, int]] = {}  # ... and where they are in the block
        blocks: Dict[str, List[str]] = {}
        sizes: Dict[str, int] = {}
        # a fleet host's files also list the other hosts' containers with explicit addresses
        for c in list(desired.containers.values()) + list(desired.remote.values()):
            for att in c.attachments:
                names = " ".join(_host_names(c.name, att.aliases))
                lines = "".join(f"{ip}\t{names}\n" for ip in (att.ip, att.ip6) if ip is not None)
                start = sizes.get(att.network, 0)
                self.own[(c.name, att.network)] = lines
                self.span[(c.name, att.network)] = (start, start + len(lines))
                sizes[att.network] = start + len(lines)
                blocks.setdefault(att.network, []).append(lines)
        self.blocks = {net: "".join(lines) for net, lines in blocks.items()}

    def content(self, c) -> str:
        own = [self.own[(c.name, att.network)] for att in c.attachments]
        parts = [self.HEADER] + own
        for att in c.attachments:
            block = self.blocks.get(att.network, "")
            start, end = self.span[(c.name, att.network)]
            parts.append(block[:start])  # the network's block without this container's lines
            parts.append(block[end:])
        return "".join(parts)
