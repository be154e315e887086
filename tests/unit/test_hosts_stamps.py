"""kernel.host.read_hosts_files: the daemon takes a hosts file's content from its last snapshot
while the file's stat stamp is unchanged, and only for files that had settled (not changed
for a second) when read -- so any later write is seen, even one of the same size within the
same tick of a coarse filesystem clock. Plain files in a temporary directory, no kernel."""
from __future__ import annotations

import os
import time

import pytest

from reconciler.kernel import host as host_mod
from reconciler.kernel.host import NsView, Snapshot, read_hosts_files

FUTURE = time.time_ns() + 3600 * 10**9  # "everything has settled": stamps for every file


def write(etc, name, text):
    os.makedirs(os.path.join(etc, name), exist_ok=True)
    with open(os.path.join(etc, name, "hosts"), "w") as f:
        f.write(text)


def snap(files, stamps):
    return Snapshot(host=NsView(""), namespaces={}, hosts_files=files, hosts_stamps=stamps)


@pytest.fixture
def opened(monkeypatch):
    """Names of the hosts files read_hosts_files opened."""
    seen = []
    real = open

    def counting(path, *a, **kw):
        seen.append(os.path.basename(os.path.dirname(path)))
        return real(path, *a, **kw)

    monkeypatch.setattr(host_mod, "open", counting, raising=False)
    return seen


def test_settled_unchanged_files_are_taken_from_the_previous_snapshot(tmp_path, opened):
    etc = str(tmp_path)
    write(etc, "a", "A1\n")
    write(etc, "b", "B1\n")
    files, stamps = read_hosts_files(etc, ["a", "b", "none"], settled_before_ns=FUTURE)
    assert files == {"a": "A1\n", "b": "B1\n"} and sorted(stamps) == ["a", "b"]
    assert opened == ["a", "b", "none"]
    opened.clear()
    again, stamps2 = read_hosts_files(etc, ["a", "b"], snap(files, stamps), settled_before_ns=FUTURE)
    assert again == files and stamps2 == stamps
    assert opened == []  # neither file opened: both stamps matched


def test_a_same_size_edit_right_after_a_read_is_seen(tmp_path):
    """The race a coarse clock allows: written, read, edited again in the same tick with the
    same size. The first read had no settled stamp to record, so the second reads the file."""
    etc = str(tmp_path)
    write(etc, "a", "A1\n")
    files, stamps = read_hosts_files(etc, ["a"])  # the real rule: changed just now
    assert files == {"a": "A1\n"} and stamps == {}
    write(etc, "a", "A2\n")  # same size, at once
    files2, _ = read_hosts_files(etc, ["a"], snap(files, stamps))
    assert files2 == {"a": "A2\n"}


def test_edited_replaced_or_removed_files_are_read_again(tmp_path, opened):
    etc = str(tmp_path)
    for n in ("edited", "replaced", "removed", "kept"):
        write(etc, n, f"{n}\n")
    files, stamps = read_hosts_files(etc, ["edited", "replaced", "removed", "kept"], settled_before_ns=FUTURE)
    time.sleep(0.05)  # past a coarse clock's tick: the in-place edit gets another ctime
    with open(os.path.join(etc, "edited", "hosts"), "r+") as f:  # in place, same size
        f.write("EDITED\n")
    tmp = os.path.join(etc, "replaced", "hosts.tmp")
    with open(tmp, "w") as f:
        f.write("REPLACED\n")
    os.replace(tmp, os.path.join(etc, "replaced", "hosts"))  # how we write them: a new inode
    os.unlink(os.path.join(etc, "removed", "hosts"))
    opened.clear()
    now, _ = read_hosts_files(etc, ["edited", "replaced", "removed", "kept"], snap(files, stamps),
                              settled_before_ns=FUTURE)
    assert now == {"edited": "EDITED\n", "replaced": "REPLACED\n", "kept": "kept\n"}
    assert opened == ["edited", "replaced"]


def test_without_a_previous_snapshot_every_file_is_read(tmp_path, opened):
    """The daemon's start, SIGHUP and resync (and every CLI run) pass no previous snapshot."""
    etc = str(tmp_path)
    write(etc, "a", "A1\n")
    read_hosts_files(etc, ["a"], settled_before_ns=FUTURE)
    opened.clear()
    files, _ = read_hosts_files(etc, ["a"], None, settled_before_ns=FUTURE)
    assert files == {"a": "A1\n"} and opened == ["a"]
