"""The daemon's host-side parts: trigger queue and debounce, backoff, error classes,
status file, metrics text, sd_notify datagrams, logs, the manifest watcher (real
inotify on temporary directories) and the reconcile loop's decisions (fake loader
and apply: no kernel)."""
from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import shutil
import socket
import threading
import time
import urllib.request

import pytest

from reconciler.daemon import logs
from reconciler.daemon.classify import BUG, PERMANENT, TEMPORARY, classify
from reconciler.daemon.fswatch import (
    ManifestWatcher,
    compute_rules,
    fingerprint,
    is_manifest_name,
    manifest_files,
)
from reconciler.daemon.metrics import Metrics, MetricsServer, parse_addr
from reconciler.daemon.sdnotify import Notifier
from reconciler.daemon.statusfile import DaemonStatus, read_status, write_status
from reconciler.daemon.triggers import Backoff, TriggerQueue
from reconciler.daemon.watch import Daemon
from reconciler.errors import (
    Bug,
    Diagnostic,
    EnvironmentProblem,
    KernelError,
    LockHeld,
    ManifestError,
    PlanError,
    UserError,
)
from reconciler.model import Container, DesiredState, Location, Network


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


# --- trigger queue ---------------------------------------------------------------------------
def test_debounce_fires_after_quiet_period():
    clk = FakeClock()
    q = TriggerQueue(debounce=0.5, max_delay=5.0, clock=clk)
    assert q.poll() is None and q.due() is None
    q.put("file", "a.yaml modified")
    clk.advance(0.3)
    q.put("file", "a.yaml modified")
    clk.advance(0.3)  # 0.3 since the last: not yet
    assert q.poll() is None
    assert q.due() == pytest.approx(clk.t + 0.2)
    clk.advance(0.2)
    b = q.poll()
    assert b is not None
    assert b.sources["file"] == 2 and b.details == ["a.yaml modified", "a.yaml modified"]
    assert q.poll() is None  # taken


def test_debounce_is_capped_by_max_delay():
    clk = FakeClock()
    q = TriggerQueue(debounce=0.5, max_delay=2.0, clock=clk)
    for _ in range(7):  # an event every 0.3 s: never quiet for 0.5 s
        q.put("netlink")
        clk.advance(0.3)
    b = q.poll()
    assert b is not None and b.sources["netlink"] >= 6


def test_immediate_trigger_and_coalescing_of_sources():
    clk = FakeClock()
    q = TriggerQueue(debounce=0.5, clock=clk)
    q.put("netlink", "host namespace: link eth7 added")
    q.put("hup", "SIGHUP", immediate=True)
    b = q.poll()
    assert b is not None and b.has("hup") and b.has("netlink")
    assert "hup" in b.describe() and "netlink" in b.describe()


def test_timers_fire_at_their_time_and_take_pending_triggers():
    clk = FakeClock()
    q = TriggerQueue(debounce=0.5, clock=clk)
    q.schedule("resync", clk.t + 60)
    q.schedule("retry", clk.t + 2)
    assert q.due() == clk.t + 2
    clk.advance(2)
    b = q.poll()
    assert b.timers == ("retry",) and not b.sources
    q.cancel("resync")
    assert q.due() is None
    q.schedule("resync", clk.t + 1)
    q.put("netlink")
    clk.advance(1)
    b = q.poll()  # the timer is due; the pending trigger rides along
    assert b.timers == ("resync",) and b.sources["netlink"] == 1


def test_get_blocks_until_due_and_close_wakes_it():
    q = TriggerQueue(debounce=0.05)
    t0 = time.monotonic()
    threading.Timer(0.05, lambda: q.put("file")).start()
    b = q.get(timeout=5)
    assert b is not None and b.has("file")
    assert time.monotonic() - t0 >= 0.09  # 0.05 until the put + 0.05 debounce
    threading.Timer(0.05, q.close).start()
    assert q.get() is None and q.closed


def test_backoff_doubles_and_caps():
    b = Backoff(base=1, cap=10)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    b.reset()
    assert b.next_delay() == 1


# --- error classes -----------------------------------------------------------------------------
def test_error_classification():
    diag = Diagnostic(Location("a.yaml", 1, 1), "bad")
    assert classify(ManifestError([diag])) == PERMANENT
    assert classify(PlanError(["clash"])) == PERMANENT
    assert classify(UserError("x")) == PERMANENT
    assert classify(KernelError("create", "eth0.20", 16)) == TEMPORARY
    assert classify(LockHeld("held")) == TEMPORARY
    assert classify(EnvironmentProblem("later")) == TEMPORARY
    assert classify(OSError(24, "Too many open files")) == TEMPORARY
    assert classify(Bug("invariant")) == BUG
    assert classify(KeyError("x")) == BUG
    assert classify(AssertionError()) == BUG


# --- status file ---------------------------------------------------------------------------------
def test_status_file_content_and_atomic_write(tmp_path):
    st = DaemonStatus(manifest_paths=["/m"], state_dir="/s")
    st.last_reconcile = time.time()
    st.last_result = "pending"
    st.last_duration = 0.25
    st.pending = ["network n7: parent eth7 does not exist"]
    st.reconciles["pending"] += 1
    st.record_error(TEMPORARY, "create vlan eth0.20: Device or resource busy")
    for i in range(15):
        st.record_error(PERMANENT, f"e{i}")
    path = tmp_path / "run" / "status.json"
    write_status(str(path), st.to_json())
    assert os.listdir(path.parent) == ["status.json"]  # no temp file left behind
    data = read_status(str(path))
    assert data["format_version"] == "1"
    assert data["last_result"] == "pending" and data["pending_objects"] == 1
    assert data["last_reconcile"].endswith("Z") and data["last_duration_seconds"] == 0.25
    assert data["counts"]["reconciles"]["pending"] == 1
    assert data["counts"]["errors"] == {PERMANENT: 15, TEMPORARY: 1, BUG: 0}
    assert len(data["last_errors"]) == 10 and data["last_errors"][-1]["message"] == "e14"
    assert data["manifest_paths"] == ["/m"] and data["pid"] == os.getpid()
    # a reader never sees a partial file: the old one stays until the rename
    st.last_result = "converged"
    write_status(str(path), st.to_json())
    assert read_status(str(path))["last_result"] == "converged"


def test_read_status_absent_or_corrupt(tmp_path):
    assert read_status(str(tmp_path / "nope.json")) is None
    (tmp_path / "bad.json").write_text("{half")
    assert read_status(str(tmp_path / "bad.json")) is None


def test_status_text_shows_daemon_section():
    from reconciler.render import status_text

    st = DaemonStatus(manifest_paths=["/m"], state_dir="/s")
    st.last_result = "failed"
    st.last_reconcile = time.time()
    st.manifest_valid = False
    st.manifest_errors = ["a.yaml:3:5: unknown key 'parnet'"]
    st.record_error(TEMPORARY, "lock held")
    data = {"summary": {"networks": [], "containers": []}, "daemon": st.to_json()}
    text = status_text(data)
    assert "daemon: last reconcile" in text and "result failed" in text
    assert "a.yaml:3:5: unknown key 'parnet'" in text
    assert "last error (temporary" in text


# --- metrics ---------------------------------------------------------------------------------------
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


def test_metrics_text_format():
    m = Metrics()
    m.reconciled("converged", 0.2)
    m.reconciled("failed", 3.0)
    m.error(TEMPORARY)
    m.set_managed({"network": 2, "container": 5})
    m.drift_repaired()
    m.set_pending(1)
    m.succeeded(1700000000.5)
    text = m.render()
    assert text.endswith("\n")
    names = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            names.add(line.split()[2])
            continue
        assert SAMPLE.match(line), line
    for n in ("reconciles_total", "reconcile_duration_seconds", "errors_total", "managed_objects",
              "drift_repairs_total", "pending_objects", "last_success_timestamp_seconds"):
        assert "ipvlan_reconciler_" + n in names
    # values as numbers: the library writes floats Go-style (1.0, 1.7000000005e+09)
    v = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
    P = "ipvlan_reconciler_"
    assert v[P + 'reconciles_total{result="converged"}'] == 1
    assert v[P + 'reconciles_total{result="failed"}'] == 1
    assert v[P + 'reconciles_total{result="rejected"}'] == 0  # every result from the start
    assert v[P + 'errors_total{class="temporary"}'] == 1
    assert v[P + 'managed_objects{kind="container"}'] == 5
    assert v[P + 'managed_objects{kind="vlan"}'] == 0
    assert v[P + "drift_repairs_total"] == 1
    assert v[P + "pending_objects"] == 1
    assert v[P + "last_success_timestamp_seconds"] == 1700000000.5
    # histogram: cumulative buckets, +Inf == count, sum
    buckets = [(k.split('"')[1], n) for k, n in v.items() if k.startswith(P + "reconcile_duration_seconds_bucket{")]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts) and buckets[-1] == ("+Inf", 2)
    assert dict(buckets)["0.25"] == 1 and dict(buckets)["5.0"] == 2
    assert v[P + "reconcile_duration_seconds_count"] == 2
    assert v[P + "reconcile_duration_seconds_sum"] == pytest.approx(3.2)
    # the library's standard process metrics come with it
    assert v["process_cpu_seconds_total"] >= 0 and v["process_resident_memory_bytes"] > 0
    assert "# TYPE ipvlan_reconciler_reconcile_duration_seconds histogram" in text


def test_metrics_addr_parsing():
    assert parse_addr("9101") == ("127.0.0.1", 9101)
    assert parse_addr(":9101") == ("127.0.0.1", 9101)
    assert parse_addr("0.0.0.0:9101") == ("0.0.0.0", 9101)
    assert parse_addr("[::1]:9101") == ("::1", 9101)
    assert parse_addr("localhost:0") == ("localhost", 0)
    for bad in ("x", "1:99999", "[::1]9101"):
        with pytest.raises(UserError):
            parse_addr(bad)


def test_metrics_server_answers_on_loopback():
    m = Metrics()
    m.reconciled("converged", 0.1)
    srv = MetricsServer(m, "127.0.0.1", 0)
    srv.start()
    try:
        host, port = srv.address
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'reconciles_total{result="converged"} 1' in r.read().decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
    finally:
        srv.stop()


def test_metrics_keep_their_own_registry():
    """Two daemons in one process (the tests build many) count separately: each Metrics has
    its own registry, not prometheus-client's global one."""
    a, b = Metrics(), Metrics()
    a.drift_repaired()
    a.set_managed({"network": 3, "bridge": 1})  # a kind named later stays in the set
    a.set_managed({"network": 1})
    assert a.value("drift_repairs_total") == 1 and b.value("drift_repairs_total") == 0
    assert a.value("managed_objects", {"kind": "network"}) == 1
    assert a.value("managed_objects", {"kind": "bridge"}) == 0
    assert b.value("managed_objects", {"kind": "network"}) == 0
    srv = MetricsServer(b, "127.0.0.1", 0)
    srv.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.address[1]}/", timeout=5) as r:
            assert b'href="/metrics"' in r.read()
    finally:
        srv.stop()


# --- sd_notify ---------------------------------------------------------------------------------------
def _dgram(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    return s


def test_sd_notify_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    s = _dgram(path)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
        assert n.enabled and n.watchdog_interval == 10.0
        assert n.ready("converged: 1 networks")
        assert s.recv(4096) == b"READY=1\nSTATUS=converged: 1 networks\n"
        n.status("line one\nline two")
        assert s.recv(4096) == b"STATUS=line one line two\n"
        n.watchdog()
        assert s.recv(4096) == b"WATCHDOG=1\n"
        n.stopping()
        assert s.recv(4096) == b"STOPPING=1\n"
    finally:
        s.close()


def test_sd_notify_abstract_socket():
    name = f"ipvlan-reconciler-test-{os.getpid()}-{time.monotonic_ns()}"
    s = _dgram("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert s.recv(4096) == b"READY=1\n"
    finally:
        s.close()


def test_sd_notify_disabled_and_watchdog_pid():
    n = Notifier({})
    assert not n.enabled and n.ready() is False and n.watchdog_interval is None
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/sock", "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval is None  # meant for another process
    assert n.ready() is False and n.errors == 1  # systemd absent: never fatal


# --- logs ----------------------------------------------------------------------------------------------
def test_json_logs_one_object_per_line():
    buf = io.StringIO()
    logs.setup("json", "debug", stream=buf)
    try:
        logs.info("reconciled", added=2, trigger="file")
        try:
            raise ValueError("boom")
        except ValueError:
            logs.error("internal error", exc_info=True, level="shadowed")
    finally:
        logs.setup("text", "info")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    a, b = (json.loads(l) for l in lines)
    assert a["level"] == "info" and a["msg"] == "reconciled" and a["added"] == 2 and a["trigger"] == "file"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", a["ts"])
    assert b["level"] == "error" and "ValueError: boom" in b["traceback"] and b["field_level"] == "shadowed"


def test_text_logs_with_fields():
    buf = io.StringIO()
    logs.setup("text", "info", stream=buf)
    try:
        logs.warning("pending", reason="parent eth7 missing", n=1)
        logs.debug("hidden at info")
    finally:
        logs.setup("text", "info")
    out = buf.getvalue()
    assert "WARNING pending" in out and 'reason="parent eth7 missing"' in out and "n=1" in out
    assert "hidden" not in out


def test_text_logs_of_a_hostile_file_name_are_one_printable_line(tmp_path):
    """A manifest named with an escape sequence and a newline neither reaches the terminal
    raw nor forges a second log line."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "\x1b[31mx.yaml").write_text("version: 1\nnetworks: [\n")  # (a log field without spaces)
    (d / "y\nERROR forged.yaml").write_text("version: 1\nnetworks: [\n")
    buf = io.StringIO()
    logs.setup("text", "info", stream=buf)
    try:
        daemon = Daemon([str(d)], str(tmp_path / "state"), status_file=str(tmp_path / "status.json"),
                        apply_fn=lambda *a, **k: outcome(), kernel_factory=lambda: None,
                        notifier=FakeNotifier(), clock=FakeClock())
        assert not daemon.reload()
    finally:
        logs.setup("text", "info")
    out = buf.getvalue()
    assert "\x1b" not in out and not any(line.startswith("ERROR forged") for line in out.splitlines()), out
    assert "YAML syntax error" in out


# --- manifest files and the watcher ---------------------------------------------------------------
def test_manifest_names():
    for ok in ("a.yaml", "net.yml", "10-base.yaml"):
        assert is_manifest_name(ok)
    for no in (".a.yaml.swp", ".#a.yaml", "a.yaml~", "4913", "#a.yaml#", "a.yaml.tmp", "..data", "README"):
        assert not is_manifest_name(no)


def test_fingerprint_changes_with_content_only(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.yaml").write_text("version: 1\n")
    (d / ".a.yaml.swp").write_text("junk")
    d1, files, missing = fingerprint([str(d)])
    assert files == [str(d / "a.yaml")] and missing == []
    (d / "a.yaml~").write_text("backup")
    assert fingerprint([str(d)])[0] == d1  # temp files do not count
    (d / "a.yaml").write_text("version: 1\nnetworks: {}\n")
    assert fingerprint([str(d)])[0] != d1
    assert manifest_files([str(tmp_path / "gone")]) == ([], [str(tmp_path / "gone")])


def test_fingerprint_never_blocks_on_a_fifo(tmp_path, monkeypatch):
    """A manifest swapped for a FIFO between listing and reading must not hang the daemon."""
    from reconciler.daemon import fswatch
    from reconciler.manifest import Scan

    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    monkeypatch.setattr(fswatch, "_scan", lambda paths: Scan([str(fifo)], [], []))
    done = []
    t = threading.Thread(target=lambda: done.append(fingerprint([str(tmp_path)])), daemon=True)
    t.start()
    t.join(10)
    if not done:
        open(fifo, "wb").close()  # unblock the reader (a writer appears and goes)
        t.join(10)
        pytest.fail("fingerprint blocked reading a FIFO")
    assert done[0][1] == [str(fifo)]


def _k8s_layout(root, version, files):
    """A ConfigMap mount: ..<ts>/ holds the files, ..data -> ..<ts>, NAME -> ..data/NAME."""
    ts = root / f"..2024_01_01_00_00_0{version}"
    ts.mkdir()
    for name, text in files.items():
        (ts / name).write_text(text)
    tmp = root / "..data_tmp"
    os.symlink(ts.name, tmp)
    os.replace(tmp, root / "..data")
    for name in files:
        if not os.path.lexists(root / name):
            os.symlink(f"..data/{name}", root / name)
    return ts


def test_compute_rules_follows_symlinks(tmp_path):
    real = tmp_path / "srv" / "v1"
    real.mkdir(parents=True)
    (real / "a.yaml").write_text("version: 1\n")
    link = tmp_path / "etc" / "manifests.d"
    link.parent.mkdir()
    os.symlink(real, link)
    rules = compute_rules([str(link)])
    assert rules[str(real)].manifests
    assert "manifests.d" in rules[str(tmp_path / "etc")].names  # the symlink itself
    assert "v1" in rules[str(tmp_path / "srv")].names  # its target being replaced
    missing = compute_rules([str(tmp_path / "nope" / "deeper")])
    assert "nope" in missing[str(tmp_path)].names


class Collector:
    def __init__(self):
        self.q = queue.Queue()

    def __call__(self, detail):
        self.q.put(detail)

    def drain(self, settle=0.3):
        out = []
        deadline = time.monotonic() + settle
        while True:
            try:
                out.append(self.q.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return out

    def wait(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                d = self.q.get(timeout=0.05)
            except queue.Empty:
                continue
            seen.append(d)
            if pred(d):
                return seen
        raise AssertionError(f"no matching event; saw {seen}")


@pytest.fixture
def watcher_factory():
    made = []

    def make(paths):
        c = Collector()
        w = ManifestWatcher([str(p) for p in paths], c)
        w.start()
        made.append(w)
        return w, c

    yield make
    for w in made:
        w.stop()


def test_watcher_sees_editor_saves_and_ignores_temp_files(tmp_path, watcher_factory):
    d = tmp_path / "m"
    d.mkdir()
    w, c = watcher_factory([d])
    # temp files, hidden files, reading a manifest: nothing
    (d / ".a.yaml.swp").write_text("x")
    (d / "4913").write_text("")
    os.unlink(d / "4913")
    (d / "a.yaml~").write_text("x")
    (d / "README").write_text("x")
    assert c.drain() == []
    # write-temp-then-rename (vim, most tools): a move whose destination is a manifest
    (d / ".a.yaml.tmp").write_text("version: 1\n")
    os.rename(d / ".a.yaml.tmp", d / "a.yaml")
    c.wait(lambda s: s.startswith("moved") and s.endswith("a.yaml"))
    c.drain()
    with open(d / "a.yaml") as f:  # our own reads: nothing
        f.read()
    assert c.drain() == []
    with open(d / "a.yaml", "a") as f:  # in-place write
        f.write("# x\n")
    c.wait(lambda s: "a.yaml" in s and ("modified" in s or "closed" in s))
    os.unlink(d / "a.yaml")
    c.wait(lambda s: s.startswith("deleted") and s.endswith("a.yaml"))


def test_watcher_follows_a_kubernetes_configmap_swap(tmp_path, watcher_factory):
    d = tmp_path / "cm"
    d.mkdir()
    _k8s_layout(d, 1, {"net.yaml": "version: 1\n"})
    w, c = watcher_factory([d])
    c.drain()
    old = os.path.realpath(d / "..data")
    _k8s_layout(d, 2, {"net.yaml": "version: 1\nnetworks: {}\n"})
    shutil.rmtree(old)
    c.wait(lambda s: "..data" in s)
    assert open(d / "net.yaml").read() == "version: 1\nnetworks: {}\n"
    w.refresh()  # the daemon does this after each reload
    assert str(d) in w.watched


def test_watcher_refresh_never_calls_the_observer_holding_its_own_lock(tmp_path):
    """watchdog dispatches events holding its observer lock, and our handler takes the
    watcher's lock; refresh() calling schedule/unschedule under the watcher's lock was the
    other lock order, and a unit run deadlocked on it (ConfigMap swap test, 2026-11-29)."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for v in (v1, v2):
        v.mkdir()
    link = tmp_path / "manifests.d"
    os.symlink(v1, link)
    w = ManifestWatcher([str(link)], notify=lambda detail: None)
    calls = []

    def checked(name):
        real = getattr(w.observer, name)

        def call(*a, **k):
            calls.append((name, w._lock.locked()))
            return real(*a, **k)

        return call

    w.observer.schedule = checked("schedule")
    w.observer.unschedule = checked("unschedule")
    w.refresh()
    os.symlink(v2, tmp_path / "tmp")
    os.replace(tmp_path / "tmp", link)
    assert w.refresh() is True  # v1 unscheduled, v2 scheduled
    assert {n for n, _ in calls} == {"schedule", "unschedule"}
    assert [held for _, held in calls] == [False] * len(calls)
    assert str(v2) in w.watched and str(v1) not in w.watched


def test_watcher_follows_a_swapped_directory_symlink_and_removal(tmp_path, watcher_factory):
    v1 = tmp_path / "v1"
    v2 = tmp_path / "v2"
    for v in (v1, v2):
        v.mkdir()
        (v / "a.yaml").write_text(f"# {v.name}\n")
    link = tmp_path / "manifests.d"
    os.symlink(v1, link)
    w, c = watcher_factory([link])
    assert str(v1) in w.watched
    tmp = tmp_path / "manifests.d.tmp"
    os.symlink(v2, tmp)
    os.replace(tmp, link)
    c.wait(lambda s: "manifests.d" in s)
    w.refresh()
    assert str(v2) in w.watched and str(v1) not in w.watched
    c.drain()
    (v2 / "b.yml").write_text("version: 1\n")  # now edits in the new target count
    c.wait(lambda s: s.endswith("b.yml"))
    (v1 / "c.yaml").write_text("version: 1\n")  # and the old one no longer does
    assert not [s for s in c.drain() if "c.yaml" in s]
    # the directory disappears: reported (the daemon keeps its state)
    os.unlink(link)
    c.wait(lambda s: "manifests.d" in s)
    w.refresh()
    # ... and comes back
    link.mkdir()
    c.wait(lambda s: "manifests.d" in s)
    w.refresh()
    (link / "x.yaml").write_text("version: 1\n")
    c.wait(lambda s: s.endswith("x.yaml"))


# --- the reconcile loop's decisions (fake loader and apply: no kernel) ----------------------------
class FakeResult:
    def __init__(self, failed=()):
        self.failed = list(failed)
        self.done = []

    @property
    def ok(self):
        return not self.failed


class FakeNotifier:
    def __init__(self):
        self.sent = []
        self.watchdog_interval = None

    def ready(self, status=""):
        self.sent.append(("READY", status))

    def status(self, s):
        self.sent.append(("STATUS", s))

    def watchdog(self):
        self.sent.append(("WATCHDOG", ""))

    def stopping(self, status=""):
        self.sent.append(("STOPPING", status))


def outcome(actions=(), pending=(), failed=(), verify_actions=()):
    from reconciler.engine import ApplyOutcome
    from reconciler.plan import Plan

    out = ApplyOutcome(plan=Plan(actions=tuple(actions), pending=tuple(pending)))
    out.result = FakeResult(failed) if actions else None
    out.verify = Plan(actions=tuple(verify_actions))
    return out


def netns_action(name):
    from reconciler.objects import Netns
    from reconciler.plan import Action, Op

    o = Netns(name)
    return Action(Op.CREATE, o.key, None, o)


class Harness:
    """A Daemon with a scripted loader and apply, driven batch by batch."""

    def __init__(self, tmp_path, files=None):
        self.dir = tmp_path / "m"
        self.dir.mkdir()
        for n, t in (files or {"a.yaml": "ok"}).items():
            (self.dir / n).write_text(t)
        self.clock = FakeClock()
        self.loads = 0
        self.applied = []
        self.next_outcomes = []
        self.status_file = str(tmp_path / "status.json")
        self.notifier = FakeNotifier()
        self.d = Daemon(
            [str(self.dir)], str(tmp_path / "state"), status_file=self.status_file, debounce=0.5,
            resync_interval=60, loader=self.load, apply_fn=self.apply, kernel_factory=lambda: None,
            notifier=self.notifier, clock=self.clock,
        )

    def load(self, paths):
        self.loads += 1
        text = "".join(open(os.path.join(self.dir, n)).read() for n in sorted(os.listdir(self.dir)))
        if "broken" in text:
            f = str(self.dir / "a.yaml")
            raise ManifestError([Diagnostic(Location(f, 3, 7), "unknown key 'parnet'", "    parnet: eth0")])
        names = re.findall(r"c\d+", text)
        return DesiredState(networks={"n": Network("n")}, containers={c: Container(c) for c in names})

    def apply(self, desired, store, kernel, rollback=True, lock_timeout=60):
        self.applied.append(desired)
        nxt = self.next_outcomes.pop(0) if self.next_outcomes else outcome()
        if isinstance(nxt, BaseException):
            raise nxt
        return nxt

    def step(self, source, immediate=True, **kw):
        self.d.triggers.put(source, **kw, immediate=immediate)
        if not immediate:
            assert self.d.triggers.poll() is None  # debounced
            self.clock.advance(0.5)
        b = self.d.triggers.poll()
        assert b is not None
        self.d.handle(b)

    def fire_timers(self):
        due = self.d.triggers.due()
        assert due is not None
        self.clock.t = max(self.clock.t, due)
        b = self.d.triggers.poll()
        self.d.handle(b)
        return b

    def status(self):
        return read_status(self.status_file)


@pytest.fixture
def quiet_logs():
    buf = io.StringIO()
    logs.setup("json", "debug", stream=buf)
    yield buf
    logs.setup("text", "info")


def _records(buf):
    return [json.loads(l) for l in buf.getvalue().splitlines() if l.strip()]


def test_loop_applies_then_repairs_drift_then_keeps_state_on_broken_manifest(tmp_path, quiet_logs):
    h = Harness(tmp_path, {"a.yaml": "c1"})
    h.next_outcomes = [outcome([netns_action("c1")])]
    h.step("start")
    assert len(h.applied) == 1 and set(h.applied[0].containers) == {"c1"}
    st = h.status()
    assert st["last_result"] == "converged" and st["counts"]["drift_repairs"] == 0
    assert st["last_actions"] == ["+ netns c1"]
    # a hand-made change: same desired state, non-empty plan -> a drift repair
    h.next_outcomes = [outcome([netns_action("c1")])]
    h.step("netlink", immediate=False, detail="namespace c1: link eth0 deleted")
    assert h.status()["counts"]["drift_repairs"] == 1 and h.d.metrics.value("drift_repairs_total") == 1
    # our own events: an empty plan is no drift
    h.step("netlink", immediate=False)
    assert h.status()["counts"]["drift_repairs"] == 1
    # a broken manifest: nothing applied, last valid desired state kept, diagnostics logged
    (h.dir / "a.yaml").write_text("c1 c2 broken")
    n_applied = len(h.applied)
    h.step("file", immediate=False)
    assert len(h.applied) == n_applied
    st = h.status()
    assert st["manifest"]["valid"] is False
    assert st["manifest"]["errors"] == [f"{h.dir}/a.yaml:3:7: unknown key 'parnet'"]
    errs = [r for r in _records(quiet_logs) if r["level"] == "error" and r.get("line") == 3]
    assert errs and errs[0]["file"].endswith("a.yaml") and errs[0]["col"] == 7
    # drift repair continues with the last valid desired state
    h.step("netlink", immediate=False)
    assert set(h.applied[-1].containers) == {"c1"}
    # fixed: converges to the new state
    (h.dir / "a.yaml").write_text("c1 c2")
    h.step("file", immediate=False)
    assert set(h.applied[-1].containers) == {"c1", "c2"}
    assert h.status()["manifest"]["valid"] is True


def test_loop_empty_directory_keeps_the_last_state_missing_means_keep(tmp_path, quiet_logs):
    h = Harness(tmp_path, {"a.yaml": "c1"})
    h.step("start")
    n = len(h.applied)
    for emptied in ("nothing", "only x.YAML", "only a dangling link"):
        os.unlink(h.dir / "a.yaml")
        if emptied == "only x.YAML":
            (h.dir / "x.YAML").write_text("version: 1\n")
        if emptied == "only a dangling link":
            os.unlink(h.dir / "x.YAML")
            os.symlink(tmp_path / "gone.yaml", h.dir / "a.yaml")
        h.step("file", immediate=False)
        # an emptied directory is an error (SPEC 3), never "remove everything"
        assert len(h.applied) == n, emptied
        st = h.status()
        assert st["manifest"]["valid"] is False, emptied
        assert "no manifest file" in st["manifest"]["errors"][0] or "dangling" in st["manifest"]["errors"][0]
        h.step("netlink", immediate=False)  # drift repair still enforces the last state
        n += 1
        assert len(h.applied) == n and set(h.applied[-1].containers) == {"c1"}
        if emptied != "only a dangling link":
            (h.dir / "a.yaml").write_text("c1")
    assert "dangling symlink" in h.status()["manifest"]["errors"][0]
    os.unlink(h.dir / "a.yaml")
    (h.dir / "a.yaml").write_text("c1")
    h.step("file", immediate=False)
    n = len(h.applied)
    shutil.rmtree(h.dir)  # the directory itself vanished: keep everything
    h.step("file", immediate=False)
    assert len(h.applied) == n
    st = h.status()
    assert st["manifest"]["missing"] == [str(h.dir)]
    h.step("netlink", immediate=False)  # drift repair still enforces the last state
    assert set(h.applied[-1].containers) == {"c1"}


def test_loop_a_manifest_that_declares_nothing_empties_the_host(tmp_path, quiet_logs):
    """With the real loader: `version: 1` alone is the way to remove everything."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.yaml").write_text("version: 1\ncontainers:\n  c1: {}\n")
    applied = []
    daemon = Daemon(
        [str(d)], str(tmp_path / "state"), status_file=str(tmp_path / "status.json"), debounce=0.5,
        resync_interval=60, apply_fn=lambda desired, *a, **k: applied.append(desired) or outcome(),
        kernel_factory=lambda: None, notifier=FakeNotifier(), clock=FakeClock(),
    )
    assert daemon.reload() and set(daemon.desired.containers) == {"c1"}
    (d / "a.yaml").unlink()
    assert not daemon.reload()  # an empty directory: an error, the last state stays
    assert set(daemon.desired.containers) == {"c1"} and daemon.status.manifest_valid is False
    (d / "a.yaml").write_text("version: 1\n")
    assert daemon.reload() and daemon.desired == DesiredState()
    assert daemon.status.manifest_valid is True


def test_loop_retries_temporary_errors_with_backoff_and_waits_on_permanent(tmp_path, quiet_logs):
    h = Harness(tmp_path, {"a.yaml": "c1"})
    h.next_outcomes = [LockHeld("another run holds the lock")]
    h.step("start")
    assert h.status()["last_result"] == "failed"
    assert h.d.triggers.scheduled("retry") == pytest.approx(h.clock.t + 1)
    # drift triggers during the backoff wait for the retry
    n = len(h.applied)
    h.step("netlink", immediate=False)
    assert len(h.applied) == n
    h.next_outcomes = [KernelError("create namespace", "c1", 16)]
    b = h.fire_timers()
    assert "retry" in b.timers and len(h.applied) == n + 1
    assert h.d.triggers.scheduled("retry") == pytest.approx(h.clock.t + 2)  # doubled
    h.fire_timers()  # succeeds (default outcome)
    assert h.status()["last_result"] == "converged" and h.d.triggers.scheduled("retry") is None
    assert h.d.backoff.failures == 0
    # apply ran but a step failed: temporary, retried
    h.next_outcomes = [outcome([netns_action("c1")], failed=[(netns_action("c1"), "create c1: File exists")])]
    h.step("hup")
    assert h.status()["last_result"] == "failed" and h.d.triggers.scheduled("retry") is not None
    assert "File exists" in h.status()["last_errors"][-1]["message"]
    h.fire_timers()
    # permanent: logged, no retry timer
    h.next_outcomes = [PlanError(["link eth0.20 exists and is not ours"])]
    h.step("hup")
    assert h.status()["last_result"] == "rejected" and h.d.triggers.scheduled("retry") is None
    assert h.status()["counts"]["errors"]["permanent"] == 1
    # a bug: traceback logged, retried, the daemon keeps going
    h.next_outcomes = [ZeroDivisionError("oops")]
    h.step("hup")
    assert h.status()["last_result"] == "bug" and h.d.triggers.scheduled("retry") is not None
    assert any("traceback" in r and "ZeroDivisionError" in r["traceback"] for r in _records(quiet_logs))
    h.fire_timers()
    assert h.status()["last_result"] == "converged"


def test_loop_pending_and_readiness(tmp_path, quiet_logs):
    from reconciler.compile import Pending

    h = Harness(tmp_path, {"a.yaml": "c1"})
    h.next_outcomes = [outcome([netns_action("c1")], pending=[Pending("network n7", "parent eth7 missing")])]
    t = threading.Thread(target=h.d.loop)
    t.start()
    h.d.triggers.put("start", immediate=True)
    deadline = time.monotonic() + 5
    while not h.notifier.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    h.d.triggers.close()
    t.join(5)
    assert h.notifier.sent[-1][0] == "READY"  # after the first reconcile attempt
    st = h.status()
    assert st["last_result"] == "pending" and st["pending"] == ["network n7: parent eth7 missing"]
    assert h.d.metrics.value("pending_objects") == 1
    assert "pending" in h.d.status_line()


def test_unchanged_manifest_touch_does_not_reconcile(tmp_path, quiet_logs):
    h = Harness(tmp_path, {"a.yaml": "c1"})
    h.step("start")
    n, loads = len(h.applied), h.loads
    os.utime(h.dir / "a.yaml")
    h.step("file", immediate=False)
    assert len(h.applied) == n and h.loads == loads  # same content: not even parsed


def test_watcher_tracks_files_open_for_writing(tmp_path, watcher_factory):
    d = tmp_path / "m"
    d.mkdir()
    w, c = watcher_factory([d])
    f = open(d / "a.yaml", "w")
    f.write("version: 1\nnetworks:\n")
    f.flush()
    c.wait(lambda s: "a.yaml" in s)
    assert w.writing() == [str(d / "a.yaml")]  # half-written: the daemon will not read it
    f.write("  n: {}\n")
    f.close()
    c.wait(lambda s: s.startswith("closed"))
    assert w.writing() == []
    os.symlink("a.yaml", d / "b.yaml")  # symlinks are never "open for writing"
    c.wait(lambda s: "b.yaml" in s)
    assert w.writing() == []
    w.write_timeout = 0.0  # a writer holding a file open too long is not waited for
    g = open(d / "c.yaml", "w")
    g.write("x")
    g.flush()
    c.wait(lambda s: "c.yaml" in s)
    time.sleep(0.01)
    assert w.writing() == []
    g.close()


def test_loop_a_bug_in_the_loader_is_retried(tmp_path, quiet_logs):
    h = Harness(tmp_path, {"a.yaml": "c1"})
    real = h.load
    calls = []

    def flaky(paths):
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("unhashable type")
        return real(paths)

    h.d._loader = flaky
    h.d.triggers.put("start", immediate=True)
    b = h.d.triggers.poll()
    with pytest.raises(TypeError):
        h.d.handle(b)  # loop() logs it as a bug and schedules a retry
    h.d.schedule_retry()
    h.fire_timers()  # the retry loads again (the digest was not recorded)
    assert len(calls) == 2 and set(h.applied[-1].containers) == {"c1"}


# --- netlink monitor: what counts as a change (synthetic notifications, no kernel) ------------
class _FakeSock:
    def getsockname(self):
        return (4242, 0)

    def close(self):
        pass


# the kernel's notifications as pyroute2 writes them (tests/pyroute2_oracle.py), so the
# monitor's decoding is checked against pyroute2's encoder, not against our own
def _link(msg_type, index, name, up=True, alias="", operstate_noise=0, family=0):
    from pyroute2_oracle import pyroute2_link

    flags = (1 if up else 0) | (0x10000 if operstate_noise else 0)  # IFF_LOWER_UP: noise
    return pyroute2_link(msg_type, index, name, flags=flags, family=family, **({"alias": alias} if alias else {}))


def _addr(msg_type, index, address, prefixlen, scope=0):
    from pyroute2_oracle import pyroute2_addr

    return pyroute2_addr(msg_type, index, f"{address}/{prefixlen}", scope=scope)


def _route(msg_type, dst, dst_len, table=254, proto=149):
    from pyroute2_oracle import pyroute2_route

    return pyroute2_route(msg_type, f"{dst}/{dst_len}", table=table, proto=proto)


def test_netlink_monitor_reports_changes_and_ignores_kernel_noise():
    from reconciler.daemon.nlmonitor import (
        RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE, NsMonitor,
        classify_message,
    )

    m = NsMonitor("c1", _FakeSock(), None)

    def c(msg):
        import struct

        length, typ = struct.unpack_from("=IH", msg)
        return classify_message(m, msg, 0, length, typ)

    assert c(_link(RTM_NEWLINK, 5, "eth0")) == "namespace c1: link eth0 added"
    assert c(_link(RTM_NEWLINK, 5, "eth0", operstate_noise=1)) is None  # carrier/operstate only
    assert c(_link(RTM_NEWLINK, 5, "eth0", family=10)) is None  # IPv6 protocol info
    assert c(_link(RTM_NEWLINK, 5, "eth0", up=False)) == "namespace c1: link eth0 changed"
    assert c(_link(RTM_NEWLINK, 5, "eth0", up=False, alias="x")) == "namespace c1: link eth0 changed"
    assert c(_addr(RTM_NEWADDR, 5, "192.168.20.10", 24)) == "namespace c1: address 192.168.20.10/24 added on eth0"
    assert c(_addr(RTM_NEWADDR, 5, "192.168.20.10", 24)) is None  # flags/lifetimes refreshed
    assert c(_addr(RTM_NEWADDR, 5, "fe80::1", 64, scope=253)) is None  # link-local
    # an IPv4 link-scope address is an address observe reads: the daemon must hear of it
    assert c(_addr(RTM_NEWADDR, 5, "169.254.7.7", 16, scope=253)) == "namespace c1: address 169.254.7.7/16 added on eth0"
    assert c(_addr(RTM_DELADDR, 5, "192.168.20.10", 24)) == "namespace c1: address 192.168.20.10/24 deleted from eth0"
    assert c(_route(RTM_NEWROUTE, "192.168.20.10", 32, table=255)) is None  # local table
    assert c(_route(RTM_NEWROUTE, "fe80::", 64)) is None
    assert c(_route(RTM_DELROUTE, "0.0.0.0", 0)) == "namespace c1: route default deleted"
    assert c(_route(RTM_NEWROUTE, "10.1.0.0", 16)) == "namespace c1: route 10.1.0.0/16 added"
    assert c(_link(RTM_DELLINK, 5, "eth0")) == "namespace c1: link eth0 deleted"


def test_netlink_monitor_host_namespace_bgp_routes():
    """SPEC 5.2: our export routes in table 200 of the host namespace are drift to repair;
    the routes BIRD installs (protocol 12) for other hosts' containers are not ours."""
    import struct

    from reconciler.daemon.nlmonitor import HOST, RTM_DELROUTE, RTM_NEWROUTE, NsMonitor, classify_message
    from reconciler.kernel import netlink as nl

    m = NsMonitor(HOST, _FakeSock(), None)

    def c(msg):
        length, typ = struct.unpack_from("=IH", msg)
        return classify_message(m, msg, 0, length, typ)

    def bird_route(msg_type, dst):
        return _route(msg_type, dst, 32, proto=nl.RTPROT_BIRD)

    assert c(_route(RTM_DELROUTE, "10.40.1.5", 32, table=200)) == "host namespace: route 10.40.1.5/32 deleted"
    assert c(bird_route(RTM_NEWROUTE, "10.40.2.5")) is None
    assert c(_route(RTM_NEWROUTE, "10.9.0.0", 16)) == "host namespace: route 10.9.0.0/16 added"


def test_the_start_sighup_retries_and_the_resync_plan_everything_edits_and_drift_are_scoped(tmp_path, quiet_logs):
    """The daemon hands its memory (with the ScopedPlanner) to every apply and tells it when
    to plan in full: the full path stays the judge at the start, on SIGHUP, on a retry and at
    each resync."""
    import types

    class Monitor:  # holds nothing: vouches for nothing
        def monitored(self):
            return []

    h = Harness(tmp_path, {"a.yaml": "c1"})
    h.d.memory.attach(Monitor())
    full = []

    def apply(desired, store, kernel, rollback=True, lock_timeout=60, memory=None):
        assert memory is h.d.memory and memory.planner is memory.scope is not None
        full.append(memory.scope.full)
        assert (memory.handover().snapshot is None) == memory.scope.full  # observed afresh too
        out = Harness.apply(h, desired, store, kernel)
        memory.keep(types.SimpleNamespace(snapshot=types.SimpleNamespace(namespaces={}), made={}))
        return out

    h.d._apply = apply
    h.step("start")
    (h.dir / "a.yaml").write_text("c1 c2")
    h.step("file", immediate=False)
    h.step("netlink", detail="c1: address deleted")
    assert full == [True, False, False]
    h.fire_timers()  # the periodic resync
    h.step("hup")
    assert full == [True, False, False, True, True]
    h.next_outcomes = [LockHeld("another run holds the lock")]
    (h.dir / "a.yaml").write_text("c1 c2 c3")
    h.step("file", immediate=False)
    h.fire_timers()  # the retry
    assert full == [True, False, False, True, True, False, True]


def test_fingerprint_with_the_parse_cache_reads_each_manifest_once(tmp_path, monkeypatch):
    """The daemon's reload reads and hashes every file once: the load that follows the
    fingerprint takes its bytes (issue 12: fswatch no longer hashes a second time)."""
    from reconciler import manifest
    from reconciler.daemon import fswatch
    from reconciler.manifest import ParseCache, load

    d = tmp_path / "m"
    d.mkdir()
    (d / "a.yaml").write_text("version: 1\nnetworks: {n1: {internal: true}}\n")
    (d / "b.yaml").write_text("version: 1\ncontainers: {c1: {networks: {n1: {}}}}\n")
    reads = []
    real = manifest.read_bytes

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(manifest, "read_bytes", counting)
    monkeypatch.setattr(fswatch, "_read_bytes", counting)
    cache = ParseCache()
    digest, files, _ = fingerprint([str(d)], cache)
    assert digest == fingerprint([str(d)], ParseCache())[0]
    reads.clear()
    fingerprint([str(d)], cache)
    desired = load([str(d)], cache)
    assert sorted(reads) == sorted(files)  # once each: by the fingerprint only
    assert sorted(desired.containers) == ["c1"] and desired == load([str(d)])
    # a change after the fingerprint is not half-seen: the load has the fingerprinted bytes
    fingerprint([str(d)], cache)
    (d / "b.yaml").write_text("version: 1\ncontainers: {c2: {networks: {n1: {}}}}\n")
    assert sorted(load([str(d)], cache).containers) == ["c1"]
    assert fingerprint([str(d)], cache)[0] != digest  # the next event's reload sees c2
    assert sorted(load([str(d)], cache).containers) == ["c2"]


def test_netlink_monitor_forgets_fds_it_never_registered_or_closed(tmp_path):
    """The monitor waits on epoll (one wake-up costs the same at 10,000 namespaces as at 10):
    forgetting an fd number that is not registered (reused after a close it did not see,
    or already closed) must not raise, as it did not with poll()."""
    from reconciler.daemon.nlmonitor import NetlinkMonitor

    class K:
        netns_dir = str(tmp_path)

        def ns_path(self, name):
            return str(tmp_path / name)

        def list_netns(self):
            return []

    mon = NetlinkMonitor(K(), lambda src, detail: None)
    r, w = os.pipe()
    try:
        mon._forget_fd(r)  # never registered
        mon._poller.register(r)
        os.close(r)
        mon._forget_fd(r)  # registered, then closed under it
    finally:
        os.close(w)
        mon.stop()
