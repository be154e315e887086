"""When may the daemon reuse an earlier dump of a namespace? Only when /run/netns/NAME is
provably the namespace that was dumped: same netns cookie as a namespace someone holds open
(the netlink monitor) since before /run/netns was stat'ed, and that stat showing the held
namespace's (dev, inode). An equal (dev, inode) alone proves nothing: the kernel hands a freed
nsfs inode number to the next namespace at once. No kernel here: /run/netns entries are plain
files (real stat), the namespace behind each is a cookie the fake dump reports."""
from __future__ import annotations

import errno
import os
import socket
import struct

from reconciler.daemon.nlmonitor import NetlinkMonitor, NsMonitor
from reconciler.kernel.host import HeldNs, Kernel, NsView, netns_cookie, same_namespace
from reconciler.kernel.observe import take_snapshot


def view(identity=(1, 2), cookie=7) -> NsView:
    return NsView("c1", identity=identity, cookie=cookie, taken=5.0)


def test_same_namespace_only_when_proven():
    held = HeldNs((1, 2), 7, since=3.0)
    assert same_namespace(view(), (1, 2), 10.0, held)
    # the entry changed: a replacement, whatever the holder says
    assert not same_namespace(view(), (1, 3), 10.0, HeldNs((1, 3), 7, 3.0))
    # the same (dev, inode), but nobody holds the namespace: the inode may have been handed on
    assert not same_namespace(view(), (1, 2), 10.0, None)
    # the holder's namespace is not the one dumped (another cookie), e.g. the dump entered a
    # replacement before the monitor noticed it
    assert not same_namespace(view(), (1, 2), 10.0, HeldNs((1, 2), 8, 3.0))
    # held only since after the stat: the old namespace may have died (and its inode moved on)
    assert not same_namespace(view(), (1, 2), 10.0, HeldNs((1, 2), 7, 11.0))
    # the entry is not the held namespace
    assert not same_namespace(view(identity=(1, 2)), (1, 2), 10.0, HeldNs((1, 9), 7, 3.0))
    # a kernel without SO_NETNS_COOKIE: never reused
    assert not same_namespace(view(cookie=None), (1, 2), 10.0, HeldNs((1, 2), None, 3.0))
    assert not same_namespace(view(), None, 10.0, held)  # the entry is gone


class FakeOptSocket:
    def __init__(self, answer):
        self.answer = answer

    def getsockopt(self, level, opt, size):
        assert (level, opt, size) == (socket.SOL_SOCKET, 71, 8)
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def test_netns_cookie_reads_a_u64_and_is_none_without_kernel_support():
    assert netns_cookie(FakeOptSocket(struct.pack("=Q", 2**40 + 3))) == 2**40 + 3
    assert netns_cookie(FakeOptSocket(OSError(errno.ENOPROTOOPT, "Protocol not available"))) is None


class FakeNsSocket:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def dump_links(self):
        self.log.append(self.name)
        return []

    def dump_addrs(self):
        return []

    def dump_routes(self, **kw):
        return []

    def close(self):
        pass


def fake_kernel(tmp_path, namespaces):
    """A Kernel whose /run/netns holds plain files and whose dumps report, as the cookie of
    the namespace entered, ``namespaces[name]`` (what the path stands for right now)."""
    k = Kernel.__new__(Kernel)
    k.netns_dir = str(tmp_path / "netns")
    k.etc_netns = str(tmp_path / "etc")
    os.makedirs(k.netns_dir, exist_ok=True)
    k.host = FakeNsSocket([], "host")
    k._ns, k._ns_ids = {}, {}
    k.dumped = []

    def open_lenient(names):
        socks = {}
        for n in names:
            st = os.stat(k.ns_path(n))
            socks[n] = k._ns[n] = FakeNsSocket(k.dumped, n)
            k._ns_ids[n] = ((st.st_dev, st.st_ino), namespaces[n])
        return socks

    k._open_ns_sockets_lenient = open_lenient
    for n in namespaces:
        open(k.ns_path(n), "w").close()
    return k


def ident(k, name):
    st = os.stat(k.ns_path(name))
    return st.st_dev, st.st_ino


def test_snapshot_reuses_only_dumps_of_the_namespace_held_now(tmp_path):
    namespaces = {"a": 11, "b": 12, "c": 13}
    k = fake_kernel(tmp_path, namespaces)
    not_ours = lambda name, links: False  # noqa: E731 (links-only dumps may be reused)
    first = take_snapshot(k, not_ours)
    assert k.dumped == ["a", "b", "c"]
    assert [(v.identity, v.cookie) for v in first.namespaces.values()] == [
        (ident(k, n), namespaces[n]) for n in "abc"
    ]
    holder = {n: HeldNs(ident(k, n), namespaces[n], since=0.0) for n in "abc"}
    vouch = lambda name, v: True  # noqa: E731

    k.dumped.clear()
    second = take_snapshot(k, not_ours, previous=first, still_valid=vouch, held=holder.get)
    assert k.dumped == []
    assert all(second.namespaces[n] is first.namespaces[n] for n in "abc")

    # "a" replaced by hand with the same (dev, inode): the monitor's socket let the old one go
    # (nothing holds "a" now); "b" replaced and the holder already in the replacement (new
    # cookie); "c" unchanged
    namespaces.update(a=21, b=22)
    del holder["a"]
    holder["b"] = HeldNs(ident(k, "b"), 22, since=0.0)
    k.dumped.clear()
    third = take_snapshot(k, not_ours, previous=second, still_valid=vouch, held=holder.get)
    assert k.dumped == ["a", "b"]
    assert third.namespaces["c"] is second.namespaces["c"]
    assert (third.namespaces["a"].cookie, third.namespaces["b"].cookie) == (21, 22)

    # without a holder (``held`` not given) or without cookies nothing is reused
    k.dumped.clear()
    take_snapshot(k, not_ours, previous=third, still_valid=vouch)
    assert k.dumped == ["a", "b", "c"]
    for v in third.namespaces.values():
        v.cookie = None
    k.dumped.clear()
    take_snapshot(k, not_ours, previous=third, still_valid=vouch, held=lambda n: HeldNs(ident(k, n), None, 0.0))
    assert k.dumped == ["a", "b", "c"]


def test_snapshot_redumps_an_entry_whose_inode_changed(tmp_path):
    k = fake_kernel(tmp_path, {"a": 11})
    first = take_snapshot(k, lambda name, links: False)
    os.unlink(k.ns_path("a"))
    keep = open(tmp_path / "other", "w")  # so the new file cannot get the old inode
    open(k.ns_path("a"), "w").close()
    keep.close()
    k.dumped.clear()
    # even a holder claiming the old identity and cookie: the stat shows another entry
    old = first.namespaces["a"]
    take_snapshot(k, lambda name, links: False, previous=first, still_valid=lambda n, v: True,
               held=lambda n: HeldNs(old.identity, 11, 0.0))
    assert k.dumped == ["a"]


class FakeMonSocket:
    def getsockname(self):
        return (4242, 0)

    def fileno(self):
        return 9999  # never registered with the poller

    def close(self):
        pass


def test_monitor_vouches_for_identity_only_with_a_cookie_and_while_open():
    mon = NetlinkMonitor(kernel=None, notify=lambda src, detail: None)
    try:
        mon._mons["c1"] = m = NsMonitor("c1", FakeMonSocket(), (1, 2), cookie=7)
        mon._mons["c2"] = NsMonitor("c2", FakeMonSocket(), (1, 3), cookie=None)  # old kernel
        assert mon.held("c1") == HeldNs((1, 2), 7, m.opened)
        assert mon.held("c2") is None
        assert mon.held("c3") is None  # not monitored
        mon._close("c1")
        assert mon.held("c1") is None  # closed: no longer holds the namespace
    finally:
        mon.stop()


class FakeMonKernel:
    """Monitor sockets are plain NETLINK_ROUTE sockets in this namespace; every /run/netns
    entry is one file (the namespace they are all in)."""

    def __init__(self, tmp_path):
        self.entry = str(tmp_path / "entry")
        open(self.entry, "w").close()

    def ns_path(self, name):
        return self.entry

    def open_monitor(self, name, groups):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
        s.bind((0, 0))
        return s


def test_without_cookies_the_monitor_vouches_for_nothing_and_says_so_once(tmp_path, monkeypatch, caplog):
    import reconciler.daemon.nlmonitor as nlm

    kernel = FakeMonKernel(tmp_path)
    # what a kernel before 5.14 answers: the socket's namespace, but no cookie (ENOPROTOOPT)
    monkeypatch.setattr(nlm, "socket_netns", lambda sock: (ident(kernel, "c1"), None))
    mon = NetlinkMonitor(kernel, notify=lambda src, detail: None)
    try:
        with caplog.at_level("WARNING", logger="ipvlan-reconciler"):
            assert mon._open("c1") is not None and mon._open("c2") is not None
        assert mon.held("c1") is None and mon.held("c2") is None
        warned = [r for r in caplog.records if "SO_NETNS_COOKIE" in r.getMessage()]
        assert len(warned) == 1 and "never reused" in warned[0].getMessage()
    finally:
        mon.stop()
