"""Fault injection on the real kernel (VM only).

- kill -9 of `ipvlanctl apply` at random points, many times, over a mixed
  manifest (VLAN parents, L3, dual stack, internal): the next apply converges
  to exactly the desired state, leaks nothing (link, namespace, address, route,
  hosts file, state entry) and never touches unmanaged objects;
- a failure only the kernel reports (an address another, unmanaged ipvlan
  slave already holds; a link name taken between plan and apply): rollback
  undoes exactly this run's steps, --no-rollback leaves a consistent partial
  state that the next apply completes; the JSON says what happened;
- two applies at once are serialised by the lock; --lock-timeout 0 fails clearly;
- a state file cut short (as by a crash of a non-atomic writer or a bad disk) is
  rebuilt from the kernel markers without moving an address.

Every check reads the kernel (raw netlink dumps of every namespace).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
from typing import Dict, List, Optional

import pytest

from enginekit import Reconciler, addrs, sh

from reconciler import cli
from reconciler.kernel.netlink import NetlinkSocket, WriteCounter
from reconciler.kernel.nsworker import setns

TRIALS = int(os.environ.get("FAULT_TRIALS", "50"))
SEED = int(os.environ.get("FAULT_SEED", str(int(time.time()))))

MIXED_A = """\
version: 1
networks:
  fv:  {parent: eth0.77, subnets: [{subnet: 10.77.0.0/24, gateway: 10.77.0.1, ip_range: 10.77.0.64/26}]}
  fl3: {parent: eth0.78, ipvlan_mode: l3, subnets: [{subnet: 10.78.0.0/24}, {subnet: 10.79.0.0/24}]}
  fds: {parent: eth0.80, ipv6: true, subnets: [{subnet: 10.80.0.0/24}, {subnet: "fd00:80::/64"}]}
  fin: {internal: true, subnets: [{subnet: 10.81.0.0/24}]}
containers:
  f01: {networks: {fv: {}}}
  f02: {networks: {fv: {ip: 10.77.0.50, aliases: [web]}, fin: {}}}
  f03: {networks: {fl3: {}}}
  f04: {networks: {fl3: {ip: 10.79.0.9}}}
  f05: {networks: {fds: {}}}
  f06: {networks: {fds: {ip6: "fd00:80::66"}, fv: {}}}
  f07: {networks: {fin: {}}}
  f08: {networks: {fv: {}, fl3: {}}}
  f09: {networks: {fds: {}}}
  f10: {networks: {fl3: {}, fin: {}}}
"""

# B: a mode change (endpoints replaced), an address change, an alias change, a
# container removed and one added, the internal network gains IPv6 (sysctl update
# and addresses). Automatic addresses come out the same from A and from empty (fv's
# ip_range keeps them off .1, the gateway, which L3 mode in B still keeps free).
MIXED_B = (
    MIXED_A.replace("  fv:  {parent: eth0.77,", "  fv:  {parent: eth0.77, ipvlan_mode: l3,")
    .replace("fl3: {ip: 10.79.0.9}", "fl3: {ip: 10.79.0.10}")
    .replace("aliases: [web]", "aliases: [web, www]")
    .replace("  f10: {networks: {fl3: {}, fin: {}}}\n", "  f11: {networks: {fv: {}}}\n")
    .replace("fin: {internal: true,", "fin: {internal: true, ipv6: true,")
)
assert MIXED_B != MIXED_A and "f11" in MIXED_B and "l3, subnets: [{subnet: 10.77" in MIXED_B


# =================================================================================================
# helpers
# =================================================================================================
def cli_inproc(*argv: str) -> (int, str, str):
    """Run the CLI in this process (no interpreter start: the trials stay fast)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def apply_json(rec: Reconciler, directory: str, *extra: str, expect=(0,)) -> dict:
    code, out, err = cli_inproc("apply", directory, "--format", "json", "--state-dir", rec.state, *extra)
    assert code in expect, f"apply exited {code}\n{out}\n{err}"
    return json.loads(out) if out.strip().startswith("{") else {"stderr": err}


def plan_exit(rec: Reconciler, directory: str) -> (int, str):
    code, out, err = cli_inproc("plan", directory, "--detailed-exitcode", "--state-dir", rec.state)
    return code, out + err


def kernel_snapshot(ignore_netns=()) -> dict:
    """Everything observable that an apply could create, change or leak: host links
    (by name, with kind/vid/lower/alias/up, and ifindex for the unmanaged ones we
    check are untouched), every named namespace with its links, addresses and main
    routes, and every file under /etc/netns. Ifindexes of our own links are left
    out (a replaced link gets a new one)."""
    counter = WriteCounter()
    host = NetlinkSocket("host", counter)
    try:
        hl = host.dump_links()
        ha = host.dump_addrs()
    finally:
        host.close()
    hname = {l.index: l.name for l in hl}
    # link-local addresses are left out: a new dummy link gets a random MAC, so its fe80::
    snap: dict = {"host": {}, "host_addrs": sorted((hname.get(a.index), a.address, a.prefixlen) for a in ha
                                                   if not a.address.startswith("fe80:")),
                  "ns": {}, "etc_netns": {}}
    for l in hl:
        snap["host"][l.name] = (l.kind, l.vid, hname.get(l.link) if l.link else None, l.alias, l.up,
                                l.index if not l.alias.startswith("ipvlan-reconciler") else None)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        names = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        for ns in names:
            if ns in ignore_netns:
                continue
            try:
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                snap["ns"][ns] = f"cannot open: {e}"
                continue
            try:
                try:
                    setns(fd)
                except OSError as e:
                    snap["ns"][ns] = f"cannot enter: {e}"
                    continue
                s = NetlinkSocket(ns, counter)
            finally:
                os.close(fd)
                setns(home)
            try:
                links, ad, rt = s.dump_links(), s.dump_addrs(), s.dump_routes()
            finally:
                s.close()
            nm = {l.index: l.name for l in links}
            snap["ns"][ns] = {
                "links": sorted((l.name, l.kind, l.ipvlan_mode, l.ipvlan_flags,
                                 hname.get(l.link) if l.kind == "ipvlan" else None, l.alias, l.up,
                                 l.disable_ipv6 if l.name != "lo" else None) for l in links),
                "addrs": sorted((nm.get(a.index), a.address, a.prefixlen) for a in ad
                                if not a.address.startswith("fe80:")),
                "routes": sorted((r.family, r.dst or "", r.dst_len, r.gateway or "", nm.get(r.oif or -1, ""),
                                  r.protocol, r.scope) for r in rt if r.table == 254),
            }
    finally:
        os.close(home)
    for root, _dirs, files in os.walk("/etc/netns"):
        for f in files:
            p = os.path.join(root, f)
            with open(p, errors="replace") as fh:
                snap["etc_netns"][p] = fh.read()
    return snap


def diff(a: dict, b: dict) -> List[str]:
    out = []
    for part in ("host", "ns", "etc_netns"):
        for k in sorted(set(a[part]) | set(b[part])):
            if a[part].get(k) != b[part].get(k):
                out.append(f"{part} {k}:\n    got  {a[part].get(k)!r}\n    want {b[part].get(k)!r}")
    if a["host_addrs"] != b["host_addrs"]:
        out.append(f"host addresses: {a['host_addrs']} != {b['host_addrs']}")
    return out


def state_file(rec: Reconciler) -> dict:
    with open(os.path.join(rec.state, "state.json")) as f:
        return json.load(f)


class Child:
    """An `ipvlanctl apply` process forked from this (already imported) test process.

    Forked rather than started afresh: in the test VM an interpreter start with
    these imports takes a minute over 9p under emulation, while the kill window
    that matters is the real work (load, lock, observe, plan, apply, verify,
    state writes). The child waits for "go", runs ``cli.main(argv)`` with its
    output in a file, and leaves with ``os._exit``."""

    def __init__(self, argv: List[str]):
        self.argv = argv
        go_r, self._go_w = os.pipe()
        self.out = tempfile.TemporaryFile(mode="w+")
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 70
            try:
                os.close(self._go_w)
                os.dup2(self.out.fileno(), 1)
                os.dup2(self.out.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                os.read(go_r, 1)
                code = cli.main(list(argv))
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(go_r)
        self.returncode: Optional[int] = None

    def go(self) -> float:
        os.write(self._go_w, b"g")
        os.close(self._go_w)
        return time.monotonic()

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 600.0) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"apply {self.argv} did not finish in {timeout}s")
            time.sleep(0.01)
        return self.returncode

    def output(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def kill_after(self, delay: float) -> (bool, float):
        """SIGKILL ``delay`` s after go. Returns (killed, elapsed): killed False when it
        had already finished, elapsed seconds from go to its end (or to the kill)."""
        t0 = self.go()
        while time.monotonic() - t0 < delay:
            if self.poll() is not None:
                break
            time.sleep(0.001)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        elapsed = time.monotonic() - t0
        return self.wait() == -signal.SIGKILL, elapsed

    def run(self) -> (float, int, str):
        t0 = self.go()
        code = self.wait()
        return time.monotonic() - t0, code, self.output()


def apply_proc(rec: Reconciler, *extra: str, directory: Optional[str] = None) -> Child:
    c = Child(["apply", directory or rec.dir, "--format", "json", "--state-dir", rec.state, *extra])
    c.go()
    return c


@pytest.fixture
def unmanaged():
    """A hand-made namespace (with a hand-made route) and a hand-made VLAN link
    that every test checks survive untouched."""
    sh("ip link add link eth0 name fhand type vlan id 90 && ip link set fhand up")
    sh("ip netns add fhandns && ip -n fhandns link set lo up && ip -n fhandns addr add 10.90.0.1/24 dev lo")
    yield
    sh("ip link del fhand", check=False)
    sh("ip netns del fhandns", check=False)


@pytest.fixture
def rec(tmp_path):
    r = Reconciler(tmp_path)
    yield r
    empty = os.path.join(str(tmp_path), "teardown-empty")
    os.makedirs(empty, exist_ok=True)
    with open(os.path.join(empty, "empty.yaml"), "w") as f:
        f.write("version: 1\n")  # declares nothing (an empty directory is an error)
    code, out, err = cli_inproc("apply", empty, "--state-dir", r.state)
    assert code in (0, 3), out + err


def _dirs(rec: Reconciler, tmp_path) -> Dict[str, str]:
    out = {}
    for name, text in (("A", MIXED_A), ("B", MIXED_B), ("E", None)):
        d = os.path.join(str(tmp_path), f"m{name}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "m.yaml"), "w") as f:
            f.write(text or "version: 1\n")  # E: declares nothing
        out[name] = d
    return out


# =================================================================================================
# kill -9 at random points
# =================================================================================================
def test_kill_minus_9_at_random_points_is_repaired_by_the_next_apply(rec, unmanaged, tmp_path):
    dirs = _dirs(rec, tmp_path)
    rng = random.Random(SEED)
    # references: the exact end state of each manifest, reached by clean runs, and how
    # long a clean apply towards it takes (from "go": the kill window)
    refs: Dict[str, dict] = {}
    alloc: Dict[str, dict] = {}
    took: Dict[tuple, float] = {}  # (from, to) -> how long an apply between them takes
    refs["E"] = kernel_snapshot()
    prev = "E"
    for target in ("A", "B", "E", "B", "A", "E"):  # every transition once
        dt, code, out = Child(["apply", dirs[target], "--state-dir", rec.state]).run()
        assert code == 0, out
        took[(prev, target)] = dt
        snap = kernel_snapshot()
        if target in refs:
            assert not diff(snap, refs[target]), "a clean apply is not reproducible:\n" + "\n".join(diff(snap, refs[target]))
        refs[target] = snap
        alloc[target] = state_file(rec)["allocations"]
        prev = target
    assert refs["A"]["ns"].keys() - refs["E"]["ns"].keys() == {f"f{i:02d}" for i in range(1, 11)}
    print(f"clean applies took {took}", flush=True)

    current = "E"
    killed = 0
    log: List[str] = []
    ahead = None  # (target, Child) started during the previous trial's checks
    for trial in range(TRIALS):
        if ahead is not None:
            target, child = ahead
        else:
            target = rng.choice([m for m in ("A", "B", "E") if m != current])
            child = Child(["apply", dirs[target], "--state-dir", rec.state])
        # kill somewhere in [0, duration of this transition]; the duration follows the
        # last run that finished (the emulated VM's speed varies with the host's load)
        delay = rng.uniform(0.0, took[(current, target)])
        died, elapsed = child.kill_after(delay)
        killed += died
        if not died:
            took[(current, target)] = elapsed
        # the next run: usually towards the same manifest, sometimes towards another one
        recover = target if rng.random() < 0.75 else rng.choice(("A", "B", "E"))
        out = apply_json(rec, dirs[recover])
        log.append(f"trial {trial}: {current}->{target} killed={died} after {delay:.3f}s, "
                   f"then {recover}: {len(out['plan']['changes'])} changes")
        assert out["converged"], f"{log[-1]}\n{json.dumps(out['verify'], indent=1)}"
        ahead = None
        if trial + 1 < TRIALS:  # its interpreter starts while we check
            nt = rng.choice([m for m in ("A", "B", "E") if m != recover])
            ahead = (nt, Child(["apply", dirs[nt], "--state-dir", rec.state]))
        code, text = plan_exit(rec, dirs[recover])
        assert code == 0, f"{log[-1]}: plan --detailed-exitcode exited {code} after recovery\n{text}"
        problems = diff(kernel_snapshot(), refs[recover])
        assert not problems, (f"{log[-1]}: the host differs from a clean apply of {recover}:\n"
                              + "\n".join(problems[:20]))
        st = state_file(rec)
        assert st["intents"] == [], f"{log[-1]}: intent records left in the state: {st['intents']}"
        assert st["allocations"] == alloc[recover], f"{log[-1]}: allocations differ: {st['allocations']}"
        leftovers = sorted(f for f in os.listdir(rec.state) if f not in ("state.json", "lock"))
        assert not leftovers, f"{log[-1]}: stray files in the state directory: {leftovers}"
        current = recover
    print(f"seed {SEED}: {TRIALS} trials, {killed} killed mid-run; last durations {took}")
    print("\n".join(log))
    # most kills must land inside the work, or the test proves little
    assert killed >= TRIALS // 2, f"only {killed} of {TRIALS} applies were killed before finishing"


# =================================================================================================
# failures only the kernel reports
# =================================================================================================
CLASH = """\
version: 1
networks:
  good: {parent: eth0.77, subnets: [{subnet: 10.77.0.0/24}]}
  onh: {parent: fhand, subnets: [{subnet: 10.90.1.0/24}]}
containers:
  g1: {networks: {good: {}}}
  g2: {networks: {onh: {ip: 10.90.1.5}}}
  g3: {networks: {onh: {}}}
"""


@pytest.fixture
def address_taken(unmanaged):
    """An unmanaged ipvlan slave of fhand, in the unmanaged namespace, holding
    10.90.1.5: ipvlan refuses the same address on a second slave of one parent,
    and nothing in the plan can know (the reconciler never reads addresses in
    namespaces it does not own)."""
    sh("ip link add link fhand name ivx type ipvlan mode l2 && ip link set ivx netns fhandns")
    sh("ip -n fhandns addr add 10.90.1.5/24 dev ivx && ip -n fhandns link set ivx up")
    yield
    sh("ip -n fhandns link del ivx", check=False)


def _ids(actions) -> List[tuple]:
    return [(a["op"], a["kind"], a["id"]) for a in actions]


def test_kernel_refusal_mid_apply_is_rolled_back_exactly(rec, address_taken):
    rec.write("a.yaml", CLASH)
    before = kernel_snapshot()
    out = apply_json(rec, rec.dir, expect=(1,))
    r = out["result"]
    assert not r["ok"] and not out["converged"] and out["exit_code"] == 1
    assert _ids(a["action"] for a in r["failed"]) == [("create", "address", "g2/eth0/10.90.1.5/24")]
    err = r["failed"][0]["error"]
    assert "10.90.1.5" in err and ("in use" in err.lower() or "EADDRINUSE" in err), err
    done = _ids(r["done"])
    assert ("create", "netns", "g2") in done and ("create", "vlan", "eth0.77") in done
    assert any(k == "route" or k == "hosts" for _, k, _ in _ids(r["not_run"]))
    # the rollback undid exactly what this run did, newest first
    rb = out["rollback"]
    assert rb is not None and rb["ok"], rb
    inverse = {"create": "delete", "delete": "create", "update": "update", "replace": "replace"}
    want = [(inverse[op], kind, id_) for op, kind, id_ in reversed(done) if not (kind == "sysctl" and op == "create")]
    assert _ids(rb["done"]) == want
    # ... and the host is exactly as before: nothing of ours left, the unmanaged objects intact
    problems = diff(kernel_snapshot(), before)
    assert not problems, "\n".join(problems)
    # the text output says the same
    code, text, err = cli_inproc("apply", rec.dir, "--state-dir", rec.state)
    assert code == 1
    assert "10.90.1.5" in text + err and "Rolled back" in text, text + err


def test_kernel_refusal_without_rollback_leaves_a_partial_state_the_next_apply_completes(rec, address_taken):
    rec.write("a.yaml", CLASH)
    out = apply_json(rec, rec.dir, "--no-rollback", expect=(1,))
    r = out["result"]
    assert out["rollback"] is None
    assert _ids(a["action"] for a in r["failed"]) == [("create", "address", "g2/eth0/10.90.1.5/24")]
    done = _ids(r["done"])
    # what was done is really there, and is ours (the planner only shows what is left)
    assert addrs("g1") == ["10.77.0.2/24"] and addrs("g3") == ["10.90.1.2/24"]
    left = set(_ids(a["action"] for a in r["failed"])) | set(_ids(r["not_run"]))
    code, out_text, err = cli_inproc("plan", rec.dir, "--format", "json", "--state-dir", rec.state)
    assert code == 0, err
    assert set(_ids(json.loads(out_text)["changes"])) == left
    assert not set(done) & left
    # the host problem goes away: the next apply does exactly the rest
    sh("ip -n fhandns link del ivx")
    out = apply_json(rec, rec.dir)
    assert out["converged"] and set(_ids(out["plan"]["changes"])) == left
    assert addrs("g2") == ["10.90.1.5/24"]
    assert plan_exit(rec, rec.dir)[0] == 0


def test_name_taken_between_plan_and_apply_is_reported_and_rolled_back(rec, unmanaged, monkeypatch):
    """Someone runs `ip netns add g1` after the plan was made: the create fails in
    the kernel (EEXIST); the VLAN this run already created is removed again, the
    intruder's namespace is left alone."""
    import reconciler.kernel.apply as kapply

    real = kapply.execute
    calls = []

    def hooked(actions, kernel, snap):
        if not calls:
            sh("ip netns add g1")
        calls.append(len(actions))
        return real(actions, kernel, snap)

    monkeypatch.setattr(kapply, "execute", hooked)
    rec.write("a.yaml", CLASH.replace("g2: {networks: {onh: {ip: 10.90.1.5}}}", "g2: {networks: {good: {}}}"))
    before = kernel_snapshot()
    try:
        out = apply_json(rec, rec.dir, expect=(1,))
        r = out["result"]
        assert _ids(a["action"] for a in r["failed"]) == [("create", "netns", "g1")]
        assert "exists" in r["failed"][0]["error"].lower(), r["failed"][0]["error"]
        assert ("create", "vlan", "eth0.77") in _ids(r["done"])
        assert out["rollback"]["ok"] and ("delete", "vlan", "eth0.77") in _ids(out["rollback"]["done"])
        assert not any(k == "netns" and i == "g1" for _, k, i in _ids(out["rollback"]["done"]))
        after = kernel_snapshot(ignore_netns=("g1",))
        assert not diff(after, before), "\n".join(diff(after, before))
        assert "g1" in os.listdir("/run/netns")
        g1 = sh("ip -n g1 -j link show").stdout
        assert [l["ifname"] for l in json.loads(g1)] == ["lo"]
        # the next apply refuses to adopt the intruder: a clear plan error, nothing changed
        monkeypatch.setattr(kapply, "execute", real)
        code, text, err = cli_inproc("apply", rec.dir, "--state-dir", rec.state)
        assert code == 1 and "network namespace g1 exists and is not managed" in err, text + err
    finally:
        sh("ip netns del g1", check=False)


def test_vlan_created_by_someone_else_mid_apply_is_not_marked_ours(rec, unmanaged, monkeypatch):
    """The same race on a link: the VLAN the plan wanted to create appears first. Our
    create fails (EEXIST) and the marker request that follows it must not land on the
    other link -- or the next run would adopt it and delete it with the network."""
    import reconciler.kernel.apply as kapply

    real = kapply.execute
    calls = []

    def hooked(actions, kernel, snap):
        if not calls:
            sh("ip link add link eth0 name eth0.77 type vlan id 77 && ip link set eth0.77 up")
        calls.append(1)
        return real(actions, kernel, snap)

    monkeypatch.setattr(kapply, "execute", hooked)
    rec.write("a.yaml", CLASH.replace("g2: {networks: {onh: {ip: 10.90.1.5}}}", "g2: {networks: {good: {}}}"))
    try:
        out = apply_json(rec, rec.dir, expect=(1,))
        assert _ids(a["action"] for a in out["result"]["failed"]) == [("create", "vlan", "eth0.77")]
        link = json.loads(sh("ip -j -d link show eth0.77").stdout)[0]
        assert link.get("ifalias", "") == "", f"someone else's VLAN got our marker: {link.get('ifalias')}"
        assert state_file(rec)["intents"] == []
        # the next run uses it as is (a pre-existing matching VLAN), and never deletes it
        monkeypatch.setattr(kapply, "execute", real)
        out = apply_json(rec, rec.dir)
        assert out["converged"] and not any(c["kind"] == "vlan" for c in out["plan"]["changes"])
        rec.clear()
        apply_json(rec, rec.dir)
        assert "eth0.77" in os.listdir("/sys/class/net")
    finally:
        sh("ip link del eth0.77", check=False)


# =================================================================================================
# the writer lock
# =================================================================================================
@contextlib.contextmanager
def holding_lock(rec: Reconciler):
    """Another process holds the state directory's lock (flock) while the block runs.
    A separate process, so that apply processes forked meanwhile inherit no lock fd."""
    os.makedirs(rec.state, exist_ok=True)
    ready_r, ready_w = os.pipe()
    rel_r, rel_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(rel_w)
            fd = os.open(os.path.join(rec.state, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(ready_w, b"r")
            os.read(rel_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(rel_r)
    try:
        assert os.read(ready_r, 1) == b"r"
        yield
    finally:
        os.write(rel_w, b"x")
        os.close(rel_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def test_a_second_apply_waits_for_the_lock_then_converges(rec):
    rec.write("a.yaml", MIXED_A)
    with holding_lock(rec):
        p = apply_proc(rec)
        time.sleep(3.0)
        assert p.poll() is None, "apply did not wait for the lock: " + p.output()
        assert not any(n.startswith("f0") for n in os.listdir("/run/netns")), "apply acted without the lock"
    assert p.wait() == 0, p.output()
    assert json.loads(p.output())["converged"]


def test_two_applies_at_once_are_serialised_and_both_converge(rec):
    rec.write("a.yaml", MIXED_A)
    procs = [apply_proc(rec) for _ in range(2)]
    outs = []
    for p in procs:
        assert p.wait() == 0, p.output()
        outs.append(json.loads(p.output()))
    assert all(o["converged"] for o in outs)
    # one did the work; the other, having waited, found nothing to do
    assert sorted(bool(o["plan"]["changes"]) for o in outs) == [False, True], [o["plan"]["summary"] for o in outs]
    assert plan_exit(rec, rec.dir)[0] == 0


def test_lock_timeout_zero_fails_clearly_and_changes_nothing(rec):
    rec.write("a.yaml", MIXED_A)
    before = kernel_snapshot()
    with holding_lock(rec):
        p = apply_proc(rec, "--lock-timeout", "0")
        code = p.wait()
    err = p.output()
    assert code == 1, err
    assert "holds" in err and os.path.join(rec.state, "lock") in err, err
    assert "Traceback" not in err
    assert not diff(kernel_snapshot(), before)


# =================================================================================================
# the state file cut short
# =================================================================================================
def test_state_file_cut_short_is_rebuilt_without_moving_addresses(rec):
    """A crash can never leave a half-written state.json (temp file + rename), but a
    bad disk or a hand edit can. Cut it at several points: each time the next apply
    rebuilds it from the kernel markers and moves no address."""
    rec.write("a.yaml", MIXED_A)
    apply_json(rec, rec.dir)
    auto = ("f01", "f03", "f05", "f07", "f09")
    before = {ns: addrs(ns) for ns in auto}
    path = os.path.join(rec.state, "state.json")
    full = open(path, "rb").read()
    for cut in (0, 1, len(full) // 3, len(full) // 2, len(full) - 2):
        with open(path, "wb") as f:
            f.write(full[:cut])
        with open(path + ".tmp", "wb") as f:  # and a stale temp file of a killed writer
            f.write(full[: cut // 2])
        out = apply_json(rec, rec.dir)
        assert out["plan"]["changes"] == [], (cut, out["plan"]["summary"])
        assert {ns: addrs(ns) for ns in auto} == before, cut
        assert json.load(open(path))["allocations"]["addresses"], cut
        assert sorted(os.listdir(rec.state)) == ["lock", "state.json"], os.listdir(rec.state)
