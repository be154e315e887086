"""`ipvlanctl cluster status`, `cluster forget-host` and `cluster rejoin` (SPEC 6)."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ..errors import UserError
from .keys import Keys
from .revision import read_current
from .store import Store, delete, dumps, put, unchanged

DEFAULT_GRACE = 60.0  # seconds after a host's lease expired before forget-host frees its keys
BATCH = 100  # operations per transaction (etcd's default --max-txn-ops is 128)


def _json(kv) -> Dict[str, Any]:
    try:
        v = kv.json()
        return v if isinstance(v, dict) else {}
    except ValueError:
        return {}


def status(store: Store, keys: Keys) -> Dict[str, Any]:
    """Every host: from the newest revision, the bindings and the status/last-seen records."""
    rev = read_current(store, keys)
    hosts: Dict[str, Dict[str, Any]] = {}

    def entry(name: str) -> Dict[str, Any]:
        return hosts.setdefault(name, {"host": name, "id": None, "in_revision": False, "machine_id": None,
                                       "forgotten": False, "alive": False, "revision": None, "pending": [],
                                       "last_error": None, "last_seen": None, "blocks": 0, "addresses": 0})

    if rev is not None:
        for name, h in rev.doc.get("hosts", {}).items():
            e = entry(name)
            e["id"], e["in_revision"] = h.get("id"), True
    for kv in store.range(keys.prefix + "hosts/")[0]:
        name, leaf = keys.tail(kv.key, keys.prefix + "hosts/").rsplit("/", 1)
        if leaf == "machine":
            v = _json(kv)
            e = entry(name)
            e["machine_id"], e["forgotten"] = v.get("machine_id"), bool(v.get("forgotten"))
    for kv in store.range(keys.status())[0]:
        v = _json(kv)
        e = entry(keys.tail(kv.key, keys.status()))
        e.update(alive=True, revision=v.get("revision"), pending=v.get("pending") or [],
                 last_error=v.get("last_error"))
    for kv in store.range(keys.seen())[0]:
        v = _json(kv)
        e = entry(keys.tail(kv.key, keys.seen()))
        e["last_seen"] = v.get("at")
        if not e["alive"]:
            e["revision"] = v.get("revision")
    for what, prefix in (("blocks", keys.blocks()), ("addresses", keys.addrs())):
        for kv in store.range(prefix)[0]:
            h = _json(kv).get("host")
            if h is not None:
                entry(h)[what] += 1
    return {"format_version": "1", "revision": rev.number if rev else None,
            "hosts": [hosts[n] for n in sorted(hosts)]}


def status_text(data: Dict[str, Any], now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    out = [f"revision: {data['revision'] if data['revision'] is not None else 'none pushed'}"]
    out.append(f"{'HOST':<20} {'ID':>4} {'STATE':<10} {'REV':>5} {'PENDING':>7} {'BLOCKS':>6} {'ADDRS':>6} "
               "LAST SEEN  LAST ERROR")
    for h in data["hosts"]:
        state = "forgotten" if h["forgotten"] else "up" if h["alive"] else "down" if h["last_seen"] else "never"
        seen = f"{int(now - h['last_seen'])}s ago" if h["last_seen"] else "-"
        err = (h["last_error"] or "-").splitlines()[0][:60] if h["last_error"] else "-"
        out.append(f"{h['host']:<20} {h['id'] if h['id'] is not None else '-':>4} {state:<10} "
                   f"{h['revision'] if h['revision'] is not None else '-':>5} {len(h['pending']):>7} "
                   f"{h['blocks']:>6} {h['addresses']:>6} {seen:<10} {err}")
        for p in h["pending"][:5]:
            out.append(f"    pending: {p}")
    return "\n".join(out) + "\n"


def forget_host(store: Store, keys: Keys, name: str, grace: float = DEFAULT_GRACE,
                now: Optional[float] = None) -> Dict[str, int]:
    """Fence a dead host and free its automatic blocks and addresses. Refused while its lease
    holds, and until the lease expired at least ``grace`` seconds ago. Explicit reservations
    (from the manifests) stay: a push that no longer declares them releases them."""
    now = time.time() if now is None else now
    binding = store.get(keys.machine(name))
    if binding is None:
        raise UserError(f"host {name} has never bound to the cluster (no {keys.machine(name)}): nothing to forget")
    if store.get(keys.status(name)) is not None:
        raise UserError(f"host {name} is alive: its status lease still holds. forget-host only frees a host "
                        "that is dead and fenced")
    seen = store.get(keys.seen(name))
    bound = _json(binding)
    if seen is not None:
        v = _json(seen)
        if v.get("lease") and store.time_to_live(int(v["lease"])) > 0:
            raise UserError(f"host {name} is alive: its lease {v['lease']} has not expired")
        expired = float(v.get("at", 0)) + float(v.get("ttl", 0))
    else:
        expired = float(bound.get("bound_at", 0))
    if now < expired + grace:
        raise UserError(f"host {name}'s lease expired {max(0, int(now - expired))}s ago, less than the grace "
                        f"period of {int(grace)}s: wait {int(expired + grace - now) + 1}s more (a host that "
                        "was only cut off may come back)")
    gen_kv = store.get(keys.generation(name))
    gen = int(gen_kv.value.decode()) if gen_kv is not None else 0
    if not bound.get("forgotten"):  # (forgotten already: a second run finishes the freeing)
        gen += 1
        fenced = dict(bound, forgotten=True, generation=gen, forgotten_at=now)
        ok, _ = store.txn([unchanged(keys.machine(name), binding.mod_revision),
                           unchanged(keys.generation(name), gen_kv.mod_revision if gen_kv else 0)],
                          [put(keys.machine(name), dumps(fenced)), put(keys.generation(name), str(gen))])
        if not ok:
            raise UserError(f"host {name} changed while forgetting it (did it come back?); nothing was freed")
    # the host is fenced (its claims compare the binding): its keys cannot change any more
    return dict(_free(store, keys, name, "forget-host"), generation=gen)


def _free(store: Store, keys: Keys, name: str, command: str) -> Dict[str, int]:
    """Delete a fenced host's automatic blocks and addresses (explicit reservations stay)."""
    freed = {"blocks": 0, "addresses": 0}
    for what, prefix in (("blocks", keys.blocks()), ("addresses", keys.addrs())):
        doomed = [kv for kv in store.range(prefix)[0]
                  if _json(kv).get("host") == name and not _json(kv).get("explicit")]
        for i in range(0, len(doomed), BATCH // 2):
            part = doomed[i:i + BATCH // 2]
            ok, _ = store.txn([unchanged(kv.key, kv.mod_revision) for kv in part], [delete(kv.key) for kv in part])
            if not ok:
                raise UserError(f"host {name}: its {what} changed while freeing them; run {command} again")
            freed[what] += len(part)
    return freed


def rejoin(store: Store, keys: Keys, name: str, machine: Optional[str] = None,
           now: Optional[float] = None) -> Dict[str, Any]:
    """Let a host that `forget-host` fenced take part again (SPEC 6): bind NAME to ``machine``
    (default: the machine it was bound to; another one for replaced hardware) at the generation
    forget-host gave it. It starts from nothing it owned: what forget-host freed stays freed (a
    forget-host interrupted halfway is finished first), its agent allocates new addresses; the
    explicit reservations of the manifests stay its own. Refused (UserError, nothing written)
    for a host that was never bound or is not forgotten."""
    now = time.time() if now is None else now
    binding = store.get(keys.machine(name))
    if binding is None:
        raise UserError(f"host {name} has never bound to the cluster (no {keys.machine(name)}): nothing to "
                        f"rejoin; start its agent: ipvlanctl watch --etcd URL --host {name}")
    bound = _json(binding)
    if not bound.get("forgotten"):
        raise UserError(f"host {name} is not forgotten (bound to machine {str(bound.get('machine_id'))[:12]}..., "
                        f"generation {bound.get('generation', 0)}): nothing to rejoin. Only a host fenced by "
                        "`cluster forget-host` needs `cluster rejoin`")
    freed = _free(store, keys, name, "rejoin")
    gen_kv = store.get(keys.generation(name))
    gen = int(gen_kv.value.decode()) if gen_kv is not None else int(bound.get("generation", 0))
    previous = bound.get("machine_id")
    value = {"machine_id": machine or previous, "generation": gen, "bound_at": now, "rejoined_at": now}
    if machine and machine != previous:
        value["previous_machine_id"] = previous
    ok, _ = store.txn([unchanged(keys.machine(name), binding.mod_revision),
                       unchanged(keys.generation(name), gen_kv.mod_revision if gen_kv else 0)],
                      [put(keys.machine(name), dumps(value))])
    if not ok:
        raise UserError(f"host {name}'s binding changed while rejoining it (another forget-host or rejoin?); "
                        "nothing was rejoined: run it again")
    return {"generation": gen, "machine_id": value["machine_id"], "previous_machine_id": previous,
            "freed_blocks": freed["blocks"], "freed_addresses": freed["addresses"]}


