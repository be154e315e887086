"""Entering network namespaces: libc wrappers and the namespace worker thread.

A socket belongs to the network namespace of the thread that created it, so a
single helper thread ``setns()``-es into a namespace, creates the socket (or the
namespace itself, or writes a sysctl) and returns home. No process is forked per
namespace (``pyroute2.netns`` and ``IPRoute(netns=...)`` fork one per call).

``os.setns`` and ``os.unshare`` are used where Python has them (3.12+); older
interpreters, and ``mount``/``umount2`` (which Python lacks), go through libc.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ..errors import Bug

CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 4096, 16384, 1 << 20
MNT_DETACH = 2

_libc_handle = None


def _libc():
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.unshare.argtypes = [ctypes.c_int]
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc_handle = lib
    return _libc_handle


def _check(rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
    else:
        _check(_libc().setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):
        os.unshare(flags)
    else:
        _check(_libc().unshare(flags), "unshare")


def mount(src: str, target: str, fstype: str, flags: int) -> None:
    _check(_libc().mount(src.encode(), target.encode(), fstype.encode(), flags, None), f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc().umount2(target.encode(), flags), f"umount {target}")


class NsWorker:
    """One thread that enters namespaces on our behalf and always returns home."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns")
        self.home_fd: Optional[int] = None
        self.pool.submit(self._init).result()

    def _init(self) -> None:
        self.home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def run_in(self, ns_path: str, fn: Callable[[], object]) -> object:
        return self.pool.submit(self._run_in, ns_path, fn).result()

    def _run_in(self, ns_path: str, fn: Callable[[], object]) -> object:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            return fn()
        finally:
            self._go_home()

    def run_new(self, fn: Callable[[], object]) -> object:
        """Unshare a fresh network namespace for this thread, run fn there, return home."""
        return self.pool.submit(self._run_new, fn).result()

    def _run_new(self, fn: Callable[[], object]) -> object:
        unshare(CLONE_NEWNET)
        try:
            return fn()
        finally:
            self._go_home()

    def _go_home(self) -> None:
        assert self.home_fd is not None
        try:
            setns(self.home_fd)
        except OSError as e:  # the worker would act in the wrong namespace: stop everything
            raise Bug(f"cannot return the namespace worker to the host namespace: {e}")

    def close(self) -> None:
        if self.home_fd is not None:
            fd = self.home_fd
            self.pool.submit(os.close, fd).result()
            self.home_fd = None
        self.pool.shutdown(wait=True)
