"""The daemon's scoped first observation (issue 12; docs/daemon.md, "Observation cache"):
``take_snapshot(changes=...)`` asks the netlink monitor once what changed since the last
snapshot's mark, lists and ``stat``s /run/netns only when it changed, reuses vouched views
without a ``stat`` or a question, re-reads only hosts files that can have changed -- and
its live state is always the full observation's. No kernel: /run/netns entries are plain
files (real ``stat``), /etc/netns real files, the dumps come from records the test edits,
the monitor is a fake that logs what the test tells it (the real one's log is tested at the
end)."""
from __future__ import annotations

import os
import random
import socket
import time

import pytest

import reconciler.kernel.host as host_mod
import reconciler.kernel.observe as obs_mod
from reconciler.daemon.hostswatch import HostsWatch
from reconciler.daemon.nlmonitor import LOG_KEEP, NetlinkMonitor, NsMonitor
from reconciler.kernel.host import Changes, HeldNs, Kernel
from reconciler.kernel.netlink import IFF_UP, AddrRec, LinkRec, RouteRec
from reconciler.kernel.observe import observe
from reconciler.objects import HOSTS_MARKER, MARKER, RTPROT


@pytest.fixture(autouse=True)
def settled(monkeypatch):
    """Every file and directory counts as settled (changed more than a second ago), so the
    tests need not sleep; a test sets it back to see the daemon's own recent writes."""
    monkeypatch.setattr(host_mod, "HOSTS_SETTLED_NS", -10**12)


class Sock:
    def __init__(self, k, name):
        self.k, self.name = k, name

    def dump_links(self):
        self.k.dumped.append(self.name)
        return list(self.k.links[self.name])

    def dump_addrs(self):
        return list(self.k.addrs[self.name])

    def dump_routes(self, table=254, protocol=None):
        return list(self.k.routes[self.name])

    def close(self):
        pass


def ns_links(i, up=True):
    return [LinkRec(index=1, name="lo", flags=IFF_UP, alias=MARKER),
            LinkRec(index=2, name="eth0", flags=IFF_UP if up else 0, kind="ipvlan", alias=f"{MARKER} net=n",
                    link=2, link_netnsid=0, ipvlan_mode=1, ipvlan_flags=0)]


def addr(i, j=0):
    return AddrRec(index=2, family=socket.AF_INET, prefixlen=24, packed=bytes([10, 0, j, i]), flags=0, scope=0)


class FakeKernel(Kernel):
    def __init__(self, tmp_path, n=4):  # no sockets, no worker thread
        self.netns_dir, self.etc_netns = str(tmp_path / "netns"), str(tmp_path / "etc")
        os.makedirs(self.netns_dir)
        os.makedirs(self.etc_netns)
        self.host = type("H", (), {"dump_links": lambda s: [LinkRec(index=2, name="eth0", flags=IFF_UP)],
                                   "dump_addrs": lambda s: [], "dump_routes": lambda s, **kw: []})()
        self._ns, self._ns_ids = {}, {}
        self.links, self.addrs, self.routes, self.cookies = {}, {}, {}, {}
        self.dumped, self.listed = [], 0
        self.next_cookie = 100
        self.keep = []  # open files, so that a replaced entry cannot get its old inode back
        for i in range(n):
            self.add(f"c{i}")

    def add(self, name):
        i = int(name[1:]) % 200
        open(self.ns_path(name), "w").close()
        self.links[name], self.addrs[name] = ns_links(i), [addr(i)]
        self.routes[name] = [RouteRec(socket.AF_INET, None, 0, "10.0.0.1", 2, 254, RTPROT, 0, 1)]
        self.next_cookie += 1
        self.cookies[name] = self.next_cookie
        self.write_hosts(name, f"{HOSTS_MARKER}\n10.0.0.{i}\t{name}\n")

    def remove(self, name):
        os.unlink(self.ns_path(name))
        for d in (self.links, self.addrs, self.routes, self.cookies):
            del d[name]

    def replace_ns(self, name):
        """``ip netns del NAME; ip netns add NAME``: another namespace, empty (not ours)."""
        self.keep.append(open(self.ns_path(name)))
        os.unlink(self.ns_path(name))
        open(self.ns_path(name), "w").close()
        self.links[name] = [LinkRec(index=1, name="lo", flags=0)]
        self.addrs[name], self.routes[name] = [], []
        self.next_cookie += 1
        self.cookies[name] = self.next_cookie

    def list_netns(self):
        self.listed += 1
        return super().list_netns()

    def open_ns_sockets_lenient(self, names):
        out = {}
        for n in names:
            st = os.stat(self.ns_path(n))
            out[n] = self._ns[n] = Sock(self, n)
            self._ns_ids[n] = ((st.st_dev, st.st_ino), self.cookies[n])
        return out


class FakeMonitor:
    """Holds every namespace of the kernel since long ago (its cookie now); logs what the
    test reports, as the real monitor logs what it reads."""

    def __init__(self, k):
        self.k = k
        self.seq = 0
        self.log = []
        self.netns_seq = 0
        self.hosts_log = []
        self.hosts_known = True
        self.floor = 0
        self.asked = []
        self.changed_at = {}

    def change(self, *names):
        for n in names:
            self.seq += 1
            self.log.append((self.seq, n))
            self.changed_at[n] = time.monotonic()

    def netns_changed(self):
        self.seq += 1
        self.netns_seq = self.seq

    def hosts_changed(self, *names):
        for n in names:
            self.seq += 1
            self.hosts_log.append((self.seq, n))

    def changes_since(self, mark):
        if mark is None or mark < self.floor:
            return Changes(self.seq, None, True, None)
        return Changes(self.seq, frozenset(n for s, n in self.log if s > mark), self.netns_seq > mark,
                       frozenset(n for s, n in self.hosts_log if s > mark) if self.hosts_known else None)

    def held(self, name):
        self.asked.append(name)
        if name not in self.k.cookies:
            return None
        st = os.stat(self.k.ns_path(name))
        return HeldNs((st.st_dev, st.st_ino), self.k.cookies[name], 0.0)

    def still_valid(self, name, view):
        return self.changed_at.get(name, 0.0) < view.taken


class Counting:
    """Counts the ``stat`` of /run/netns entries and the hosts files read."""

    def __init__(self, monkeypatch):
        self.stats = []
        self.hosts_read = []
        ident, read = obs_mod.netns_identity, obs_mod.read_hosts_files

        def counted_ident(path):
            self.stats.append(os.path.basename(path))
            return ident(path)

        def counted_read(etc, names, previous=None, *a):
            names = list(names)
            self.hosts_read.extend(names)
            return read(etc, names, previous, *a)

        monkeypatch.setattr(obs_mod, "netns_identity", counted_ident)
        monkeypatch.setattr(obs_mod, "read_hosts_files", counted_read)

    def clear(self):
        self.stats.clear()
        self.hosts_read.clear()


class Daemon:
    """The daemon's way of observing: the last observation, the monitor."""

    def __init__(self, k, mon):
        self.k, self.mon, self.last = k, mon, None

    def observe(self, full=False):
        prev = None if full or self.last is None else self.last
        self.k.dumped.clear()
        self.mon.asked.clear()
        self.k.listed = 0
        if prev is None:
            o = observe(self.k, (), changes=self.mon.changes_since)
        else:
            o = observe(self.k, (), prev.snapshot, self.mon.still_valid, self.mon.held, made=prev.made,
                        changes=self.mon.changes_since)
        self.last = o
        return o


def full_live(k):
    return observe(k, ()).live


def same_live(a, b):
    assert list(a.objects) == list(b.objects)  # the same objects in the same order
    assert a.objects == b.objects
    assert a.facts == b.facts


def setup(tmp_path, monkeypatch, n=4):
    k = FakeKernel(tmp_path, n)
    mon = FakeMonitor(k)
    d = Daemon(k, mon)
    count = Counting(monkeypatch)
    d.observe(full=True)
    d.observe()  # every view proven to be the held namespace's (vouched) once
    assert d.last.snapshot.vouched == frozenset(k.cookies)
    count.clear()
    return k, mon, d, count


def test_nothing_changed_nothing_listed_stated_asked_dumped_or_read(tmp_path, monkeypatch):
    k, mon, d, count = setup(tmp_path, monkeypatch)
    o = d.observe()
    assert (k.listed, count.stats, mon.asked, k.dumped, count.hosts_read) == (0, [], [], [], [])
    assert (o.reused, o.dumped) == (4, 0)
    same_live(o.live, full_live(k))


def test_a_namespace_the_monitor_logged_is_checked_and_dumped_alone(tmp_path, monkeypatch):
    k, mon, d, count = setup(tmp_path, monkeypatch)
    k.addrs["c2"] = [addr(2, 9)]
    mon.change("c2")
    o = d.observe()
    assert (k.listed, count.stats, mon.asked, k.dumped, count.hosts_read) == (0, ["c2"], ["c2"], ["c2"], [])
    same_live(o.live, full_live(k))
    # dumped afresh, not proven yet: checked (not dumped) once more, then vouched again
    count.clear()
    d.observe()
    assert (count.stats, mon.asked, k.dumped) == (["c2"], ["c2"], [])
    count.clear()
    d.observe()
    assert (count.stats, mon.asked, k.dumped) == ([], [], [])


def test_when_the_monitor_cannot_tell_everything_is_checked(tmp_path, monkeypatch):
    """A mark older than the log (events lost, log trimmed): every entry listed, stat'ed and
    checked with the monitor, as before the scoped observation; hosts files all stat'ed."""
    k, mon, d, count = setup(tmp_path, monkeypatch)
    mon.floor = mon.seq + 1
    mon.seq += 1
    k.links["c1"] = ns_links(1, up=False)
    mon.changed_at["c1"] = time.monotonic()  # what a lost event leaves: unchanged_since says no
    o = d.observe()
    assert k.listed == 1 and sorted(count.stats) == sorted(mon.asked) == ["c0", "c1", "c2", "c3"]
    assert k.dumped == ["c1"] and sorted(count.hosts_read) == ["c0", "c1", "c2", "c3"]
    same_live(o.live, full_live(k))


def test_run_netns_changed_is_listed_and_a_replacement_is_dumped_even_unreported(tmp_path, monkeypatch):
    """`ip netns add c9` and `ip netns del c1; ip netns add c1` by hand, before the monitor's
    poll saw anything: the directory's stamp moved, so it is listed; the new entry and the
    replaced one (another inode) are dumped, the others reused without a question."""
    k, mon, d, count = setup(tmp_path, monkeypatch)
    k.add("c9")
    k.replace_ns("c1")
    o = d.observe()
    assert k.listed == 1 and mon.asked == [] and sorted(k.dumped) == ["c1", "c9"]  # c1: another inode
    assert o.snapshot.namespaces["c1"].cookie == k.cookies["c1"]
    live = full_live(k)
    same_live(o.live, live)
    assert "c1" in live.facts.foreign_netns  # the replacement is not ours


def test_monitor_says_run_netns_changed(tmp_path, monkeypatch):
    k, mon, d, count = setup(tmp_path, monkeypatch)
    mon.netns_changed()
    d.observe()
    assert k.listed == 1 and sorted(count.stats) == ["c0", "c1", "c2", "c3"] and k.dumped == []


def test_a_removed_namespace_goes(tmp_path, monkeypatch):
    k, mon, d, count = setup(tmp_path, monkeypatch)
    k.remove("c3")
    mon.change("c3")
    o = d.observe()
    assert "c3" not in o.snapshot.namespaces and k.dumped == []
    same_live(o.live, full_live(k))


def test_hosts_files_read_only_when_reported_or_written_lately(tmp_path, monkeypatch):
    k, mon, d, count = setup(tmp_path, monkeypatch)
    with open(os.path.join(k.etc_netns, "c0", "hosts"), "a") as f:
        f.write("10.9.9.9\tintruder\n")  # a hand edit inotify reported
    mon.hosts_changed("c0")
    o = d.observe()
    assert count.hosts_read == ["c0"] and "intruder" in o.snapshot.hosts_files["c0"]
    same_live(o.live, full_live(k))
    # the daemon (re)writes a file: read within a second, it has no stamp yet, so the next
    # observation reads it again even with no event reported (here: the event is late)
    monkeypatch.setattr(host_mod, "HOSTS_SETTLED_NS", 10**15)
    k.write_hosts("c2", f"{HOSTS_MARKER}\nnew\n")
    mon.hosts_changed("c2")
    count.clear()
    o = d.observe()
    assert count.hosts_read == ["c2"] and "c2" not in o.snapshot.hosts_stamps
    monkeypatch.setattr(host_mod, "HOSTS_SETTLED_NS", -10**12)
    count.clear()
    o = d.observe()
    assert count.hosts_read == ["c2"] and "c2" in o.snapshot.hosts_stamps
    count.clear()
    d.observe()
    assert count.hosts_read == []
    # a hosts file that appears, or goes, in /etc/netns/NAME
    os.makedirs(os.path.join(k.etc_netns, "x1"))
    k.write_hosts("x1", "hand-made\n")
    os.unlink(os.path.join(k.etc_netns, "c3", "hosts"))
    mon.hosts_changed("x1", "c3")
    o = d.observe()
    assert list(o.snapshot.hosts_files) == ["c0", "c1", "c2", "x1"]  # name order, as read in full
    same_live(o.live, full_live(k))


def test_hosts_files_all_stated_without_a_watch(tmp_path, monkeypatch):
    k, mon, d, count = setup(tmp_path, monkeypatch)
    mon.hosts_known = False
    with open(os.path.join(k.etc_netns, "c1", "hosts"), "a") as f:
        f.write("10.9.9.9\tintruder\n")
    o = d.observe()
    assert sorted(count.hosts_read) == ["c0", "c1", "c2", "c3"] and "intruder" in o.snapshot.hosts_files["c1"]


def test_scoped_observation_equals_the_full_one_over_random_changes(tmp_path, monkeypatch):
    """Random changes, each reported the way the real monitor and the hosts watch report it
    (or, for /run/netns, not at all: the directory's stamp must do); after each, the scoped
    observation's live state is the full observation's, object for object and in order."""
    rng = random.Random(7)
    k, mon, d, count = setup(tmp_path, monkeypatch, n=8)
    names = iter(f"c{i}" for i in range(100, 200))
    for step in range(60):
        present = sorted(k.cookies)
        what = rng.choice(["addr", "link", "hosts", "add", "remove", "replace", "nothing"])
        ns = rng.choice(present)
        if what == "addr":
            k.addrs[ns] = [addr(int(ns[1:]) % 200, rng.randrange(1, 250))]
            mon.change(ns)
        elif what == "link":
            k.links[ns] = ns_links(int(ns[1:]) % 200, up=rng.random() < 0.5)
            mon.change(ns)
        elif what == "hosts":
            k.write_hosts(ns, f"{HOSTS_MARKER}\n10.1.1.{rng.randrange(250)}\t{ns}\n")
            mon.hosts_changed(ns)
        elif what == "add":
            k.add(next(names))
        elif what == "remove" and len(present) > 2:
            k.remove(ns)
            mon.change(ns)  # the monitor closes its socket
        elif what == "replace":
            k.replace_ns(ns)
            if rng.random() < 0.5:
                mon.change(ns)  # the poll saw it (else: not yet)
        o = d.observe(full=rng.random() < 0.1)
        same_live(o.live, full_live(k))


# the real monitor's change log ---------------------------------------------------------------
class FakeMonSocket:
    def getsockname(self):
        return (4242, 0)

    def fileno(self):
        return 9999

    def close(self):
        pass


class AliveWatch:
    alive = True

    def stop(self):
        pass


def test_monitor_change_log():
    told = []
    mon = NetlinkMonitor(kernel=type("K", (), {"etc_netns": "/etc/netns"})(), notify=lambda s, d: told.append((s, d)))
    try:
        first = mon.changes_since(None)
        assert first.namespaces is None and first.hosts is None  # a first call: everything
        mon._mons["a"] = NsMonitor("a", FakeMonSocket(), (1, 2), cookie=7)
        mon._logged("a", "")  # the host namespace is never logged (always dumped)
        got = mon.changes_since(first.mark)
        assert got.namespaces == {"a"} and not got.netns_dir and got.hosts is None  # no watch
        assert mon.changes_since(got.mark).namespaces == frozenset()
        mark = got.mark
        mon._close("a")  # closing a socket (namespace replaced or gone) logs it
        assert mon.changes_since(mark).namespaces == {"a"}
        # the hosts watch: names it reports; an overflow makes older marks unknown
        mon._hosts, mon._hosts_floor = AliveWatch(), mon._seq
        mark = mon.changes_since(mark).mark
        mon._hosts_changed("b", "/etc/netns/b/hosts")
        mon._hosts_changed("b", "/etc/netns/b/resolv.conf")  # logged, but no reconcile for it
        assert mon.changes_since(mark).hosts == {"b"}
        assert told == [("netns", "/etc/netns/b/hosts changed")]  # a hand edit triggers a reconcile
        mon._hosts_changed(None, "/etc/netns")
        assert mon.changes_since(mark).hosts is None
        after = mon.changes_since(mark).mark
        assert mon.changes_since(after).hosts == frozenset()
        mon._hosts = None
    finally:
        mon.stop()


def test_monitor_change_log_is_trimmed_and_old_marks_then_mean_everything():
    mon = NetlinkMonitor(kernel=None, notify=lambda s, d: None)
    try:
        old = mon.changes_since(None).mark
        for i in range(LOG_KEEP + 10):
            mon._logged(f"n{i}")
        mid = mon.changes_since(old)
        assert len(mid.namespaces) == LOG_KEEP + 10
        mon._logged("x")
        assert mon.changes_since(mid.mark).namespaces == {"x"}  # trimmed up to what was seen
        assert mon.changes_since(old).namespaces is None
    finally:
        mon.stop()


def test_hosts_watch_reports_changes_not_reads(tmp_path):
    got = []
    w = HostsWatch(str(tmp_path), lambda name, path: got.append((name, path)))
    root = str(tmp_path)
    w.event("opened", f"{root}/c1/hosts")
    w.event("closed_no_write", f"{root}/c1/hosts")
    assert got == []
    w.event("modified", f"{root}/c1/hosts")
    w.event("moved", f"{root}/c1/.tmp", f"{root}/c2/hosts")
    w.event("created", f"{root}/c3")
    assert got == [("c1", f"{root}/c1/hosts"), ("c1", f"{root}/c1/.tmp"), ("c2", f"{root}/c2/hosts"),
                   ("c3", f"{root}/c3")]
    got.clear()
    w.event("deleted", root)
    assert got == [(None, root)] and w.dead


def test_hosts_watch_sees_a_hand_edit_on_inotify(tmp_path):
    os.makedirs(tmp_path / "c1")
    (tmp_path / "c1" / "hosts").write_text("x\n")
    got = []
    w = HostsWatch(str(tmp_path), lambda name, path: got.append(name))
    assert w.start() and w.alive
    try:
        with open(tmp_path / "c1" / "hosts", "a") as f:
            f.write("10.9.9.9 intruder\n")
        os.makedirs(tmp_path / "c2")  # a directory created later is watched too
        deadline = time.monotonic() + 10
        while "c2" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "c2" / "hosts").write_text("y\n")
        while got.count("c2") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "c1" in got and got.count("c2") >= 2
        # watchdog rebuilds its watches after an inotify queue overflow and says so only in
        # its log: that record means "anything may have changed"
        import logging

        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        assert None in got
    finally:
        w.stop()
    assert not HostsWatch(str(tmp_path / "missing"), lambda n, p: None).start()


def test_newly_watched_namespaces_ask_for_a_reconcile_while_the_daemon_is_idle(monkeypatch):
    """The last reconcile's dumps of namespaces the monitor starts watching predate their
    sockets, so the next reconcile dumps them again: the monitor asks for it at once (after
    the daemon's start: every namespace), so the next edit does not pay it. Nothing opened,
    or opened without a cookie (nothing is ever vouched for then): no reconcile."""
    told = []
    mon = NetlinkMonitor(kernel=None, notify=lambda s, d: told.append((s, d)))
    try:
        present = {"a": (1, 1), "b": (1, 2), "c": (1, 3)}
        monkeypatch.setattr(mon, "_list_netns", lambda: dict(present))
        monkeypatch.setattr(mon, "_watch_hosts", lambda: None)
        cookies = {"a": 11, "b": 12, "c": None}

        def opening(name):
            if name == "":
                return None
            m = NsMonitor(name, FakeMonSocket(), present[name], cookie=cookies[name])
            mon._mons[name] = m
            return m

        monkeypatch.setattr(mon, "_open", opening)
        mon._wanted = {"a", "b"}
        mon._sync()
        assert told == [("netns", "watching 2 more namespaces: their last dumps predate the watch")]
        told.clear()
        mon._sync()  # nothing new to watch: no reconcile asked (no loop)
        assert told == []
        mon._wanted = {"a", "b", "c"}
        mon._sync()  # c has no cookie: its dumps are never reused, a reconcile would gain nothing
        assert told == []
    finally:
        mon._mons.clear()
        mon.stop()
