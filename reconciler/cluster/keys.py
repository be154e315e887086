"""The key layout of cluster mode (documented in docs/cluster.md).

Every key lives under one prefix (default ``/ipvlan-reconciler/``) and is named by what it
holds; a name never changes meaning (a block key names the block's CIDR, not its number, so
a changed block size can never make an old key mean another range of addresses).

  format                          the layout's format version ("1"); newer: refused
  current                         pointer to the newest revision (JSON: revision, chunks, sha256)
  revisions/<N>/chunk/<i>         the revision document, in chunks (written before `current`,
                                  in the same transaction)
  blocks/<network>/<cidr>         a block claimed by a host (JSON: host, explicit, machine)
  addrs/<network>/<address>       an address held by a host (JSON: host, container, explicit)
  hosts/<name>/machine            the machine a host name is bound to (JSON: machine_id)
  hosts/<name>/generation         bumped by forget-host (decimal)
  status/<name>                   a host's status, under its lease (JSON)
  seen/<name>                     a host's last-seen record, not under a lease (JSON)

CIDRs and addresses are written with ``_`` for ``/`` and ``-`` unchanged (IPv6 text has no
``/`` otherwise), so a key has exactly the slashes shown above.
"""
from __future__ import annotations

from ..model import IPAddress, IPNetwork

FORMAT = 1
DEFAULT_PREFIX = "/ipvlan-reconciler/"


def norm_prefix(prefix: str) -> str:
    p = prefix if prefix.startswith("/") else "/" + prefix
    return p if p.endswith("/") else p + "/"


def cidr_text(net: IPNetwork) -> str:
    return str(net).replace("/", "_")


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = norm_prefix(prefix)

    @property
    def format(self) -> str:
        return self.prefix + "format"

    @property
    def current(self) -> str:
        return self.prefix + "current"

    def revision(self, n: int) -> str:
        return f"{self.prefix}revisions/{n:012d}/"

    def chunk(self, n: int, i: int) -> str:
        return f"{self.revision(n)}chunk/{i:04d}"

    def blocks(self, network: str = "") -> str:
        return f"{self.prefix}blocks/" + (f"{network}/" if network else "")

    def block(self, network: str, cidr: IPNetwork) -> str:
        return f"{self.blocks(network)}{cidr_text(cidr)}"

    def addrs(self, network: str = "") -> str:
        return f"{self.prefix}addrs/" + (f"{network}/" if network else "")

    def addr(self, network: str, address: IPAddress) -> str:
        return f"{self.addrs(network)}{address}"

    def host(self, name: str) -> str:
        return f"{self.prefix}hosts/{name}/"

    def machine(self, name: str) -> str:
        return self.host(name) + "machine"

    def generation(self, name: str) -> str:
        return self.host(name) + "generation"

    def status(self, name: str = "") -> str:
        return f"{self.prefix}status/{name}"

    def seen(self, name: str = "") -> str:
        return f"{self.prefix}seen/{name}"

    def tail(self, key: str, under: str) -> str:
        assert key.startswith(under), (key, under)
        return key[len(under):]
