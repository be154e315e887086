"""`ipvlanctl cluster rejoin` against a real etcd (SPEC 6): a host fenced by forget-host takes
part again only after it, starting from nothing it owned; the agents and the daemon that knew
the old generation never write anything of it back."""
from __future__ import annotations

import ipaddress as ia
import json
import time

import pytest

from reconciler.cli import main
from reconciler.cluster.admin import forget_host, rejoin
from reconciler.cluster.alloc import Agent, HostForgotten, HostRejoined, HostTaken
from reconciler.cluster.revision import push
from reconciler.cluster.store import dumps, put

from .helpers import write
from .test_watch import FLEET, daemon, host, quiet_logs, step  # noqa: F401  (fixtures)


def cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def forget(store, keys, name, agent):
    agent.stop()  # its lease is gone, as when the host died
    return forget_host(store, keys, name, grace=0, now=time.time() + 30)


def test_rejoin_refuses_a_host_that_is_not_forgotten_and_writes_nothing(tmp_path, etcd, store, keys, capsys):
    push(store, keys, [write(tmp_path)])
    rc, _, err = cli(capsys, "cluster", "rejoin", "h3", "--etcd", etcd.url, "--prefix", keys.prefix)
    assert rc == 1 and "never bound" in err and "ipvlanctl watch --etcd URL --host h3" in err
    assert store.get(keys.machine("h3")) is None
    a = Agent(store, keys, "h3", "m3")
    a.bind()
    before = store.get(keys.machine("h3"))
    rc, _, err = cli(capsys, "cluster", "rejoin", "h3", "--etcd", etcd.url, "--prefix", keys.prefix)
    assert rc == 1 and "is not forgotten" in err and "Traceback" not in err
    assert store.get(keys.machine("h3")) == before
    # an unreachable etcd: a clear error, exit 1
    rc, _, err = cli(capsys, "cluster", "rejoin", "h3", "--etcd", "http://127.0.0.1:1", "--prefix", keys.prefix)
    assert rc == 1 and "cannot reach etcd" in err


def test_rejoined_host_starts_from_nothing_and_the_old_agent_writes_nothing(tmp_path, etcd, store, keys, capsys):
    push(store, keys, [write(tmp_path)])
    old = Agent(store, keys, "h3", "m3")
    old.bind()
    got = [old.allocate("lan", f"c{i}") for i in range(3)]
    old.report(1, [], None)
    assert forget(store, keys, "h3", old)["addresses"] == 3
    with pytest.raises(HostForgotten):
        Agent(store, keys, "h3", "m3").bind()
    # meanwhile another host takes h3's freed block (its addresses)
    h2 = Agent(store, keys, "h2", "m2")
    h2.bind()
    assert h2.allocate("lan", "x") == got[0]

    rc, out, err = cli(capsys, "cluster", "rejoin", "h3", "--etcd", etcd.url, "--prefix", keys.prefix)
    assert rc == 0, err
    assert "rejoined the cluster as its machine m3" in out and "generation 1" in out
    binding = store.get(keys.machine("h3")).json()
    assert binding["machine_id"] == "m3" and binding["generation"] == 1 and not binding.get("forgotten")
    # the agent that ran before (generation 0) changes nothing: told to start again
    with pytest.raises(HostRejoined):
        old.allocate("lan", "late")
    with pytest.raises(HostRejoined):
        old.report(1, [], None)
    assert store.get(keys.status("h3")) is None
    # a new agent (a restart) binds at generation 1, holds nothing, allocates afresh
    new = Agent(store, keys, "h3", "m3")
    assert new.bind() == 1
    assert new.addresses() == {}
    a = new.allocate("lan", "c0")
    assert a not in got[:1] and new.addresses()[("lan", a)]["container"] == "c0"
    assert [kv for kv in store.range(keys.addrs())[0] if kv.json()["host"] == "h3"] != []
    # and a second rejoin is refused: it is not forgotten any more
    rc, _, err = cli(capsys, "cluster", "rejoin", "h3", "--etcd", etcd.url, "--prefix", keys.prefix)
    assert rc == 1 and "not forgotten" in err


def test_rejoin_on_replacement_hardware_and_an_interrupted_forget_host_finished(tmp_path, etcd, store, keys, capsys):
    push(store, keys, [write(tmp_path)])
    old = Agent(store, keys, "h3", "m3")
    old.bind()
    old.allocate("lan", "c0")
    # forget-host interrupted after fencing, before freeing: the binding says forgotten, the
    # keys are still there (what a crash of the admin's command leaves)
    b = store.get(keys.machine("h3"))
    store.txn([], [put(keys.machine("h3"), dumps(dict(b.json(), forgotten=True, generation=1))),
                   put(keys.generation("h3"), "1")])
    rc, out, err = cli(capsys, "cluster", "rejoin", "h3", "--machine-id", "m3-new", "--etcd", etcd.url,
                       "--prefix", keys.prefix)
    assert rc == 0, err
    assert "machine m3-new" in out and "(was m3" in out and "freed 1 block(s) and 1 address(es)" in out
    assert [kv for kv in store.range(keys.addrs())[0] if kv.json()["host"] == "h3"] == []
    with pytest.raises(HostTaken):  # the old hardware is not h3 any more
        Agent(store, keys, "h3", "m3").bind()
    assert Agent(store, keys, "h3", "m3-new").bind() == 1
    # --this-machine and --machine-id exclude each other
    with pytest.raises(SystemExit):
        main(["cluster", "rejoin", "h3", "--this-machine", "--machine-id", "x", "--etcd", etcd.url])


def test_fenced_daemon_resumes_after_rejoin_with_new_addresses_and_drops_its_old_journal(
        tmp_path, etcd, store, keys, host):
    push(store, keys, [write(tmp_path, FLEET)])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    assert host.containers() == ["web1"]
    first = host.addresses()
    dm.source.stop()
    forget_host(store, keys, "h1", grace=0, now=time.time() + 10)
    step(dm, "resync")
    assert dm.fenced and host.addresses() == first  # fenced: nothing changed
    # an address the old generation journalled while cut off must never be written back
    dm.source._save_journal([{"network": "lan", "address": "10.50.0.77", "container": "web1", "family": 4,
                              "claim": "c", "at": 0, "generation": 0}])
    h2 = Agent(store, keys, "h2", "machine-h2")  # h2 takes the freed block meanwhile
    h2.bind()
    taken = h2.allocate("lan", "web2")
    assert str(taken) in first

    step(dm, "resync")  # still forgotten: still fenced
    assert dm.fenced
    assert rejoin(store, keys, "h1")["generation"] == 1
    step(dm, "resync")  # notices the rejoin, starts again from nothing it owned
    assert not dm.fenced and dm.status.cluster["fenced"] is None
    b = dm.triggers.poll()
    assert b is not None and "host rejoined" in b.details
    dm.handle(b)
    assert dm.status.last_result == "converged", dm.status.last_errors
    assert host.containers() == ["web1"] and host.addresses() != first
    mine = Agent(store, keys, "h1", "machine-h1").addresses()
    assert [str(a) for (_, a) in mine] == host.addresses()
    assert store.get(keys.addr("lan", ia.ip_address("10.50.0.77"))) is None
    assert dm.source.journal() == []
    assert json.loads(store.get(keys.status("h1")).value)["generation"] == 1


def test_restarted_daemon_after_rejoin_drops_journal_entries_of_the_old_generation(
        tmp_path, etcd, store, keys, host):
    push(store, keys, [write(tmp_path, FLEET)])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    dm.source._save_journal([{"network": "lan", "address": "10.50.0.77", "container": "web1", "family": 4,
                              "claim": "c", "at": 0, "generation": 0}])
    dm.source.stop()
    forget_host(store, keys, "h1", grace=0, now=time.time() + 10)
    rejoin(store, keys, "h1")
    dm2 = daemon(tmp_path, etcd.url, keys)  # the same state directory: a restart
    step(dm2, "start")
    assert dm2.status.last_result == "converged", dm2.status.last_errors
    assert store.get(keys.addr("lan", ia.ip_address("10.50.0.77"))) is None
    assert dm2.source.journal() == []
