"""The host: netlink sockets, named namespaces, /etc/netns files, and what one dump of it
holds (``NsView``, ``Snapshot``: taken by ``kernel.observe``)."""
from __future__ import annotations

import errno
import os
import resource
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple

from ..atomicfile import write_atomic
from ..errors import KernelError
from ..objects import HOSTS_MARKER
from .netlink import AddrRec, LinkRec, NetlinkSocket, RouteRec, WriteCounter
from .nsworker import MNT_DETACH, MS_BIND, MS_REC, MS_SHARED, NsWorker, mount, umount2

NETNS_DIR = "/run/netns"
ETC_NETNS = "/etc/netns"


@dataclass
class NsView:
    """One namespace as dumped: links, addresses, routes (main table)."""

    name: str
    links: List[LinkRec] = field(default_factory=list)
    addrs: List[AddrRec] = field(default_factory=list)
    routes: List[RouteRec] = field(default_factory=list)
    broken: bool = False  # a /run/netns entry we cannot enter (e.g. a crash mid-create)
    # (st_dev, st_ino) of the namespace dumped (read from the fd it was entered with) and its
    # netns cookie (read from the dump's own socket; None: kernel < 5.14). See same_namespace.
    identity: Optional[Tuple[int, int]] = None
    cookie: Optional[int] = None
    taken: float = 0.0  # time.monotonic() when the dump started
    full: bool = False  # addresses and routes were dumped too (not only links)

    def link_by_index(self) -> Dict[int, LinkRec]:
        return {l.index: l for l in self.links}

    def link_named(self, name: str) -> Optional[LinkRec]:
        for l in self.links:
            if l.name == name:
                return l
        return None


@dataclass
class Snapshot:
    host: NsView
    namespaces: Dict[str, NsView]  # every named namespace (ours fully dumped, others links only)
    hosts_files: Dict[str, str]  # ns name -> content of /etc/netns/NAME/hosts (if present)
    # ns name -> stat stamp of a hosts file whose content above may stand for it next time
    # (read_hosts_files: only files that had not changed for a while when read)
    hosts_stamps: Dict[str, tuple] = field(default_factory=dict)
    # our routes (protocol 149) in the host namespace's BGP tables (SPEC 5.2); dumped only
    # for the tables ``observe.take_snapshot(tables=...)`` names, i.e. for fleets with ``bgp:``
    exports: List[RouteRec] = field(default_factory=list)
    # The daemon's scoped first observation (``observe.take_snapshot(changes=...)``):
    # the netlink monitor's change-log position this snapshot is valid as of (None: unknown),
    mark: Optional[int] = None
    # /run/netns's stamp when it was listed, if settled (see dir_stamp; None: list it next time),
    netns_stamp: Optional[tuple] = None
    # and the namespaces whose views were proven, when taken, to be of the namespace the
    # monitor holds (same_namespace): while the monitor logs nothing for one, it still is
    vouched: FrozenSet[str] = frozenset()


#: a hosts file's content is reused only if it had not changed for this long when it was read
HOSTS_SETTLED_NS = 1_000_000_000


def _stamp(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read_hosts_files(
    etc_netns: str,
    names: Iterable[str],
    previous: Optional[Snapshot] = None,
    settled_before_ns: Optional[int] = None,
) -> Tuple[Dict[str, str], Dict[str, tuple]]:
    """``(contents, stamps)`` of /etc/netns/NAME/hosts for each NAME that has one.

    With ``previous`` (the daemon's last snapshot) a file whose ``stat`` matches the stamp
    recorded then is not opened: its content is taken from there. A stamp is recorded only
    for a file whose last change (ctime) came before ``settled_before_ns`` (default: one
    second before this read). Any later write -- an editor, ``sed -i``, ``cp`` over it,
    touch -- moves ctime past that point (ctime cannot be set from user space), so it
    changes the stamp even when the size stays the same and the filesystem clock is coarse;
    a replaced file has another inode. The daemon's start, SIGHUP and periodic resync pass
    no ``previous``, and read every file."""
    if settled_before_ns is None:
        settled_before_ns = time.time_ns() - HOSTS_SETTLED_NS
    old_files = previous.hosts_files if previous is not None else {}
    old_stamps = previous.hosts_stamps if previous is not None else {}
    out: Dict[str, str] = {}
    stamps: Dict[str, tuple] = {}
    for n in names:
        path = os.path.join(etc_netns, n, "hosts")
        old = old_stamps.get(n)
        if old is not None and n in old_files:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if _stamp(st) == old:
                out[n] = old_files[n]
                stamps[n] = old
                continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                st = os.fstat(f.fileno())  # before reading: a write racing with us changes it
                out[n] = f.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if st.st_ctime_ns < settled_before_ns:
            stamps[n] = _stamp(st)
    return out, stamps


def dir_stamp(path: str, settled_before_ns: Optional[int] = None) -> Tuple[Optional[tuple], bool]:
    """``(stamp, settled)`` of a directory: (device, inode, mtime, ctime), and whether its
    last change (ctime) came before ``settled_before_ns`` (default: a second ago). An equal
    SETTLED stamp proves no entry was added, removed or renamed since it was taken: any such
    change moves ctime past it, however coarse the filesystem's clock (the reasoning of
    :func:`read_hosts_files`). A stamp that is not settled proves nothing."""
    if settled_before_ns is None:
        settled_before_ns = time.time_ns() - HOSTS_SETTLED_NS
    try:
        st = os.stat(path)
    except OSError:
        return None, False
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns), st.st_ctime_ns < settled_before_ns


def netns_identity(path: str) -> Optional[Tuple[int, int]]:
    """``(st_dev, st_ino)`` of the namespace a /run/netns entry is now. A pair that changed
    proves the entry was replaced; an EQUAL pair proves nothing by itself: the kernel hands
    a freed nsfs inode number to the next namespace at once (`ip netns del x; ip netns add
    x` gives the same pair). It identifies a namespace only while someone holds that
    namespace open -- see :func:`same_namespace`."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


SO_NETNS_COOKIE = 71  # asm-generic/socket.h, Linux >= 5.14
SIOCGSKNS = 0x894C  # linux/sockios.h, Linux >= 4.9: an fd of a socket's network namespace


def netns_cookie(sock: socket.socket) -> Optional[int]:
    """The cookie of the network namespace SOCK lives in, or None when the kernel cannot
    tell (ENOPROTOOPT before Linux 5.14; then no dump is ever reused).

    What the kernel guarantees: a namespace's cookie (``net->net_cookie``) is a 64-bit
    number assigned once, when the namespace is created (setup_net), from one global
    atomic64 counter (directly or in per-CPU batches, depending on the version) that only
    ever goes up; it never changes, and within a boot no two namespaces -- alive or long
    gone -- ever get the same one. Unlike the nsfs inode number, it is never handed on."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return struct.unpack("=Q", raw)[0] if len(raw) == 8 else None


def socket_netns(sock: socket.socket) -> Tuple[Optional[Tuple[int, int]], Optional[int]]:
    """``(identity, cookie)`` of the namespace SOCK lives in, from the socket itself
    (SIOCGSKNS, needs CAP_NET_ADMIN there), whichever thread asks. ``(None, None)`` when
    the kernel cannot tell."""
    import fcntl

    try:
        fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino), netns_cookie(sock)


class HeldNs(NamedTuple):
    """A namespace someone holds a socket in (the daemon: its netlink monitor)."""

    identity: Tuple[int, int]  # (st_dev, st_ino) of that namespace, read from the socket
    cookie: Optional[int]
    since: float  # time.monotonic() by which the socket was open already


class Changes(NamedTuple):
    """What changed since a mark (the daemon's ``NetlinkMonitor.changes_since``, which numbers
    every change it reads from one counter; ``observe.take_snapshot(changes=...)``)."""

    mark: int  # ask with this next time
    namespaces: Optional[FrozenSet[str]]  # changed, lost events, socket opened/closed; None: anything
    netns_dir: bool  # /run/netns seen changing (by the monitor's poll) since the mark
    hosts: Optional[FrozenSet[str]]  # /etc/netns/NAME may have changed; None: unknown (stat them all)


#: ``held(name)``: the namespace the caller holds open for /run/netns/NAME, if it does. Asked
#: after /run/netns/NAME was stat'ed; an answer means the socket was still open when asked.
Held = Callable[[str], Optional[HeldNs]]

#: ``still_valid(name, view)``: did nothing that matters change in namespace NAME since this
#: earlier dump of it? (Whether NAME is still that namespace is :func:`same_namespace`'s call.)
StillValid = Callable[[str, NsView], bool]


def same_namespace(view: NsView, now: Optional[Tuple[int, int]], stat_time: float, held: Optional[HeldNs]) -> bool:
    """Is /run/netns/NAME, stat'ed as NOW at STAT_TIME (a time.monotonic()), still the
    namespace VIEW was dumped from? True only when it is proven:

    * the dump's cookie is the held namespace's cookie: the dump came from the namespace
      the caller holds (cookies are never reused within a boot, see :func:`netns_cookie`);
    * that namespace was held open from before the stat (``since``) until ``held`` was
      asked (after the stat), so it was alive at the stat and no other namespace could have
      its (dev, inode) then;
    * /run/netns/NAME had that (dev, inode) at the stat: it was that namespace.

    Without a cookie (old kernel) or a holder nothing is proven: the answer is False and
    the namespace is dumped again -- correct, only slower."""
    if view.cookie is None or now is None or view.identity != now:
        return False  # no cookie to compare, or the entry changed (which proves a replacement)
    return held is not None and held.cookie == view.cookie and held.identity == now and held.since < stat_time


NR_OPEN = "/proc/sys/fs/nr_open"


def _raise_nofile() -> None:
    """As many open files as the kernel allows: one socket per namespace, and the daemon
    holds a monitor socket in each namespace besides a reconcile's own (2N at N containers).
    The hard limit too, when we may (root): a hard limit of 4,096 (the kernel's default
    outside systemd; the test VM has it) or 20,000 ran the daemon at 10,000 containers out
    of descriptors, every reconcile failing with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open(NR_OPEN) as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = 1 << 20
    if hard != resource.RLIM_INFINITY and hard < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
            return
        except (ValueError, OSError):  # not root (no CAP_SYS_RESOURCE): the soft limit only
            pass
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


class Kernel:
    """The one boundary to the kernel. Everything that reads or writes host state goes
    through an instance of this class (and ``handlers``, which uses it)."""

    def __init__(self, netns_dir: str = NETNS_DIR, etc_netns: str = ETC_NETNS):
        _raise_nofile()
        self.netns_dir = netns_dir
        self.etc_netns = etc_netns
        self.counter = WriteCounter()
        self.worker = NsWorker()
        self.host = NetlinkSocket("host namespace", self.counter)
        self._ns: Dict[str, NetlinkSocket] = {}
        # name -> (identity, cookie) of the namespace the socket in _ns was opened in
        self._ns_ids: Dict[str, Tuple[Tuple[int, int], Optional[int]]] = {}
        self._run_dir_ready = False

    # namespaces ---------------------------------------------------------------------------
    def ns_path(self, name: str) -> str:
        return os.path.join(self.netns_dir, name)

    def list_netns(self) -> List[str]:
        try:
            return sorted(n for n in os.listdir(self.netns_dir) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def ns_socket(self, name: str) -> NetlinkSocket:
        sock = self._ns.get(name)
        if sock is None:
            sock = self._open_ns_sockets([name])[name]
        return sock

    def _open_ns_sockets(self, names: Iterable[str]) -> Dict[str, NetlinkSocket]:
        """Open sockets inside many namespaces with one trip to the worker thread."""
        names = list(names)
        counter = self.counter
        paths = [(n, self.ns_path(n)) for n in names]

        def job():
            from .nsworker import setns

            out: Dict[str, object] = {}
            home = self.worker.home_fd
            for name, path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    out[name] = e
                    continue
                try:
                    try:
                        setns(fd)
                    except OSError as e:
                        out[name] = e
                        continue
                    try:
                        st = os.fstat(fd)  # the namespace entered, whatever /run/netns says by now
                        sock = NetlinkSocket(f"namespace {name}", counter)
                        out[name] = (sock, (st.st_dev, st.st_ino), netns_cookie(sock.sock))
                    finally:
                        setns(home)
                finally:
                    os.close(fd)
            return out

        got = self.worker.pool.submit(job).result()
        socks: Dict[str, NetlinkSocket] = {}
        failed = None
        for name, got_one in got.items():
            if isinstance(got_one, OSError):
                failed = failed or (name, got_one)
                continue
            s, ident, cookie = got_one  # type: ignore[misc]
            self._ns[name] = s
            self._ns_ids[name] = (ident, cookie)
            socks[name] = s
        if failed is not None:
            raise KernelError("enter namespace", failed[0], failed[1].errno or errno.EIO, partial=socks)
        return socks

    def ns_socket_identity(self, name: str) -> Optional[Tuple[Tuple[int, int], Optional[int]]]:
        """(identity, netns cookie) of the namespace NAME's open socket was opened in, or
        None when no socket is open for NAME."""
        return self._ns_ids.get(name)

    def close_ns_socket(self, name: str) -> None:
        s = self._ns.pop(name, None)
        self._ns_ids.pop(name, None)
        if s is not None:
            s.close()

    def open_monitor(self, name: Optional[str], groups: int, rcvbuf: int = 4 << 20) -> "socket.socket":
        """A non-blocking NETLINK_ROUTE socket bound to the multicast ``groups`` (an
        RTMGRP_* bitmask) in the host namespace (``name`` None) or inside namespace
        NAME (opened by the namespace worker: no fork). The caller reads and closes it.
        Note: an open socket keeps its namespace alive after `ip netns del`; close it
        as soon as the namespace leaves /run/netns."""
        import socket

        def make() -> "socket.socket":
            s = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0
            )
            try:
                try:
                    s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind((0, groups))
            except OSError:
                s.close()
                raise
            return s

        try:
            if name is None:
                return make()
            return self.worker.run_in(self.ns_path(name), make)  # type: ignore[return-value]
        except OSError as e:
            raise KernelError("monitor", f"namespace {name}" if name else "host namespace", e.errno or errno.EIO)

    def _ensure_run_dir(self) -> None:
        """Like `ip netns add`: /run/netns is a shared bind mount so namespaces created
        here are visible to every mount namespace (podman, systemd units)."""
        if self._run_dir_ready:
            return
        os.makedirs(self.netns_dir, mode=0o755, exist_ok=True)
        try:
            mount("", self.netns_dir, "none", MS_SHARED | MS_REC)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise KernelError("prepare", self.netns_dir, e.errno or errno.EIO)
            mount(self.netns_dir, self.netns_dir, "none", MS_BIND | MS_REC)
            mount("", self.netns_dir, "none", MS_SHARED | MS_REC)
        self._run_dir_ready = True

    def create_netns(self, name: str) -> NetlinkSocket:
        """Create /run/netns/NAME (iproute2-compatible) and return a socket inside it."""
        self._ensure_run_dir()
        path = self.ns_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        except OSError as e:
            raise KernelError("create namespace", name, e.errno or errno.EIO)
        os.close(fd)
        counter = self.counter

        def inside() -> NetlinkSocket:
            mount("/proc/thread-self/ns/net", path, "none", MS_BIND)
            return NetlinkSocket(f"namespace {name}", counter)

        try:
            sock = self.worker.run_new(inside)
        except OSError as e:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise KernelError("create namespace", name, e.errno or errno.EIO)
        self._ns[name] = sock  # type: ignore[assignment]
        self._ns_ids.pop(name, None)  # whatever was recorded was for an older socket
        return sock  # type: ignore[return-value]

    def delete_netns(self, name: str) -> None:
        self.close_ns_socket(name)
        path = self.ns_path(name)
        try:
            umount2(path, MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise KernelError("delete namespace", name, e.errno or errno.EIO)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KernelError("delete namespace", name, e.errno or errno.EIO)

    def write_sysctls(self, name: str, items: List[Tuple[str, str]]) -> None:
        """Write /proc/sys/... values inside namespace NAME (one trip to the worker)."""

        def job():
            for path, value in items:
                with open(path, "w") as f:
                    f.write(value)

        try:
            self.worker.run_in(self.ns_path(name), job)
        except OSError as e:
            raise KernelError("write sysctl", f"{name} {items[0][0] if items else ''}", e.errno or errno.EIO)

    # /etc/netns ------------------------------------------------------------------------------
    def list_hosts_dirs(self) -> List[str]:
        try:
            return sorted(os.listdir(self.etc_netns))
        except FileNotFoundError:
            return []

    def write_hosts(self, name: str, content: str) -> None:
        d = os.path.join(self.etc_netns, name)
        path = os.path.join(d, "hosts")
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
            write_atomic(path, content, durable=False)  # the next reconcile rewrites it
        except OSError as e:
            raise KernelError("write", path, e.errno or errno.EIO)

    def delete_hosts(self, name: str) -> None:
        d = os.path.join(self.etc_netns, name)
        path = os.path.join(d, "hosts")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if not f.readline().startswith(HOSTS_MARKER):
                    return  # not ours after all: never delete
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KernelError("delete", path, e.errno or errno.EIO)
        try:
            os.rmdir(d)  # only when empty (resolv.conf and friends stay)
        except OSError:
            pass

    def open_ns_sockets_lenient(self, names: List[str]) -> Dict[str, NetlinkSocket]:
        """Sockets inside the namespaces NAMES that could be entered (one trip to the
        worker); a name missing from the result could not be entered."""
        try:
            return self._open_ns_sockets(names)
        except KernelError as e:
            return dict(e.partial or {})  # the rest could not be entered: broken entries

    def close(self) -> None:
        for name in list(self._ns):
            self.close_ns_socket(name)
        self.host.close()
        self.worker.close()

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
