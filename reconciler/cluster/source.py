"""Where `ipvlanctl watch --etcd` takes its desired state from (SPEC 6): the newest valid
revision in etcd, narrowed to this host by :func:`reconciler.cluster.view.host_view`, with this
host's automatic addresses allocated by its :class:`~reconciler.cluster.alloc.Agent`.

Everything after (plan, apply, verify, drift repair, status file, metrics) is the file-mode
daemon's; this module only answers "what must this host look like now", online or not:

* online: bind the host to this machine (once per connection), write the addresses journalled
  while etcd was unreachable, read the `current` revision (format, chunks, digest checked) and
  every address record, allocate what the host's new containers need (blocks claimed on
  demand), and cache the revision, the records and this host's blocks in the state directory;
* etcd unreachable: the cached revision and records (nothing is torn down because etcd is
  gone); new containers get addresses only from blocks this host already holds, journalled in
  the state directory (``cluster-journal.json``) and written to etcd after the heal; no block
  is claimed. A journalled address another host holds by then is a *conflict*: reported, and
  kept on the running container (never moved silently);
* an invalid revision (newer format, damaged chunks, manifests that do not load) raises a
  UserError: the daemon keeps the last good desired state and reports it;
* a host fenced by `cluster forget-host` raises HostForgotten: the daemon changes nothing.

Stale records (this host's automatic addresses the revision no longer uses) are returned with
the mod revision they were read at; :meth:`ClusterSource.release` deletes them only after the
daemon converged the state that no longer has them (the kernel does not use them any more),
each delete comparing that mod revision (a key rewritten meanwhile is left alone).
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import UserError
from ..model import DesiredState
from .alloc import Agent, PoolExhausted, machine_id
from .keys import DEFAULT_PREFIX, Keys
from .revision import Revision, read_current
from .store import EtcdUnavailable, Store, delete, unchanged
from .view import AddressRecord, host_view

CACHE = "cluster-cache.json"
JOURNAL = "cluster-journal.json"


@dataclass(frozen=True)
class Stale:
    network: str
    address: str
    container: str
    mod_revision: int  # 0: a journalled address never written to etcd


@dataclass(frozen=True)
class Loaded:
    revision: int
    state: DesiredState
    stale: Tuple[Stale, ...]
    waiting: Tuple[str, ...]  # containers left out until they have an address (pending)
    offline: Optional[str]  # why etcd could not be used (None: online)
    conflicts: Tuple[str, ...]
    journalled: int  # addresses handed out offline, not yet written to etcd
    fleet: Optional[DesiredState] = None  # the whole revision (for --bird-config)


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class ClusterSource:
    def __init__(self, url: str, host: str, state_dir: str, prefix: str = DEFAULT_PREFIX,
                 machine: Optional[str] = None, store: Optional[Store] = None, lease_ttl: int = 15):
        self.store = store or Store(url)
        self.keys = Keys(prefix)
        self.host = host
        self.agent = Agent(self.store, self.keys, host, machine or machine_id(), lease_ttl)
        self.cache_path = os.path.join(state_dir, CACHE)
        self.journal_path = os.path.join(state_dir, JOURNAL)
        self.bound = False
        self.etcd_revision = 0  # store revision of the last full read: the watch resumes after it
        self.offline: Optional[str] = None
        # set by a daemon whose probe thread decides when etcd is back (ClusterDaemon.probe):
        # while offline, a load reads nothing from etcd (no client timeout per reload: drift
        # repair keeps its speed during a partition) until the probe sets etcd_back
        self.probing = False
        self.etcd_back = False
        # link name -> this host's addresses on it (the daemon reads them from the kernel): an
        # automatic address is never one of its network's parent's own addresses
        self.host_addresses: Optional[Callable[[], Mapping[str, Iterable[Any]]]] = None

    # ---- the journal of offline allocations --------------------------------------------------

    def journal(self) -> List[Dict[str, Any]]:
        return list(_read_json(self.journal_path) or [])

    def _save_journal(self, entries: List[Dict[str, Any]]) -> None:
        _write_json(self.journal_path, entries)

    def _flush_journal(self) -> None:
        """After the heal: write every journalled address (create-if-absent). One that another
        record holds meanwhile stays in the journal as a conflict (the container keeps it)."""
        from ..daemon import logs

        entries = self.journal()
        if not entries:
            return
        gen = self.agent.generation
        old = [e for e in entries if int(e.get("generation", 0)) != gen]
        for e in old:  # handed out before a forget-host: freed with the rest, never written back
            logs.warning("dropping an address journalled under an older generation of this host (it was "
                         "forgotten and rejoined since)", network=e["network"], address=e["address"],
                         container=e["container"], generation=e.get("generation", 0), now=gen)
        entries = [e for e in entries if e not in old]
        keep = []
        for e in entries:
            held = self.agent.record(e["network"], ipaddress.ip_address(e["address"]), e["container"], e["claim"])
            if held is None:
                logs.info("address handed out while etcd was unreachable written to etcd",
                          network=e["network"], address=e["address"], container=e["container"])
                continue
            e = dict(e, conflict=(
                f"address {e['address']} on {e['network']}, handed out to container {e['container']} while "
                f"etcd was unreachable, is held in etcd by host {held.get('host')} (container "
                f"{held.get('container')}): kept on the running container, never moved; remove or "
                "re-address one of the two containers"))
            if not any(k.get("conflict") == e["conflict"] for k in entries if k is not e):
                logs.error(e["conflict"])
            keep.append(e)
        if keep != entries or old:
            self._save_journal(keep)

    # ---- reading --------------------------------------------------------------------------

    def _fetch(self) -> Tuple[Revision, List[Tuple[AddressRecord, int]], Dict[str, List[str]]]:
        if not self.bound:
            self.agent.bind()  # HostForgotten / HostTaken: raised to the daemon
            self.bound = True
        else:
            self.agent._recheck()  # fenced meanwhile: raised before anything of a revision is used
        self._flush_journal()
        rev = read_current(self.store, self.keys)  # NewerFormat / damaged: raised (keep the last good)
        if rev is None:
            raise UserError(f"no revision under {self.keys.prefix} in etcd yet: run `ipvlanctl cluster push DIR` "
                            "(nothing is applied until one is there)")
        self.agent._rev = rev  # the agent allocates on the grid of the revision the daemon uses
        kvs, etcd_rev = self.store.range(self.keys.addrs())
        records = []
        for kv in kvs:
            v = kv.json()
            net, text = self.keys.tail(kv.key, self.keys.addrs()).split("/", 1)
            records.append((AddressRecord(net, ipaddress.ip_address(text), v.get("host", ""),
                                          v.get("container", ""), bool(v.get("explicit"))), kv.mod_revision))
        bkvs, _ = self.store.range(self.keys.blocks())
        blocks: Dict[str, List[str]] = {}
        for kv in bkvs:
            if kv.json().get("host") == self.host:
                net, cidr = self.keys.tail(kv.key, self.keys.blocks()).split("/", 1)
                blocks.setdefault(net, []).append(cidr.replace("_", "/"))
        self.etcd_revision = max(self.etcd_revision, etcd_rev)
        _write_json(self.cache_path, {
            "revision": rev.number, "doc": rev.doc, "pointer_mod": rev.pointer_mod, "blocks": blocks,
            "records": [[r.network, str(r.address), r.host, r.container, r.explicit, m] for r, m in records],
            "etcd_revision": etcd_rev, "at": time.time(), "generation": self.agent.generation})
        return rev, records, blocks

    def _cached(self):
        c = _read_json(self.cache_path)
        if c is None:
            return None
        rev = Revision(int(c["revision"]), c["doc"], int(c["pointer_mod"]))
        if not self.agent.binding_mod:  # restarted while etcd is unreachable: the generation last read
            self.agent.generation = int(c.get("generation", 0))
        records = [(AddressRecord(n, ipaddress.ip_address(a), h, ct, bool(x)), int(m))
                   for n, a, h, ct, x, m in c["records"]]
        return rev, records, c["blocks"]

    def mark_offline(self, why: str) -> None:
        """etcd could not be reached (by any thread): bind again once it is back."""
        self.offline, self.bound = why, False

    def probe(self) -> None:
        """One read of the revision pointer (a linearizable read: it needs the quorum);
        raises EtcdUnavailable."""
        self.store.get(self.keys.current)

    def load(self) -> Loaded:
        """This host's desired state now (see the module's docstring for what is raised)."""
        try:
            if self.offline and self.probing and not self.etcd_back:
                raise EtcdUnavailable(self.offline)  # known unreachable: the probe says when it is back
            self.etcd_back = False
            rev, records, blocks = self._fetch()
            self.offline = None
        except EtcdUnavailable as e:
            self.bound = False
            self.offline = str(e)
            cached = self._cached()
            if cached is None:
                raise  # nothing known yet: nothing to enforce
            rev, records, blocks = cached
        journal = self.journal()
        recs = list(records) + [(AddressRecord(e["network"], ipaddress.ip_address(e["address"]), self.host,
                                               e["container"]), 0) for e in journal]
        view = host_view(rev.files, rev.grid, self.host, [r for r, _ in recs])  # ManifestError: invalid
        excl = self._parent_addresses(view.state)
        # an automatic address of this host that its parent link carries (an address added to
        # the parent later, or allocated before the daemon could see it): never used; a new
        # one is allocated, the old key released once the host converged without it
        displaced = [(r, m) for r, m in recs if r.host == self.host and not r.explicit
                     and r.address in excl.get(r.network, ())]
        if displaced:
            from ..daemon import logs

            for r, _ in displaced:
                logs.warning("an automatic address is an address of this host's parent link: allocating "
                             "another one", network=r.network, address=str(r.address), container=r.container)
            recs = [x for x in recs if x not in displaced]
            view = host_view(rev.files, rev.grid, self.host, [r for r, _ in recs])
        problems: Dict[Tuple[str, str, int], str] = {}
        online: List[Tuple[AddressRecord, int]] = []  # allocated in etcd by this load
        if view.needs:
            for need in view.needs:
                try:
                    if self.offline is None:
                        try:
                            a = self.agent.allocate(need.network, need.container, need.family,
                                                    excl.get(need.network, ()))
                            recs.append((AddressRecord(need.network, a, self.host, need.container), 0))
                            online.append((recs[-1][0], self.agent._written.get((need.network, a), 0)))
                            continue
                        except EtcdUnavailable as e:
                            self.offline, self.bound = str(e), False
                    a = self._allocate_offline(rev, need, recs, blocks, excl.get(need.network, ()))
                    recs.append((AddressRecord(need.network, a, self.host, need.container), 0))
                except PoolExhausted as e:
                    problems[(need.container, need.network, need.family)] = str(e)
            view = host_view(rev.files, rev.grid, self.host, [r for r, _ in recs])
            if online:
                self._cache_allocations(online)
        waiting = []
        for need in view.needs:
            why = problems.get((need.container, need.network, need.family), "no address yet")
            waiting.append(f"container {need.container}: waiting for an IPv{need.family} address on "
                           f"{need.network}: {why}")
        mods = {(r.network, str(r.address)): m for r, m in recs}
        stale = tuple(Stale(r.network, str(r.address), r.container, mods.get((r.network, str(r.address)), 0))
                      for r in view.stale) + tuple(Stale(r.network, str(r.address), r.container, m)
                                                   for r, m in displaced)
        journal = self.journal()
        return Loaded(rev.number, view.state, stale, tuple(waiting), self.offline,
                      tuple(e["conflict"] for e in journal if e.get("conflict")),
                      sum(1 for e in journal if not e.get("conflict")), view.fleet)

    def _cache_allocations(self, online: List[Tuple[AddressRecord, int]]) -> None:
        """The addresses (and blocks claimed for them) this load allocated in etcd, added to the
        cache written by the read before them: cut off right after, the cached revision must
        still give these containers their addresses (else a reload from the cache would
        remove containers that are running: SPEC 6 never tears down because etcd is gone)."""
        c = _read_json(self.cache_path)
        if c is None:
            return
        c["records"] = list(c["records"]) + [[r.network, str(r.address), r.host, r.container, r.explicit, m]
                                             for r, m in online]
        for net in {r.network for r, _ in online}:
            c["blocks"][net] = sorted(set(c["blocks"].get(net, [])) | {str(b) for b in self.agent.blocks(net)})
        _write_json(self.cache_path, c)

    def _parent_addresses(self, state: DesiredState) -> Dict[str, set]:
        """network -> the addresses its parent link carries on this host (none known: empty)."""
        if self.host_addresses is None:
            return {}
        try:
            by_link = self.host_addresses()
        except Exception as e:  # never let this stop the daemon: the compile check still refuses a clash
            from ..daemon import logs

            logs.warning("could not read this host's link addresses", error=str(e))
            return {}
        out = {}
        for name, net in state.networks.items():
            addrs = by_link.get(getattr(net, "parent", None) or "", ())
            if addrs:
                out[name] = {ipaddress.ip_address(a) for a in addrs}
        return out

    def _allocate_offline(self, rev: Revision, need, recs, blocks, exclude=()) -> ipaddress._BaseAddress:
        from ..daemon import logs

        owned = [ipaddress.ip_network(b) for b in blocks.get(need.network, [])]
        used = {r.address for r, _ in recs if r.network == need.network}
        a = self.agent.owned_candidate(rev, need.network, need.family, owned, used, exclude) if owned else None
        if a is None:
            raise PoolExhausted(
                f"etcd is unreachable and host {self.host} holds no block with a free IPv{need.family} "
                f"address on {need.network}: it claims no new block until etcd is back")
        entries = self.journal()
        entries.append({"network": need.network, "address": str(a), "container": need.container,
                        "family": need.family, "claim": uuid.uuid4().hex, "at": time.time(),
                        "generation": self.agent.generation})
        self._save_journal(entries)  # before the address is used: written to etcd after the heal
        logs.warning("etcd unreachable: address handed out from a block this host holds, journalled",
                     network=need.network, address=str(a), container=need.container)
        return a

    # ---- cluster rejoin -------------------------------------------------------------------

    def rejoined(self) -> Optional[int]:
        """For a fenced daemon: the host's generation when `cluster rejoin` bound it to this
        machine again (None while it is still forgotten or bound to another machine)."""
        kv = self.store.get(self.keys.machine(self.host))
        if kv is None:
            return None
        v = kv.json()
        if v.get("forgotten") or v.get("machine_id") != self.agent.machine:
            return None
        return int(v.get("generation", 0))

    def restart(self) -> List[Dict[str, Any]]:
        """Start again from nothing this host owned (after `cluster rejoin`): a new agent, no
        cached revision, no journal (what it held was freed by forget-host). The dropped
        journal entries."""
        dropped = self.journal()
        if dropped:
            self._save_journal([])
        try:
            os.unlink(self.cache_path)
        except FileNotFoundError:
            pass
        old = self.agent
        self.agent = Agent(self.store, self.keys, self.host, old.machine, old.lease_ttl)
        self.bound = False
        return dropped

    # ---- after a converge ------------------------------------------------------------------

    def release(self, stale: Tuple[Stale, ...]) -> List[str]:
        """Delete this host's stale address keys (each comparing the mod revision it was read
        at); journalled ones leave the journal. What was released."""
        done = []
        drop = {(s.network, s.address) for s in stale if s.mod_revision == 0}
        if drop:
            entries = self.journal()
            kept = [e for e in entries if (e["network"], e["address"]) not in drop]
            if len(kept) != len(entries):
                self._save_journal(kept)
                done.extend(f"{e['network']} {e['address']}" for e in entries if e not in kept)
        for s in stale:
            if s.mod_revision == 0:
                continue
            key = self.keys.addr(s.network, ipaddress.ip_address(s.address))
            ok, _ = self.store.txn([unchanged(key, s.mod_revision)], [delete(key)])
            if ok:
                done.append(f"{s.network} {s.address}")
        return done

    def report(self, revision: Optional[int], pending: List[str], last_error: Optional[str]) -> None:
        self.agent.report(revision, pending, last_error)

    def keepalive(self) -> bool:
        """Refresh the status lease; False when there is none or it expired."""
        lease = self.agent.lease
        return bool(lease) and self.store.keepalive(lease) > 0

    def stop(self) -> None:
        self.agent.stop()
