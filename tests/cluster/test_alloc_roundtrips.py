"""Round trips of the allocation core (C1, bench/README.md): an allocation from a host's own
blocks is one etcd transaction, and releasing an address this agent wrote is one more (the
delete compares the mod revision the write returned); anything else falls back to reading the
key first, so the ownership rules stay as they were."""
from __future__ import annotations

import pytest

from reconciler.cluster.alloc import Agent, NotOwner
from reconciler.cluster.revision import push
from reconciler.cluster.store import Store, dumps, put

from .helpers import write


class Counting(Store):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.paths = []

    def _post(self, path, body):
        self.paths.append(path)
        return super()._post(path, body)


def test_allocate_and_release_are_one_round_trip_each(tmp_path, etcd, keys):
    store = Counting(etcd.url)
    push(store, keys, [write(tmp_path)])
    a = Agent(store, keys, "h2", "m2")
    a.bind()
    a.allocate("lan", "warm")  # the first call claims a block and loads the caches
    store.paths.clear()
    got = a.allocate("lan", "c1")
    assert store.paths == ["kv/txn"]
    store.paths.clear()
    assert a.release("lan", got) is True
    assert store.paths == ["kv/txn"]
    assert store.get(keys.addr("lan", got)) is None
    assert a.release("lan", got) is False  # gone: read, nothing deleted


def test_release_of_a_key_changed_since_falls_back_to_the_ownership_check(tmp_path, etcd, store, keys):
    push(store, keys, [write(tmp_path)])
    a = Agent(store, keys, "h2", "m2")
    a.bind()
    got = a.allocate("lan", "c1")
    # meanwhile the key was rewritten as another host's (a bad manual edit): never deleted
    store.txn([], [put(keys.addr("lan", got), dumps({"host": "h3", "container": "x"}))])
    with pytest.raises(NotOwner):
        a.release("lan", got)
    assert store.get(keys.addr("lan", got)).json()["host"] == "h3"
