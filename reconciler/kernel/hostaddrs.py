"""The addresses on the host namespace's links, by link name: what cluster mode's agent must
never hand out to a container on a network of that parent (SPEC 6; file-mode IPAM reserves
the same from the observed host, ipam.IpamFacts.parent_addresses). Two dumps of the host
namespace only (links, addresses), no named namespace is entered."""
from __future__ import annotations

import ipaddress
from typing import Dict, Tuple


def host_addresses(kernel) -> Dict[str, Tuple[ipaddress._BaseAddress, ...]]:
    """link name -> its addresses (host namespace), for a :class:`reconciler.kernel.host.Kernel`."""
    names = {l.index: l.name for l in kernel.host.dump_links()}
    out: Dict[str, list] = {}
    for a in kernel.host.dump_addrs():
        name = names.get(a.index)
        if name is not None:
            out.setdefault(name, []).append(a.interface.ip)  # from the kernel's bytes, no text round trip
    return {n: tuple(v) for n, v in out.items()}
