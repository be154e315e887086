"""What the kind handlers (``kernel.handlers``) get while the executor (``kernel.apply``)
runs one stage: the kernel, the ifindexes known so far, and per-phase queues of netlink
requests. Its own module so that the executor imports the handlers and the handlers this,
and nothing imports back."""
from __future__ import annotations

import errno
import os
from typing import Dict, List, Optional, Set, Tuple

from ..errors import KernelError
from ..objects import Key
from .host import Kernel, Snapshot
from .netlink import NetlinkSocket, Request


class Ctx:
    """What handlers need while executing one stage."""

    def __init__(self, kernel: Kernel, snapshot: Snapshot):
        self.kernel = kernel
        self.host_links: Dict[str, int] = {l.name: l.index for l in snapshot.host.links}
        self.ns_links: Dict[str, Dict[str, int]] = {
            name: {l.name: l.index for l in view.links} for name, view in snapshot.namespaces.items()
        }
        self.ns_next_index: Dict[str, int] = {}
        self.new_netns: Set[str] = set()
        self.host_links_changed = False
        self.current: Optional[Key] = None
        self._queues: Dict[int, List[Tuple[NetlinkSocket, Request]]] = {}
        self._fds: Dict[str, int] = {}
        self.failed: Dict[Key, str] = {}

    # lookups --------------------------------------------------------------------------------
    def host_index(self, name: str) -> int:
        idx = self.host_links.get(name)
        if idx is None:
            raise KernelError("find link", name, errno.ENODEV)
        return idx

    def refresh_host_links(self) -> None:
        self.host_links = {l.name: l.index for l in self.kernel.host.dump_links()}
        self.host_links_changed = False

    def ifindex(self, ns: str, ifname: str) -> Optional[int]:
        return self.ns_links.get(ns, {}).get(ifname)

    def alloc_ifindex(self, ns: str, ifname: str) -> int:
        """Pick the new link's ifindex ourselves, so the requests that follow can name
        it without asking the kernel. The kernel looks a NEWLINK's ifindex up in the
        *sending* socket's namespace (the host's) before creating the link in the
        target, so the index must be free in both: above every host index and every
        index of the target namespace, and never reused within a run."""
        links = self.ns_links.setdefault(ns, {"lo": 1})
        host_max = max(self.host_links.values(), default=1)
        nxt = max(self.ns_next_index.get(ns, 0), max(list(links.values()) + [1]) + 1, host_max + 1)
        links[ifname] = nxt
        self.ns_next_index[ns] = nxt + 1
        return nxt

    def forget_ifindex(self, ns: str, ifname: str) -> None:
        links = self.ns_links.get(ns, {})
        idx = links.pop(ifname, None)
        if idx is not None:
            self.ns_next_index[ns] = max(self.ns_next_index.get(ns, 0), idx + 1, max(list(links.values()) + [1]) + 1)

    def ns_fd(self, ns: str) -> int:
        fd = self._fds.get(ns)
        if fd is None:
            try:
                fd = os.open(self.kernel.ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise KernelError("open namespace", ns, e.errno or errno.EIO)
            self._fds[ns] = fd
        return fd

    def ns_socket(self, ns: str) -> NetlinkSocket:
        return self.kernel.ns_socket(ns)

    # work -----------------------------------------------------------------------------------
    def queue(self, sock: NetlinkSocket, phase: int, data, operation: str, obj: str, ok=()) -> None:
        if data is None:
            return
        req = Request(data=data, operation=operation, obj=obj, ok_errnos=tuple(ok), action=self.current)
        self._queues.setdefault(phase, []).append((sock, req))

    def sysctl(self, ns: str, path: str, value: str) -> None:
        self.kernel.write_sysctls(ns, [(path, value)])

    def flush(self) -> None:
        """Send every queued request, phase by phase, and record failures per action."""
        try:
            for phase in sorted(self._queues):
                by_sock: Dict[int, Tuple[NetlinkSocket, List[Request]]] = {}
                for sock, req in self._queues[phase]:
                    by_sock.setdefault(id(sock), (sock, []))[1].append(req)
                for sock, reqs in by_sock.values():
                    for r in reqs:
                        sock.queue_request(r)
                    sock.flush()
                    for r in reqs:
                        if r.error is not None:
                            self.failed.setdefault(r.action, str(r.error))
                if self.failed:
                    break
        finally:
            self._queues.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if self.host_links_changed:
            self.refresh_host_links()
