"""Kernel objects: what the desired state compiles to and what observe reads.

Both sides of the diff are a :class:`HostState`: a mapping from key to a
frozen object. Each object kind declares, in one place, how it is keyed,
what it depends on, which attribute changes the kernel can make in place
(``update_fields``) and which force a replace (``replace_fields``), and how
it is described to a human. The kernel side of each kind (observe, create,
delete, update) lives in ``reconciler.kernel.handlers`` -- the only place
that talks netlink -- so this module stays pure.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

from .model import Flag, IPAddress, IPNetwork, Mode

MARKER = "ipvlan-reconciler"  # IFLA_IFALIAS of every link we create (endpoints add " net=NAME")
RTPROT = 149  # rtm_protocol of every route we create (see deploy/rt_protos.d)
HOSTS_MARKER = "# managed by ipvlan-reconciler; edits are overwritten"

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


class Kind(enum.IntEnum):
    """Object kinds in creation order (deletion runs in reverse)."""

    VLAN = 0
    DUMMY = 1
    NETNS = 2
    ENDPOINT = 3
    SYSCTL = 4
    ADDRESS = 5
    ROUTE = 6
    HOSTS = 7
    EXPORT = 8  # host routes in the BGP table (SPEC 5.2): last to create, first to delete

    # SPEC 2.3 host access (values apart from other kinds being added: only the order matters)
    ACCESS_LINK = 10
    ACCESS_ROUTE = 11

    @property
    def label(self) -> str:
        return self.name.lower()


Key = Tuple  # (Kind, ...identity)


@dataclass(frozen=True)
class KObject:
    """Base of all kernel objects. ``owned`` is observed state, never desired."""

    kind: ClassVar[Kind]
    replace_fields: ClassVar[Tuple[str, ...]] = ()
    update_fields: ClassVar[Tuple[str, ...]] = ()

    @property
    def key(self) -> Key:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def netns(self) -> Optional[str]:
        return None

    def requires(self) -> Tuple[Key, ...]:
        """Keys of objects that must exist before this one."""
        return ()

    def attrs(self) -> Dict[str, object]:
        """Attributes that matter for diffing and display (not identity, not ownership)."""
        return {f: getattr(self, f) for f in self.replace_fields + self.update_fields}

    def describe(self) -> str:
        return " ".join(str(k) for k in self.key[1:])


def _fmt(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    return str(value)


@dataclass(frozen=True)
class VlanLink(KObject):
    kind: ClassVar[Kind] = Kind.VLAN
    replace_fields: ClassVar[Tuple[str, ...]] = ("link", "vid")
    update_fields: ClassVar[Tuple[str, ...]] = ("up", "marked")

    name: str
    link: str
    vid: int
    up: bool = True
    marked: bool = True  # carries our alias (False: ours by the state's intent record only)
    owned: bool = field(default=True, compare=False)

    @property
    def key(self) -> Key:
        return (Kind.VLAN, self.name)

    def requires(self) -> Tuple[Key, ...]:
        # a VLAN on a VLAN we also manage (QinQ-style stacking) must wait for it
        return ((Kind.VLAN, self.link),)

    def describe(self) -> str:
        return f"{self.name} (link {self.link}, id {self.vid})"


@dataclass(frozen=True)
class DummyLink(KObject):
    kind: ClassVar[Kind] = Kind.DUMMY
    update_fields: ClassVar[Tuple[str, ...]] = ("up", "marked")

    name: str
    up: bool = True
    marked: bool = True
    owned: bool = field(default=True, compare=False)

    @property
    def key(self) -> Key:
        return (Kind.DUMMY, self.name)


@dataclass(frozen=True)
class Netns(KObject):
    kind: ClassVar[Kind] = Kind.NETNS
    replace_fields: ClassVar[Tuple[str, ...]] = ("broken",)
    update_fields: ClassVar[Tuple[str, ...]] = ("lo_up", "marked")

    name: str
    lo_up: bool = True
    marked: bool = True  # our alias on its lo
    broken: bool = False  # a /run/netns entry that cannot be entered (crash mid-create)
    owned: bool = field(default=True, compare=False)

    @property
    def key(self) -> Key:
        return (Kind.NETNS, self.name)

    @property
    def netns(self) -> Optional[str]:
        return self.name


@dataclass(frozen=True)
class Endpoint(KObject):
    """An ipvlan (or macvlan, SPEC 2.3) link inside a container namespace, slave of
    ``parent`` in the host. A macvlan endpoint has mode l2 and flag bridge (unused), its
    ``macvlan_mode`` and its stable ``mac`` ("" in passthru mode: it keeps the parent's)."""

    kind: ClassVar[Kind] = Kind.ENDPOINT
    replace_fields: ClassVar[Tuple[str, ...]] = ("parent", "driver", "mode", "flag", "macvlan_mode", "mac")
    update_fields: ClassVar[Tuple[str, ...]] = ("network", "up")

    ns: str
    ifname: str
    parent: str
    mode: Mode
    flag: Flag
    network: str
    up: bool = True
    owned: bool = field(default=True, compare=False)
    driver: str = "ipvlan"  # "ipvlan" | "macvlan"
    macvlan_mode: str = ""  # macvlan: bridge | private | vepa | passthru
    mac: str = ""  # macvlan (not passthru): the stable MAC, lower-case hex with colons

    @property
    def key(self) -> Key:
        return (Kind.ENDPOINT, self.ns, self.ifname)

    @property
    def netns(self) -> Optional[str]:
        return self.ns

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.NETNS, self.ns), (Kind.VLAN, self.parent), (Kind.DUMMY, self.parent))

    def describe(self) -> str:
        return f"{self.ns}/{self.ifname}"

    @property
    def alias(self) -> str:
        return f"{MARKER} net={self.network}"


@dataclass(frozen=True)
class Sysctl(KObject):
    """net.ipv6.conf.<ifname>.disable_ipv6 inside a container namespace."""

    kind: ClassVar[Kind] = Kind.SYSCTL
    update_fields: ClassVar[Tuple[str, ...]] = ("value",)

    ns: str
    ifname: str
    name: str  # e.g. "disable_ipv6"
    value: int

    @property
    def key(self) -> Key:
        return (Kind.SYSCTL, self.ns, self.ifname, self.name)

    @property
    def netns(self) -> Optional[str]:
        return self.ns

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.ENDPOINT, self.ns, self.ifname),)

    def describe(self) -> str:
        return f"{self.ns} net.ipv6.conf.{self.ifname}.{self.name}"


@dataclass(frozen=True)
class Address(KObject):
    kind: ClassVar[Kind] = Kind.ADDRESS

    ns: str
    ifname: str
    address: IPInterface

    @property
    def key(self) -> Key:
        # kept on the object: formatting the address is most of its cost, and the daemon
        # reuses objects (observe's and compile's memos) from run to run
        k = self.__dict__.get("_key")
        if k is None:
            k = (Kind.ADDRESS, self.ns, self.ifname, str(self.address))
            object.__setattr__(self, "_key", k)
        return k

    @property
    def netns(self) -> Optional[str]:
        return self.ns

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.ENDPOINT, self.ns, self.ifname), (Kind.SYSCTL, self.ns, self.ifname, "disable_ipv6"))

    def describe(self) -> str:
        return f"{self.ns}/{self.ifname} {self.address}"


@dataclass(frozen=True)
class Route(KObject):
    """A route in a container namespace's main table, marked with our protocol."""

    kind: ClassVar[Kind] = Kind.ROUTE
    update_fields: ClassVar[Tuple[str, ...]] = ("gateway", "ifname")

    ns: str
    dst: IPNetwork
    gateway: Optional[IPAddress]
    ifname: str

    @property
    def key(self) -> Key:
        k = self.__dict__.get("_key")  # kept on the object, as Address's
        if k is None:
            k = (Kind.ROUTE, self.ns, str(self.dst))
            object.__setattr__(self, "_key", k)
        return k

    @property
    def netns(self) -> Optional[str]:
        return self.ns

    @property
    def family(self) -> int:
        return self.dst.version

    @property
    def is_default(self) -> bool:
        return self.dst.prefixlen == 0

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.ENDPOINT, self.ns, self.ifname),)

    def describe(self) -> str:
        dst = "default" if self.is_default else str(self.dst)
        via = f" via {self.gateway}" if self.gateway is not None else ""
        v6 = " (ipv6)" if self.dst.version == 6 and self.is_default else ""
        return f"{self.ns} {dst}{via} dev {self.ifname}{v6}"


@dataclass(frozen=True)
class HostsFile(KObject):
    """/etc/netns/<ns>/hosts, which `ip netns exec` shows as /etc/hosts."""

    kind: ClassVar[Kind] = Kind.HOSTS
    update_fields: ClassVar[Tuple[str, ...]] = ("content",)

    ns: str
    content: str
    owned: bool = field(default=True, compare=False)

    @property
    def key(self) -> Key:
        return (Kind.HOSTS, self.ns)

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.NETNS, self.ns),)

    def describe(self) -> str:
        return f"/etc/netns/{self.ns}/hosts"


@dataclass(frozen=True)
class ExportRoute(KObject):
    """A host route (/32, /128) to one of this host's L3 containers, in the host namespace's
    BGP table (``bgp.table``, never main), marked with our protocol: what BIRD announces
    (SPEC 5.2), e.g. ``10.40.1.5/32 dev eth0 proto 149 table 200``."""

    kind: ClassVar[Kind] = Kind.EXPORT
    update_fields: ClassVar[Tuple[str, ...]] = ("dev",)

    table: int
    dst: IPNetwork
    dev: str  # the network's parent

    @property
    def key(self) -> Key:
        return (Kind.EXPORT, self.table, str(self.dst))

    @property
    def family(self) -> int:
        return self.dst.version

    def describe(self) -> str:
        return f"{self.dst} dev {self.dev} table {self.table}"


ACCESS_MARKER = MARKER + " host-access net="  # IFLA_IFALIAS of a host access link


@dataclass(frozen=True)
class AccessLink(KObject):
    """SPEC 2.3 host access: the host's own link of a network's driver on its parent
    (``ih-`` + 12 hex), in the host namespace, holding the host's address(es) as /32 or
    /128 (``addresses``: sorted CIDR strings, changed in place)."""

    kind: ClassVar[Kind] = Kind.ACCESS_LINK
    replace_fields: ClassVar[Tuple[str, ...]] = ("parent", "driver", "mode", "flag", "macvlan_mode", "mac")
    update_fields: ClassVar[Tuple[str, ...]] = ("addresses", "up", "marked")

    name: str
    parent: str
    network: str
    driver: str = "ipvlan"
    mode: Mode = Mode.L2
    flag: Flag = Flag.BRIDGE
    macvlan_mode: str = ""
    mac: str = ""
    addresses: Tuple[str, ...] = ()
    up: bool = True
    marked: bool = True
    owned: bool = field(default=True, compare=False)

    @property
    def key(self) -> Key:
        return (Kind.ACCESS_LINK, self.name)

    @property
    def ifname(self) -> str:
        return self.name

    @property
    def alias(self) -> str:
        return ACCESS_MARKER + self.network

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.VLAN, self.parent), (Kind.DUMMY, self.parent))

    def describe(self) -> str:
        what = f"macvlan {self.macvlan_mode}" if self.driver == "macvlan" else f"ipvlan {self.mode.value} {self.flag.value}"
        return f"{self.name} ({what} on {self.parent}, network {self.network}, host access {' '.join(self.addresses) or '-'})"


@dataclass(frozen=True)
class AccessRoute(KObject):
    """SPEC 2.3 host access: a host route (/32, /128) to one of this host's containers
    through the network's access link, in the host's main table, protocol 149. (The BGP
    export's routes live in their own table and kind.)"""

    kind: ClassVar[Kind] = Kind.ACCESS_ROUTE
    update_fields: ClassVar[Tuple[str, ...]] = ("ifname",)

    dst: IPNetwork
    ifname: str

    @property
    def key(self) -> Key:
        return (Kind.ACCESS_ROUTE, str(self.dst))

    @property
    def family(self) -> int:
        return self.dst.version

    def requires(self) -> Tuple[Key, ...]:
        return ((Kind.ACCESS_LINK, self.ifname),)

    def describe(self) -> str:
        return f"host {self.dst} dev {self.ifname}"


ALL_KINDS = (
    VlanLink, DummyLink, Netns, Endpoint, Sysctl, Address, Route, HostsFile, ExportRoute, AccessLink, AccessRoute,
)
CLASS_OF_KIND = {cls.kind: cls for cls in ALL_KINDS}


def fmt(value: object) -> str:
    return _fmt(value)


@dataclass(frozen=True)
class HostLink:
    """A link in the host namespace as observed, whoever owns it (facts for planning)."""

    name: str
    index: int
    kind: str  # "vlan", "dummy", "ipvlan", "" for physical ...
    up: bool
    owned: bool
    vid: Optional[int] = None
    link: Optional[str] = None  # lower device for VLANs
    addresses: Tuple[IPInterface, ...] = ()


@dataclass(frozen=True)
class HostFacts:
    """What the planner and IPAM need to know about the host beyond our objects."""

    links: Mapping[str, HostLink] = field(default_factory=dict)
    routes: Tuple[IPNetwork, ...] = ()  # the host's routes (main table, no default)
    foreign_netns: Tuple[str, ...] = ()  # named namespaces we do not own
    foreign_links: Mapping[Tuple[str, str], str] = field(default_factory=dict)  # (ns, ifname) -> kind
    # the ULA /48 the host's IPAM uses: set from a live-state JSON (`status --format json`),
    # which records it so `plan --offline --live-state` plans with the host's prefix
    ula_prefix: Optional[str] = None


class HostState:
    """A set of kernel objects keyed by ``obj.key``, plus host facts (live side only)."""

    __slots__ = ("objects", "facts")

    def __init__(self, objects: Iterable[KObject] = (), facts: Optional[HostFacts] = None):
        self.objects: Dict[Key, KObject] = {}
        for o in objects:
            self.objects[o.key] = o
        self.facts = facts if facts is not None else HostFacts()

    def __iter__(self) -> Iterator[KObject]:
        return iter(self.objects.values())

    def __len__(self) -> int:
        return len(self.objects)

    def get(self, key: Key) -> Optional[KObject]:
        return self.objects.get(key)

    def of_kind(self, kind: Kind) -> Iterator[KObject]:
        return (o for o in self.objects.values() if o.kind is kind)
