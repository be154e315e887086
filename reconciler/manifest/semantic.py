"""Semantic rules of the manifest format (SPEC sections 2 and 3) and the model they build.

Input: schema-valid documents (values with positions, see ``yamlload``).
Output: a :class:`model.DesiredState` with defaults applied, and every problem
found, each at the position of the offending key or value. Nothing here needs
the kernel: rules that do (the parent's own addresses, whether a link exists)
belong to the planner.

Entries that failed the schema are not checked again here (their errors are
already reported), but their names count: a container attached to a network
whose definition has a typo is not also told the network is unknown.
"""
from __future__ import annotations

import ipaddress
import re
import _socket as socket  # its C core: inet_pton/aton/ntoa without socket.py's enums and selectors
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from ..errors import Diagnostic
from ..model import (
    Attachment,
    Container,
    DesiredState,
    Driver,
    Flag,
    IPAddress,
    IPNetwork,
    Location,
    MacvlanMode,
    Mode,
    Network,
    ParentKind,
    Subnet,
    Vlan,
    Warning_,
    dummy_parent_name,
)
from ..ipam import _usable_bounds, special_address
from .yamlload import Document, Pos, YMap, printable

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL: names have at most 15 bytes
MAX_ATTACHMENTS = 16
_VLAN_PARENT = re.compile(r"^(.*)\.([0-9]+)$")
_KIND_WORD = {"networks": "network", "vlans": "vlan", "containers": "container"}


class Entry:
    """One named entry of a section, as found in one file."""

    __slots__ = ("kind", "name", "doc", "value", "kpos", "checked")

    def __init__(self, kind: str, name: str, doc: Document, value: Any, kpos: Pos, checked: bool):
        self.kind = kind  # networks | vlans | containers
        self.name = name
        self.doc = doc
        self.value = value  # YMap, or None for an empty entry
        self.kpos = kpos
        self.checked = checked  # schema-valid: the semantic rules apply

    @property
    def loc(self) -> Location:
        return self.doc.loc(self.kpos)

    def vpos(self, key: str) -> Pos:
        v = self.value
        if isinstance(v, YMap):
            return v.vpos.get(key, self.kpos)
        return self.kpos

    def get(self, key: str, default: Any = None) -> Any:
        return self.value.get(key, default) if isinstance(self.value, dict) else default


class _Named(NamedTuple):
    """Where a host name was given: its container, position, and 'the name' / 'an alias'."""

    owner: str
    doc: Document
    pos: Pos
    kind: str


@dataclass
class _NetInfo:
    """What container checks need to know about a network."""

    net: Network
    entry: Entry
    explicit: Dict[int, List[IPNetwork]] = field(default_factory=lambda: {4: [], 6: []})
    # address -> why it cannot be a container's ("the gateway of subnet ...")
    reserved: Dict[IPAddress, str] = field(default_factory=dict)
    # address -> (container, location) that took it
    used: Dict[IPAddress, Tuple[str, Location]] = field(default_factory=dict)
    partial: bool = False  # a subnet could not be read: "outside the subnets" is not known
    special: Set[IPNetwork] = field(default_factory=set)  # subnets refused as kernel-special
    # subnet -> its gateway (every mode: L3/L3S reserve one from automatic addresses too)
    gateways: Dict[IPNetwork, IPAddress] = field(default_factory=dict)
    broken: bool = False  # some subnet had an error: its pool cannot be counted
    parent_error: bool = False  # the parent is wrong (already reported)


class _Checker:
    def __init__(self, entries: Dict[str, List[Entry]], incomplete: bool):
        self.entries = entries
        self.incomplete = incomplete  # some file could not be read: names may be missing
        self.diags: List[Diagnostic] = []
        self.warnings: List[Warning_] = []
        # host name (lower case) -> a container's entry (its name), or where it was named
        self.hostnames: Dict[str, Any] = {}
        # (network, other network) -> (its subnet, the other's) when their subnets overlap
        self.net_overlaps: Dict[Tuple[str, str], Tuple[IPNetwork, IPNetwork]] = {}
        # a fleet manifest's host names (SPEC 2.3 host_access keys), None for a single host
        self.fleet_hosts: Optional[Set[str]] = None
        # family -> network (or (network, host) in a fleet) -> how many attachments need an
        # automatic address
        self.demand: Dict[int, Dict[Any, int]] = {4: {}, 6: {}}

    def source_line(self, loc: Location) -> Optional[str]:
        for es in self.entries.values():
            for e in es:
                if e.doc.file == loc.file:
                    src = e.doc.line(loc.line)
                    return None if src is None else printable(src)
        return None

    def err(self, doc: Document, pos: Pos, message: str) -> None:
        self.diags.append(doc.diag(pos, message))

    # ---- names --------------------------------------------------------------------------

    def unique(self, kind: str) -> Dict[str, Entry]:
        """First entry of each name; a later one with the same name is an error."""
        out: Dict[str, Entry] = {}
        word = _KIND_WORD[kind]
        for e in self.entries.get(kind, ()):
            first = out.get(e.name)
            if first is None:
                out[e.name] = e
                continue
            self.err(
                e.doc,
                e.kpos,
                f"{word} {e.name} is defined twice: here and at {first.loc} "
                f"({word} names are unique across all manifest files)",
            )
        return out

    # ---- interface names -----------------------------------------------------------------

    def ifname_ok(self, doc: Document, pos: Pos, name: str, what: str) -> bool:
        n = len(name.encode("utf-8"))
        if n >= IFNAMSIZ:
            self.err(doc, pos, f"{what} {name!r} is {n} bytes long; Linux interface names have at most {IFNAMSIZ - 1}")
            return False
        return True

    # ---- vlans -------------------------------------------------------------------------

    def vlan(self, e: Entry) -> Optional[Vlan]:
        ok = self.ifname_ok(e.doc, e.kpos, e.name, "vlan name")
        link, vid = e.get("link"), e.get("id")
        if e.name == "lo":
            self.err(e.doc, e.kpos, "vlan name 'lo' is the loopback interface's name")
            ok = False
        if link == "lo":
            self.err(e.doc, e.vpos("link"), f"vlan {e.name}: link lo is the loopback interface; it cannot carry VLANs")
            ok = False
        elif link == e.name:
            self.err(e.doc, e.vpos("link"), f"vlan {e.name}: link {link} is the VLAN itself")
            ok = False
        elif not self.ifname_ok(e.doc, e.vpos("link"), link, f"vlan {e.name}: link"):
            ok = False
        m = _VLAN_PARENT.match(e.name)
        if m and m.group(1) and (m.group(1) != link or int(m.group(2)) != vid):
            self.err(
                e.doc,
                e.kpos,
                f"vlan {e.name} has link {link} and id {vid}, but its name means link {m.group(1)} "
                f"VLAN {int(m.group(2))} (like parent: {e.name} would); match them or choose another name",
            )
            ok = False
        if not ok:
            return None
        return Vlan(e.name, link, int(vid), declared=True, loc=e.loc)

    # ---- networks ----------------------------------------------------------------------

    def network(self, e: Entry, declared_vlans: Set[str]) -> Tuple[Optional[_NetInfo], Optional[Vlan]]:
        """Build one network; returns its info and the VLAN its parent implies (if any)."""
        doc, name = e.doc, e.name
        nerr = len(self.diags)
        driver = Driver(e.get("driver", "ipvlan"))
        mode = Mode(e.get("ipvlan_mode", "l2"))
        flag = Flag(e.get("ipvlan_flag", "bridge"))
        mvmode = MacvlanMode(e.get("macvlan_mode", "bridge"))
        if driver is Driver.MACVLAN:
            for key in ("ipvlan_mode", "ipvlan_flag"):
                if e.get(key) is not None:
                    self.err(doc, e.vpos(key), f"network {name}: {key} is an ipvlan setting; this network has "
                             "driver: macvlan (use macvlan_mode: bridge | private | vepa | passthru)")
            mode, flag = Mode.L2, Flag.BRIDGE
        elif e.get("macvlan_mode") is not None:
            self.err(doc, e.vpos("macvlan_mode"), f"network {name}: macvlan_mode needs driver: macvlan "
                     "(this network is ipvlan: use ipvlan_mode and ipvlan_flag)")
        internal_given = bool(e.get("internal", False))
        ipv6 = bool(e.get("ipv6", False))
        parent_given = e.get("parent")
        implied: Optional[Vlan] = None
        kind = ParentKind.DUMMY
        if parent_given is not None:
            ppos = e.vpos("parent")
            if internal_given:
                self.err(
                    doc,
                    ppos,
                    f"network {name}: internal: true and a parent exclude each other (an internal "
                    "network is isolated on a private dummy link); remove one of them",
                )
            elif parent_given == "lo":
                self.err(doc, ppos, f"network {name}: parent lo (the loopback interface) cannot carry ipvlan")
            elif self.ifname_ok(doc, ppos, parent_given, f"network {name}: parent"):
                if parent_given in declared_vlans:
                    kind = ParentKind.DECLARED_VLAN
                else:
                    m = _VLAN_PARENT.match(parent_given)
                    if m:
                        link, vid = m.group(1), int(m.group(2))
                        if not link or link in (".", ".."):
                            self.err(doc, ppos, f"network {name}: parent {parent_given!r} needs a link name before the dot (<link>.<vlan id>)")
                        elif link == "lo":
                            self.err(doc, ppos, f"network {name}: parent {parent_given}: lo (the loopback interface) cannot carry VLANs")
                        elif not 1 <= vid <= 4094:
                            self.err(
                                doc,
                                ppos,
                                f"network {name}: parent {parent_given}: VLAN id {vid} is out of range 1-4094",
                            )
                        else:
                            kind = ParentKind.VLAN
                            implied = Vlan(parent_given, link, vid, declared=False, loc=doc.loc(ppos))
                    else:
                        kind = ParentKind.EXISTING
        internal = internal_given or parent_given is None
        parent = parent_given if parent_given is not None and not internal_given else dummy_parent_name(name)

        info = _NetInfo(net=Network(name), entry=e)  # net filled in below
        info.parent_error = len(self.diags) != nerr
        subnets: List[Subnet] = []
        raw = e.get("subnets") or []
        spos_list = getattr(raw, "ipos", None) or [e.vpos("subnets")] * len(raw)
        seen_nets: List[Tuple[IPNetwork, Pos]] = []
        for item, spos in zip(raw, spos_list):
            s = self.subnet(e, mode, ipv6, item, spos, info, seen_nets)
            if s is not None:
                subnets.append(s)
            else:
                info.broken = True
        families = {s.cidr.version for s in subnets if s.cidr is not None}
        if 4 not in families:
            # none given, or only IPv6 ones: the default pools provide IPv4 (as the seed does)
            subnets.append(Subnet(cidr=None, auto=True, family=4, loc=e.loc))
        if ipv6 and 6 not in families:
            subnets.append(Subnet(cidr=None, auto=True, family=6, loc=e.loc))
        info.net = Network(
            name=name,
            mode=mode,
            flag=flag,
            parent=parent,
            parent_kind=kind,
            internal=internal,
            ipv6=ipv6,
            subnets=tuple(subnets),
            loc=e.loc,
            driver=driver,
            macvlan_mode=mvmode,
        )
        if e.get("host_access") is not None:
            info.net = self.host_access(e, info)
        return info, implied

    def host_access(self, e: Entry, info: _NetInfo) -> Network:
        """SPEC 2.3 ``host_access``: where it cannot work, refused; each address inside the
        network's subnets, not a gateway or an aux address; then reserved (like an aux
        address) so no container takes it, automatically or explicitly."""
        from dataclasses import replace

        doc, name, net = e.doc, e.name, info.net
        raw = e.get("host_access")
        hpos = e.vpos("host_access")
        ctx = f"network {name}: host_access"
        why = None
        if net.internal:
            why = "an internal network has no parent to share with the host"
        elif net.macvlan and net.macvlan_mode is not MacvlanMode.BRIDGE:
            why = (f"macvlan {net.macvlan_mode.value} mode: " + (
                "passthru gives the parent to its one container" if net.macvlan_mode is MacvlanMode.PASSTHRU
                else "the host's link could not reach the containers (only bridge mode lets macvlan links talk)"))
        elif not net.macvlan and net.flag is not Flag.BRIDGE:
            why = f"ipvlan flag {net.flag.value}: the host's link could not reach the containers (only flag bridge lets them talk)"
        if why is not None:
            self.err(doc, hpos, f"{ctx} cannot work here: {why}")
            return net
        vpos = raw.vpos if isinstance(raw, YMap) else {}
        kpos = raw.kpos if isinstance(raw, YMap) else {}
        fleet = self.fleet_hosts is not None
        single: List[IPAddress] = []
        by_host: List[Tuple[str, IPAddress]] = []
        for key, text in raw.items():
            pos = vpos.get(key, hpos)
            if fleet:
                if key not in self.fleet_hosts:
                    known = ", ".join(sorted(self.fleet_hosts)) or "none"
                    self.err(doc, kpos.get(key, hpos), f"{ctx}: {key!r} is not a host under hosts: "
                             f"(a fleet manifest gives one address per host: {known})")
                    continue
            elif key not in ("ip", "ip6"):
                self.err(doc, kpos.get(key, hpos), f"{ctx}: unknown key {key!r}; a single-host manifest "
                         "gives {ip: ADDRESS} and/or {ip6: ADDRESS} (host names as keys need hosts:)")
                continue
            what = f"{ctx} {key}"
            a = self.parse_address(doc, pos, text, what)
            if a is None:
                continue
            if not fleet and (a.version == 6) != (key == "ip6"):
                other = "ip6" if a.version == 6 else "ip"
                self.err(doc, pos, f"{what}: {a} is IPv{a.version}; use {other} for IPv{a.version} addresses")
                continue
            subs = info.explicit[a.version]
            inside = next((c for c in subs if a in c), None)
            if inside is None:
                if info.partial:
                    continue
                where = ", ".join(str(c) for c in subs) or "none declared"
                self.err(doc, pos, f"{what}: {a} is outside the IPv{a.version} subnets of network {name} ({where}); "
                         "host access needs an address of the network")
                continue
            if not self.in_subnet(doc, pos, a, inside, what):
                continue
            taken = info.reserved.get(a)
            if taken is not None:
                self.err(doc, pos, f"{what}: {a} is already {taken}")
                continue
            info.reserved[a] = f"the host access address of network {name} ({doc.loc(pos)})"
            if fleet:
                by_host.append((key, a))
            else:
                single.append(a)
        return replace(net, host_access=tuple(single), host_access_by_host=tuple(by_host), host_access_loc=doc.loc(hpos))

    def subnet(
        self,
        e: Entry,
        mode: Mode,
        ipv6: bool,
        item: Any,
        spos: Pos,
        info: _NetInfo,
        seen_nets: List[Tuple[IPNetwork, Pos]],
    ) -> Optional[Subnet]:
        doc, name = e.doc, e.name
        nerr = len(self.diags)

        def vp(key: str) -> Pos:
            return item.vpos.get(key, spos) if isinstance(item, YMap) else spos

        ctx = f"network {name}"
        cidr = self.parse_network(doc, vp("subnet"), item.get("subnet"), f"{ctx}: subnet")
        if cidr is None:
            info.partial = True
            return None
        if cidr.version == 6 and not ipv6:
            self.err(doc, vp("subnet"), f"{ctx}: IPv6 subnet {cidr} needs `ipv6: true` on the network")
        special = _kernel_special(cidr)
        if special:
            self.err(doc, vp("subnet"), f"{ctx}: subnet {cidr} {special}")
            info.special.add(cidr)
        for other, opos in seen_nets:
            if other.version == cidr.version and other.overlaps(cidr):
                self.err(
                    doc,
                    vp("subnet"),
                    f"{ctx}: subnet {cidr} overlaps subnet {other} (line {opos.line + 1}) of the same network",
                )
                break
        seen_nets.append((cidr, vp("subnet")))

        gateway: Optional[IPAddress] = None
        gw: Optional[IPAddress] = None
        if "gateway" in item:
            gpos = vp("gateway")
            gw = self.parse_address(doc, gpos, item["gateway"], f"{ctx}: gateway")
            if gw is not None:
                if mode is not Mode.L2:
                    self.warnings.append(
                        Warning_(
                            doc.loc(gpos),
                            f"{ctx} is {mode.value}: gateway {gw} is ignored for routes (containers get "
                            f"'default dev <interface>', as in ipvlan {mode.value} mode); it is only "
                            "kept free of container addresses",
                        )
                    )
                    if gw in cidr:  # not routed, but reserved (Docker's IPAM, ipam.py)
                        gateway = gw
                elif gw.version == 6 == cidr.version and gw in _LINK_LOCAL6 and gw != _LINK_LOCAL6.network_address:
                    # a router's link-local address, outside every subnet: the route is
                    # `default via fe80::1 dev ethN`, as routers announce themselves
                    gateway = gw
                elif self.in_subnet(doc, gpos, gw, cidr, f"{ctx}: gateway"):
                    gateway = gw
        elif mode is Mode.L2:
            if cidr.num_addresses < 2:
                self.err(
                    doc,
                    vp("subnet"),
                    f"{ctx}: subnet {cidr} has no room for the default gateway (the first usable "
                    "address); give a gateway or a larger subnet",
                )
            else:
                gateway = cidr[1]
        if gateway is not None:
            how = "gateway" if "gateway" in item else "default gateway (the first usable address)"
            info.reserved[gateway] = f"the {how} of subnet {cidr}"
            info.gateways[cidr] = gateway
        elif mode is not Mode.L2:
            # L3/L3S reserve their gateway (given, else the first usable address) from automatic
            # addresses too, as Docker does; only the pool count needs it here
            gw = gw if gw is not None and gw.version == cidr.version and gw in cidr else None
            if gw is None:
                lo, hi = _usable_bounds(cidr)
                gw = ipaddress.ip_address(lo) if cidr.version == 4 else ipaddress.IPv6Address(lo)
            info.gateways[cidr] = gw

        ip_range: Optional[IPNetwork] = None
        if "ip_range" in item:
            rpos = vp("ip_range")
            r = self.parse_network(doc, rpos, item["ip_range"], f"{ctx}: ip_range")
            if r is not None:
                if r.version != cidr.version:
                    self.err(doc, rpos, f"{ctx}: ip_range {r} is IPv{r.version} but subnet {cidr} is IPv{cidr.version}")
                elif not r.subnet_of(cidr):  # type: ignore[arg-type]
                    self.err(doc, rpos, f"{ctx}: ip_range {r} is not inside subnet {cidr}")
                elif _kernel_special(r):
                    self.err(doc, rpos, f"{ctx}: ip_range {r} {_kernel_special(r)}")
                else:
                    ip_range = r

        aux: List[Tuple[str, IPAddress]] = []
        raw_aux = item.get("aux_addresses") or {}
        for aname, atext in raw_aux.items():
            apos = raw_aux.vpos.get(aname, spos) if isinstance(raw_aux, YMap) else spos
            what = f"{ctx}: aux address {aname}"
            a = self.parse_address(doc, apos, atext, what)
            if a is None or not self.in_subnet(doc, apos, a, cidr, what):
                continue
            special = _kernel_special(a)
            if special:
                self.err(doc, apos, f"{what}: {a} {special}")
                continue
            why = info.reserved.get(a)
            if why is not None:
                self.err(doc, apos, f"{what}: {a} is already {why}")
                continue
            info.reserved[a] = f"reserved as aux address {aname!r}"
            aux.append((aname, a))

        info.explicit[cidr.version].append(cidr)
        if len(self.diags) != nerr:
            return None
        return Subnet(
            cidr=cidr,
            gateway=gateway,
            ip_range=ip_range,
            aux_addresses=tuple(aux),
            auto=False,
            loc=doc.loc(spos),
            family=cidr.version,
        )

    # ---- addresses ---------------------------------------------------------------------

    def parse_network(self, doc: Document, pos: Pos, text: str, what: str) -> Optional[IPNetwork]:
        if "/" not in text:
            try:
                a = ipaddress.ip_address(text)
                self.err(
                    doc,
                    pos,
                    f"{what} {text} has no prefix length; write it in CIDR notation, "
                    f"e.g. {text}/{24 if a.version == 4 else 64}",
                )
            except ValueError:
                self.err(doc, pos, f"{what} {text!r} is not an IPv4 or IPv6 network in CIDR notation (like 192.168.1.0/24)")
            return None
        if "%" in text:
            self.err(doc, pos, f"{what} {text!r}: a zone index (%...) is not allowed")
            return None
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.err(doc, pos, f"{what} {text!r} is not an IPv4 or IPv6 network in CIDR notation (like 192.168.1.0/24)")
            return None
        if ipaddress.ip_interface(text).ip != loose.network_address:
            self.err(doc, pos, f"{what} {text} has host bits set; did you mean {loose}?")
        return loose  # after a host-bits error, keep checking with the network it means

    def parse_address(self, doc: Document, pos: Pos, text: str, what: str) -> Optional[IPAddress]:
        if "%" in text:
            self.err(doc, pos, f"{what} {text!r}: a zone index (%...) is not allowed")
            return None
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            hint = " (an address, without /prefix)" if "/" in text else ""
            self.err(doc, pos, f"{what} {text!r} is not an IPv4 or IPv6 address{hint}")
            return None

    def in_subnet(self, doc: Document, pos: Pos, addr: IPAddress, net: IPNetwork, what: str) -> bool:
        if addr.version != net.version:
            self.err(doc, pos, f"{what} {addr} is IPv{addr.version} but subnet {net} is IPv{net.version}")
            return False
        if addr not in net:
            hint = " (only an IPv6 gateway may be link-local)" if what.endswith("gateway") and addr.is_link_local else ""
            self.err(doc, pos, f"{what} {addr} is outside subnet {net}{hint}")
            return False
        special = _special(addr, net)
        if special:
            self.err(doc, pos, f"{what} {addr} is the {special} of subnet {net}")
            return False
        return True

    # ---- containers --------------------------------------------------------------------

    def container(self, e: Entry, nets: Dict[str, Entry], infos: Dict[str, _NetInfo]) -> Optional[Container]:
        # hot: runs once per container; messages are only formatted on errors
        doc, name = e.doc, e.name
        nerr = len(self.diags)
        attachments: List[Attachment] = []
        raw = e.get("networks") or {}
        kposd = raw.kpos if isinstance(raw, YMap) else {}
        host = e.get("host")  # fleet manifests: pools are per host
        if host is not None and not isinstance(host, str):
            host = str(host)
        for i, (nname, att) in enumerate(raw.items()):
            kpos = kposd.get(nname, e.kpos)
            info = infos.get(nname)
            if info is None and nname not in nets:
                if not self.incomplete:
                    import difflib  # only for an unknown name: not on a valid manifest's path

                    close = difflib.get_close_matches(nname, list(nets), n=1, cutoff=0.6)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    self.err(doc, kpos, f"container {name}: unknown network {nname!r}{hint}")
                continue
            ip = ip6 = None
            aliases: Tuple[str, ...] = ()
            t4 = t6 = None
            if att:
                vpos = att.vpos if isinstance(att, YMap) else {}
                if info is not None:
                    t4 = att.get("ip")
                    if t4 is not None:
                        ip = self.attach_address(e, nname, info, t4, "ip", 4, vpos.get("ip", kpos))
                    t6 = att.get("ip6")
                    if t6 is not None:
                        ip6 = self.attach_address(e, nname, info, t6, "ip6", 6, vpos.get("ip6", kpos))
                al = att.get("aliases")
                if al:
                    aliases = self.aliases(e, nname, al)
            if info is not None and not info.broken:
                key = nname if host is None else (nname, host)
                if t4 is None:
                    d4 = self.demand[4]
                    d4[key] = d4.get(key, 0) + 1
                if t6 is None and info.net.ipv6:
                    d6 = self.demand[6]
                    d6[key] = d6.get(key, 0) + 1
            attachments.append(Attachment(nname, _ifname(i), ip, ip6, aliases, doc.loc(kpos)))
        if len(attachments) > MAX_ATTACHMENTS:  # the schema says so too; belt and braces
            self.err(doc, e.kpos, f"container {name}: at most {MAX_ATTACHMENTS} networks")
        if self.net_overlaps and len(attachments) > 1:
            self.overlapping_attachments(e, attachments, kposd)
        if len(self.diags) != nerr:
            return None
        return Container(name, tuple(attachments), e.loc)

    def aliases(self, e: Entry, nname: str, al: Sequence[str]) -> Tuple[str, ...]:
        """The aliases of one attachment, each a host name unique across the directory
        regardless of case; an alias that only repeats a name is dropped with a warning."""
        doc, name = e.doc, e.name
        ipos = getattr(al, "ipos", None) or [e.kpos] * len(al)
        keep: List[str] = []
        seen: Dict[str, str] = {name.lower(): name}
        for alias, apos in zip(al, ipos):
            low = alias.lower()
            dup = seen.get(low)
            if dup is not None:
                what = "the container's own name" if dup is name else f"alias {dup!r} of this network"
                self.warnings.append(
                    Warning_(
                        doc.loc(apos),
                        f"container {name} network {nname}: alias {alias!r} repeats {what} "
                        "(host names are compared regardless of case); it is left out",
                    )
                )
                continue
            seen[low] = alias
            if self.host_name(doc, apos, alias, name, f"container {name} network {nname}: alias", "an alias"):
                keep.append(alias)
        return tuple(keep)

    def host_name(self, doc: Document, pos: Pos, hname: str, owner: str, what: str, kind: str) -> bool:
        """Register a container name or alias as a host name of ``owner``; False (and an
        error) when it cannot be one."""
        low = hname.lower()
        if low in _LOCALHOST:
            self.err(
                doc,
                pos,
                f"{what} {hname!r} is a name of the loopback address in every hosts file; choose another",
            )
            return False
        literal = _address_literal(hname)
        if literal is not None:
            self.err(
                doc,
                pos,
                f"{what} {hname!r} is not a host name: resolvers read it as the address {literal}",
            )
            return False
        first = self.hostnames.get(low)
        if first is None:
            self.hostnames[low] = _Named(owner, doc, pos, kind)
            return True
        if isinstance(first, Entry):  # a container's name, registered in bulk
            first = _Named(first.name, first.doc, first.kpos, "the name")
        if first.owner == owner:
            return True  # its own alias on another of its networks
        self.err(
            doc,
            pos,
            f"{what} {hname!r} is already {first.kind} of container {first.owner} ({first.doc.loc(first.pos)}); "
            "container names and aliases are host names, unique across all manifest files "
            "regardless of case",
        )
        return False

    def overlapping_attachments(self, e: Entry, attachments: List[Attachment], kposd: Dict[str, Pos]) -> None:
        """A container cannot be on two networks whose subnets overlap: it would hold the same
        range twice (the same automatic address on both, two equal connected routes)."""
        overlaps = self.net_overlaps
        for j in range(1, len(attachments)):
            b = attachments[j]
            for i in range(j):
                a = attachments[i]
                hit = overlaps.get((b.network, a.network))
                if hit is None:
                    continue
                self.err(
                    e.doc,
                    kposd.get(b.network, e.kpos),
                    f"container {e.name} network {b.network}: subnet {hit[0]} overlaps subnet {hit[1]} "
                    f"of network {a.network}, which the container is also attached to ({a.loc}); a "
                    "container cannot be on two networks whose subnets overlap",
                )
                break

    def attach_address(
        self, e: Entry, nname: str, info: _NetInfo, text: str, key: str, fam: int, pos: Pos
    ) -> Optional[IPAddress]:
        doc = e.doc
        net = info.net
        addr = _fast_address(text)
        if addr is None:
            addr = self.parse_address(doc, pos, text, f"container {e.name} network {nname}: {key}")
            if addr is None:
                return None
        ctx = None  # formatted on error only
        if addr.version != fam:
            other = "ip6" if fam == 4 else "ip"
            ctx = f"container {e.name} network {nname}"
            self.err(doc, pos, f"{ctx}: {key} {addr} is IPv{addr.version}; use {other} for IPv{addr.version} addresses")
            return None
        if fam == 6 and not net.ipv6:
            ctx = f"container {e.name} network {nname}"
            self.err(doc, pos, f"{ctx}: ip6 {addr} needs `ipv6: true` on network {net.name} ({net.loc})")
            return None
        subs = info.explicit[fam]
        inside = None
        for sub in subs:
            if addr in sub:
                inside = sub
                break
        if inside is None:
            if info.partial:
                return None  # its subnet may be the one that could not be read
            ctx = f"container {e.name} network {nname}"
            if not subs:
                self.err(
                    doc,
                    pos,
                    f"{ctx}: {key} {addr} needs an explicit IPv{fam} subnet on network {net.name} "
                    f"({net.loc}); the automatic one is not known before it is chosen",
                )
            else:
                self.err(
                    doc,
                    pos,
                    f"{ctx}: {key} {addr} is outside the IPv{fam} subnets of network {net.name} "
                    f"({', '.join(str(s) for s in subs)})",
                )
            return None
        special = _special(addr, inside)
        if special:
            ctx = f"container {e.name} network {nname}"
            self.err(doc, pos, f"{ctx}: {key} {addr} is the {special} of subnet {inside}")
            return None
        if inside in info.special:  # only addresses of a refused subnet can be special
            special = _kernel_special(addr)
            if special:
                self.err(doc, pos, f"container {e.name} network {nname}: {key} {addr} {special}")
                return None
        why = info.reserved.get(addr)
        if why is not None:
            ctx = f"container {e.name} network {nname}"
            self.err(doc, pos, f"{ctx}: {key} {addr} is {why}")
            return None
        prev = info.used.get(addr)
        if prev is not None:
            ctx = f"container {e.name} network {nname}"
            self.err(doc, pos, f"{ctx}: {key} {addr} is already used by container {prev[0]} ({prev[1]})")
            return None
        info.used[addr] = (e.name, doc.loc(pos))
        return addr

    # ---- directory-wide rules -----------------------------------------------------------

    def vlan_cycles(self, vlans: Dict[str, Vlan], entries: Dict[str, Entry]) -> None:
        """VLAN links that lead back to themselves (va on vb, vb on va) can never be created."""
        state: Dict[str, int] = {}  # 1: on the chain being followed, 2: done
        for start in vlans:
            chain: List[str] = []
            cur = start
            while cur in vlans and cur not in state:
                state[cur] = 1
                chain.append(cur)
                cur = vlans[cur].link
            if state.get(cur) == 1:
                cycle = chain[chain.index(cur):]
                v = vlans[cycle[0]]
                e = entries.get(v.name)
                loc, src = v.loc, None
                if v.declared and e is not None:
                    loc, src = e.doc.loc(e.vpos("link")), e.doc.line(e.vpos("link").line + 1)
                others = ", ".join(f"{n} at {vlans[n].loc}" for n in cycle[1:])
                what = f"vlan {v.name}" if v.declared else f"parent {v.name}"
                self.diags.append(
                    Diagnostic(
                        loc,
                        f"{what}: link cycle {' -> '.join(cycle + [cycle[0]])} (vlan {others}); a "
                        "VLAN's chain of links must end on an interface that is not a VLAN declared here",
                        printable(src) if src is not None else self.source_line(loc),
                    )
                )
            for n in chain:
                state[n] = 2

    def find_net_overlaps(self, infos: Dict[str, _NetInfo]) -> None:
        """Which networks' subnets overlap: CIDR blocks nest or are disjoint, so one sweep in
        address order with a stack of the blocks still open finds every overlapping pair."""
        for fam in (4, 6):
            items = sorted(
                (int(s.cidr.network_address), -int(s.cidr.broadcast_address), name, s.cidr)
                for name, info in infos.items()
                for s in info.net.subnets
                if s.cidr is not None and s.cidr.version == fam
            )
            stack: List[Tuple[int, str, IPNetwork]] = []  # (last address, network, subnet)
            for start, neg_end, name, cidr in items:
                while stack and stack[-1][0] < start:
                    stack.pop()
                for _, other, ocidr in stack:
                    if other != name:
                        self.net_overlaps.setdefault((name, other), (cidr, ocidr))
                        self.net_overlaps.setdefault((other, name), (ocidr, cidr))
                stack.append((-neg_end, name, cidr))

    def passthru(self, infos: Dict[str, _NetInfo], containers: Dict[str, Container]) -> None:
        """A macvlan passthru network takes its parent whole: one container per host."""
        if not any(i.net.macvlan and i.net.macvlan_mode is MacvlanMode.PASSTHRU for i in infos.values()):
            return  # (no need to look at every attachment: 8 ms of a 10,000-container load)
        first: Dict[Tuple[str, Optional[str]], Attachment] = {}
        for c in containers.values():
            for att in c.attachments:
                info = infos.get(att.network)
                if info is None or not info.net.macvlan or info.net.macvlan_mode is not MacvlanMode.PASSTHRU:
                    continue
                prev = first.setdefault((att.network, c.host), att)
                if prev is att:
                    continue
                owner = next(o.name for o in containers.values() if prev in o.attachments)
                on = f" on host {c.host}" if c.host else ""
                self.diags.append(Diagnostic(
                    att.loc,
                    f"container {c.name} network {att.network}: a macvlan passthru network has at most one "
                    f"container{on}, and container {owner} ({prev.loc}) already has it (passthru gives the "
                    "container the parent itself)",
                    self.source_line(att.loc),
                ))

    def exhaustion(self, state: DesiredState) -> None:
        """Automatic addresses a network cannot hand out, counted as IPAM hands them out (the
        usable part of each ip_range, else subnet, minus gateways, aux addresses and explicit
        addresses; on a fleet host, only its block of each range, minus the hosts' underlay
        addresses); the plan still checks what needs the host (addresses on the parent).
        ``state``: the desired state after the fleet rules (hosts, block sizes)."""
        infos, conts = getattr(self, "pools", ({}, {}))
        for fam, nets in self.demand.items():
            for key, wants in nets.items():
                nname, host = key if isinstance(key, tuple) else (key, None)
                self.exhausted(infos[nname], fam, host, wants, conts, state)

    def exhausted(
        self, info: _NetInfo, fam: int, host: Any, wants: int, conts: Dict[str, Entry], state: DesiredState
    ) -> None:
        from .. import fleet

        nname = info.net.name
        subs = [s for s in info.net.subnets if s.cidr is not None and s.cidr.version == fam]
        if not subs or any(s.cidr is None and s.family == fam for s in info.net.subnets):
            return  # an automatic subnet: its size is not known before it is chosen
        h = state.hosts.get(host) if host is not None else None
        net = state.networks.get(nname, info.net)
        blocked = h is not None and h.id is not None and fleet.block_size_of(net, fam) is not None
        if host is not None and not blocked and state.hosts:
            return  # a fleet host without a block here (cluster mode, or reported already)
        spans: List[Tuple[int, int]] = []
        blocks: List[IPNetwork] = []
        for s in subs:
            lo, hi = _usable_bounds(s.ip_range or s.cidr)
            slo, shi = _usable_bounds(s.cidr)
            lo, hi = max(lo, slo), min(hi, shi)
            if blocked:
                b = fleet.host_block(net, s, h.id)
                if b is None:
                    continue  # too few blocks: the fleet rules said so
                blocks.append(b)
                lo, hi = max(lo, int(b.network_address)), min(hi, int(b.broadcast_address))
            spans.append((lo, hi))
        if blocked and not blocks:
            return
        total = sum(max(0, hi - lo + 1) for lo, hi in spans)
        underlay = [a for x in state.hosts.values() for a in (x.address, x.address6) if a is not None]
        access = [a for a in set(info.net.host_access) | {a for _, a in info.net.host_access_by_host} if a.version == fam]
        reserved_at_most = (
            len(info.gateways) + sum(len(s.aux_addresses) for s in subs) + len(info.used) + len(underlay)
            + len(access)
        )
        if wants + reserved_at_most <= total:
            return
        taken: Set[int] = set()
        for s in subs:
            for a in [info.gateways.get(s.cidr)] + [a for _, a in s.aux_addresses]:
                if a is not None and a.version == fam:
                    taken.add(int(a))
        taken.update(int(a) for a in info.used if a.version == fam)
        taken.update(int(a) for a in underlay if a.version == fam)
        taken.update(int(a) for a in access)
        reserved = sum(1 for v in taken if any(lo <= v <= hi for lo, hi in spans))
        free = total - reserved
        if wants <= free:
            return
        e, pos = self.nth_automatic(conts, nname, fam, host, max(free, 0))
        doc, cname = e.doc, e.name
        where = " and ".join(
            f"ip_range {s.ip_range} of subnet {s.cidr}" if s.ip_range is not None else f"subnet {s.cidr}"
            for s in subs
        )
        if blocked:
            size = fleet.block_size_of(net, fam)
            where = (f"its block{'s' if len(blocks) > 1 else ''} {', '.join(map(str, blocks))} "
                     f"(block size /{size}, host id {h.id}) of {where}")
        more = wants - free - 1
        hosts_too = ", hosts' addresses" if blocked else ""
        self.err(
            doc,
            pos,
            f"container {cname} network {nname}: no automatic IPv{fam} address left"
            f"{f' on host {host}' if host else ''}: {where} "
            f"{'hold' if len(subs) > 1 else 'holds'} {total} usable address{'es' if total != 1 else ''}, "
            f"{reserved} reserved (gateway, aux addresses, containers' explicit addresses{hosts_too}), and "
            + (f"the other {free} go to containers before this one" if free > 0 else "none is left")
            + (f"; {more} more after it do{'es' if more == 1 else ''} not fit either" if more else ""),
        )

    def nth_automatic(self, conts: Dict[str, Entry], nname: str, fam: int, host: Any, n: int) -> Tuple[Entry, Pos]:
        """The container (and its attachment's position) that asks network ``nname`` for the
        n-th (from 0) automatic IPv``fam`` address, in manifest order: found again only when
        a pool is short, so the common path only counts."""
        key = "ip" if fam == 4 else "ip6"
        last: Optional[Tuple[Entry, Pos]] = None
        for e in conts.values():
            if not e.checked:
                continue
            h = e.get("host")
            if (None if h is None else str(h)) != host:
                continue
            nets = e.get("networks")
            if not isinstance(nets, dict) or nname not in nets:
                continue
            att = nets[nname]
            if att and att.get(key) is not None:
                continue
            last = (e, nets.kpos.get(nname, e.kpos) if isinstance(nets, YMap) else e.kpos)
            if n == 0:
                return last
            n -= 1
        assert last is not None  # the count came from these very entries
        return last

    # ---- everything --------------------------------------------------------------------

    def run(self) -> DesiredState:
        vlan_entries = self.unique("vlans")
        net_entries = self.unique("networks")
        cont_entries = self.unique("containers")

        declared: Dict[str, Vlan] = {}
        for name, e in vlan_entries.items():
            if e.checked:
                v = self.vlan(e)
                if v is not None:
                    declared[name] = v
        declared_names = {n for n, e in vlan_entries.items()}

        infos: Dict[str, _NetInfo] = {}
        implied: Dict[str, Tuple[Vlan, str]] = {}  # vlan name -> (vlan, network)
        parents: Dict[str, Tuple[str, Location]] = {}  # parent -> (network, where)
        for name, e in net_entries.items():
            if not e.checked:
                continue
            info, vlan = self.network(e, declared_names)
            if info is None:
                continue
            infos[name] = info  # containers are checked against it even if it has errors
            net = info.net
            if info.parent_error:
                continue
            wpos = e.vpos("parent") if "parent" in (e.value or {}) else e.kpos
            first = parents.get(net.parent)
            if first is not None and infos[first[0]].net.driver is not net.driver:
                other = infos[first[0]].net
                self.err(
                    e.doc,
                    wpos,
                    f"network {name} ({net.driver.value}): parent {net.parent} is already the parent of "
                    f"network {first[0]} ({other.driver.value}, {first[1]}); a parent carries one driver "
                    "and one mode (the kernel refuses ipvlan and macvlan links on one parent)",
                )
                continue
            if first is not None:
                what = f"parent {net.parent}" if net.parent_kind is not ParentKind.DUMMY else f"dummy parent {net.parent}"
                self.err(
                    e.doc,
                    wpos,
                    f"network {name}: {what} is already the parent of network {first[0]} ({first[1]}); "
                    "two networks cannot share a parent (the kernel has one ipvlan mode per parent)",
                )
                continue
            parents[net.parent] = (name, e.doc.loc(wpos))
            if vlan is not None and vlan.name not in implied:
                implied[vlan.name] = (vlan, name)

        # one VLAN link per (link, id): declared and implied VLANs must not collide
        by_id: Dict[Tuple[str, int], Vlan] = {}
        vlans: Dict[str, Vlan] = {}
        for v in list(declared.values()) + [v for v, _ in implied.values()]:
            first = by_id.get((v.link, v.vid))
            if first is not None:
                what = f"vlan {v.name}" if v.declared else f"parent {v.name}"
                fwhat = f"vlan {first.name}" if first.declared else f"the VLAN of parent {first.name}"
                hint = f"; use parent: {first.name}" if (first.declared and not v.declared) else ""
                self.diags.append(
                    Diagnostic(
                        v.loc,
                        f"{what}: VLAN {v.vid} on {v.link} is already {fwhat} ({first.loc}); "
                        f"the kernel allows one VLAN link per id on a link{hint}",
                        self.source_line(v.loc),
                    )
                )
                continue
            by_id[(v.link, v.vid)] = v
            vlans[v.name] = v

        self.vlan_cycles(vlans, vlan_entries)
        self.find_net_overlaps(infos)
        self.net_warnings = len(self.warnings)  # (the incremental reload: containers' own come next)
        checked = [e for e in cont_entries.values() if e.checked]
        self.hostnames = {e.name.lower(): e for e in checked}  # the common case, in bulk
        # ... unless two differ only in case, or one is localhost or starts with a digit
        # (names start with [A-Za-z0-9]: one with a digit sorts before ':')
        if len(self.hostnames) != len(checked) or not _LOCALHOST.isdisjoint(self.hostnames) or (
            self.hostnames and min(self.hostnames) < ":"
        ):
            self.hostnames = {}
            for e in checked:
                self.host_name(e.doc, e.kpos, e.name, e.name, f"container {e.name}: name", "the name")

        containers: Dict[str, Container] = {}
        for name, e in cont_entries.items():
            if not e.checked:
                continue
            c = self.container(e, net_entries, infos)
            if c is not None:
                containers[name] = c

        # pools are counted once the fleet rules have set hosts and block sizes (check())
        self.pools = (infos, cont_entries)

        return DesiredState(
            networks={n: i.net for n, i in infos.items()},
            vlans=vlans,
            containers=containers,
            warnings=tuple(self.warnings),
        )


_IFNAMES = tuple(f"eth{i}" for i in range(MAX_ATTACHMENTS))


def _ifname(i: int) -> str:
    return _IFNAMES[i] if i < MAX_ATTACHMENTS else f"eth{i}"


def _fast_address(text: str) -> Optional[IPAddress]:
    """inet_pton is ~5x faster than ipaddress' parser and as strict (no leading zeros,
    no zone index); None: let ipaddress parse it and explain what is wrong."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        return None


_LOCALHOST = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _address_literal(name: str) -> Optional[str]:
    """The address a resolver reads ``name`` as (inet_aton takes '10.1', '123', '0x7f.1'),
    or None for a host name."""
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    if not name[:1].isdigit():
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(name))
    except OSError:
        return None


_special = special_address  # 'network address' / 'broadcast address' / ...: ipam's rule


# Ranges no container interface may use: (range, what it is, why not). Checked against
# subnets (overlap), ip_range, aux and explicit addresses. Measured on Linux 6.x: the kernel
# refuses ::, ::1 (but on lo) and IPv6 multicast outright; it takes the IPv4 ones (0.0.0.0 is
# silently dropped) but treats them as martians, and link-local IPv6 belongs to the kernel.
_KERNEL_SPECIAL: Dict[int, Tuple[Tuple[IPNetwork, str, str], ...]] = {
    4: tuple(
        (ipaddress.ip_network(r), what, why)
        for r, what, why in (
            ("0.0.0.0/8", "'this network'",
             "the kernel ignores 0.0.0.0 as an interface address and drops packets from 0.0.0.0/8 as martians"),
            ("127.0.0.0/8", "loopback",
             "the kernel drops it on any interface but lo as a martian address"),
            ("169.254.0.0/16", "link-local",
             "it is for per-link autoconfiguration and is never routed"),
            ("224.0.0.0/4", "multicast",
             "not a unicast address: the kernel installs no route for it and drops packets from it as martians"),
            ("255.255.255.255/32", "the limited broadcast address",
             "no interface may use it"),
            ("240.0.0.0/4", "reserved",
             "routers and most hosts drop it"),
        )
    ),
    6: tuple(
        (ipaddress.ip_network(r), what, why)
        for r, what, why in (
            ("::1/128", "the loopback address", "the kernel refuses it on any interface but lo"),
            ("::/128", "the unspecified address", "the kernel refuses it as an interface address"),
            ("::ffff:0:0/96", "IPv4-mapped",
             "it never appears on the wire: the kernel drops IPv6 packets from such addresses"),
            ("::/96", "IPv4-compatible (deprecated by RFC 4291)",
             "the kernel treats it as a tunnel address"),
            ("fe80::/10", "link-local",
             "the kernel gives every interface its own link-local address and the reconciler "
             "does not manage addresses there"),
            ("fec0::/10", "site-local (deprecated by RFC 3879)",
             "the kernel gives it site scope, not global"),
            ("ff00::/8", "multicast",
             "the kernel does not assign it to an interface"),
        )
    ),
}
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")


def _kernel_special(x: Any) -> Optional[str]:
    """Why ``x`` (an address or a network) cannot be a container's, or None."""
    if isinstance(x, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        for r, what, why in _KERNEL_SPECIAL[x.version]:
            if x.subnet_of(r):  # type: ignore[arg-type]
                return f"is {what} ({r}): {why}"
            if r.subnet_of(x):  # type: ignore[arg-type]
                return f"includes {r} ({what}): {why}"
        return None
    for r, what, why in _KERNEL_SPECIAL[x.version]:
        if x in r:
            return f"is {what} ({r}): {why}"
    return None


def collect(docs: Sequence[Document], schema_bad: Dict[int, Set[Tuple[Any, ...]]]) -> Dict[str, List[Entry]]:
    """Every named entry of every document, in file and manifest order."""
    out: Dict[str, List[Entry]] = {k: [] for k in _KIND_WORD}
    for i, doc in enumerate(docs):
        root = doc.root
        if not doc.ok or not isinstance(root, dict):
            continue
        bad = schema_bad.get(i, set())
        whole_bad = () in bad
        for kind in _KIND_WORD:
            section = root.get(kind)
            if not isinstance(section, dict):
                continue
            for name, value in section.items():
                kpos = section.kpos.get(name, doc.root_pos) if isinstance(section, YMap) else doc.root_pos
                checked = not whole_bad and (kind, name) not in bad
                out[kind].append(Entry(kind, name, doc, value, kpos, checked))
    return out


def check(
    docs: Sequence[Document], schema_bad: Dict[int, Set[Tuple[Any, ...]]], incomplete: bool,
    keep: Optional[List[Any]] = None,
) -> Tuple[DesiredState, List[Diagnostic]]:
    """Apply every semantic rule; returns the desired state and the problems found.
    ``keep``: the checker is appended to it (its indexes seed the daemon's incremental
    reload, ``manifest.incremental``)."""
    c = _Checker(collect(docs, schema_bad), incomplete)
    if keep is not None:
        keep.append(c)
    for doc in docs:
        root = doc.root if doc.ok else None
        if isinstance(root, dict) and isinstance(root.get("hosts"), dict):
            c.fleet_hosts = (c.fleet_hosts or set()) | {str(h) for h in root["hosts"]}
    state = c.run()
    from . import fleet  # SPEC 5.1: hosts:, bgp:, host:, block sizes

    state = fleet.check(c, docs, schema_bad, state)
    c.passthru(getattr(c, "pools", ({}, {}))[0], state.containers)  # per host: after the fleet rules set host:
    c.exhaustion(state)
    return state, c.diags
