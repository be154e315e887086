"""`watch --etcd`: the daemon's cluster source against a real etcd, driven batch by batch, with
the real engine (plan, apply, verify) on a simulated host (observe returns a HostState, execute
changes it as a perfect kernel would: the fakes of tests/unit/test_saved_plan.py)."""
from __future__ import annotations

import io
import ipaddress as ia
import json
import time

import pytest

import reconciler.kernel.apply as kapply
import reconciler.kernel.observe as kobserve
from reconciler.cli import main
from reconciler.cluster.admin import forget_host
from reconciler.cluster.alloc import Agent
from reconciler.cluster.revision import push
from reconciler.cluster.source import ClusterSource
from reconciler.daemon import logs
from reconciler.daemon.clusterwatch import ClusterDaemon
from reconciler.daemon.statusfile import read_status
from reconciler.kernel.apply import ApplyResult
from reconciler.objects import HostFacts, HostLink, HostState, Kind
from reconciler.plan import Op

from .conftest import Etcd
from .helpers import write

FLEET = """\
version: 1
hosts:
  h1: {address: 192.168.1.11}
  h2: {address: 192.168.1.12}
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.50.0.0/20, gateway: 10.50.0.1}]}
containers:
  web1: {host: h1, networks: {lan: {}}}
  web2: {host: h2, networks: {lan: {}}}
"""
NET2 = """\
  lan2: {parent: eth1, subnets: [{subnet: 10.70.0.0/20, gateway: 10.70.0.1}]}
"""


def link(name, index, addr):
    return HostLink(name, index, "", True, False, addresses=(ia.ip_interface(addr),))


class FakeHost:
    """The host as observe reports it; execute changes it as the kernel would."""

    def __init__(self):
        self.objects = {}
        self.facts = HostFacts(links={"eth0": link("eth0", 2, "192.168.1.11/24"),
                                      "eth1": link("eth1", 3, "192.168.2.11/24")})

    def live(self):
        return HostState(self.objects.values(), self.facts)

    def execute(self, actions, kernel, snap, *a, **kw):
        for x in actions:
            if x.op is Op.DELETE:
                gone = self.objects.pop(x.key, None)
                if gone is not None and gone.kind is Kind.NETNS:  # its links and addresses go with it
                    self.objects = {k: o for k, o in self.objects.items() if getattr(o, "ns", None) != gone.name}
            else:
                self.objects[x.key] = x.after
        return ApplyResult(done=list(actions))

    def containers(self):
        return sorted(o.name for o in self.objects.values() if o.kind is Kind.NETNS)

    def addresses(self):
        return sorted(str(o.address.ip) for o in self.objects.values() if o.kind is Kind.ADDRESS
                      and o.address.version == 4)


class FakeKernel:
    class counter:
        count = 0

    def close(self):
        pass


@pytest.fixture
def host(monkeypatch):
    h = FakeHost()
    monkeypatch.setattr(kobserve, "observe", lambda kernel, intents=(), *a, **kw: kobserve.Observation(h.live(), None, {}))
    monkeypatch.setattr(kapply, "execute", h.execute)
    return h


@pytest.fixture(autouse=True)
def quiet_logs():
    buf = io.StringIO()
    logs.setup("json", "debug", stream=buf)
    yield buf
    logs.setup("text", "info")


def daemon(tmp_path, url, keys, host="h1", store=None):
    src = ClusterSource(url, host, str(tmp_path / "state"), prefix=keys.prefix, machine=f"machine-{host}",
                        store=store, lease_ttl=5)
    return ClusterDaemon(src, str(tmp_path / "state"), etcd_url=url, status_file=str(tmp_path / "status.json"),
                         resync_interval=60, kernel_factory=FakeKernel, backoff_base=0.01, backoff_cap=0.01)


def step(d, source="etcd", detail="test"):
    if source == "resync":  # the periodic resync is a timer
        d.triggers.schedule("resync", d.clock())
    else:
        d.triggers.put(source, detail, immediate=True)
    b = d.triggers.poll()
    assert b is not None
    d.handle(b)


def cluster_status(url, keys):
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        rc = main(["cluster", "status", "--etcd", url, "--prefix", keys.prefix, "--format", "json"])
    assert rc == 0
    return json.loads(out.getvalue())


def host_entry(doc, name):
    hosts = doc["hosts"]
    if isinstance(hosts, dict):
        return hosts[name]
    return next(h for h in hosts if h.get("host") == name)


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_push_converges_and_status_shows_the_revision_then_a_push_arrives_through_the_watch(
        tmp_path, etcd, store, keys, host):
    d = write(tmp_path, FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start", "daemon started")
    assert dm.status.last_result == "converged", dm.status.last_errors
    assert host.containers() == ["web1"]
    addr = host.addresses()
    assert len(addr) == 1 and ia.ip_address(addr[0]) in ia.ip_network("10.50.0.0/20")
    # the address is this host's key, in a block this host claimed
    mine = Agent(store, keys, "h1", "machine-h1").addresses()
    assert [str(a) for (_, a) in mine] == addr
    st = host_entry(cluster_status(etcd.url, keys), "h1")
    assert st["alive"] and st["revision"] == 1 and st["pending"] == []
    assert read_status(str(tmp_path / "status.json"))["cluster"]["converged_revision"] == 1

    # a second push (web3 on h1, web1 removed) reaches the daemon through the etcd watch
    dm.start_threads()
    try:
        write(tmp_path, FLEET.replace("  web1: {host: h1, networks: {lan: {}}}\n",
                                      "  web3: {host: h1, networks: {lan: {}}}\n"))
        push(store, keys, [d])
        wait_for(lambda: _has_trigger(dm), "the watch to report the new revision")
    finally:
        dm.stop_threads()
    assert host.containers() == ["web3"]
    assert dm.converged_revision == 2
    # web1's address key was released once the kernel no longer had it (ownership: this host's)
    now = Agent(store, keys, "h1", "machine-h1").addresses()
    assert {v["container"] for v in now.values()} == {"web3"}
    assert host_entry(cluster_status(etcd.url, keys), "h1")["revision"] == 2


def _has_trigger(dm):
    b = dm.triggers.poll()
    if b is None:
        return False
    assert b.has("etcd"), b.describe()
    dm.handle(b)
    return True


def test_an_invalid_or_newer_format_revision_keeps_the_last_good_one(tmp_path, etcd, store, keys, host):
    from reconciler.cluster.store import dumps, put

    d = write(tmp_path, FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    assert host.containers() == ["web1"] and dm.revision == 1
    # a pointer written by a newer format
    cur = store.get(keys.current)
    ptr = dict(cur.json(), format=2, revision=2)
    store.txn([], [put(keys.current, dumps(ptr))])
    step(dm)
    assert dm.revision == 1 and host.containers() == ["web1"]
    s = read_status(str(tmp_path / "status.json"))
    assert s["manifest"]["valid"] is False and "newer" in s["cluster"]["revision_error"]
    # a revision whose manifests do not load (written by hand: push validates)
    bad = {"format": 1, "files": [["fleet.yaml", "version: 1\nnetworks: {lan: {parnet: eth0}}\n"]], "grid": {}}
    import hashlib

    data = json.dumps(bad).encode()
    store.txn([], [put(keys.chunk(7, 0), data),
                   put(keys.current, dumps({"format": 1, "revision": 7, "chunks": 1,
                                            "sha256": hashlib.sha256(data).hexdigest(), "pushed_at": 0}))])
    step(dm)
    assert dm.revision == 1 and host.containers() == ["web1"]
    s = read_status(str(tmp_path / "status.json"))
    assert "fleet.yaml" in s["cluster"]["revision_error"] and s["cluster"]["converged_revision"] == 1
    raw = json.loads(store.get(keys.status("h1")).value)
    assert raw["revision"] == 1 and "revision rejected" in raw["last_error"]
    # a valid push again: followed
    push(store, keys, [write(tmp_path, FLEET.replace("web2: {host: h2", "web9: {host: h1"))])
    step(dm)
    assert host.containers() == ["web1", "web9"] and dm.revision == 8


@pytest.fixture
def own_tmp():
    """A directory for an etcd member this test kills and restarts (memory-backed when possible)."""
    import os
    import shutil
    import tempfile

    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="ipvlan-etcd-own-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_etcd_down_keeps_everything_allocates_from_owned_blocks_and_heals(tmp_path, host, own_tmp):
    from reconciler.cluster.keys import Keys
    from reconciler.cluster.store import Store

    own = Etcd(own_tmp)  # this test kills its own member
    try:
        store, keys = Store(own.url, timeout=2), Keys("/t/")
        d = write(tmp_path, FLEET)
        push(store, keys, [d])
        dm = daemon(tmp_path, own.url, keys, store=store)
        step(dm, "start")
        assert host.containers() == ["web1"] and dm.status.last_result == "converged"
        # the next revision (two containers on lan, one on a network h1 holds no block of) is
        # read just before etcd goes away
        write(tmp_path, FLEET.replace("containers:\n", NET2 + "containers:\n")
              + "  web3: {host: h1, networks: {lan: {}}}\n  web4: {host: h1, networks: {lan2: {}}}\n")
        push(store, keys, [d])
        dm.source._fetch()  # cached (as a reload's read would), then etcd dies
        own.proc.kill()
        own.proc.wait()
        step(dm)
        c = dm.status.cluster
        assert c["offline"] and c["etcd_reachable"] is False
        # kept web1, web3 got an address from h1's own block (journalled), web4 waits: no new block
        assert host.containers() == ["web1", "web3"]
        journal = dm.source.journal()
        assert [(e["container"], e["network"]) for e in journal] == [("web3", "lan")]
        blocks = json.load(open(tmp_path / "state" / "cluster-cache.json"))["blocks"]["lan"]
        assert any(ia.ip_address(journal[0]["address"]) in ia.ip_network(b) for b in blocks)
        assert any("web4" in p and "claims no new block" in p for p in dm.status.pending)
        s = read_status(str(tmp_path / "status.json"))
        assert s["cluster"]["journalled"] == 1 and "etcd unreachable" in dm.status_line()
        assert s["last_result"] == "pending"
        # a resync while etcd is still down: nothing torn down
        step(dm, "resync")
        assert host.containers() == ["web1", "web3"]
        # etcd back (same data dir): the daemon's watch thread notices by itself; the journal
        # is written, web4 gets a new block, everything converges (no manual step)
        dm.start_threads()
        try:
            _restart(own, Etcd.__new__(Etcd))
            seen = []

            def healed():
                b = dm.triggers.poll()
                if b is not None:
                    seen.extend(b.details)
                    dm.handle(b)
                return any("re-established" in x for x in seen) and dm.status.cluster["offline"] is None

            wait_for(healed, "the watch to come back and the daemon to reload", timeout=20)
        finally:
            dm.stop_threads()
        assert host.containers() == ["web1", "web3", "web4"]
        assert dm.source.journal() == []
        held = Agent(store, keys, "h1", "machine-h1").addresses()
        by = {v["container"]: (n, str(a)) for (n, a), v in held.items()}
        assert by["web3"] == ("lan", journal[0]["address"])
        assert by["web4"][0] == "lan2"
        assert dm.status.last_result == "converged" and dm.converged_revision == 2
        assert json.loads(store.get(keys.status("h1")).value)["revision"] == 2
    finally:
        own.stop()


def _restart(old, new):
    """Start etcd again on the same ports and data directory."""
    import subprocess

    new.__dict__.update(old.__dict__)
    args = old.proc.args
    args = [a for a in args if a not in ("--initial-cluster-state", "new")]
    old.log = open(old.log.name, "ab")
    old.proc = subprocess.Popen(args, stdout=old.log, stderr=subprocess.STDOUT)
    old.wait()


def test_journalled_address_held_by_another_host_is_a_reported_conflict_never_moved(tmp_path, host, own_tmp):
    from reconciler.cluster.keys import Keys
    from reconciler.cluster.store import Store, dumps, put

    own = Etcd(own_tmp)
    try:
        store, keys = Store(own.url, timeout=2), Keys("/t/")
        d = write(tmp_path, FLEET)
        push(store, keys, [d])
        dm = daemon(tmp_path, own.url, keys, store=store)
        step(dm, "start")
        write(tmp_path, FLEET + "  web3: {host: h1, networks: {lan: {}}}\n")
        push(store, keys, [d])
        dm.source._fetch()
        own.proc.kill()
        own.proc.wait()
        step(dm)
        a = dm.source.journal()[0]["address"]
        _restart(own, Etcd.__new__(Etcd))
        # meanwhile (say, a bad manual edit) another host's record holds that address
        store.txn([], [put(keys.addr("lan", ia.ip_address(a)), dumps({"host": "h2", "container": "x"}))])
        step(dm)
        assert host.containers() == ["web1", "web3"] and a in host.addresses()  # not moved
        c = dm.status.cluster
        assert c["conflicts"] and "held in etcd by host h2" in c["conflicts"][0]
        assert "never moved" in json.loads(store.get(keys.status("h1")).value)["last_error"]
    finally:
        own.stop()


def test_leak_reconciliation_removes_only_this_hosts_stale_keys(tmp_path, etcd, store, keys, host):
    d = write(tmp_path, FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    h1 = Agent(store, keys, "h1", "machine-h1")
    h1.bind()
    ghost = h1.allocate("lan", "ghost")  # a key no container of the revision uses (a leak)
    h2 = Agent(store, keys, "h2", "machine-h2")
    h2.bind()
    other = h2.allocate("lan", "ghost2")  # another host's: never touched by h1
    step(dm, "resync")
    assert dm.status.last_result == "converged"
    assert store.get(keys.addr("lan", ghost)) is None
    assert store.get(keys.addr("lan", other)) is not None
    assert host.containers() == ["web1"]
    assert any(str(ghost) in r for r in dm.status.cluster["released"])


def test_a_forgotten_host_changes_and_announces_nothing(tmp_path, etcd, store, keys, host):
    d = write(tmp_path, FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    assert host.containers() == ["web1"]
    dm.source.stop()  # the lease is gone (as when the host died)
    forget_host(store, keys, "h1", grace=0, now=time.time() + 10)  # its 5 s lease long expired
    push(store, keys, [write(tmp_path, FLEET.replace("  web1: {host: h1, networks: {lan: {}}}\n", ""))])
    step(dm)
    assert dm.fenced and "forget-host" in dm.fenced
    assert host.containers() == ["web1"]  # nothing changed
    assert store.get(keys.status("h1")) is None
    assert "fenced" in dm.status_line()
    assert read_status(str(tmp_path / "status.json"))["cluster"]["fenced"]



def test_a_watch_compacted_away_resyncs_fully(tmp_path, etcd, store, keys, host):
    import urllib.request

    d = write(tmp_path, FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    push(store, keys, [write(tmp_path, FLEET.replace("web2: {host: h2", "web9: {host: h1"))])
    head = store.range(keys.current)[1]
    req = urllib.request.Request(etcd.url + "/v3/kv/compaction", data=json.dumps({"revision": str(head)}).encode())
    urllib.request.urlopen(req, timeout=5).read()
    dm.source.etcd_revision = 1  # as if the daemon had been away since long before the compaction
    dm.start_threads()
    try:
        seen = []

        def compacted():
            b = dm.triggers.poll()
            if b is not None:
                seen.extend(b.details)
                dm.handle(b)
            return any("compacted" in x for x in seen)

        wait_for(compacted, "the watch to report its compaction")
    finally:
        dm.stop_threads()
    assert host.containers() == ["web1", "web9"] and dm.revision == 2


def test_watch_takes_paths_or_etcd_never_both_nor_neither(capsys):
    assert main(["watch"]) == 1
    assert "or --etcd URL for cluster mode" in capsys.readouterr().err
    assert main(["watch", "--etcd", "http://127.0.0.1:1", "some/dir"]) == 1
    assert "give no PATH" in capsys.readouterr().err


def test_a_network_new_in_a_later_revision_gets_its_block_claimed_online(tmp_path, etcd, store, keys, host):
    d = write(tmp_path, FLEET)
    push(store, keys, [d])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    write(tmp_path, FLEET.replace("containers:\n", NET2 + "containers:\n") + "  web4: {host: h1, networks: {lan2: {}}}\n")
    push(store, keys, [d])
    step(dm)
    assert dm.status.last_result == "converged", list(dm.status.last_errors)
    assert host.containers() == ["web1", "web4"]
    assert any(ia.ip_address(a) in ia.ip_network("10.70.0.0/20") for a in host.addresses())
