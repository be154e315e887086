"""What an idle daemon does (issue 12, P5: idle CPU <= 2 % of a core at 10,000 containers).

An idle daemon must not do work proportional to the number of namespaces: the /run/netns poll
lists and stat()s the entries only when the directory's stamp moved (and once more after a
change, for a second change in the same tick of the file system's clock)."""
from __future__ import annotations

import os
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
