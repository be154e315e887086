"""The interface the per-host daemon (`ipvlanctl watch --etcd`) uses:
the newest valid revision + the fleet's address records -> this host's DesiredState (SPEC 6).

Pure: no etcd here. :func:`host_view` re-reads the revision's manifest texts under the rules
of cluster mode, narrows them to the host (:func:`reconciler.fleet.select`), takes the block
sizes from the revision's grid (what the push resolved is what every host uses), and fills
every automatic address of a shared (non-internal) network from the address records the
cluster holds -- so file-mode IPAM never chooses an address of a shared network in cluster
mode (it would not know the host's blocks). A container with an automatic address the host
has not allocated yet is left out of the state and listed in ``needs`` (the daemon allocates
them with :class:`reconciler.cluster.alloc.Agent` and asks again); internal networks keep
per-host IPAM as in file mode. Hosts files list every container of the fleet on this host's
shared networks (``remote``, automatic addresses included). Records of this host whose
container or attachment the revision no longer has are returned as ``stale`` (to release).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..fleet import select
from ..model import Attachment, Container, DesiredState, IPAddress, Network


@dataclass(frozen=True)
class AddressRecord:
    """One address key of the cluster (``addrs/<network>/<address>``)."""

    network: str
    address: IPAddress
    host: str
    container: str
    explicit: bool = False


@dataclass(frozen=True)
class Need:
    """An automatic address this host must allocate before the container can converge."""

    container: str
    network: str
    family: int


@dataclass(frozen=True)
class HostView:
    state: DesiredState
    needs: Tuple[Need, ...]
    stale: Tuple[AddressRecord, ...]
    fleet: Optional[DesiredState] = None  # the whole revision (BIRD's peers and subnets come from it)


def _with_grid(state: DesiredState, grid: Mapping[str, Any]) -> DesiredState:
    nets: Dict[str, Network] = {}
    for name, net in state.networks.items():
        g = grid.get(name)
        nets[name] = replace(net, block_size=g["block_size"], block_size6=g["block_size6"]) if g else net
    return replace(state, networks=nets)


def _families(net: Network) -> List[int]:
    return [f for f in (4, 6) if net.subnets_of(f) and (f == 4 or net.ipv6)]


def host_view(files: Sequence[Tuple[str, str]], grid: Mapping[str, Any], host: str,
              records: Iterable[AddressRecord]) -> HostView:
    """This host's desired state from a revision (its files and grid) and the address records.
    Raises ManifestError (an invalid revision: keep the last valid one) or UnknownHost."""
    from ..manifest import load_texts
    from ..manifest.fleet import cluster_mode

    with cluster_mode():
        whole = _with_grid(load_texts(list(files)), grid)
    mine = select(whole, host)
    shared = {n for n, net in mine.networks.items() if not net.internal and n in grid}
    got: Dict[Tuple[str, str, int], IPAddress] = {}
    for r in records:
        c = whole.containers.get(r.container)
        if c is None or c.host != r.host:
            continue
        got.setdefault((r.container, r.network, r.address.version), r.address)

    def fill(c: Container, wanted_nets) -> Tuple[Tuple[Attachment, ...], List[Need]]:
        atts, needs = [], []
        for att in c.attachments:
            net = whole.networks[att.network]
            if att.network not in wanted_nets:
                atts.append(att)
                continue
            ip, ip6 = att.ip, att.ip6
            for fam in _families(net):
                if (ip if fam == 4 else ip6) is not None:
                    continue
                a = got.get((c.name, att.network, fam))
                if a is None:
                    needs.append(Need(c.name, att.network, fam))
                    continue
                if fam == 4:
                    ip = a
                else:
                    ip6 = a
            atts.append(replace(att, ip=ip, ip6=ip6))
        return tuple(atts), needs

    containers: Dict[str, Container] = {}
    needs: List[Need] = []
    for name, c in mine.containers.items():
        atts, missing = fill(c, shared)
        if missing:
            needs.extend(missing)
        else:
            containers[name] = replace(c, attachments=atts)
    remote: Dict[str, Container] = {}
    for name, c in whole.containers.items():
        if c.host == host:
            continue
        atts, _ = fill(c, shared)
        keep = tuple(a for a in atts if a.network in shared and (a.ip is not None or a.ip6 is not None))
        if keep:
            remote[name] = replace(c, attachments=keep)
    auto = {(c.name, a.network, fam) for c in mine.containers.values() for a in c.attachments
            if a.network in shared for fam in _families(whole.networks[a.network])
            if (a.ip if fam == 4 else a.ip6) is None}
    stale = []
    for r in records:
        if r.host != host or r.explicit:
            continue
        slot = (r.container, r.network, r.address.version)
        if slot not in auto or got.get(slot) != r.address:
            stale.append(r)  # gone from the revision, explicit now, or a second address for a slot
    return HostView(replace(mine, containers=containers, remote=remote), tuple(needs), tuple(stale), whole)


def records_from_store(store, keys) -> List[AddressRecord]:
    """Every address key of the cluster as records (for :func:`host_view`)."""
    import ipaddress

    out = []
    for kv in store.range(keys.addrs())[0]:
        v = kv.json()
        net, text = keys.tail(kv.key, keys.addrs()).split("/", 1)
        out.append(AddressRecord(net, ipaddress.ip_address(text), v.get("host", ""), v.get("container", ""),
                                 bool(v.get("explicit"))))
    return out
