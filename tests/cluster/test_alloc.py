"""The allocation core against a real etcd: concurrency, host binding, forget-host."""
from __future__ import annotations

import ipaddress
import random
import threading
import time

import pytest

from reconciler.cli import main
from reconciler.cluster.admin import forget_host
from reconciler.cluster.alloc import Agent, HostForgotten, HostTaken, NotOwner
from reconciler.cluster.revision import push

from .helpers import write

HOSTS = ("h1", "h2", "h3")


def test_3_hosts_x_8_workers_allocate_and_release_1000(tmp_path, store, keys):
    push(store, keys, [write(tmp_path)])
    agents = {h: Agent(store, keys, h, f"machine-{h}") for h in HOSTS}
    for a in agents.values():
        a.bind()
    held = {}  # address -> (host, container): what the workers hold right now
    lock = threading.Lock()
    duplicates, errors = [], []
    total = 1000
    per_worker = [total // 24 + (1 if i < total % 24 else 0) for i in range(24)]

    def worker(host, n, seed):
        rnd = random.Random(seed)
        mine = []
        try:
            for i in range(n):
                name = f"{host}-w{seed}-c{i}"
                a = agents[host].allocate("lan", name)
                with lock:
                    if a in held:
                        duplicates.append((a, held[a], (host, name)))
                    held[a] = (host, name)
                mine.append(a)
                if rnd.random() < 0.5:  # release about half of them again, at random
                    b = mine.pop(rnd.randrange(len(mine)))
                    with lock:
                        del held[b]
                    assert agents[host].release("lan", b)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(HOSTS[i % 3], per_worker[i], i)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert duplicates == []
    assert sum(per_worker) == 1000
    # every remaining address key matches a live allocation, and the other way round
    keys_now = {}
    for kv in store.range(keys.addrs("lan"))[0]:
        v = kv.json()
        if v.get("explicit"):
            continue
        keys_now[ipaddress.ip_address(keys.tail(kv.key, keys.addrs("lan")))] = (v["host"], v["container"])
    assert keys_now == held
    # strict affinity: every address lies in a block its host holds
    blocks = {}
    for kv in store.range(keys.blocks("lan"))[0]:
        blocks[ipaddress.ip_network(keys.tail(kv.key, keys.blocks("lan")).replace("_", "/"))] = kv.json()["host"]
    for a, (host, _) in held.items():
        assert [h for b, h in blocks.items() if a in b] == [host]
    # and never the gateway or the network address
    assert ipaddress.ip_address("10.50.0.1") not in held and ipaddress.ip_address("10.50.0.0") not in held


def test_second_machine_refused(tmp_path, store, keys):
    push(store, keys, [write(tmp_path)])
    Agent(store, keys, "h2", "machine-A").bind()
    Agent(store, keys, "h2", "machine-A").bind()  # the same machine again (a restart): fine
    with pytest.raises(HostTaken, match="bound to another machine"):
        Agent(store, keys, "h2", "machine-B").bind()


def test_release_checks_owner(tmp_path, store, keys):
    push(store, keys, [write(tmp_path)])
    a1, a2 = Agent(store, keys, "h2", "m2"), Agent(store, keys, "h3", "m3")
    a1.bind(), a2.bind()
    x = a1.allocate("lan", "c1")
    with pytest.raises(NotOwner, match="held by host h2"):
        a2.release("lan", x)
    with pytest.raises(NotOwner, match="explicit address"):
        a1.release("lan", ipaddress.ip_address("10.50.8.5"))
    assert a1.release("lan", x) and not a1.release("lan", x)


def test_forget_host_refuses_before_grace_then_frees(tmp_path, etcd, store, keys, capsys):
    push(store, keys, [write(tmp_path)])
    dead = Agent(store, keys, "h3", "m3", lease_ttl=1)
    dead.bind()
    got = [dead.allocate("lan", f"c{i}") for i in range(70)]  # two blocks
    dead.report(1, [], None)
    args = ["cluster", "forget-host", "h3", "--etcd", etcd.url, "--prefix", keys.prefix]
    # without --confirm-fenced: refused
    assert main(args) == 1
    assert "--confirm-fenced" in capsys.readouterr().err
    # alive (its lease holds): refused
    assert main(args + ["--confirm-fenced"]) == 1
    assert "is alive" in capsys.readouterr().err
    # the lease expires (the host died); within the grace period: refused
    deadline = time.monotonic() + 10
    while store.get(keys.status("h3")) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get(keys.status("h3")) is None
    assert main(args + ["--confirm-fenced", "--grace", "60"]) == 1
    assert "less than the grace period of 60s" in capsys.readouterr().err
    assert len([kv for kv in store.range(keys.addrs("lan"))[0] if kv.json()["host"] == "h3"]) == 70
    # after the grace period: frees its blocks and addresses, bumps its generation
    seen = store.get(keys.seen("h3")).json()
    r = forget_host(store, keys, "h3", grace=5, now=seen["at"] + seen["ttl"] + 6)
    assert r == {"blocks": 2, "addresses": 70, "generation": 1}
    assert not [kv for kv in store.range(keys.addrs())[0] if kv.json()["host"] == "h3"]
    assert not [kv for kv in store.range(keys.blocks())[0] if kv.json()["host"] == "h3"]
    # the fenced host claims nothing and reports nothing, restarted or not
    with pytest.raises(HostForgotten):
        dead.allocate("lan", "late")
    with pytest.raises(HostForgotten):
        Agent(store, keys, "h3", "m3").bind()
    # another host can now use the freed block
    other = Agent(store, keys, "h2", "m2")
    other.bind()
    assert other.allocate("lan", "new") == got[0]


def test_underlay_address_never_handed_out(tmp_path, store, keys):
    """A host's underlay address inside a shared subnet is reserved in the grid."""
    from .helpers import FLEET

    push(store, keys, [write(tmp_path, FLEET.replace("192.168.1.12", "10.50.0.66"))])
    a = Agent(store, keys, "h2", "m2")
    a.bind()
    got = [a.allocate("lan", f"c{i}") for i in range(3)]
    assert [str(x) for x in got] == ["10.50.0.64", "10.50.0.65", "10.50.0.67"]


def test_agent_allocations_feed_the_daemon_view(tmp_path, store, keys):
    """Revision + the cluster's address records -> this host's DesiredState (view.host_view):
    what is missing is allocated with the Agent, then the view is complete."""
    from reconciler.cluster.revision import read_current
    from reconciler.cluster.view import host_view, records_from_store

    push(store, keys, [write(tmp_path)])
    rev = read_current(store, keys)
    agent = Agent(store, keys, "h1", "m1")
    agent.bind()
    v = host_view(rev.files, rev.grid, "h1", records_from_store(store, keys))
    assert {(n.container, n.network) for n in v.needs} == {("web1", "lan"), ("web1", "l3a")}
    for n in v.needs:
        agent.allocate(n.network, n.container, n.family)
    v = host_view(rev.files, rev.grid, "h1", records_from_store(store, keys))
    assert v.needs == () and v.stale == ()
    web1 = {a.network: a.ip for a in v.state.containers["web1"].attachments}
    # h1 has id 0: its reserved block 0 of each range (gateways excluded: the declared 10.50.0.1,
    # and on l3a, which declares none, the first usable address, kept free as in file mode)
    assert web1 == {"lan": ipaddress.ip_address("10.50.0.2"), "l3a": ipaddress.ip_address("10.60.0.2")}
    assert v.state.remote["web2"].attachments[0].ip == ipaddress.ip_address("10.50.8.5")
