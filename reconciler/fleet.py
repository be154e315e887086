"""Fleet manifests (SPEC 5.1): one manifest directory for many hosts.

Pure. A fleet manifest (top-level ``hosts:``) describes every host; each host applies
only its own part, :func:`select`. Automatic addresses of a non-internal network come
from per-host blocks so that hosts never collide without talking to each other: each
subnet's range (its ``ip_range``, else the subnet) is cut into blocks of the network's
``block_size`` (``block_size6`` for IPv6), numbered from 0 at the range's start, and the
host with ``id: k`` hands out addresses only from block k of each range:

    block k = range start + k * 2^(32 - block_size)          (IPv6: 128)
"""
from __future__ import annotations

import _socket as socket  # gethostname from the C core: socket.py's enums and selectors cost start-up
import ipaddress
from dataclasses import replace
from typing import Dict, List, Optional, Set

from .errors import UserError
from .model import Container, DesiredState, IPAddress, IPNetwork, Network, Subnet


class UnknownHost(UserError):
    """``--host`` names no host of the fleet manifest (exit 1, never "nothing to do")."""


# ---- block arithmetic -----------------------------------------------------------------------


def subnet_range(s: Subnet) -> IPNetwork:
    """The address range a subnet's blocks are cut from: its ip_range, else the subnet."""
    assert s.cidr is not None
    return s.ip_range or s.cidr


def block_size_of(net: Network, family: int) -> Optional[int]:
    """The network's block size for a family; None: no blocks (not a fleet, internal)."""
    if net.internal:
        return None
    return net.block_size if family == 4 else net.block_size6


def block_count(rng: IPNetwork, size: int) -> int:
    """How many blocks of prefix length ``size`` the range holds (0 when a block is larger)."""
    if size < rng.prefixlen:
        return 0
    return 1 << (size - rng.prefixlen)


def block(rng: IPNetwork, size: int, k: int) -> Optional[IPNetwork]:
    """Block ``k`` of the range, or None when the range has no such block."""
    if k < 0 or k >= block_count(rng, size):
        return None
    bits = rng.max_prefixlen - size
    start = int(rng.network_address) + (k << bits)
    return ipaddress.ip_network((start, size)) if rng.version == 4 else ipaddress.IPv6Network((start, size))


def block_index(rng: IPNetwork, size: int, addr: IPAddress) -> Optional[int]:
    """The number of the block of the range that holds ``addr``; None outside the range
    (or when the range holds no whole block)."""
    if addr.version != rng.version or addr not in rng or block_count(rng, size) == 0:
        return None
    return (int(addr) - int(rng.network_address)) >> (rng.max_prefixlen - size)


def host_block(net: Network, s: Subnet, host_id: int) -> Optional[IPNetwork]:
    """The block of subnet ``s`` of ``net`` that host ``host_id`` hands out from; None when
    the network has no blocks for the subnet's family or the range is too small."""
    assert s.cidr is not None
    size = block_size_of(net, s.cidr.version)
    if size is None:
        return None
    return block(subnet_range(s), size, host_id)


def default_block_size6(net: Network) -> Optional[int]:
    """min(longest IPv6 subnet prefix + 16, 126): SPEC 5.1 says 128, but a /128 block is one
    address and the same section caps IPv6 blocks at /126."""
    v6 = [s.cidr.prefixlen for s in net.subnets if s.cidr is not None and s.cidr.version == 6]
    if not v6:
        return None
    return min(max(v6) + 16, 126)


# ---- one host's part ---------------------------------------------------------------------------


def default_host() -> str:
    """This machine's name, as ``--host`` defaults to it."""
    return socket.gethostname()


def resolve_host(state: DesiredState, host: Optional[str]) -> str:
    """The fleet host ``host`` means; ``None``: this machine (its name, else its short
    name when the manifest uses short names). Raises UnknownHost."""
    if host is None:
        name = default_host()
        if name not in state.hosts and name.split(".", 1)[0] in state.hosts:
            return name.split(".", 1)[0]
        how = f"this machine's host name {name!r}"
    else:
        name = host
        how = f"--host {name!r}"
    if name in state.hosts:
        return name
    known = ", ".join(state.hosts) or "none"
    raise UnknownHost(
        f"{how} is not a host of this fleet manifest (hosts: {known}); "
        "give --host NAME with one of them (a host not under hosts: applies nothing; "
        "`plan --offline --all-hosts` shows every host's plan)"
    )


def select(state: DesiredState, host: str) -> DesiredState:
    """The part of a fleet state that ``host`` applies: its containers, the networks they
    attach to, the VLANs and parents those use; the other hosts' containers with explicit
    addresses on its non-internal networks (``remote``, for hosts files); ``local_host``
    set; hosts and bgp kept. Raises UnknownHost for a name not under ``hosts:``."""
    if host not in state.hosts:
        known = ", ".join(state.hosts) or "none"
        raise UnknownHost(f"host {host!r} is not a host of this fleet manifest (hosts: {known})")
    containers: Dict[str, Container] = {n: c for n, c in state.containers.items() if c.host == host}
    used: Set[str] = {att.network for c in containers.values() for att in c.attachments}
    networks: Dict[str, Network] = {n: net for n, net in state.networks.items() if n in used}
    # host access (SPEC 2.3): only this host's address is used here
    networks = {
        n: replace(net, host_access=tuple(a for h, a in net.host_access_by_host if h == host))
        if net.host_access_by_host else net
        for n, net in networks.items()
    }
    # VLAN links: the parents of those networks and, through declared links, what they stack on
    want: Set[str] = set()
    todo: List[str] = [net.parent for net in networks.values()]
    while todo:
        name = todo.pop()
        if name in want or name not in state.vlans:
            continue
        want.add(name)
        todo.append(state.vlans[name].link)
    vlans = {n: v for n, v in state.vlans.items() if n in want}
    shared = {n for n, net in networks.items() if not net.internal}
    remote: Dict[str, Container] = {}
    for name, c in state.containers.items():
        if c.host == host:
            continue
        atts = tuple(
            att for att in c.attachments
            if att.network in shared and (att.ip is not None or att.ip6 is not None)
        )
        if atts:
            remote[name] = replace(c, attachments=atts)
    return replace(
        state, networks=networks, vlans=vlans, containers=containers, local_host=host, remote=remote
    )


def narrow(state: DesiredState, host: Optional[str]) -> DesiredState:
    """What this host applies: a fleet state narrowed to ``host`` (None: this machine's
    name); a single-host state as it is (``--host`` means nothing there)."""
    if not state.fleet:
        return state
    return select(state, resolve_host(state, host))


def local_host_id(state: DesiredState) -> Optional[int]:
    """The block number of the host a selected state belongs to; None outside a fleet."""
    if state.local_host is None:
        return None
    h = state.hosts.get(state.local_host)
    return h.id if h is not None else None
