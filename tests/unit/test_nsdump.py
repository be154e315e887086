"""kernel.nsdump's threads (no kernel: the per-namespace dump is replaced): every namespace is
dumped exactly once whatever the thread count, small lists use one thread, and a failure in
any thread reaches the caller only after every thread ended."""
from __future__ import annotations

import threading

import pytest

from reconciler.errors import KernelError
from reconciler.kernel import nsdump
from reconciler.kernel.host import NsView
from reconciler.kernel.netlink import WriteCounter


def fake_dump(log, fail=None):
    def dump(name, path, is_ours, counter):
        log.append((name, threading.current_thread().name))
        if name == fail:
            raise KernelError("dump", f"namespace {name}", 105)
        return NsView(name, full=is_ours(name, []))

    return dump


@pytest.mark.parametrize("count,max_threads,threads", [(1, 2, 1), (31, 2, 1), (64, 2, 2), (500, 2, 2), (500, 1, 1)])
def test_every_namespace_dumped_once_in_as_many_threads_as_pay_off(monkeypatch, count, max_threads, threads):
    log = []
    monkeypatch.setattr(nsdump, "_dump_one", fake_dump(log))
    names = [f"c{i}" for i in range(count)]
    views = nsdump.start([(n, f"/run/netns/{n}") for n in names], lambda n, l: n == "c0", WriteCounter(),
                         max_threads=max_threads)()
    assert sorted(views) == sorted(names) and sorted(n for n, _ in log) == sorted(names)
    assert all(views[n].name == n for n in names) and views["c0"].full
    assert len({t for _, t in log}) == threads


def test_a_failed_dump_is_raised_after_every_thread_ended(monkeypatch):
    log = []
    monkeypatch.setattr(nsdump, "_dump_one", fake_dump(log, fail="c3"))
    wait = nsdump.start([(f"c{i}", "") for i in range(100)], lambda n, l: False, WriteCounter(), max_threads=2)
    with pytest.raises(KernelError, match="namespace c3"):
        wait()
    assert not [t for t in threading.enumerate() if t.name.startswith("nsdump-")]
    assert len(log) > 3  # the other thread went on to the end of its share
