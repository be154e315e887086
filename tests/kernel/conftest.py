"""Kernel test harness: real netlink, real namespaces, inside the test VM only.

These tests create and delete links in the root network namespace, so they run only inside
the throwaway VM that `scripts/test kernel` boots (scripts/vm-run + scripts/vm-guest-setup),
as root, with ipvlan, 8021q and dummy loaded and a dummy ``eth0`` (192.168.1.250/24) standing
in for the physical NIC. Collected anywhere else they FAIL (they never skip): a kernel test that
did not run must never look like a kernel test that passed. For the same reason a skip or an
xfail inside the VM is turned into a failure.

Fixtures for kernel tests (all function-scoped unless noted):

``run(cmd, check=True, netns=None, input=None)``
    Run a command (a string, split with shlex, or a list); return its stdout. On a non-zero exit
    raise ``CommandFailed`` (an AssertionError naming the command, status, stdout, stderr).
    ``netns=`` runs it through ``ip netns exec``.
``ip_json(args, netns=None)``
    ``ip [-n NETNS] -j ARGS`` parsed from JSON (``[]`` for empty output).
``ping(netns, addr, count=3)``
    True when any of COUNT echo requests (``ping -c COUNT -i 0.2 -W 2``, ``-6`` for IPv6
    addresses; ADDR may be a host name) from NETNS gets an answer. Several requests, because the first one waits for
    neighbour resolution, which under TCG emulation can take longer than a second; a single
    ``-c 1 -W 1`` made a positive check flaky (CI run of 2026-11-29).
``netns_factory(name=None, lo_up=True)``
    Create a named namespace with ``ip netns add`` (a unique ``kt-...`` name by default), bring
    its ``lo`` up, return the name; deleted on teardown.
``host_eth0`` (session)
    The name of the dummy parent NIC, ``"eth0"``, after checking it exists, is up and carries
    192.168.1.250/24.
``kernel_cleanup`` (autouse)
    Snapshots links (root namespace), namespaces, /etc/netns and eth0's addresses before each
    test (after module- and session-scoped fixtures are set up, so what they create is kept for
    the next tests) and afterwards removes every link and namespace the test left behind (links inside a
    namespace are deleted before the namespace itself: namespace teardown is asynchronous and a
    lingering ipvlan slave would still hold its addresses on eth0's port) and restores eth0.
    ``kernel_cleanup.sweep()`` does it on demand. The same sweep runs at the end of each module
    for what module-scoped fixtures leave behind.

Helpers ``run``, ``ip_json``, ``ping`` and ``CommandFailed`` can also be imported directly
(``from conftest import ip_json, run``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import uuid
from typing import Dict, List, Optional, Sequence, Union

import pytest

VM_ENV = "IPVLAN_RECONCILER_VM"
HOST_ETH0 = "eth0"
HOST_ETH0_ADDR = "192.168.1.250/24"
REQUIRED_MODULES = ("ipvlan", "8021q", "dummy")
HOW_TO_RUN = "kernel tests must run in the VM: use scripts/test kernel"
KERNEL_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

Cmd = Union[str, Sequence[str]]


# ---------------------------------------------------------------------------------------------
# command helpers (also used by the hooks below)


class CommandFailed(AssertionError):
    def __init__(self, argv: Sequence[str], proc: subprocess.CompletedProcess):
        self.argv = list(argv)
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(
            f"command failed (exit {proc.returncode}): {shlex.join(self.argv)}\n"
            f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        )


def _argv(cmd: Cmd, netns: Optional[str] = None) -> List[str]:
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    return argv


def run(cmd: Cmd, check: bool = True, netns: Optional[str] = None,
        input: Optional[str] = None, timeout: float = 60) -> str:
    argv = _argv(cmd, netns)
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc)
    return proc.stdout


def ip_json(args: Cmd, netns: Optional[str] = None):
    pre = ["ip"] + (["-n", netns] if netns else []) + ["-j"]
    out = run(pre + _argv(args))
    return json.loads(out) if out.strip() else []


def ping(netns: str, addr: str, count: int = 3) -> bool:
    try:
        family = ["-6"] if ipaddress.ip_address(addr).version == 6 else ["-4"]
    except ValueError:  # a host name, resolved in the namespace (/etc/netns/<ns>/hosts)
        family = []
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", *family, "-n", "-q", "-c", str(count),
         "-i", "0.2", "-W", "2", addr],
        capture_output=True, text=True, timeout=30,
    )
    return proc.returncode == 0


# ---------------------------------------------------------------------------------------------
# where are we? (computed once per process)

_ENV_STATE: Optional[Dict[str, object]] = None


def _probe_ipvlan() -> Optional[str]:
    """Create dummy + ipvlan in a throwaway namespace (never the root one). None when it works."""
    ns = "kt-probe-" + uuid.uuid4().hex[:8]
    try:
        run(["ip", "netns", "add", ns])
    except (CommandFailed, OSError) as e:
        return f"`ip netns add` fails: {e}"
    try:
        run(["ip", "-n", ns, "link", "add", "p0", "type", "dummy"])
        run(["ip", "-n", ns, "link", "add", "link", "p0", "name", "v0", "type", "ipvlan",
             "mode", "l2", "bridge"])
        kind = ip_json(["-d", "link", "show", "dev", "v0"], netns=ns)[0]["linkinfo"]["info_kind"]
        if kind != "ipvlan":
            return f"created an ipvlan link but the kernel reports kind {kind!r}"
        return None
    except (CommandFailed, OSError, KeyError, IndexError, ValueError) as e:
        return f"cannot create an ipvlan link: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def environment() -> Dict[str, object]:
    global _ENV_STATE
    if _ENV_STATE is not None:
        return _ENV_STATE
    problems: List[str] = []
    release = os.uname().release
    in_vm = os.environ.get(VM_ENV) == "1"
    if not in_vm:
        problems.append(f"{VM_ENV}=1 is not set (scripts/vm-guest-setup sets it inside the VM)")
    if os.geteuid() != 0:
        problems.append("not running as root")
    missing = [m for m in REQUIRED_MODULES if not os.path.isdir(f"/sys/module/{m}")]
    if missing:
        problems.append(f"kernel {release} has no {', '.join(missing)} loaded")
    ipvlan_works: Optional[bool] = None
    # Only probe (it creates links, in a private namespace) where we were told we are the VM.
    if not problems:
        err = _probe_ipvlan()
        ipvlan_works = err is None
        if err:
            problems.append(err)
    _ENV_STATE = {
        "release": release,
        "in_vm": in_vm,
        "ipvlan_works": ipvlan_works,
        "problems": problems,
    }
    return _ENV_STATE


def _is_kernel_item(item: pytest.Item) -> bool:
    return str(item.path).startswith(KERNEL_TESTS_DIR + os.sep)


# ---------------------------------------------------------------------------------------------
# hooks


def pytest_report_header(config):
    env = environment()
    lines = [f"kernel tests: guest kernel {env['release']} (uname -r), "
             f"{VM_ENV}={'1' if env['in_vm'] else 'unset'}, uid {os.geteuid()}"]
    if env["problems"]:
        lines.append("kernel tests: NOT RUNNABLE HERE: " + "; ".join(env["problems"]))
        lines.append(f"kernel tests: {HOW_TO_RUN}")
    else:
        lines.append("kernel tests: ipvlan available (created an ipvlan link on a dummy parent "
                     f"in a scratch namespace); modules loaded: {' '.join(REQUIRED_MODULES)}")
    return lines


def _skip_reason(rep) -> str:
    longrepr = rep.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped or xfailed kernel test is a failed kernel test."""
    outcome = yield
    rep = outcome.get_result()
    if not _is_kernel_item(item) or not rep.skipped:
        return
    if hasattr(rep, "wasxfail"):
        why = f"xfail is not allowed for kernel tests (reason: {rep.wasxfail or 'none given'})"
        del rep.wasxfail
    else:
        why = f"skip is not allowed for kernel tests: {_skip_reason(rep)}"
    rep.outcome = "failed"
    rep.longrepr = f"{why}\nA kernel test that did not run must not count as passing."


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A kernel test module that skips itself at import (importorskip, allow_module_level)
    is a collection error, not a silent skip."""
    outcome = yield
    rep = outcome.get_result()
    path = getattr(collector, "path", None)
    if rep.skipped and path is not None and str(path).startswith(KERNEL_TESTS_DIR + os.sep):
        rep.outcome = "failed"
        rep.longrepr = f"skipping kernel test module {path.name} is not allowed: {_skip_reason(rep)}"


# ---------------------------------------------------------------------------------------------
# fixtures


def require_vm() -> None:
    env = environment()
    if env["problems"]:
        pytest.fail(f"{HOW_TO_RUN} ({'; '.join(env['problems'])})", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _require_vm():
    """Fail (never skip) every kernel test outside the VM."""
    require_vm()


@pytest.fixture(name="run")
def run_fixture():
    return run


@pytest.fixture(name="ip_json")
def ip_json_fixture():
    return ip_json


@pytest.fixture(name="ping")
def ping_fixture():
    return ping


@pytest.fixture(scope="session")
def host_eth0(_require_vm) -> str:
    links = ip_json(["-d", "link", "show", "dev", HOST_ETH0])
    assert links, f"{HOST_ETH0} missing: scripts/vm-guest-setup creates it"
    link = links[0]
    assert link.get("linkinfo", {}).get("info_kind") == "dummy", link
    assert "UP" in link["flags"], link
    addrs = {f"{a['local']}/{a['prefixlen']}" for a in ip_json(["addr", "show", "dev", HOST_ETH0])[0]["addr_info"]}
    assert HOST_ETH0_ADDR in addrs, addrs
    return HOST_ETH0


class NetnsFactory:
    def __init__(self):
        self.created: List[str] = []

    def __call__(self, name: Optional[str] = None, lo_up: bool = True) -> str:
        name = name or "kt-" + uuid.uuid4().hex[:10]
        run(["ip", "netns", "add", name])
        self.created.append(name)
        if lo_up:
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def teardown(self) -> None:
        for name in reversed(self.created):
            _delete_netns(name)
        self.created.clear()


@pytest.fixture
def netns_factory(_require_vm):
    factory = NetnsFactory()
    yield factory
    factory.teardown()


def _netns_names() -> List[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _delete_netns(name: str) -> None:
    """Delete every link inside first (synchronous), then the namespace (asynchronous)."""
    if name not in _netns_names():
        return
    try:
        links = ip_json(["link", "show"], netns=name)
    except CommandFailed:
        links = []
    for link in links:
        if link["ifname"] != "lo":
            subprocess.run(["ip", "-n", name, "link", "del", "dev", link["ifname"]],
                           capture_output=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


# Snapshots run around every test: read them in-process over netlink (an exec of `ip` costs
# about a second under emulation), with pyroute2's plain IPRoute, no kernel-state writes.


def _root_links() -> Dict[int, str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}


def _eth0_addrs() -> List[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=HOST_ETH0)
        if not index:
            return []
        return sorted(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"
                      for m in ipr.get_addr(index=index[0]) if m["scope"] != 253)  # not link


def _etc_netns() -> List[str]:
    try:
        return sorted(os.listdir("/etc/netns"))
    except FileNotFoundError:
        return []


class KernelCleanup:
    """Remove whatever a test added to the kernel (see the module docstring)."""

    def __init__(self):
        self.links = _root_links()
        self.netns = set(_netns_names())
        self.etc_netns = set(_etc_netns())
        self.eth0_addrs = _eth0_addrs()

    def sweep(self) -> List[str]:
        """Undo; returns what was removed or restored (for messages)."""
        done: List[str] = []
        for name in _netns_names():
            if name not in self.netns:
                _delete_netns(name)
                done.append(f"netns {name}")
        # newest links first: children (vlan, ipvlan) before their parents
        for index, name in sorted(_root_links().items(), reverse=True):
            if index not in self.links:
                subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)
                done.append(f"link {name}")
        for name in _etc_netns():
            if name not in self.etc_netns:
                shutil.rmtree(os.path.join("/etc/netns", name), ignore_errors=True)
                done.append(f"/etc/netns/{name}")
        if HOST_ETH0 in self.links.values():
            if HOST_ETH0 not in _root_links().values():
                run(["ip", "link", "add", HOST_ETH0, "type", "dummy"])
                done.append(f"{HOST_ETH0} re-created")
            now = _eth0_addrs()
            for addr in set(now) - set(self.eth0_addrs):
                subprocess.run(["ip", "addr", "del", addr, "dev", HOST_ETH0], capture_output=True)
                done.append(f"{HOST_ETH0} address {addr}")
            for addr in set(self.eth0_addrs) - set(now):
                subprocess.run(["ip", "addr", "add", addr, "dev", HOST_ETH0], capture_output=True)
                done.append(f"{HOST_ETH0} address {addr} restored")
            subprocess.run(["ip", "link", "set", HOST_ETH0, "up"], capture_output=True)
        return done


# (who, what was removed): objects a test or fixture left behind, listed at the end of the run
LEFTOVERS: List[tuple] = []


def _sweep(cleanup: "KernelCleanup", who: str) -> None:
    removed = cleanup.sweep()
    if removed:
        LEFTOVERS.append((who, removed))


@pytest.fixture(scope="session", autouse=True)
def _kernel_cleanup_session(_require_vm):
    """Session level: whatever is still there at the end (so the benchmark or the next command
    in the VM starts from the host the suite found)."""
    cleanup = KernelCleanup()
    yield cleanup
    _sweep(cleanup, "end of session")


@pytest.fixture(scope="module", autouse=True)
def _kernel_cleanup_module(request, _kernel_cleanup_session):
    """Module level: what module-scoped fixtures (e.g. one apply shared by a module's tests)
    leave behind after their own teardown. Autouse, so it snapshots before them."""
    cleanup = KernelCleanup()
    yield cleanup
    _sweep(cleanup, f"module {request.node.nodeid}")


@pytest.fixture(autouse=True)
def kernel_cleanup(request, _kernel_cleanup_module):
    """Test level: the snapshot is taken after every broader-scoped fixture is set up, so only
    what the test itself created is removed."""
    cleanup = KernelCleanup()
    yield cleanup
    _sweep(cleanup, request.node.nodeid)


def pytest_terminal_summary(terminalreporter):
    if not LEFTOVERS:
        return
    terminalreporter.section("kernel objects a test left behind, removed by kernel_cleanup (informational)")
    for who, removed in LEFTOVERS:
        terminalreporter.write_line(f"{who}: {', '.join(removed)}")
