"""The allocation core of cluster mode, for a host agent (SPEC 6).

An :class:`Agent` is one host's view of the cluster:

* :meth:`Agent.bind` binds the host name to this machine (its machine id), create-if-absent:
  a second agent claiming the name from another machine is refused (:class:`HostTaken`); a
  host that `forget-host` fenced is refused too (:class:`HostForgotten`).
* :meth:`Agent.allocate` hands out an automatic address, only from blocks this host holds
  (strict affinity); when they are full it claims the lowest free block of the network's grid
  with a create-if-absent transaction that also compares the `current` revision pointer (a
  push cannot change the grid under a claim) and the host's binding (a fenced host claims
  nothing). Every address is recorded under its own key, owned by the host, not under a lease.
* :meth:`Agent.release` deletes an address key in a transaction that checks its mod revision
  after checking the owner.
* :meth:`Agent.report` writes the host's status under a lease, and a last-seen record that is
  not under it (what `cluster status` and `forget-host` read).

Thread-safe: the workers of one host may share one Agent (candidates are taken under a lock
before their transaction, so they do not race each other); agents of the same host in other
processes are safe too (the transactions decide, a lost race is retried).
"""
from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from typing import Any, Collection, Dict, List, Optional, Set, Tuple

from ..errors import UserError
from ..fleet import block
from ..model import IPAddress, IPNetwork
from .keys import Keys
from .revision import Revision, read_current
from .store import EtcdUnavailable, Store, absent, delete, dumps, put, unchanged

MAX_TRIES = 64
MAX_WRITTEN = 4096  # mod revisions of keys this agent wrote, kept for a one-round-trip release


class HostTaken(UserError):
    """The host name is bound to another machine."""


class HostForgotten(UserError):
    """forget-host fenced this host: it claims and reports nothing until it rejoins."""


class HostRejoined(HostForgotten):
    """The host was forgotten and rejoined while this agent ran: everything it knew belongs to
    the old generation (freed); it must start again from nothing it owned (a new Agent)."""


class PoolExhausted(UserError):
    """No free address in this host's blocks and no free block to claim."""


class NotOwner(UserError):
    """An address key held by another host (or an explicit reservation)."""


def machine_id() -> str:
    """This machine's id (/etc/machine-id)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return text
        except OSError:
            continue
    raise UserError("no /etc/machine-id: cluster mode binds a host name to its machine id "
                    "(systemd-machine-id-setup creates one)")


class Agent:
    def __init__(self, store: Store, keys: Keys, host: str, machine: str, lease_ttl: int = 10):
        self.store, self.keys, self.host, self.machine = store, keys, host, machine
        self.lease_ttl = lease_ttl
        self.binding_mod = 0
        self.generation = 0
        self.lease = 0
        self._lock = threading.Lock()
        self._rev: Optional[Revision] = None
        self._mine: Dict[str, List[IPNetwork]] = {}  # network -> blocks this host holds
        self._used: Dict[str, Set[IPAddress]] = {}  # network -> taken addresses in those blocks
        # (network, address) -> the mod revision this agent wrote the key at: release deletes
        # it in one transaction comparing that (else it reads the key first)
        self._written: Dict[Tuple[str, IPAddress], int] = {}

    # ---- binding -------------------------------------------------------------------------------

    def bind(self) -> int:
        """Bind the host name to this machine (or confirm the binding); its generation."""
        k = self.keys.machine(self.host)
        for _ in range(MAX_TRIES):
            kv = self.store.get(k)
            gen_kv = self.store.get(self.keys.generation(self.host))
            gen = int(gen_kv.value.decode()) if gen_kv is not None else 0
            if kv is None:
                value = {"machine_id": self.machine, "generation": gen, "bound_at": time.time()}
                ok, _ = self.store.txn([absent(k), unchanged(self.keys.generation(self.host),
                                                             gen_kv.mod_revision if gen_kv else 0)],
                                       [put(k, dumps(value))])
                if not ok:
                    continue
                kv = self.store.get(k)
                if kv is None:
                    continue
            value = kv.json()
            self._check_binding(value)
            self.binding_mod, self.generation = kv.mod_revision, int(value.get("generation", gen))
            return self.generation
        raise UserError(f"host {self.host}: its binding kept changing; try again")

    def _check_binding(self, value: Dict[str, Any]) -> None:
        if value.get("forgotten"):
            raise HostForgotten(f"host {self.host} was fenced by `cluster forget-host` (generation "
                                f"{value.get('generation')}): it claims, announces and changes nothing until "
                                f"`ipvlanctl cluster rejoin {self.host}`")
        if value.get("machine_id") != self.machine:
            raise HostTaken(f"host name {self.host} is bound to another machine (machine id "
                            f"{str(value.get('machine_id'))[:12]}..., this one {self.machine[:12]}...): two "
                            "machines cannot be the same host. Give this machine its own host name, or, "
                            "if the other machine is gone for good, `cluster forget-host` it first")
        gen = int(value.get("generation", 0))
        if self.binding_mod and gen != self.generation:
            raise HostRejoined(f"host {self.host} was forgotten and rejoined (generation {self.generation} -> "
                               f"{gen}) while this agent ran: what it held was freed; it starts again from "
                               "nothing it owned")

    def _recheck(self) -> None:
        """After a failed transaction: did the binding change (fenced, taken)?"""
        kv = self.store.get(self.keys.machine(self.host))
        if kv is None:
            raise HostForgotten(f"host {self.host}: its binding is gone; bind again")
        self._check_binding(kv.json())
        self.binding_mod = kv.mod_revision

    # ---- the grid ------------------------------------------------------------------------------

    def revision(self, refresh: bool = False) -> Revision:
        if self._rev is None or refresh:
            rev = read_current(self.store, self.keys)
            if rev is None:
                raise UserError(f"no revision under {self.keys.prefix}: run `ipvlanctl cluster push DIR` first")
            self._rev = rev
        return self._rev

    def _ranges(self, network: str, family: int) -> List[Dict[str, Any]]:
        g = self.revision().grid.get(network)
        if g is None:
            raise UserError(f"network {network} is not a shared network of revision {self.revision().number}")
        return [r for r in g["ranges"] if r["family"] == family]

    def _load_network(self, network: str) -> None:
        """This host's blocks of a network and the addresses taken in them (once; then cached)."""
        if network in self._mine:
            return
        blocks, _ = self.store.range(self.keys.blocks(network))
        mine = []
        for kv in blocks:
            if kv.json().get("host") == self.host:
                mine.append(ipaddress.ip_network(self.keys.tail(kv.key, self.keys.blocks(network)).replace("_", "/")))
        used: Set[IPAddress] = set()
        addrs, _ = self.store.range(self.keys.addrs(network))
        for kv in addrs:
            a = ipaddress.ip_address(self.keys.tail(kv.key, self.keys.addrs(network)))
            if any(a in b for b in mine):
                used.add(a)
        self._mine[network], self._used[network] = sorted(mine, key=lambda b: (b.version, int(b.network_address))), used

    def blocks(self, network: str) -> List[IPNetwork]:
        with self._lock:
            self._load_network(network)
            return list(self._mine[network])

    # ---- addresses -----------------------------------------------------------------------------

    def _candidate(self, network: str, family: int, exclude: Collection[IPAddress] = ()) -> Optional[IPAddress]:
        """The lowest free address of this host's blocks (taken locally; caller holds the lock),
        never one of ``exclude`` (the addresses on the network's parent link of this host)."""
        used = self._used[network]
        for r in self._ranges(network, family):
            rng = ipaddress.ip_network(r["range"])
            subnet = ipaddress.ip_network(r["subnet"])
            reserved = {ipaddress.ip_address(a) for a in r["reserved"]}
            for b in self._mine[network]:
                if b.version != family or not b.subnet_of(rng):  # type: ignore[arg-type]
                    continue
                for v in range(int(b.network_address), int(b.broadcast_address) + 1):
                    a = ipaddress.ip_address(v) if family == 4 else ipaddress.IPv6Address(v)
                    if a in used or a in reserved or a not in subnet or a in exclude:
                        continue
                    used.add(a)
                    return a
        return None

    def allocate(self, network: str, container: str, family: int = 4,
                 exclude: Collection[IPAddress] = ()) -> IPAddress:
        """An automatic address for ``container`` on ``network``, recorded under its own key;
        never one of ``exclude`` (this host's own addresses on the network's parent)."""
        for _ in range(MAX_TRIES):
            with self._lock:
                self._load_network(network)
                cand = self._candidate(network, family, exclude)
            if cand is None:
                self._claim(network, family)
                continue
            key = self.keys.addr(network, cand)
            value = {"host": self.host, "container": container, "claim": uuid.uuid4().hex}
            ok, _, at = self.store.txn_at([unchanged(self.keys.machine(self.host), self.binding_mod), absent(key)],
                                          [put(key, dumps(value))])
            if ok:
                with self._lock:
                    self._written[(network, cand)] = at
                    if len(self._written) > MAX_WRITTEN:  # a hint only: forget the oldest
                        self._written.pop(next(iter(self._written)))
                return cand
            kv = self.store.get(key)
            if kv is not None and kv.json() == value:
                return cand  # the reply was lost, the write was not
            self._recheck()  # fenced or taken: raises; else the address was taken meanwhile
        raise UserError(f"host {self.host}: could not allocate on {network} after {MAX_TRIES} tries "
                        "(heavy contention); try again")

    def _claim(self, network: str, family: int) -> Optional[IPNetwork]:
        """Claim the lowest free block of the network's grid (create-if-absent); None when
        the transaction lost (the caches are reloaded: look again)."""
        rev = self.revision()
        held, _ = self.store.range(self.keys.blocks(network), keys_only=True)
        taken = {self.keys.tail(kv.key, self.keys.blocks(network)) for kv in held}
        foreign = self._foreign_explicit(network)
        choice = None
        for r in self._ranges(network, family):
            rng = ipaddress.ip_network(r["range"])
            for k in range(r["blocks"]):
                b = block(rng, r["size"], k)
                assert b is not None
                if self.keys.block(network, b).rsplit("/", 1)[1] not in taken \
                        and not any(a in b for a in foreign):
                    choice = b
                    break
            if choice is not None:
                break
        if choice is None:
            raise PoolExhausted(f"network {network}: no free IPv{family} address in host {self.host}'s "
                                "blocks and no free block left to claim")
        key = self.keys.block(network, choice)
        value = {"host": self.host, "machine_id": self.machine, "explicit": False, "claimed_at": time.time()}
        ok, _ = self.store.txn([unchanged(self.keys.machine(self.host), self.binding_mod),
                                unchanged(self.keys.current, rev.pointer_mod), absent(key)],
                               [put(key, dumps(value))])
        if ok:
            with self._lock:
                if choice not in self._mine[network]:
                    self._mine[network].append(choice)
                    self._mine[network].sort(key=lambda b: (b.version, int(b.network_address)))
            return choice
        # lost a race for the block, a new revision, or fenced (raises): reload, and let
        # the caller look again (another agent of this host may have claimed a block)
        self._recheck()
        cur = self.store.get(self.keys.current)
        if cur is None or cur.mod_revision != rev.pointer_mod:
            self.revision(refresh=True)
        with self._lock:
            self._mine.pop(network, None)
            self._used.pop(network, None)
            self._load_network(network)
        return None

    def _foreign_explicit(self, network: str) -> List[IPAddress]:
        """Other hosts' explicit addresses on ``network`` (push writes them, in the transaction
        that moves the `current` pointer a claim compares). A block holding one is never
        claimed: the address belongs to another host, and the next push would be refused
        ("an explicit address inside a host's block must be one of that host's containers")."""
        out = []
        addrs, _ = self.store.range(self.keys.addrs(network))
        for kv in addrs:
            try:
                v = kv.json()
            except ValueError:
                continue
            if v.get("explicit") and v.get("host") != self.host:
                out.append(ipaddress.ip_address(self.keys.tail(kv.key, self.keys.addrs(network))))
        return out

    def owned_candidate(self, rev: Revision, network: str, family: int, blocks: List[IPNetwork],
                        used: Set[IPAddress], exclude: Collection[IPAddress] = ()) -> Optional[IPAddress]:
        """Offline (etcd unreachable): the lowest free address of the blocks this host already
        holds (as last read), never a claim; None when they are full. Marks it used."""
        with self._lock:
            self._rev = rev
            self._mine[network] = sorted(blocks, key=lambda b: (b.version, int(b.network_address)))
            self._used[network] = used
            try:
                return self._candidate(network, family, exclude)
            finally:
                self._mine.pop(network, None)  # the next online call reloads from etcd
                self._used.pop(network, None)

    def record(self, network: str, address: IPAddress, container: str, claim: str) -> Optional[Dict[str, Any]]:
        """Write an address handed out offline (after the heal): create-if-absent, comparing
        the binding. None when written (or already ours); else the record that holds it."""
        key = self.keys.addr(network, address)
        value = {"host": self.host, "container": container, "claim": claim}
        ok, _ = self.store.txn([unchanged(self.keys.machine(self.host), self.binding_mod), absent(key)],
                               [put(key, dumps(value))])
        if ok:
            with self._lock:
                self._mine.pop(network, None)
                self._used.pop(network, None)
            return None
        kv = self.store.get(key)
        if kv is not None and kv.json() == value:
            return None
        self._recheck()  # fenced or taken: raises
        return kv.json() if kv is not None else {"host": "?", "container": "?"}

    def release(self, network: str, address: IPAddress) -> bool:
        """Delete an address key this host holds; False when it was not there."""
        key = self.keys.addr(network, address)
        with self._lock:
            mod = self._written.pop((network, address), 0)
        if mod:  # written by this agent at ``mod`` and unchanged since: ours, one round trip
            ok, _ = self.store.txn([unchanged(key, mod)], [delete(key)])
            if ok:
                with self._lock:
                    self._used.get(network, set()).discard(address)
                return True
        for _ in range(MAX_TRIES):
            kv = self.store.get(key)
            if kv is None:
                return False
            v = kv.json()
            if v.get("host") != self.host:
                raise NotOwner(f"address {address} on {network} is held by host {v.get('host')}, not {self.host}")
            if v.get("explicit"):
                raise NotOwner(f"address {address} on {network} is an explicit address of the manifests: "
                               "a push that no longer declares it releases it")
            ok, _ = self.store.txn([unchanged(key, kv.mod_revision)], [delete(key)])
            if ok:
                with self._lock:
                    self._used.get(network, set()).discard(address)
                return True
        raise UserError(f"address {address} on {network} kept changing; try again")

    def addresses(self) -> Dict[Tuple[str, IPAddress], Dict[str, Any]]:
        """Every address this host holds: (network, address) -> its record."""
        out = {}
        kvs, _ = self.store.range(self.keys.addrs())
        for kv in kvs:
            v = kv.json()
            if v.get("host") == self.host:
                net, text = self.keys.tail(kv.key, self.keys.addrs()).split("/", 1)
                out[(net, ipaddress.ip_address(text))] = v
        return out

    # ---- status --------------------------------------------------------------------------------

    def report(self, revision: Optional[int], pending: List[str], last_error: Optional[str]) -> None:
        """Status under the host's lease (gone when the host is), last-seen record without it."""
        now = time.time()
        if not self.lease or self.store.keepalive(self.lease) <= 0:
            self.lease = self.store.grant(self.lease_ttl)
        status = {"revision": revision, "pending": pending, "last_error": last_error, "at": now,
                  "machine_id": self.machine, "generation": self.generation}
        seen = {"at": now, "lease": self.lease, "ttl": self.lease_ttl, "machine_id": self.machine,
                "generation": self.generation, "revision": revision}
        ok, _ = self.store.txn([unchanged(self.keys.machine(self.host), self.binding_mod)],
                               [put(self.keys.status(self.host), dumps(status), lease=self.lease),
                                put(self.keys.seen(self.host), dumps(seen))])
        if not ok:
            self._recheck()
            raise UserError(f"host {self.host}: status not written (binding changed); try again")

    def stop(self) -> None:
        """Revoke the lease (a clean stop: the status disappears at once)."""
        if self.lease:
            try:
                self.store.revoke(self.lease)
            except EtcdUnavailable:
                pass
            self.lease = 0
