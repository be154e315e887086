"""Desired-state model: what the manifests ask for, with defaults applied.

Pure data: frozen dataclasses and enums, no kernel access, no pyroute2.
The manifest layer builds a :class:`DesiredState`; IPAM (``reconciler.ipam``)
fills in automatic subnets and addresses; ``reconciler.compile`` turns the
result into kernel objects (``reconciler.objects``) that the planner diffs
against what ``observe`` read from the kernel.
"""
from __future__ import annotations

import enum
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# IFLA_IPVLAN_MODE and IFLA_IPVLAN_FLAGS values (include/uapi/linux/if_link.h)
IPVLAN_MODE = {"l2": 0, "l3": 1, "l3s": 2}
IPVLAN_FLAG = {"bridge": 0, "private": 1, "vepa": 2}
_MODE_NAME = {v: k for k, v in IPVLAN_MODE.items()}
_FLAG_NAME = {v: k for k, v in IPVLAN_FLAG.items()}


class Mode(enum.Enum):
    """ipvlan mode; ``kernel`` is the IFLA_IPVLAN_MODE value."""

    L2 = "l2"
    L3 = "l3"
    L3S = "l3s"

    @property
    def kernel(self) -> int:
        return IPVLAN_MODE[self.value]

    @classmethod
    def from_kernel(cls, value: int) -> "Mode":
        return cls(_MODE_NAME[value])


class Flag(enum.Enum):
    """ipvlan flag; ``kernel`` is the IFLA_IPVLAN_FLAGS value."""

    BRIDGE = "bridge"
    PRIVATE = "private"
    VEPA = "vepa"

    @property
    def kernel(self) -> int:
        return IPVLAN_FLAG[self.value]

    @classmethod
    def from_kernel(cls, value: int) -> "Flag":
        return cls(_FLAG_NAME[value & 3])


class Driver(enum.Enum):
    """The link type of a network's endpoints (SPEC 2.3)."""

    IPVLAN = "ipvlan"
    MACVLAN = "macvlan"


class MacvlanMode(enum.Enum):
    """macvlan mode; ``kernel`` is the IFLA_MACVLAN_MODE value (include/uapi/linux/if_link.h)."""

    PRIVATE = "private"
    VEPA = "vepa"
    BRIDGE = "bridge"
    PASSTHRU = "passthru"

    @property
    def kernel(self) -> int:
        return MACVLAN_MODES[self.value]

    @classmethod
    def from_kernel(cls, value: int) -> "MacvlanMode":
        return cls({v: k for k, v in MACVLAN_MODES.items()}[value])


MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}


def endpoint_mac(container: str, network: str) -> str:
    """The stable MAC of a macvlan endpoint: 6 bytes of sha256(container NUL network) with
    the locally administered bit set and the multicast bit clear, so a re-created container
    keeps its MAC (upstream ARP caches and DHCP reservations survive)."""
    b = bytearray(hashlib.sha256(f"{container}\0{network}".encode("utf-8")).digest()[:6])
    b[0] = (b[0] | 0x02) & 0xFE
    return ":".join(f"{x:02x}" for x in b)


class ParentKind(enum.Enum):
    """How a network's parent link comes to exist."""

    EXISTING = "existing"  # a host interface we use as is (eth0, bond0, a hand-made VLAN)
    VLAN = "vlan"  # <link>.<vid>: created by us if absent, deleted when unused
    DECLARED_VLAN = "declared-vlan"  # a name under `vlans:`: created and deleted by us
    DUMMY = "dummy"  # no parent / internal: a private dummy link, created and deleted by us


@dataclass(frozen=True, order=True)
class Location:
    """A position in a manifest file; line and col are 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        # no position (a missing file, a directory): the file alone, never "file:0:0"
        return f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file


NOWHERE = Location("<none>", 0, 0)


def dummy_parent_name(network: str) -> str:
    """The dummy parent of an isolated network: ``di-`` + 12 hex of sha256(name)."""
    return "di-" + hashlib.sha256(network.encode("utf-8")).hexdigest()[:12]


def access_link_name(network: str) -> str:
    """The host's own link of a network with host access: ``ih-`` + 12 hex of sha256(name)."""
    return "ih-" + hashlib.sha256(network.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Subnet:
    cidr: Optional[IPNetwork]  # None: take one from the default pools (IPAM)
    gateway: Optional[IPAddress] = None  # L2: defaulted to the first usable address; L3: only kept free
    ip_range: Optional[IPNetwork] = None
    aux_addresses: Tuple[Tuple[str, IPAddress], ...] = ()
    auto: bool = False  # the cidr was (or will be) chosen by IPAM, not the user
    loc: Location = field(default=NOWHERE, compare=False)
    family: int = 4  # 4 or 6; the only record of the family while cidr is None (auto)

    @property
    def version(self) -> int:
        return self.cidr.version if self.cidr is not None else self.family


@dataclass(frozen=True)
class Vlan:
    """An 802.1Q link the reconciler creates and owns."""

    name: str
    link: str
    vid: int
    declared: bool = True  # under `vlans:` (True) or implied by a `<link>.<vid>` parent
    loc: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Network:
    name: str
    mode: Mode = Mode.L2
    flag: Flag = Flag.BRIDGE
    parent: str = ""  # the resolved parent link name (dummy name when isolated)
    parent_kind: ParentKind = ParentKind.DUMMY
    internal: bool = False  # isolated: no parent given or internal: true
    ipv6: bool = False
    subnets: Tuple[Subnet, ...] = ()
    loc: Location = field(default=NOWHERE, compare=False)
    # fleet manifests (SPEC 5.1): prefix length of each host's block of every range; None
    # outside a fleet (and, in cluster mode, when the cluster chooses)
    block_size: Optional[int] = None
    block_size6: Optional[int] = None
    driver: Driver = Driver.IPVLAN  # SPEC 2.3
    macvlan_mode: MacvlanMode = MacvlanMode.BRIDGE  # macvlan networks only
    # SPEC 2.3 host_access: this host's own addresses on the network (after fleet.select:
    # the local host's); ``host_access_by_host`` keeps a fleet manifest's per-host choice
    host_access: Tuple[IPAddress, ...] = ()
    host_access_by_host: Tuple[Tuple[str, IPAddress], ...] = ()
    host_access_loc: Location = field(default=NOWHERE, compare=False)

    @property
    def macvlan(self) -> bool:
        return self.driver is Driver.MACVLAN

    @property
    def l3(self) -> bool:
        return self.mode is not Mode.L2

    def subnets_of(self, version: int) -> Tuple[Subnet, ...]:
        return tuple(s for s in self.subnets if s.cidr is not None and s.cidr.version == version)


@dataclass(frozen=True)
class Attachment:
    """A container's interface on one network (eth0, eth1, ... in manifest order)."""

    network: str
    ifname: str
    ip: Optional[IPAddress] = None  # None: automatic (IPAM)
    ip6: Optional[IPAddress] = None
    aliases: Tuple[str, ...] = ()
    loc: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Container:
    name: str
    attachments: Tuple[Attachment, ...] = ()
    loc: Location = field(default=NOWHERE, compare=False)
    host: Optional[str] = None  # fleet manifests: the host it runs on (SPEC 5.1)


@dataclass(frozen=True)
class Host:
    """A host of a fleet manifest (SPEC 5): its name, block number and underlay addresses."""

    name: str
    id: Optional[int]  # block number 0-4095; None only in cluster mode (the cluster assigns it)
    address: Optional[ipaddress.IPv4Address] = None
    address6: Optional[ipaddress.IPv6Address] = None
    loc: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class BgpPeer:
    """An extra BGP peer (e.g. the ToR router): gets this host's routes, gives nothing."""

    address: IPAddress
    asn: int
    loc: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Bfd:
    interval_ms: int = 300
    multiplier: int = 3


@dataclass(frozen=True)
class Bgp:
    """Top-level `bgp:` of a fleet manifest (SPEC 5.2)."""

    asn: int
    route_reflectors: Tuple[str, ...] = ()  # host names; empty: full iBGP mesh
    table: int = 200  # kernel table the announced host routes live in
    peers: Tuple[BgpPeer, ...] = ()
    bfd: Optional[Bfd] = None
    loc: Location = field(default=NOWHERE, compare=False)


@dataclass(frozen=True)
class Warning_:
    loc: Location
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: warning: {self.message}"


@dataclass(frozen=True)
class DesiredState:
    networks: Mapping[str, Network] = field(default_factory=dict)
    vlans: Mapping[str, Vlan] = field(default_factory=dict)  # declared and implied VLANs
    containers: Mapping[str, Container] = field(default_factory=dict)
    warnings: Tuple[Warning_, ...] = ()
    hosts: Mapping[str, Host] = field(default_factory=dict)  # non-empty: a fleet manifest
    bgp: Optional[Bgp] = None
    # a fleet manifest narrowed to one host's part (``reconciler.fleet.select``): that host's
    # name; None for a single-host manifest or the whole fleet
    local_host: Optional[str] = None
    # top-level `ula_prefix:` (an fdXX:XXXX:XXXX::/48): automatic IPv6 subnets come from it
    # instead of the per-host one derived from /etc/machine-id (SPEC 2.2)
    ula_prefix: Optional[ipaddress.IPv6Network] = None
    # with local_host: the other hosts' containers that have explicit addresses on this
    # host's non-internal networks, trimmed to those attachments (hosts files list them)
    remote: Mapping[str, Container] = field(default_factory=dict)

    @property
    def fleet(self) -> bool:
        return bool(self.hosts)
