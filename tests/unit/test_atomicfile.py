"""The one atomic-write helper: content by rename, exact mode, no temp file left, fsync only
where the data must survive a power loss (state.json, saved plans), not for the status file."""
from __future__ import annotations

import os
import stat

import pytest

from reconciler import atomicfile
from reconciler.atomicfile import write_atomic
from reconciler.daemon.statusfile import DaemonStatus, write_status
from reconciler.statedir import State, StateStore


@pytest.fixture
def fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(atomicfile.os, "fsync", fsync)
    return calls


def test_replaces_content_exact_mode_and_a_stale_temp_file(tmp_path, fsyncs):
    path = str(tmp_path / "f")
    with open(path + ".tmp", "w") as f:  # a writer killed half-way
        f.write("half")
    old = os.umask(0o077)
    try:
        write_atomic(path, "new\n", durable=False)
    finally:
        os.umask(old)
    assert open(path).read() == "new\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # the umask does not narrow it
    assert os.listdir(tmp_path) == ["f"]
    assert fsyncs == []


def test_durable_syncs_the_file_then_the_directory(tmp_path, fsyncs):
    write_atomic(str(tmp_path / "f"), b"x", durable=True)
    assert fsyncs == [False, True]


def test_a_failed_write_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "d"
    target.mkdir()  # rename over a directory fails
    with pytest.raises(OSError):
        write_atomic(str(target), "x", durable=True)
    assert sorted(os.listdir(tmp_path)) == ["d"] and target.is_dir()


def test_state_file_is_durable_status_file_is_not(tmp_path, fsyncs):
    StateStore(str(tmp_path / "state")).save(State())
    assert fsyncs == [False, True]
    fsyncs.clear()
    write_status(str(tmp_path / "run" / "status.json"), DaemonStatus(manifest_paths=["/m"], state_dir="/s").to_json())
    assert fsyncs == []
    assert sorted(os.listdir(tmp_path / "run")) == ["status.json"]
