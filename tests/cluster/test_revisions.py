"""Revisions: chunks, damage detection, history kept, pushes racing claims; a 3-member etcd
with one member down."""
from __future__ import annotations

import ipaddress
import threading

import pytest

from reconciler.cluster import revision
from reconciler.cluster.admin import forget_host
from reconciler.cluster.alloc import Agent
from reconciler.cluster.revision import KEEP_REVISIONS, push, read_current
from reconciler.cluster.store import Store
from reconciler.errors import UserError

from .helpers import FLEET, write


def test_chunks_pointer_and_damage(tmp_path, store, keys, monkeypatch):
    monkeypatch.setattr(revision, "CHUNK_BYTES", 200)
    r = push(store, keys, [write(tmp_path)])
    assert r.chunks > 3
    rev = read_current(store, keys)
    assert rev.files == [("fleet.yaml", FLEET)]
    # a chunk lost (or edited by hand): refused, never half a manifest
    store.txn([], [{"request_delete_range": {"key": _b(keys.chunk(1, 1))}}])
    with pytest.raises(UserError, match="incomplete or damaged"):
        read_current(store, keys)


def test_history_is_bounded(tmp_path, store, keys):
    d = write(tmp_path)
    for _ in range(KEEP_REVISIONS + 2):
        push(store, keys, [d])
    kept = {kv.key.split("/")[3] for kv in store.range(keys.prefix + "revisions/")[0]}
    assert len(kept) == KEEP_REVISIONS
    assert read_current(store, keys).number == KEEP_REVISIONS + 2


def test_pushes_racing_claims(tmp_path, store, keys):
    """Pushes while three hosts claim blocks and allocate: every claim was made under the grid
    of the revision current at that moment, nothing is lost, nothing duplicated."""
    d = write(tmp_path)
    push(store, keys, [d])
    agents = [Agent(store, keys, h, f"m-{h}") for h in ("h1", "h2", "h3")]
    for a in agents:
        a.bind()
    got, errors = [], []
    lock = threading.Lock()

    def alloc(agent):
        try:
            for i in range(60):
                x = agent.allocate("lan", f"{agent.host}-{i}")
                with lock:
                    got.append(x)
        except Exception as e:
            errors.append(repr(e))

    def pusher():
        try:
            for _ in range(8):
                push(store, keys, [d])
        except Exception as e:
            errors.append(repr(e))

    ts = [threading.Thread(target=alloc, args=(a,)) for a in agents] + [threading.Thread(target=pusher)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert errors == []
    assert len(got) == len(set(got)) == 180
    assert read_current(store, keys).number == 9
    held = {ipaddress.ip_address(keys.tail(kv.key, keys.addrs("lan"))) for kv in store.range(keys.addrs("lan"))[0]
            if not kv.json().get("explicit")}
    assert held == set(got)


def test_forget_host_twice_finishes_without_bumping_again(tmp_path, store, keys):
    push(store, keys, [write(tmp_path)])
    a = Agent(store, keys, "h2", "m2")
    a.bind()
    a.allocate("lan", "c")
    bound = store.get(keys.machine("h2")).json()["bound_at"]
    assert forget_host(store, keys, "h2", grace=0, now=bound + 1)["generation"] == 1
    assert forget_host(store, keys, "h2", grace=0, now=bound + 2) == {"blocks": 0, "addresses": 0, "generation": 1}


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    from .conftest import start_cluster

    members = start_cluster(str(tmp_path_factory.mktemp("etcd3")), 3)
    yield members
    for m in members:
        m.stop()


def test_three_members_one_down(tmp_path, three, prefix):
    """--etcd with every member's URL: a member that is down is skipped (the push and the
    allocations go to the others); the data is the cluster's, read back from any member."""
    from reconciler.cluster.keys import Keys

    keys = Keys(prefix)
    url = ",".join(m.url for m in three)
    three[0].stop()
    s = Store(url)
    assert push(s, keys, [write(tmp_path)]).revision == 1
    a = Agent(s, keys, "h2", "m2")
    a.bind()
    x = a.allocate("lan", "c1")
    assert read_current(Store(three[2].url), keys).number == 1
    assert Store(three[1].url).get(keys.addr("lan", x)).json()["container"] == "c1"


def _b(s):
    import base64

    return base64.b64encode(s.encode()).decode()


def test_etcd_limits_named(tmp_path, three, prefix):
    """A push over etcd's --max-txn-ops (default 128, as the 3-member cluster runs): refused
    naming the flag; nothing written."""
    from reconciler.cluster.keys import Keys
    from reconciler.cluster.store import StoreRefused

    lines = [FLEET]
    for i in range(140):
        lines.append(f"  x{i}: {{host: h2, networks: {{lan: {{ip: 10.50.9.{i + 10}}}}}}}\n")
    keys = Keys(prefix)
    s = Store(",".join(m.url for m in three[1:]))
    with pytest.raises(StoreRefused, match="--max-txn-ops"):
        push(s, keys, [write(tmp_path, "".join(lines))])
    assert s.range(keys.prefix)[0] == []
