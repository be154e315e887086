"""`ipvlanctl cluster push`: validate a manifest directory fleet-wide, resolve what every host
must agree on (block sizes, the block grid), and store it as one revision, atomically, with
the reservations of explicit host ids and explicit addresses (SPEC 6).

One etcd transaction writes: the format key (when absent), the revision's chunks, the
reservations (create-if-absent, compared against what was read), the deletion of reservations
the new revision no longer declares, and last the ``current`` pointer. Any concurrent change to
a compared key fails the transaction; the push then starts over from a fresh read (a push
cannot race a host's claim: claims compare ``current`` too).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import UserError
from ..fleet import block, block_count, block_index, block_size_of, subnet_range
from ..model import DesiredState, IPAddress, IPNetwork
from .keys import FORMAT, Keys
from .store import KV, Store, absent, delete, dumps, put, unchanged

CHUNK_BYTES = 512 * 1024  # one value stays well under etcd's default 1.5 MiB request limit
KEEP_REVISIONS = 10  # older revisions' chunks are deleted by the push that writes a new one
MAX_TRIES = 5


class NewerFormat(UserError):
    """The store was written by a newer ipvlanctl (a format this one does not know)."""


class PushConflict(UserError):
    """The push contradicts what the cluster holds (a claimed block, a held address)."""


# ---- reading a revision ------------------------------------------------------------------------


def check_format(store: Store, keys: Keys) -> Optional[KV]:
    kv = store.get(keys.format)
    if kv is not None:
        try:
            fmt = int(kv.value.decode())
        except ValueError:
            raise NewerFormat(f"{keys.format} holds {kv.value[:40]!r}, not a format number this "
                              f"ipvlanctl knows (it writes format {FORMAT}): another program uses "
                              "this prefix, or a newer ipvlanctl wrote it; nothing was changed") from None
        if fmt > FORMAT:
            raise NewerFormat(f"the cluster data under {keys.prefix} has format {fmt}, written by a newer "
                              f"ipvlanctl (this one knows format {FORMAT}): upgrade ipvlanctl; nothing "
                              "was changed")
    return kv


@dataclass(frozen=True)
class Revision:
    number: int
    doc: Dict[str, Any]
    pointer_mod: int  # mod revision of the `current` key it was read through

    @property
    def files(self) -> List[Tuple[str, str]]:
        return [(n, t) for n, t in self.doc["files"]]

    @property
    def grid(self) -> Dict[str, Any]:
        return self.doc["grid"]


def read_current(store: Store, keys: Keys) -> Optional[Revision]:
    """The newest revision, checked (format, chunks complete, digest); None when none was pushed."""
    check_format(store, keys)
    kv = store.get(keys.current)
    if kv is None:
        return None
    ptr = kv.json()
    if int(ptr.get("format", 0)) > FORMAT:
        raise NewerFormat(f"revision {ptr.get('revision')} has format {ptr.get('format')}, written by a newer "
                          f"ipvlanctl (this one knows format {FORMAT}): upgrade ipvlanctl")
    n = int(ptr["revision"])
    chunks, _ = store.range(keys.revision(n) + "chunk/")
    data = b"".join(c.value for c in chunks)
    if len(chunks) != int(ptr["chunks"]) or hashlib.sha256(data).hexdigest() != ptr["sha256"]:
        raise UserError(f"revision {n} under {keys.prefix} is incomplete or damaged ({len(chunks)} of "
                        f"{ptr['chunks']} chunks, digest mismatch): push the directory again")
    doc = json.loads(data.decode())
    if int(doc.get("format", 0)) > FORMAT:
        raise NewerFormat(f"revision {n} has format {doc.get('format')}: upgrade ipvlanctl")
    return Revision(n, doc, kv.mod_revision)


# ---- resolving what every host must agree on ---------------------------------------------------


def _reserved_in(s, state: DesiredState, net=None) -> List[str]:
    """Addresses never handed out from a subnet: network (and IPv4 broadcast), gateway, aux,
    the hosts' underlay addresses, every host's host_access address on the network (SPEC 2.3)."""
    out = {s.cidr.network_address}
    if net is not None:
        out.update(a for a in set(net.host_access) | {a for _, a in net.host_access_by_host} if a in s.cidr)
    out.update(a for h in state.hosts.values() for a in (h.address, h.address6) if a is not None and a in s.cidr)
    if s.cidr.version == 4 and s.cidr.prefixlen <= 30:
        out.add(s.cidr.broadcast_address)
    if s.gateway is not None:
        out.add(s.gateway)
    else:  # L2: IPAM makes the first usable address the gateway; L3/L3S keep it free (ipam.py)
        from ..ipam import _l3_gateway

        gw = _l3_gateway(s.cidr)
        if gw is not None:
            out.add(gw)
    out.update(a for _, a in s.aux_addresses)
    return sorted(str(a) for a in out)


def resolve_grid(state: DesiredState) -> Dict[str, Any]:
    """Per non-internal network: its block sizes and every range's grid (with the addresses a
    host never hands out). Internal networks stay per host: not in the grid."""
    grid: Dict[str, Any] = {}
    for name, net in sorted(state.networks.items()):
        if net.internal:
            continue
        ranges = []
        for fam in (4, 6):
            size = block_size_of(net, fam)
            if size is None:
                continue
            for s in net.subnets_of(fam):
                rng = subnet_range(s)
                ranges.append({"family": fam, "subnet": str(s.cidr), "range": str(rng), "size": size,
                               "blocks": block_count(rng, size), "reserved": _reserved_in(s, state, net)})
        grid[name] = {"block_size": net.block_size, "block_size6": net.block_size6, "ranges": ranges}
    return grid


def _wanted(state: DesiredState, grid: Dict[str, Any], keys: Keys) -> Dict[str, Dict[str, Any]]:
    """The reservations a revision makes: blocks of hosts with explicit ids, explicit addresses."""
    out: Dict[str, Dict[str, Any]] = {}
    for h in state.hosts.values():
        if h.id is None:
            continue
        for net, g in grid.items():
            for r in g["ranges"]:
                b = block(ipaddress.ip_network(r["range"]), r["size"], h.id)
                if b is not None:
                    out[keys.block(net, b)] = {"host": h.name, "explicit": True}
    for c in state.containers.values():
        if c.host is None:
            continue
        for att in c.attachments:
            if att.network not in grid:
                continue
            for a in (att.ip, att.ip6):
                if a is not None:
                    out[keys.addr(att.network, a)] = {"host": c.host, "container": c.name, "explicit": True}
    return out


def block_of(grid_net: Dict[str, Any], addr: IPAddress) -> Optional[IPNetwork]:
    """The block of the grid that holds ``addr`` (None: outside every range)."""
    for r in grid_net["ranges"]:
        rng = ipaddress.ip_network(r["range"])
        k = block_index(rng, r["size"], addr)
        if k is not None:
            return block(rng, r["size"], k)
    return None


# ---- push ----------------------------------------------------------------------------------------


def read_directory(paths: Sequence[str]) -> Tuple[DesiredState, List[Tuple[str, str]]]:
    """Validate ``paths`` under cluster-mode rules and return the state and the file texts
    (exactly the texts that were validated). Raises ManifestError (nothing written)."""
    from ..manifest import load, load_texts, scan
    from ..manifest.fleet import cluster_mode

    with cluster_mode():
        load(paths)  # every loading problem reported as validate reports it
        texts: List[Tuple[str, str]] = []
        names = set()
        for f in scan(paths).files:
            with open(f, "rb") as fh:
                text = fh.read().decode("utf-8")
            name = os.path.basename(f)
            if name in names:
                raise UserError(f"two manifest files are named {name}: a revision stores one directory's "
                                "files by name; rename one")
            names.add(name)
            texts.append((f, text))
        state = load_texts(texts)
    if not state.fleet:
        raise UserError("cluster push needs a fleet manifest: declare the hosts under a top-level hosts: "
                        "section and give every container its host: (SPEC 5)")
    return state, [(os.path.basename(f), t) for f, t in texts]


@dataclass(frozen=True)
class PushResult:
    revision: int
    size: int
    chunks: int
    reserved: int
    released: int
    grid: Dict[str, Any]


def push(store: Store, keys: Keys, paths: Sequence[str], now: Optional[float] = None) -> PushResult:
    state, files = read_directory(paths)
    grid = resolve_grid(state)
    for _ in range(MAX_TRIES):
        result = _try_push(store, keys, state, files, grid, now if now is not None else time.time())
        if result is not None:
            return result
    raise UserError(f"the cluster data under {keys.prefix} kept changing during the push ({MAX_TRIES} tries): "
                    "another push or many claims at once; try again. Nothing was changed")


def _try_push(store: Store, keys: Keys, state: DesiredState, files, grid, now: float) -> Optional[PushResult]:
    fmt = check_format(store, keys)
    cur = store.get(keys.current)
    if cur is not None and int(cur.json().get("format", 0)) > FORMAT:
        raise NewerFormat(f"revision {cur.json().get('revision')} under {keys.prefix} has format "
                          f"{cur.json().get('format')}, written by a newer ipvlanctl (this one knows format "
                          f"{FORMAT}): upgrade ipvlanctl; nothing was changed")
    n = int(cur.json()["revision"]) + 1 if cur is not None else 1
    blocks = {kv.key: kv for kv in store.range(keys.blocks())[0]}
    addrs = {kv.key: kv for kv in store.range(keys.addrs())[0]}
    existing = {**blocks, **addrs}
    wanted = _wanted(state, grid, keys)

    problems: List[str] = []
    # a changed block size while blocks of the old size are held would overlap them
    for kv in blocks.values():
        net, cidr = keys.tail(kv.key, keys.blocks()).split("/", 1)
        g = grid.get(net)
        if g is None:
            continue
        b = ipaddress.ip_network(cidr.replace("_", "/"))
        size = g["block_size"] if b.version == 4 else g["block_size6"]
        if size is not None and b.prefixlen != size and kv.key not in wanted:
            problems.append(f"network {net}: block {b} is held by host {kv.json().get('host')}, but the new "
                            f"block size is /{size}: blocks of both sizes would overlap; keep the block size, "
                            "or free those blocks first (forget-host)")
    compares, ops = [], []
    reserved = 0
    for key, value in sorted(wanted.items()):
        kv = existing.get(key)
        if kv is None:
            compares.append(absent(key))
            ops.append(put(key, dumps(value)))
            reserved += 1
            continue
        old = kv.json()
        if old.get("host") != value["host"] or (value.get("container") and old.get("container") not in
                                                 (None, value.get("container"))):
            what = "block" if key.startswith(keys.blocks()) else "address"
            holder = f"host {old.get('host')}" + (f" (container {old['container']})" if old.get("container") else "")
            problems.append(f"{what} {keys.tail(key, keys.prefix)} is held by {holder}; this revision gives it to "
                            f"host {value['host']}" + (f" (container {value['container']})" if value.get("container")
                                                       else "") + ": release it there first, or choose another")
            continue
        compares.append(unchanged(key, kv.mod_revision))
        if old != value:
            ops.append(put(key, dumps(value)))
    # strict affinity: an explicit address inside a block another host holds
    held = {}
    for kv in blocks.values():
        held[kv.key] = kv.json().get("host")
    for key, value in wanted.items():
        if "container" not in value:
            continue
        net, text = keys.tail(key, keys.addrs()).split("/", 1)
        b = block_of(grid[net], ipaddress.ip_address(text))
        if b is None:
            continue
        owner = wanted.get(keys.block(net, b), {}).get("host") or held.get(keys.block(net, b))
        if owner is not None and owner != value["host"]:
            problems.append(f"container {value['container']} (host {value['host']}) network {net}: address {text} "
                            f"is in block {b} held by host {owner}; an explicit address inside a host's block "
                            "must be one of that host's containers")
    if problems:
        raise PushConflict("push refused, nothing was written:\n  " + "\n  ".join(sorted(set(problems))))
    # reservations the new revision no longer declares
    released = 0
    for key, kv in existing.items():
        if key in wanted:
            continue
        try:
            explicit = bool(kv.json().get("explicit"))
        except ValueError:
            explicit = False
        if not explicit:
            continue
        compares.append(unchanged(key, kv.mod_revision))
        released += 1
        if key.startswith(keys.blocks()):
            net, cidr = keys.tail(key, keys.blocks()).split("/", 1)
            b = ipaddress.ip_network(cidr.replace("_", "/"))
            owner = kv.json().get("host")
            if any(k.startswith(keys.addrs(net)) and addrs[k].json().get("host") == owner
                   and ipaddress.ip_address(keys.tail(k, keys.addrs(net))) in b for k in addrs):
                # its host still has addresses in it: the block stays that host's, as a claim
                # (strict affinity), until the host releases them or is forgotten
                ops.append(put(key, dumps({"host": owner, "explicit": False, "claimed_at": now})))
                continue
        ops.append(delete(key))

    doc = {
        "format": FORMAT,
        "revision": n,
        "pushed_at": now,
        "pushed_by": socket.gethostname(),
        "files": [[name, text] for name, text in files],
        "grid": grid,
        "hosts": {h.name: {"id": h.id} for h in state.hosts.values()},
    }
    data = dumps(doc).encode()
    chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    if fmt is None:
        compares.append(absent(keys.format))
        ops.append(put(keys.format, str(FORMAT)))
    else:
        compares.append(unchanged(keys.format, fmt.mod_revision))
    compares.append(unchanged(keys.current, cur.mod_revision if cur is not None else 0))
    for i, c in enumerate(chunks):
        ops.append(put(keys.chunk(n, i), c))
    old = n - KEEP_REVISIONS
    if old >= 1:
        from .store import _b64, _prefix_end

        ops.append({"request_delete_range": {"key": _b64(keys.revision(old)),
                                             "range_end": _prefix_end(keys.revision(old))}})
    pointer = {"format": FORMAT, "revision": n, "chunks": len(chunks), "sha256": hashlib.sha256(data).hexdigest(),
               "pushed_at": now}
    ops.append(put(keys.current, dumps(pointer)))  # last: a reader never sees a half-written revision
    ok, _ = store.txn(compares, ops)
    if not ok:
        return None
    return PushResult(n, len(data), len(chunks), reserved, released, grid)
