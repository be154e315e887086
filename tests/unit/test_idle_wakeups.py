"""What an idle daemon does (issue 12, P5: idle CPU <= 2 % of a core at 10,000 containers).

An idle daemon must not do work proportional to the number of namespaces: the /run/netns poll
lists and stat()s the entries only when the directory's stamp moved (and once more after a
change, for a second change in the same tick of the file system's clock)."""
from __future__ import annotations

import os
import time
import types

import pytest

from reconciler.daemon import nlmonitor
from reconciler.daemon.nlmonitor import NetlinkMonitor


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def monotonic(self):
        return self.t


class _NetnsDir:
    """A /run/netns of plain files, counting listings and per-entry stat()s."""

    def __init__(self, path, names):
        self.netns_dir = str(path)
        self.lists = 0
        for n in names:
            (path / n).write_text("")

    def ns_path(self, name):
        return os.path.join(self.netns_dir, name)

    def list_netns(self):
        self.lists += 1
        return sorted(os.listdir(self.netns_dir))


@pytest.fixture
def monitor(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(nlmonitor, "time", types.SimpleNamespace(monotonic=clock.monotonic, sleep=lambda s: None))
    kernel = _NetnsDir(tmp_path, [f"c{i:03d}" for i in range(200)])
    events = []
    mon = NetlinkMonitor(kernel, lambda src, detail: events.append((src, detail)))
    mon._seen = mon._list_netns()
    kernel.lists = 0
    yield mon, kernel, clock, events
    mon.stop()


def test_an_unchanged_run_netns_is_not_listed_again_once_its_stamp_settled(monitor):
    """Before: every tenth poll listed /run/netns and stat()ed every entry (10,000 stat()s every
    10 s at 10,000 namespaces) although nothing changed."""
    mon, kernel, clock, events = monitor
    mon._poll_netns()  # a stamp never seen: listed
    clock.t += 1.5
    mon._poll_netns()  # the same stamp, first read 1.5 s ago: listed once more, then trusted
    assert kernel.lists == 2
    for _ in range(60):  # a minute of polls, nothing changes
        clock.t += 1.0
        mon._poll_netns()
    assert kernel.lists == 2
    assert events == []


def test_a_change_in_the_same_tick_of_the_directory_clock_is_still_seen(monitor, tmp_path):
    """Two changes within one tick of the file system's clock leave the directory's stamp as
    the first set it: the listing is repeated until the stamp is older than a tick. Before,
    the second change waited for the tenth poll."""
    mon, kernel, clock, events = monitor
    stamp = mon._netns_dir_stamp()
    mon._netns_dir_stamp = lambda: stamp  # what a coarse mtime shows for both changes
    mon._poll_netns()
    assert events == []
    (tmp_path / "zzz-new").write_text("")  # the second change, same stamp
    clock.t += 0.3
    mon._poll_netns()
    assert events == [("netns", "/run/netns: added zzz-new")]


def test_a_new_stamp_is_listed_at_once(monitor, tmp_path):
    mon, kernel, clock, events = monitor
    mon._poll_netns()
    clock.t += 1.5
    mon._poll_netns()
    (tmp_path / "c000").unlink()
    os.utime(tmp_path, ns=(0, 12345))  # whatever the clock: a different stamp is a change
    clock.t += 1.0
    mon._poll_netns()
    assert events == [("netns", "/run/netns: removed c000")]


# -- the reconcile and main threads sleep until something happens ----------------------------------
import signal  # noqa: E402
import threading  # noqa: E402

from reconciler.daemon import watch  # noqa: E402
from reconciler.daemon.triggers import TriggerQueue  # noqa: E402


class _RecordingCondition(threading.Condition):
    """Records each wait's timeout; closes the queue at the first, so get() returns."""

    def __init__(self, queue):
        super().__init__(threading.Lock())
        self.queue = queue
        self.timeouts = []

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        self.queue._closed = True
        return False


def test_an_idle_trigger_queue_waits_for_a_producer_not_for_a_second():
    """Before: get() woke once a second with nothing pending (the reconcile thread of an idle
    daemon did, every second, for nothing)."""
    q = TriggerQueue(debounce=0.5)
    q._cond = _RecordingCondition(q)
    assert q.get() is None
    assert q._cond.timeouts == [None]


def test_a_timer_far_away_is_waited_for_in_one_sleep():
    q = TriggerQueue(debounce=0.5)
    q.schedule("resync", time.monotonic() + 60)
    q._cond = _RecordingCondition(q)
    q.get()
    assert len(q._cond.timeouts) == 1 and q._cond.timeouts[0] > 50


def test_a_fake_clock_still_wakes_every_second():
    """A fake (or jumping) clock cannot be slept on: the one-second cap stays for it."""
    t = [0.0]
    q = TriggerQueue(debounce=0.5, clock=lambda: t[0])
    q._cond = _RecordingCondition(q)
    q.get()
    assert q._cond.timeouts == [1.0]


def _daemon(tmp_path, monkeypatch):
    from reconciler.daemon.sdnotify import Notifier

    (tmp_path / "m").mkdir()
    d = watch.Daemon([str(tmp_path / "m")], str(tmp_path / "state"), status_file=None,
                     notifier=Notifier(environ={}), loader=lambda paths: None, apply_fn=None)
    monkeypatch.setattr(d, "start_watchers", lambda: None)
    monkeypatch.setattr(d, "handle", lambda batch: None)
    return d


@pytest.fixture
def signal_mask():
    """run() blocks SIGHUP/SIGTERM/SIGINT in the calling thread: restore the test's mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    assert not (signal.sigpending() & set(watch.SIGNALS))  # nothing left to deliver on unblocking
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_without_a_watchdog_the_main_thread_sleeps_until_a_signal(tmp_path, monkeypatch, signal_mask):
    """Before: the main thread woke every second (sigtimedwait(1.0)) to look at the reconcile
    thread; and the reconcile thread woke every second to refresh a heartbeat for it."""
    d = _daemon(tmp_path, monkeypatch)
    waits = []

    def wait_signal(timeout):
        waits.append(timeout)
        return signal.SIGTERM

    monkeypatch.setattr(watch, "wait_signal", wait_signal)
    assert d.run() == 0
    assert waits == [watch.IDLE_SIGNAL_WAIT] and watch.IDLE_SIGNAL_WAIT >= 600


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_reconcile_thread_that_ends_wakes_the_main_thread_which_exits_1(tmp_path, monkeypatch, signal_mask):
    d = _daemon(tmp_path, monkeypatch)
    woke = []
    real = watch.wait_signal

    def wait_signal(timeout):
        woke.append(real(timeout))
        return woke[-1]

    def loop():
        raise SystemExit  # what an Exception cannot do: loop() survives those

    monkeypatch.setattr(watch, "wait_signal", wait_signal)
    monkeypatch.setattr(d, "loop", loop)
    assert d.run() == 1
    assert woke == [signal.SIGTERM]  # the thread's own wake-up, not a timeout


def test_the_watchdog_is_pinged_while_the_reconcile_thread_waits_not_while_it_is_stuck(tmp_path, monkeypatch):
    d = _daemon(tmp_path, monkeypatch)
    now = [5000.0]
    d.clock = lambda: now[0]
    assert not d.reconcile_stuck(wd=90)  # waiting for a batch for hours is not stuck
    d.busy_since = now[0]
    now[0] += 2 * 90 + d.lock_timeout - 1
    assert not d.reconcile_stuck(wd=90)
    now[0] += 2
    assert d.reconcile_stuck(wd=90)


# -- file descriptors at 10,000 containers -----------------------------------------------------
class _Limits:
    def __init__(self, soft, hard, root):
        self.now = (soft, hard)
        self.root = root

    def getrlimit(self, what):
        return self.now

    def setrlimit(self, what, limits):
        if limits[1] > self.now[1] and not self.root:
            raise ValueError("not allowed to raise maximum limit")
        self.now = limits


@pytest.mark.parametrize("root, want", [(True, (1048576, 1048576)), (False, (4096, 4096))])
def test_the_kernel_raises_the_open_files_hard_limit_when_it_may(monkeypatch, tmp_path, root, want):
    """The daemon holds a monitor socket in every namespace besides the reconcile's own:
    ~20,000 descriptors at 10,000 containers. Before, only the soft limit was raised, to a
    hard limit of 4,096 (the VM's; outside systemd the kernel's default): EMFILE on every
    reconcile at 10,000 containers. Without CAP_SYS_RESOURCE the soft limit still goes up."""
    from reconciler.kernel import host

    lim = _Limits(1024, 4096, root)
    nr_open = tmp_path / "nr_open"
    nr_open.write_text("1048576\n")
    monkeypatch.setattr(host, "NR_OPEN", str(nr_open), raising=False)
    monkeypatch.setattr(host, "resource", types.SimpleNamespace(
        RLIMIT_NOFILE=7, RLIM_INFINITY=-1, getrlimit=lim.getrlimit, setrlimit=lim.setrlimit))
    host._raise_nofile()
    assert lim.now == want
