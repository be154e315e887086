"""Drift detection: netlink notifications and /run/netns, watched by one thread.

Sockets come from :meth:`reconciler.kernel.host.Kernel.open_monitor`: one in the
host namespace, one inside each of our namespaces (opened by the Kernel's
namespace worker thread after ``setns``; no fork), each a plain NETLINK_ROUTE
socket bound to RTNLGRP_LINK, IPV4_IFADDR, IPV6_IFADDR, IPV4_ROUTE, IPV6_ROUTE
and read here with ``select`` (pyroute2's IPRoute.bind() buffers and loses
events under select). The reconcile thread tells which namespaces are ours
(:meth:`NetlinkMonitor.set_namespaces`) after each reconcile.

Only changes that can matter to the reconciler are reported, so that the
kernel's own follow-ups to an apply (operstate/carrier updates from
linkwatch up to a second later, IPv6 link-local addresses and their
fe80::/64 and local-table routes, lifetime refreshes) do not cause reconcile
after reconcile: a link event counts only when a field the reconciler reads
changed (name, IFF_UP, kind and ipvlan/vlan data, alias, lower link,
disable_ipv6); address events for IPv6 link-local addresses (fe80::/10, what
the reconciler's observation skips too) and route events outside the main
table are ignored (except, in the host namespace, our own BGP export routes in
their table), and so are the host's routes BIRD installs for a fleet. Caches are seeded with a dump when a
socket is opened. A receive-buffer overflow (ENOBUFS) reports a lost-events
trigger, which a full reconcile covers.

/run/netns is polled (listdir + stat, once a second by default): a namespace
created, deleted or replaced by hand triggers a reconcile. A monitor socket
keeps its namespace alive after ``ip netns del`` -- with the ipvlan endpoint
and its addresses still claimed on the parent -- so a socket whose namespace
left /run/netns (or was replaced) is closed at once, before the reconcile.

Namespace identity: each monitor knows the (dev, inode) and netns cookie of the
namespace its socket is in, read from the socket. While the socket is open the
namespace is alive, so its (dev, inode) is no other namespace's and an equal
stat of /run/netns/NAME proves NAME is still it; for namespaces nobody holds, an
equal pair proves nothing (the kernel reuses a freed inode at once), so a
replacement that reuses the inode of an unmonitored namespace goes unreported
until the next resync -- harmless, as only dumps of a namespace held here
(:meth:`NetlinkMonitor.held`, same cookie) are ever reused.

What changed since a moment, in one call (:meth:`NetlinkMonitor.changes_since`, the daemon's
scoped first observation, ``kernel.observe.take_snapshot``): every change that matters, lost
event, socket opened or closed and /run/netns change is numbered from one counter and
logged under its namespace's name; a caller keeps the number it was given (the mark) and
later asks for the names logged after it. inotify on /etc/netns (``daemon.hostswatch``)
logs the namespaces whose hosts files may have changed the same way, and triggers a
reconcile (source ``netns``) when a hosts file changes.
"""
from __future__ import annotations

import bisect
import errno
import os
import select
import socket
import threading
import time
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from ..kernel.host import Changes, HeldNs, netns_identity, socket_netns
from ..kernel.netlink import (
    IFF_UP,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    RT_TABLE_MAIN,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTPROT_BIRD,
    align,
    decode_addr,
    decode_link,
    decode_route,
    dump_request,
    is_link_local,
)
from ..objects import RTPROT
from ..render import plural
from . import logs

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
NAMES = {
    RTM_NEWLINK: "link added/changed",
    RTM_DELLINK: "link deleted",
    RTM_NEWADDR: "address added",
    RTM_DELADDR: "address deleted",
    RTM_NEWROUTE: "route added",
    RTM_DELROUTE: "route deleted",
}

HOST = ""  # key of the host namespace's socket
# /run/netns's mtime is as coarse as the kernel's clock tick (a second on some file systems):
# a second change in the same tick leaves the stamp as it was, so a stamp is trusted only
# once a listing was taken at least this long after the stamp was first read
STAMP_GRANULARITY = 1.0
LOG_KEEP = 4096  # change-log entries kept before those the last caller has seen are dropped


class _Log:
    """Names logged with increasing numbers; the names logged after a number."""

    def __init__(self) -> None:
        self.seqs: List[int] = []
        self.names: List[str] = []
        self.floor = 0  # entries up to here dropped: an older mark gets None

    def add(self, seq: int, name: str) -> None:
        self.seqs.append(seq)
        self.names.append(name)

    def since(self, mark: int) -> Optional[FrozenSet[str]]:
        if mark < self.floor:
            return None
        i = bisect.bisect_right(self.seqs, mark)
        out = frozenset(self.names[i:])
        if len(self.seqs) > LOG_KEEP:  # the caller has seen everything up to ``mark``
            del self.seqs[:i], self.names[:i]
            self.floor = mark
        return out


def _readable(fds, timeout: float):
    """The fds of ``fds`` that are readable within ``timeout`` seconds. poll(), not
    select(): one monitor socket per namespace puts fd numbers past select()'s
    FD_SETSIZE (1024) at about a thousand containers, where select() raises ValueError."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    out = []
    for fd, ev in p.poll(max(0, -int(-timeout * 1000 // 1))):  # ms, rounded up
        if ev & select.POLLNVAL:
            raise ValueError(f"fd {fd} is closed")
        if ev & (select.POLLIN | select.POLLERR | select.POLLHUP):
            out.append(fd)
    return out


class NsMonitor:
    """One monitor socket and the caches that tell a real change from noise."""

    def __init__(
        self, name: str, sock: socket.socket, identity: Optional[Tuple[int, int]], cookie: Optional[int] = None
    ):
        self.name = name
        self.sock = sock
        self.identity = identity
        self.cookie = cookie  # netns cookie of the namespace the socket is in (None: unknown)
        self.links: Dict[int, tuple] = {}
        self.link_names: Dict[int, str] = {}
        self.addrs: Set[tuple] = set()
        self.portid = sock.getsockname()[0]
        self.dump_seq = 0
        # time.monotonic() of the socket's start, and of the last change that matters (or
        # lost events) read from it: see NetlinkMonitor.unchanged_since
        self.opened = time.monotonic()
        self.changed = self.opened

    @property
    def label(self) -> str:
        return f"namespace {self.name}" if self.name else "host namespace"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def link_state(rec) -> tuple:
    """The fields of a link the reconciler reads (not operstate, carrier, stats)."""
    return (
        rec.name,
        rec.flags & IFF_UP,
        rec.kind,
        rec.alias,
        rec.link,
        rec.link_netnsid,
        rec.vid,
        rec.ipvlan_mode,
        rec.ipvlan_flags,
        rec.disable_ipv6,
        rec.macvlan_mode,
        rec.mac if rec.kind == "macvlan" else "",
    )


def classify_message(mon: NsMonitor, data: bytes, pos: int, length: int, typ: int) -> Optional[str]:
    """Update ``mon``'s caches with one notification; the detail to report if it matters."""
    end = pos + length
    body = pos + 16
    where = mon.label
    if typ in (RTM_NEWLINK, RTM_DELLINK):
        if data[body] not in (0,):  # AF_INET6/AF_BRIDGE protocol info, not the link itself
            return None
        rec = decode_link(data, body, end)
        if typ == RTM_DELLINK:
            mon.links.pop(rec.index, None)
            name = mon.link_names.pop(rec.index, rec.name)
            return f"{where}: link {name} deleted"
        state = link_state(rec)
        old = mon.links.get(rec.index)
        mon.links[rec.index] = state
        mon.link_names[rec.index] = rec.name
        if old == state:
            return None
        return f"{where}: link {rec.name} {'added' if old is None else 'changed'}"
    if typ in (RTM_NEWADDR, RTM_DELADDR):
        rec = decode_addr(data, body, end)
        if is_link_local(rec.family, rec.packed):
            return None  # the kernel's own IPv6 link-local addresses: exactly what observe skips
        key = (rec.index, rec.family, rec.packed, rec.prefixlen)
        dev = mon.link_names.get(rec.index, f"#{rec.index}")
        if typ == RTM_DELADDR:
            mon.addrs.discard(key)
            return f"{where}: address {rec.address}/{rec.prefixlen} deleted from {dev}"
        if key in mon.addrs:
            return None  # flags or lifetimes refreshed
        mon.addrs.add(key)
        return f"{where}: address {rec.address}/{rec.prefixlen} added on {dev}"
    if typ in (RTM_NEWROUTE, RTM_DELROUTE):
        rec = decode_route(data, body, end)
        if mon.name == HOST and rec.protocol == RTPROT_BIRD:
            # BIRD's routes to the other hosts' containers (SPEC 5.2): a fleet changes them
            # with every container added anywhere; nothing of ours, and no reconcile's business
            return None
        if rec.table != RT_TABLE_MAIN and not (mon.name == HOST and rec.protocol == RTPROT):
            return None  # (ours outside main: the BGP export table, SPEC 5.2)
        if rec.dst_len == 64 and is_link_local(rec.family, rec.dst):
            return None  # the kernel's fe80::/64 route of every IPv6 link
        dst = f"{rec.dst}/{rec.dst_len}" if rec.dst and rec.dst_len else "default"
        return f"{where}: route {dst} {'deleted' if typ == RTM_DELROUTE else 'added'}"
    return None


def seed_request(mon: NsMonitor, msg_type: int) -> bytes:
    mon.dump_seq += 1
    return dump_request(msg_type, mon.dump_seq)


class NetlinkMonitor:
    """Reads every monitor socket in one thread; calls ``notify(source, detail)``."""

    def __init__(
        self,
        kernel,
        notify: Callable[[str, str], None],
        netns_poll: float = 1.0,
    ):
        self.kernel = kernel
        self.notify = notify
        self.netns_poll = netns_poll
        self._mons: Dict[str, NsMonitor] = {}
        self._lock = threading.Lock()
        self._wanted: Set[str] = set()
        self._baseline: Optional[Dict[str, Optional[Tuple[int, int]]]] = None
        self._dirty = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._seen: Dict[str, Optional[Tuple[int, int]]] = {}
        # one epoll object for the life of the monitor: registering a thousand sockets on
        # every wake-up was the idle daemon's main cost at 1,000 namespaces, and poll() still
        # scanned every socket on each wake-up (once a second): 1.2 % of a core at 10,000
        self._poller = select.epoll()
        self._poller.register(self._wake_r, select.EPOLLIN)
        self._by_fd: Dict[int, NsMonitor] = {}
        self._dir_stamp: Optional[Tuple[int, int, int]] = None
        self._stamp_since = 0.0  # time.monotonic() when _dir_stamp was first read
        self._stamp_settled = False  # listed STAMP_GRANULARITY after that: see _poll_netns
        self.thread = threading.Thread(target=self._run, name="netlink-monitor", daemon=True)
        self._no_cookie_logged = False
        # the change log (changes_since), under _lock: one counter for namespaces, /run/netns
        # and hosts files
        self._seq = 0
        self._log = _Log()
        self._netns_seq = 0  # last /run/netns change the poll saw
        self._hosts_log = _Log()
        self._hosts_floor: Optional[int] = None  # hosts files logged from here on; None: not watched
        self._hosts = None  # daemon.hostswatch.HostsWatch

    # the change log ---------------------------------------------------------------------------
    def _logged(self, *names: str) -> None:
        """Log a change in these namespaces (not the host's: it is always dumped afresh)."""
        with self._lock:
            for name in names:
                if name != HOST:
                    self._seq += 1
                    self._log.add(self._seq, name)

    def changes_since(self, mark: Optional[int]) -> Changes:
        """What changed since ``mark`` (an earlier answer's ``mark``; None: a first call, for
        which everything counts as changed). An answer covers what the monitor thread has read
        when it is given; a change not read yet is reported as a trigger when it is, and the
        reconcile that follows finds it here."""
        with self._lock:
            cur = self._seq
            if mark is None:
                return Changes(cur, None, True, None)
            hosts = None
            if self._hosts_floor is not None and mark >= self._hosts_floor and self._hosts is not None \
                    and self._hosts.alive:
                hosts = self._hosts_log.since(mark)
            return Changes(cur, self._log.since(mark), self._netns_seq > mark, hosts)

    def _hosts_changed(self, name: Optional[str], path: str) -> None:
        """From the hosts watch's thread: /etc/netns/NAME (None: anything) may have changed."""
        with self._lock:
            self._seq += 1
            if name is None:
                self._hosts_floor = None if self._hosts is None or not self._hosts.alive else self._seq
            else:
                self._hosts_log.add(self._seq, name)
        if name is None:
            self.notify("netns", f"{path}: hosts files may have changed (events lost)")
        elif os.path.basename(path) == "hosts" or path == os.path.join(self.kernel.etc_netns, name):
            self.notify("netns", f"{path} changed")

    def _watch_hosts(self) -> None:
        """(Re)start the hosts watch when it is not running (/etc/netns may appear later)."""
        from .hostswatch import HostsWatch

        if self._hosts is not None and self._hosts.alive:
            return
        if self._hosts is not None:
            self._hosts.stop()
        with self._lock:
            self._hosts, self._hosts_floor = None, None
        etc = getattr(self.kernel, "etc_netns", None)
        if not etc:
            return
        w = HostsWatch(etc, self._hosts_changed)
        if w.start():
            with self._lock:
                self._seq += 1
                self._hosts, self._hosts_floor = w, self._seq

    # control (any thread) ---------------------------------------------------------------------
    def start(self) -> None:
        """Open the host socket here, so a failure is reported to the caller."""
        self._open(HOST)
        self._seen = self._list_netns()
        self._watch_hosts()
        self.thread.start()

    def set_namespaces(self, names: Iterable[str]) -> None:
        """Monitor exactly these namespaces (ours), and take /run/netns as it is now as
        the baseline (changes made by our own reconcile are not drift)."""
        with self._lock:
            self._wanted = set(names)
            self._baseline = self._list_netns()
            self._dirty = True
        self._wake()

    def unchanged_since(self, name: str, t: float) -> bool:
        """True when namespace NAME was watched from before ``t`` (a time.monotonic()) and no
        change that matters (nor a lost event) has been read from it since: a dump taken at
        ``t`` still describes it. A change not read yet is reported as a trigger when it is,
        and the reconcile that follows finds it here."""
        with self._lock:
            m = self._mons.get(name)
        return m is not None and m.opened < t and m.changed < t

    def held(self, name: str) -> Optional[HeldNs]:
        """The namespace our socket for NAME is in (identity, cookie, open since), or None.
        A monitor is closed only after it left ``_mons`` (under the lock), so an answer
        means the socket was still open -- its namespace alive -- when asked."""
        with self._lock:
            m = self._mons.get(name)
        if m is None or not name or m.identity is None or m.cookie is None:
            return None
        return HeldNs(m.identity, m.cookie, m.opened)

    def monitored(self) -> List[str]:
        with self._lock:
            return sorted(n for n in self._mons if n)

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        if self._hosts is not None:
            self._hosts.stop()
        with self._lock:  # out of _mons before closed: see held()
            mons, self._mons = list(self._mons.values()), {}
        for m in mons:
            m.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if not self.thread.is_alive():
            self._poller.close()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        next_poll = time.monotonic() + self.netns_poll
        while not self._stop.is_set():
            try:
                timeout = max(0.0, next_poll - time.monotonic())
                try:
                    events = self._poller.poll(max(0.0, -(-timeout * 1000 // 1)) / 1000.0)  # ms, rounded up
                except OSError:  # EINTR
                    events = []
                for fd, ev in events:
                    if fd == self._wake_r:
                        try:
                            while os.read(self._wake_r, 4096):
                                pass
                        except OSError:
                            pass
                        continue
                    m = self._by_fd.get(fd)
                    if m is None:  # closed under us
                        self._forget_fd(fd)
                        continue
                    if self._mons.get(m.name) is m:
                        self._read(m)
                if self._dirty:
                    self._sync()
                if time.monotonic() >= next_poll:
                    self._poll_netns()
                    next_poll = time.monotonic() + self.netns_poll
            except Exception as e:  # a bug here must not end drift detection
                logs.error("netlink monitor failed; continuing", exc_info=True, error=str(e))
                self.notify("netlink", f"monitor error: {e}")
                time.sleep(1.0)

    def _read(self, m: NsMonitor, seeding: bool = False) -> bool:
        """Drain one socket; returns True when a dump in progress finished (NLMSG_DONE)."""
        done = False
        first: Optional[str] = None
        count = 0
        while True:
            try:
                data = m.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    m.changed = time.monotonic()
                    self._logged(m.name)
                    self.notify("netlink", f"{m.label}: events lost (receive buffer overflow)")
                    if m.dump_seq:
                        done = True  # the dump is lost too; caches refill from events
                    continue
                if e.errno == errno.EINTR:
                    continue
                logs.warning("netlink monitor socket failed", where=m.label, error=e.strerror or str(e))
                self._close(m.name)
                self.notify("netlink", f"{m.label}: monitor socket failed")
                return True
            if not data:
                break
            pos, n = 0, len(data)
            while pos + 16 <= n:
                length, typ, _flags, seq, pid = NLMSGHDR.unpack_from(data, pos)
                if length < 16:
                    break
                is_dump = pid == m.portid and seq == m.dump_seq and m.dump_seq != 0
                if typ in (NLMSG_DONE, NLMSG_ERROR):
                    if is_dump:
                        done = True
                else:
                    detail = classify_message(m, data, pos, length, typ)
                    if detail is not None and not is_dump:
                        count += 1
                        first = first or detail
                pos += align(length)
            if seeding and done:
                break
        if count:
            m.changed = time.monotonic()
            self._logged(m.name)
            self.notify("netlink", first + (f" (+{count - 1} more)" if count > 1 else ""))
        return done

    def _seed(self, m: NsMonitor) -> None:
        """Dump links and addresses into the caches (so later noise is recognised)."""
        for msg_type in (RTM_GETLINK, RTM_GETADDR):
            try:
                m.sock.send(seed_request(m, msg_type))
            except OSError:
                return
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                r = _readable([m.sock.fileno()], max(0.0, deadline - time.monotonic()))
                if r and self._read(m, seeding=True):
                    break
                if m.name not in self._mons:
                    return
        m.dump_seq = 0

    def _open(self, name: str) -> Optional[NsMonitor]:
        ident = None if name == HOST else netns_identity(self.kernel.ns_path(name))
        sock = self.kernel.open_monitor(None if name == HOST else name, GROUPS)
        cookie = None
        if name != HOST:
            # the namespace the socket is really in (held by it from now on), whatever the stat
            # above saw; without SIOCGSKNS, that stat (and no cookie: its dumps are not reused)
            held_ident, cookie = socket_netns(sock)
            if held_ident is None:
                cookie = None
            ident = held_ident or ident
            if cookie is None and not self._no_cookie_logged:
                self._no_cookie_logged = True
                logs.warning(
                    "cannot read a namespace's cookie (SO_NETNS_COOKIE needs Linux >= 5.14, SIOCGSKNS "
                    "4.9): namespace dumps are never reused, every reconcile dumps every namespace",
                    netns=name,
                )
            if netns_identity(self.kernel.ns_path(name)) != ident:
                sock.close()  # replaced while we entered it: next sync
                return None
        m = NsMonitor(name, sock, ident, cookie)
        with self._lock:
            self._mons[name] = m
        self._logged(name)  # opened after the mark: its earlier dumps are not vouched for
        self._seed(m)
        fd = sock.fileno()
        self._forget_fd(fd)  # a number reused after a close we did not see
        self._by_fd[fd] = m
        self._poller.register(fd, select.EPOLLIN)
        return m

    def _forget_fd(self, fd: int) -> None:
        self._by_fd.pop(fd, None)
        try:
            self._poller.unregister(fd)
        except (KeyError, OSError, ValueError):  # not registered (any more), or closed
            pass

    def _close(self, name: str) -> None:
        with self._lock:
            m = self._mons.pop(name, None)
        if m is not None:
            self._logged(name)
            try:
                self._forget_fd(m.sock.fileno())
            except OSError:
                pass
            m.close()

    def _sync(self) -> None:
        from ..errors import KernelError

        with self._lock:
            wanted = set(self._wanted)
            baseline, self._baseline = self._baseline, None
            self._dirty = False
        if baseline is not None:
            self._seen = baseline
        present = self._list_netns()
        for name in [n for n in self._mons if n != HOST]:
            m = self._mons[name]
            if name not in wanted or present.get(name) != m.identity:
                self._close(name)
        opened = 0
        for name in sorted(wanted):
            if name in self._mons or present.get(name) is None:
                continue
            try:
                m = self._open(name)
                if m is not None and m.cookie is not None:  # without a cookie nothing is vouched for
                    opened += 1
            except KernelError as e:
                logs.debug("cannot monitor namespace (yet)", netns=name, error=str(e))
        if opened:
            # the last reconcile's dumps of these namespaces predate their sockets, so the
            # monitor cannot vouch for them and the next reconcile must dump them again: ask
            # for that reconcile now, while the daemon is idle, instead of making the next
            # edit pay it (after the start: every namespace; issue 12, the first edit at 1,000
            # re-dumped ~400-900 namespaces). Its plan is empty; it opens no socket, so no
            # reconcile follows it.
            self.notify("netns", f"watching {plural(opened, 'more namespace')}: their last dumps predate the watch")
        if HOST not in self._mons:  # the host socket failed earlier: try again
            try:
                self._open(HOST)
            except Exception as e:
                logs.warning("cannot open the host netlink monitor", error=str(e))
        try:
            self._watch_hosts()
        except Exception as e:
            logs.warning("cannot watch the hosts files", error=str(e))

    def _list_netns(self) -> Dict[str, Optional[Tuple[int, int]]]:
        return {n: netns_identity(self.kernel.ns_path(n)) for n in self.kernel.list_netns()}

    def _netns_dir_stamp(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.kernel.netns_dir)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def _poll_netns(self) -> None:
        """Compare /run/netns with what we saw. Adding, removing or replacing an entry
        (ip netns add/del) changes the directory's mtime and ctime, so while its stamp stays
        the same the listing and the thousands of stat() calls are skipped. A second change in
        the same tick of the file system's clock leaves the stamp as the first one set it, so
        a new stamp is listed again at each poll until one listing was taken at least
        STAMP_GRANULARITY after the stamp was first read (any later change gets a later
        mtime). Before, every entry was listed and stat()ed every tenth poll regardless.
        Changes that leave the directory alone (a mount over an existing entry) are the
        periodic resync's to find."""
        stamp = self._netns_dir_stamp()
        now_mono = time.monotonic()
        if stamp is not None and stamp == self._dir_stamp:
            if self._stamp_settled:
                return
            self._stamp_settled = now_mono - self._stamp_since >= STAMP_GRANULARITY
        else:
            self._dir_stamp, self._stamp_since, self._stamp_settled = stamp, now_mono, False
        now = self._list_netns()
        if now == self._seen:
            return
        old, self._seen = self._seen, now
        added = sorted(set(now) - set(old))
        removed = sorted(set(old) - set(now))
        replaced = sorted(n for n in set(now) & set(old) if now[n] != old[n])
        self._logged(*(added + removed + replaced))
        with self._lock:
            self._seq += 1
            self._netns_seq = self._seq
        # a namespace deleted by hand stays alive while our socket is open in it,
        # its endpoint still claiming addresses on the parent: let it go right now
        for name in removed + replaced:
            if name in self._mons:
                self._close(name)
        parts = []
        for label, names in (("added", added), ("removed", removed), ("replaced", replaced)):
            if names:
                parts.append(f"{label} {', '.join(names[:5])}" + (" ..." if len(names) > 5 else ""))
        self.notify("netns", "/run/netns: " + "; ".join(parts))
        if replaced:
            with self._lock:
                self._dirty = True
