"""Dumping many named namespaces at once: the bulk of every full observation.

``observe.take_snapshot`` used to open a socket in each namespace through the namespace
worker (setns there, socket, setns home), then dump from the main thread and close it:
per namespace two trips between threads, two ``setns`` calls, a socket set up for writes
(buffers, ACK options). Here a thread of our own (``MAX_THREADS``: one, see there) walks
the namespaces, going straight from one to the next (one ``setns`` each, home once at the
end), opens a socket set up for dumps only, dumps, and closes it; the caller waits for the
result (:meth:`Kernel.dump_namespaces` returns the wait). The entries are not ``stat``-ed
first: a view's identity is that of the fd its dump entered.

Nothing here writes to the kernel; the sockets never outlive the dump.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..objects import RTPROT
from .host import NsView, netns_cookie
from .netlink import RT_TABLE_MAIN, LinkRec, NetlinkSocket, WriteCounter
from .nsworker import setns

#: threads dumping namespaces. One: measured in the VM (TCG, 2 vCPUs, loaded) two threads
#: plus the caller reading hosts files meanwhile made observe at 1,000 twice as SLOW (35 ->
#: 75 s): every system call hands the GIL over and getting it back waits for the switch
#: interval. Kept as a knob for hosts where the kernel's share of a dump is larger.
MAX_THREADS = 1
PER_THREAD_MIN = 32


def _dump_one(name: str, path: str, is_ours: Callable[[str, List[LinkRec]], bool], counter: WriteCounter) -> NsView:
    """Enter namespace NAME (this thread stays there) and dump it. A namespace that cannot
    be entered is a broken view (``identity`` left for the caller)."""
    view = NsView(name, taken=time.monotonic())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        view.broken = True
        return view
    try:
        try:
            setns(fd)
        except OSError:
            view.broken = True
            return view
        st = os.fstat(fd)  # the namespace entered, whatever /run/netns says by now
    finally:
        os.close(fd)
    view.identity = (st.st_dev, st.st_ino)
    sock = NetlinkSocket(f"namespace {name}", counter, dumps_only=True)
    try:
        view.cookie = netns_cookie(sock.sock)
        view.links = sock.dump_links()
        if is_ours(name, view.links):
            view.addrs = sock.dump_addrs()
            view.routes = sock.dump_routes(table=RT_TABLE_MAIN, protocol=RTPROT)  # ours only
            view.full = True
    finally:
        sock.close()
    return view


def start(
    paths: Sequence[tuple],
    is_ours: Callable[[str, List[LinkRec]], bool],
    counter: WriteCounter,
    max_threads: Optional[int] = None,
) -> Callable[[], Dict[str, NsView]]:
    """Start dumping ``paths`` ((name, /run/netns path) pairs); returns the wait for the
    views by name. A thread that cannot return to its home namespace ends there (it is
    never reused); an error in a dump is raised by the wait, after every thread ended."""
    n = max(1, min(max_threads or MAX_THREADS, len(paths) // PER_THREAD_MIN))
    out: Dict[str, NsView] = {}
    errors: List[BaseException] = []

    def work(share: Sequence[tuple]) -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for name, path in share:
                out[name] = _dump_one(name, path, is_ours, counter)
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting caller
            errors.append(e)
        finally:
            try:
                setns(home)
            except OSError:
                pass  # the thread ends here anyway
            os.close(home)

    threads = [threading.Thread(target=work, args=(paths[i::n],), name=f"nsdump-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def wait() -> Dict[str, NsView]:
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    return wait
