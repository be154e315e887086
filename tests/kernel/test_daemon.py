"""`ipvlanctl watch` on the real kernel (VM only): the daemon runs as a real subprocess;
every assertion reads kernel state with `ip -j` (or the daemon's own status file, metrics
endpoint and logs for what only the daemon knows).

Covered: manifest edits converge (add, change, remove a container and a network; the
file-write -> verified-state latency is printed), a Kubernetes ConfigMap-style swap, a
half-written then a broken manifest change nothing and are logged with file:line, drift
made by hand is repaired without a manifest change (endpoint, address, default route,
managed VLAN, a whole namespace), a pending parent converges when it appears, SIGTERM
leaves the network in place and a restart plans nothing, `ipvlanctl status` shows the
daemon's last result, the metrics endpoint answers on loopback only, SIGHUP reloads.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from typing import Callable, Dict, List, Optional

import pytest

from conftest import ip_json, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 60.0  # seconds for anything to converge (qemu without KVM is slow)
START_TIMEOUT = 240.0  # the first reconcile: Python imports over 9p in a cold, emulated guest
LATENCIES: List[str] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def netns_names() -> List[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def host_links() -> Dict[str, dict]:
    return {l["ifname"]: l for l in ip_json("-d link show")}


def ns_links(ns: str) -> Dict[str, dict]:
    if ns not in netns_names():
        return {}
    try:
        return {l["ifname"]: l for l in ip_json("-d link show", netns=ns)}
    except AssertionError:
        return {}


def addrs(ns: str, ifname: str = "eth0") -> List[str]:
    if ifname not in ns_links(ns):
        return []
    out = []
    for l in ip_json(f"addr show dev {ifname}", netns=ns):
        for a in l.get("addr_info", []):
            if a.get("scope") != "link":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return sorted(out)


def default_route(ns: str) -> Optional[dict]:
    if ns not in netns_names():
        return None
    for r in ip_json("-4 route show", netns=ns):
        if r.get("dst") == "default":
            return r
    return None


def wait_for(what: str, pred: Callable[[], bool], timeout: float = TIMEOUT, since: Optional[float] = None) -> float:
    """Poll real kernel state until ``pred``; return seconds since ``since`` (or the call)."""
    t0 = since if since is not None else time.monotonic()
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return time.monotonic() - t0
        except AssertionError as e:  # an `ip` call racing with a change
            last_exc = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}" + (f" ({last_exc})" if last_exc else ""))


def latency(label: str, seconds: float) -> None:
    line = f"edit->converged latency: {label}: {seconds:.2f}s"
    LATENCIES.append(line)
    print(line)


def ensure_gone(what: str, pred: Callable[[], bool], duration: float = 2.0) -> None:
    """``pred`` must stay false for ``duration`` seconds (nothing changes)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert not pred(), what
        time.sleep(0.1)


class Daemon:
    """A manifest dir, a state dir, a status file, a metrics port and `ipvlanctl watch`."""

    def __init__(self, tmp_path, name: str = "m"):
        self.tmp = tmp_path
        self.dir = str(tmp_path / name)
        self.state = str(tmp_path / (name + "-state"))
        self.status_file = str(tmp_path / (name + "-status.json"))
        self.log_path = str(tmp_path / (name + "-daemon.log"))
        self.port = free_port()
        os.makedirs(self.dir, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    # manifests ------------------------------------------------------------------------------
    def write(self, filename: str, text: str, atomic: bool = True) -> float:
        """Write like an editor (temp file + rename) or in place; returns the time written."""
        path = os.path.join(self.dir, filename)
        text = textwrap.dedent(text)
        if atomic:
            tmp = os.path.join(self.dir, f".{filename}.swp")
            with open(tmp, "w") as f:
                f.write(text)
            os.rename(tmp, path)
        else:
            with open(path, "w") as f:
                f.write(text)
        return time.monotonic()

    def remove(self, filename: str) -> float:
        os.unlink(os.path.join(self.dir, filename))
        return time.monotonic()

    # the daemon -------------------------------------------------------------------------------
    def start(self, *extra: str, paths: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None) -> None:
        self._log = open(self.log_path, "a")
        cmd = [sys.executable, "-m", "reconciler", "watch", *(paths or [self.dir]),
               "--state-dir", self.state, "--status-file", self.status_file,
               "--metrics-addr", f"127.0.0.1:{self.port}", "--log-format", "json",
               "--log-level", "debug", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        pid = self.proc.pid
        # the first reconcile attempt done (the daemon writes its status file then)
        self.wait_status(lambda st: st.get("pid") == pid and st.get("phase") == "running"
                         and (st.get("last_result") is not None or st["manifest"]["valid"] is False
                              or bool(st["manifest"]["missing"])),
                         "the first reconcile", timeout=START_TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s after signal {sig}")
        self._log.close()
        self.proc = None
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict:
        try:
            with open(self.status_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def logs(self) -> List[dict]:
        out = []
        with open(self.log_path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        return out

    def log_text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_status(self, pred: Callable[[dict], bool], what: str, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"daemon exited:\n{self.log_text()[-4000:]}"
            st = self.status()
            if st and pred(st):
                return st
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; status {self.status()}\n{self.log_text()[-4000:]}")

    def reconciles(self) -> int:
        return sum(self.status().get("counts", {}).get("reconciles", {}).values())

    def wait_quiet(self, settle: float = 3.0) -> None:
        """No reconcile for ``settle`` seconds: no loop on our own events."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            n = self.reconciles()
            time.sleep(settle)
            if self.reconciles() == n:
                return
        raise AssertionError(f"the daemon keeps reconciling:\n{self.log_text()[-4000:]}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                              text=True, cwd=ROOT)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def keep_log(self, label: str) -> None:
        """Copy the daemon's log where the VM harness brings results back (build/vm)."""
        out = os.path.join(ROOT, "build", "vm")
        try:
            if os.path.isdir(out) and os.path.exists(self.log_path):
                with open(self.log_path) as src, open(os.path.join(out, f"{label}-daemon.log"), "w") as dst:
                    dst.write(src.read())
        except OSError:
            pass

    def teardown(self) -> None:
        if self.alive():
            self.stop()
        empty = str(self.tmp / "empty")
        os.makedirs(empty, exist_ok=True)
        with open(os.path.join(empty, "empty.yaml"), "w") as f:
            f.write("version: 1\n")  # declares nothing (an empty directory is an error)
        p = self.cli("apply", empty, "--state-dir", self.state)
        assert p.returncode in (0, 3), f"teardown apply failed:\n{p.stdout}\n{p.stderr}"


@pytest.fixture
def daemon(request, tmp_path, host_eth0):
    d = Daemon(tmp_path)
    yield d
    try:
        d.teardown()
    finally:
        d.keep_log(request.node.name)


def converged(st: dict) -> bool:
    return st.get("last_result") == "converged"


NET20 = """\
version: 1
networks:
  dn20: {parent: eth0.20, subnets: [{subnet: 192.168.20.0/24}]}
containers:
  dc1: {networks: {dn20: {ip: 192.168.20.10}}}
"""


def test_manifest_edits_converge(daemon):
    daemon.write("a.yaml", NET20)
    t = time.monotonic()
    daemon.start()
    latency("start with one network and container", wait_for("dc1 addressed", lambda: addrs("dc1") == ["192.168.20.10/24"], since=t))
    daemon.wait_status(converged, "first reconcile converged")
    assert host_links()["eth0.20"]["linkinfo"]["info_data"]["id"] == 20
    assert default_route("dc1")["gateway"] == "192.168.20.1"
    daemon.wait_quiet()  # our own netlink events: at most a no-op reconcile, never a loop

    # add a container
    t = daemon.write("a.yaml", NET20 + "  dc2: {networks: {dn20: {ip: 192.168.20.11}}}\n")
    latency("add container", wait_for("dc2 addressed", lambda: addrs("dc2") == ["192.168.20.11/24"], since=t))
    # change a container's address (in-place write this time)
    t = daemon.write("a.yaml", NET20.replace("192.168.20.10", "192.168.20.12")
                     + "  dc2: {networks: {dn20: {ip: 192.168.20.11}}}\n", atomic=False)
    latency("change container address", wait_for("dc1 readdressed", lambda: addrs("dc1") == ["192.168.20.12/24"], since=t))
    # add a network (a second file) with a container
    t = daemon.write("b.yml", """\
        version: 1
        networks:
          dn30: {parent: eth0.30, ipvlan_mode: l3, subnets: [{subnet: 192.168.30.0/24}]}
        containers:
          dc3: {networks: {dn30: {ip: 192.168.30.10}}}
        """)
    latency("add network + container", wait_for(
        "dn30 and dc3", lambda: "eth0.30" in host_links() and addrs("dc3") == ["192.168.30.10/24"], since=t))
    assert ns_links("dc3")["eth0"]["linkinfo"]["info_data"]["mode"] == "l3"
    # change the network (mode l3 -> l2: a replace)
    t = daemon.write("b.yml", """\
        version: 1
        networks:
          dn30: {parent: eth0.30, subnets: [{subnet: 192.168.30.0/24}]}
        containers:
          dc3: {networks: {dn30: {ip: 192.168.30.10}}}
        """)
    latency("change network mode", wait_for(
        "dn30 in l2", lambda: ns_links("dc3").get("eth0", {}).get("linkinfo", {}).get("info_data", {}).get("mode") == "l2"
        and addrs("dc3") == ["192.168.30.10/24"], since=t))
    # remove a container
    t = daemon.write("a.yaml", NET20.replace("192.168.20.10", "192.168.20.12"))
    latency("remove container", wait_for("dc2 gone", lambda: "dc2" not in netns_names(), since=t))
    # remove a network (the whole file)
    t = daemon.remove("b.yml")
    latency("remove network + container", wait_for(
        "dn30 gone", lambda: "eth0.30" not in host_links() and "dc3" not in netns_names(), since=t))
    st = daemon.wait_status(converged, "converged")
    assert st["manifest"]["valid"] is True and st["pending"] == []
    assert "dc1" in netns_names() and addrs("dc1") == ["192.168.20.12/24"]
    daemon.wait_quiet()
    # what was applied is logged, action by action
    msgs = [r["msg"] for r in daemon.logs()]
    assert "reconciled: applied manifest changes" in msgs
    assert any(m.strip().startswith("+ netns dc2") for m in msgs)
    assert any(m.strip().startswith("- vlan eth0.30") for m in msgs)
    # edits were planned against reused namespace dumps (the observation cache is wired in):
    # the first edit's reconcile did not dump dc1 again
    recs = [r for r in daemon.logs() if r["msg"].startswith("reconciled")]
    assert recs[0]["trigger"] == "start" and recs[0]["namespaces_reused"] == 0
    assert any(r["trigger"].startswith("file") and r["namespaces_reused"] >= 1 for r in recs), recs
    # emptying on purpose (a manifest that declares nothing) removes everything we own
    t = daemon.write("a.yaml", "version: 1\n")
    latency("empty directory", wait_for(
        "everything removed", lambda: "dc1" not in netns_names() and "eth0.20" not in host_links(), since=t))
    assert daemon.alive()
    print("\n".join(LATENCIES))


def test_configmap_swap_converges(tmp_path, host_eth0):
    """A Kubernetes ConfigMap volume: NAME -> ..data/NAME, ..data -> ..<timestamp>/, swapped."""
    d = Daemon(tmp_path, "cm")
    cm = d.dir

    def publish(version: int, text: str) -> float:
        ts = os.path.join(cm, f"..2024_01_01_00_00_0{version}")
        os.mkdir(ts)
        with open(os.path.join(ts, "net.yaml"), "w") as f:
            f.write(textwrap.dedent(text))
        old = os.path.realpath(os.path.join(cm, "..data")) if os.path.lexists(os.path.join(cm, "..data")) else None
        os.symlink(os.path.basename(ts), os.path.join(cm, "..data_tmp"))
        os.replace(os.path.join(cm, "..data_tmp"), os.path.join(cm, "..data"))
        t = time.monotonic()
        if not os.path.lexists(os.path.join(cm, "net.yaml")):
            os.symlink("..data/net.yaml", os.path.join(cm, "net.yaml"))
        if old:
            import shutil

            shutil.rmtree(old)
        return t

    try:
        publish(1, NET20.replace("dc1", "cm1"))
        d.start()
        wait_for("cm1 addressed", lambda: addrs("cm1") == ["192.168.20.10/24"])
        d.wait_status(converged, "converged")
        t = publish(2, NET20.replace("dc1", "cm1").replace("192.168.20.10", "192.168.20.44"))
        latency("configmap swap", wait_for("cm1 readdressed", lambda: addrs("cm1") == ["192.168.20.44/24"], since=t))
        t = publish(3, NET20.replace("dc1", "cm1").replace("192.168.20.10", "192.168.20.45"))
        wait_for("second swap followed", lambda: addrs("cm1") == ["192.168.20.45/24"], since=t)
    finally:
        try:
            d.teardown()
        finally:
            d.keep_log("test_configmap_swap_converges")


def test_half_written_and_broken_manifests_change_nothing(daemon):
    daemon.write("a.yaml", NET20)
    daemon.start()
    wait_for("dc1 addressed", lambda: addrs("dc1") == ["192.168.20.10/24"])
    daemon.wait_status(converged, "converged")
    path = os.path.join(daemon.dir, "a.yaml")

    def intact() -> bool:
        return (addrs("dc1") == ["192.168.20.10/24"] and "eth0.20" in host_links()
                and (default_route("dc1") or {}).get("gateway") == "192.168.20.1")

    # 1. written in place and still open: valid YAML so far (cut before `containers:`),
    #    which would remove dc1 if read -- the daemon waits for the writer to close it
    f = open(path, "w")
    f.write("version: 1\nnetworks:\n  dn20: {parent: eth0.20, subnets: [{subnet: 192.168.20.0/24}]}\n")
    f.flush()
    daemon.wait_status(lambda st: True, "alive")
    time.sleep(2.0)
    assert intact()
    assert any(r["msg"].startswith("waiting for manifests being written") for r in daemon.logs())
    # 2. the writer finishes with a broken manifest (a network that does not exist) and
    #    closes it
    f.write("containers:\n  dc1: {networks: {dn20: {ip: 192.168.20.10}}}\n  dc2: {networks: {dn99: {}}}\n")
    f.close()
    st = daemon.wait_status(lambda st: st["manifest"]["valid"] is False, "manifest rejected")
    ensure_gone("dc1 changed after a broken manifest", lambda: not intact())
    assert st["last_result"] == "converged"  # the last valid state is still enforced
    errors = [r for r in daemon.logs() if r["level"] == "error" and r.get("file") == path]
    assert errors, daemon.log_text()[-3000:]
    assert all(r["line"] >= 1 and r["col"] >= 1 for r in errors)
    assert any(r["line"] == 6 for r in errors)  # dc2's line
    assert st["manifest"]["errors"] and st["manifest"]["errors"][0].startswith(f"{path}:6:")
    assert "dn99" in st["manifest"]["errors"][0]
    # 3. a truncated file (a writer that died): a YAML syntax error, still nothing changes
    daemon.write("a.yaml", "version: 1\nnetworks:\n  dn20: {parent: eth0.20, subnets: [{subn")
    wait_for("syntax error logged", lambda: any(
        r["level"] == "error" and r.get("file") == path and r.get("line", 0) >= 3 for r in daemon.logs()
        if "dn99" not in r["msg"]))
    ensure_gone("dc1 changed after a truncated manifest", lambda: not intact())
    # drift repair still enforces the last valid state meanwhile
    run("ip -n dc1 addr flush dev eth0")
    wait_for("repaired under a broken manifest", intact)
    # 4. fixed: converges
    t = daemon.write("a.yaml", NET20.replace("192.168.20.10", "192.168.20.30"))
    latency("fix after broken manifest", wait_for("dc1 readdressed", lambda: addrs("dc1") == ["192.168.20.30/24"], since=t))
    st = daemon.wait_status(lambda st: st["manifest"]["valid"] is True and converged(st), "valid again")
    assert st["manifest"]["errors"] == []


def test_drift_is_repaired_without_a_manifest_change(daemon):
    daemon.write("a.yaml", NET20)
    daemon.start()

    def whole() -> bool:
        # three `ip` calls per poll: each costs up to a second in the emulated guest and
        # that is part of the measured latency
        if "dc1" not in netns_names():
            return False
        vlan = ip_json("link show dev eth0.20") if os.path.exists("/sys/class/net/eth0.20") else []
        if not vlan or "UP" not in vlan[0]["flags"]:
            return False
        a = [f"{x['local']}/{x['prefixlen']}" for l in ip_json("addr show", netns="dc1")
             if l["ifname"] == "eth0" for x in l.get("addr_info", []) if x.get("scope") != "link"]
        r = [x for x in ip_json("-4 route show default", netns="dc1")]
        return a == ["192.168.20.10/24"] and len(r) == 1 and r[0].get("gateway") == "192.168.20.1"

    wait_for("converged", whole)
    daemon.wait_status(converged, "converged")
    daemon.wait_quiet()
    repairs = daemon.status()["counts"]["drift_repairs"]
    for label, cmd in [
        ("endpoint deleted", "ip -n dc1 link del eth0"),
        ("address deleted", "ip -n dc1 addr del 192.168.20.10/24 dev eth0"),
        ("default route deleted", "ip -n dc1 route del default"),
        ("managed VLAN deleted", "ip link del eth0.20"),
        ("managed VLAN set down", "ip link set eth0.20 down"),
        ("namespace deleted", "ip netns del dc1"),
    ]:
        t = time.monotonic()
        run(cmd)
        latency(f"drift: {label}", wait_for(f"repair after: {label}", whole, since=t))
        repairs += 1
        daemon.wait_status(lambda st: st["counts"]["drift_repairs"] >= repairs and converged(st), f"repair counted: {label}")
    msgs = [r["msg"] for r in daemon.logs()]
    assert msgs.count("reconciled: repaired drift") >= 6
    assert "ipvlan_reconciler_drift_repairs_total " in daemon.metrics()
    daemon.wait_quiet()


def test_pending_parent_converges_when_it_appears(daemon):
    daemon.write("a.yaml", """\
        version: 1
        networks:
          dn7: {parent: eth7, subnets: [{subnet: 192.168.77.0/24}]}
          dn20: {parent: eth0.20, subnets: [{subnet: 192.168.20.0/24}]}
        containers:
          dp7: {networks: {dn7: {ip: 192.168.77.10}}}
          dp20: {networks: {dn20: {ip: 192.168.20.10}}}
        """)
    assert "eth7" not in host_links()
    daemon.start()
    st = daemon.wait_status(lambda st: st.get("last_result") == "pending", "pending on eth7")
    assert st["pending"] and any("eth7" in p for p in st["pending"])
    wait_for("the rest converged", lambda: addrs("dp20") == ["192.168.20.10/24"])
    assert addrs("dp7") == []
    try:
        t = time.monotonic()
        run("ip link add eth7 type dummy")
        run("ip link set eth7 up")
        latency("pending parent appeared", wait_for("dp7 on eth7", lambda: addrs("dp7") == ["192.168.77.10/24"], since=t))
        st = daemon.wait_status(lambda st: converged(st) and st["pending"] == [], "nothing pending")
        assert ns_links("dp7")["eth0"]["linkinfo"]["info_kind"] == "ipvlan"
        assert default_route("dp7")["gateway"] == "192.168.77.1"
        m = daemon.metrics()
        assert "ipvlan_reconciler_pending_objects 0" in m
    finally:
        daemon.teardown()
        run("ip link del eth7", check=False)


def test_sigterm_leaves_network_restart_plans_nothing_status_and_metrics(daemon):
    daemon.write("a.yaml", NET20 + "  dc2: {networks: {dn20: {}}}\n")
    daemon.start()
    wait_for("converged", lambda: addrs("dc1") == ["192.168.20.10/24"] and len(addrs("dc2")) == 1)
    daemon.wait_status(converged, "converged")
    # the metrics endpoint answers on loopback
    m = daemon.metrics()
    for name in ("reconciles_total{result=\"converged\"}", "reconcile_duration_seconds_count",
                 "errors_total{class=\"temporary\"}", "managed_objects{kind=\"container\"} 2",
                 "drift_repairs_total", "pending_objects 0", "last_success_timestamp_seconds"):
        assert "ipvlan_reconciler_" + name in m, name
    # `ipvlanctl status` shows the daemon's last result
    p = daemon.cli("status", "--state-dir", daemon.state, "--status-file", daemon.status_file, "--format", "json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["daemon"]["last_result"] == "converged" and data["daemon"]["phase"] == "running"
    assert data["daemon"]["pid"] == daemon.proc.pid
    p = daemon.cli("status", "--state-dir", daemon.state, "--status-file", daemon.status_file)
    assert p.returncode == 0 and "daemon: last reconcile" in p.stdout and "result converged" in p.stdout

    before_links = {n: l["ifindex"] for n, l in host_links().items()}
    before_ns = netns_names()
    before_addrs = {ns: addrs(ns) for ns in ("dc1", "dc2")}
    assert daemon.stop(signal.SIGTERM) == 0
    # nothing torn down
    assert {n: l["ifindex"] for n, l in host_links().items()} == before_links
    assert netns_names() == before_ns
    assert {ns: addrs(ns) for ns in ("dc1", "dc2")} == before_addrs
    assert daemon.status()["phase"] == "stopped"
    assert "stopping; the network stays as it is" in daemon.log_text()
    # the next plan is empty
    p = daemon.cli("plan", "--detailed-exitcode", daemon.dir, "--state-dir", daemon.state)
    assert p.returncode == 0, p.stdout + p.stderr
    # restart: converged at once, nothing written, no link flapped
    daemon.start()
    st = daemon.wait_status(lambda st: st.get("pid") == daemon.proc.pid and converged(st), "restarted")
    assert st["last_netlink_writes"] == 0 and st["last_actions"] == []
    assert {n: l["ifindex"] for n, l in host_links().items()} == before_links
    assert {ns: addrs(ns) for ns in ("dc1", "dc2")} == before_addrs  # automatic address kept
    # SIGINT too stops cleanly and leaves everything
    assert daemon.stop(signal.SIGINT) == 0
    assert netns_names() == before_ns


def test_metrics_bind_loopback_by_default_and_sighup_reloads(daemon):
    daemon.write("a.yaml", NET20)
    port = free_port()
    daemon.port = port
    daemon.start("--metrics-addr", str(port))  # only a port: loopback
    daemon.wait_status(converged, "converged")
    listening = run("ss -ltnH")
    assert f"127.0.0.1:{port} " in listening and f"0.0.0.0:{port} " not in listening and f"*:{port} " not in listening
    assert "ipvlan_reconciler_reconciles_total" in daemon.metrics()
    n = daemon.reconciles()
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_status(lambda st: sum(st["counts"]["reconciles"].values()) > n, "reloaded on SIGHUP")
    assert any(r["msg"].startswith("SIGHUP") for r in daemon.logs())
    assert daemon.alive()


def test_manifest_directory_removed_keeps_everything(daemon):
    daemon.write("a.yaml", NET20)
    daemon.start()
    wait_for("converged", lambda: addrs("dc1") == ["192.168.20.10/24"])
    daemon.wait_status(converged, "converged")
    import shutil

    shutil.rmtree(daemon.dir)
    st = daemon.wait_status(lambda st: st["manifest"]["missing"] == [daemon.dir], "missing reported")
    ensure_gone("torn down after the directory vanished", lambda: addrs("dc1") != ["192.168.20.10/24"])
    assert st["last_errors"] and "missing" in st["last_errors"][-1]["message"]
    # back, with a change: followed again
    n = daemon.reconciles()
    os.makedirs(daemon.dir)
    t = daemon.write("a.yaml", NET20.replace("192.168.20.10", "192.168.20.33"))
    latency("directory re-created", wait_for("dc1 readdressed", lambda: addrs("dc1") == ["192.168.20.33/24"], since=t))
    # the status of the reconcile that readdressed dc1, not the one still on disk from before
    # the removal (also "converged": a missing path keeps the last result); the kernel shows
    # the new address before the daemon has written that status
    st = daemon.wait_status(lambda st: converged(st) and sum(st["counts"]["reconciles"].values()) > n, "readdress reconcile reported")
    assert st["manifest"]["missing"] == []


def test_sd_notify_ready_status_watchdog_stopping(daemon):
    """systemd's notification protocol, received on a datagram socket like systemd's."""
    daemon.write("a.yaml", NET20)
    path = str(daemon.tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    got: List[str] = []

    def receive_until(pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.extend(sock.recv(4096).decode().splitlines())
            except socket.timeout:
                pass
            if pred():
                return
        raise AssertionError(f"not received; got {got}")

    try:
        daemon.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        receive_until(lambda: "READY=1" in got)
        assert any(l.startswith("STATUS=converged") for l in got), got
        n = got.count("WATCHDOG=1")
        receive_until(lambda: got.count("WATCHDOG=1") >= n + 2)  # every second (half of 2 s)
        daemon.stop()
        receive_until(lambda: "STOPPING=1" in got)
        assert addrs("dc1") == ["192.168.20.10/24"]  # still there
    finally:
        sock.close()
