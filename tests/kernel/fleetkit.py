"""A fleet of hosts on one machine, for the multi-host kernel tests and the fleet benchmarks.

Layout (everything inside namespaces; the root namespace's links are never touched):

- namespace ``<prefix>sw``: a bridge ``br0``, the "switch";
- per host ``hN`` (N = 1, 2, ...): network namespace ``<prefix>hN`` with ``eth0`` (a veth whose
  peer ``vethN`` is a port of ``br0``), 192.168.1.1N/24 (and 2001:db8:1::1N/64 with
  ``v6=True``), up; plus a private mount namespace
  kept alive by a *holder* process, with its own tmpfs on /run/netns and /etc/netns, so each
  host has its own named namespaces (containers) and hosts files:

      ip netns exec <prefix>hN unshare --mount --propagation private \\
          sh -c 'mount -t tmpfs tmpfs /run/netns; mount -t tmpfs tmpfs /etc/netns; exec sleep infinity'

  Commands run "on the host" through ``nsenter -t HOLDER -m -n``: ``ipvlanctl`` (with the
  host's own --state-dir) and ``bird -f -c CONF -s SOCKET``.

``Fleet.close()`` kills BIRD and the holders (their mount namespaces, and with them the
containers' namespaces, go away) and deletes the host and switch namespaces.

Used by tests/kernel/test_fleet.py (in the VM) and bench/fleet.py (on the host kernel too:
veth, bridge and namespaces are all it needs when no ipvlan container is created).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNDERLAY = "192.168.1.{}"
UNDERLAY6 = "2001:db8:1::{}"


def _run(argv: Sequence[str], check: bool = True, timeout: float = 120, input: Optional[str] = None):
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed (exit {p.returncode}): {' '.join(argv)}\n"
                             f"--- stdout\n{p.stdout}--- stderr\n{p.stderr}")
    return p


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll ``cond`` until truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class FleetHost:
    def __init__(self, fleet: "Fleet", n: int):
        self.fleet = fleet
        self.n = n
        self.name = f"h{n}"
        self.netns = f"{fleet.prefix}h{n}"
        self.address = UNDERLAY.format(10 + n)
        self.address6 = UNDERLAY6.format(10 + n) if fleet.v6 else None
        self.veth = f"veth{n}"
        self.dir = os.path.join(fleet.dir, self.name)
        self.state_dir = os.path.join(self.dir, "state")
        self.status_file = os.path.join(self.dir, "status.json")
        self.bird_conf = os.path.join(self.dir, "bird.conf")
        self.bird_sock = os.path.join(self.dir, "bird.ctl")
        self.holder: Optional[subprocess.Popen] = None
        self.bird: Optional[subprocess.Popen] = None
        self.watch: Optional[subprocess.Popen] = None
        os.makedirs(self.dir, exist_ok=True)

    # set-up -------------------------------------------------------------------------------------
    def create(self) -> None:
        sw = self.fleet.sw
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "-n", sw, "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        _run(["ip", "-n", sw, "link", "set", self.veth, "master", "br0", "up"])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0"])
        if self.address6:
            _run(["ip", "-n", self.netns, "addr", "add", f"{self.address6}/64", "dev", "eth0", "nodad"])
        _run(["ip", "-n", self.netns, "link", "set", "eth0", "up"])
        script = "mount -t tmpfs tmpfs /run/netns && mount -t tmpfs tmpfs /etc/netns && exec sleep infinity"
        os.makedirs("/run/netns", exist_ok=True)
        os.makedirs("/etc/netns", exist_ok=True)
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

        def ready() -> bool:
            if self.holder.poll() is not None:
                raise AssertionError(f"holder of {self.name} exited: {self.holder.stderr.read().decode()}")
            try:
                with open(f"/proc/{self.holder.pid}/comm") as f:
                    return f.read().strip() == "sleep"
            except OSError:
                return False

        wait_for(ready, 30, f"the mount namespace holder of {self.name}", 0.05)

    # running things on the host -------------------------------------------------------------------
    def argv(self, argv: Sequence[str]) -> List[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", *argv]

    def sh(self, argv: Sequence[str], check: bool = True, timeout: float = 300, input: Optional[str] = None):
        return _run(self.argv(argv), check=check, timeout=timeout, input=input)

    def ipvlanctl_argv(self, *args: str) -> List[str]:
        return self.argv([sys.executable, "-m", "reconciler", *args])

    def ipvlanctl(self, *args: str, check: bool = False, timeout: float = 600):
        """Run ipvlanctl on this host (cwd: the checkout); returns the CompletedProcess."""
        p = subprocess.run(self.ipvlanctl_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and p.returncode not in (0, 3):
            raise AssertionError(f"ipvlanctl {' '.join(args)} on {self.name}: exit {p.returncode}\n"
                                 f"--- stdout\n{p.stdout}--- stderr\n{p.stderr}")
        return p

    def apply(self, manifests: str, *extra: str, check: bool = True):
        return self.ipvlanctl("apply", "--host", self.name, "--state-dir", self.state_dir,
                              "--bird-config", self.bird_conf, "--bird-socket", self.bird_sock,
                              *extra, manifests, check=check)

    def start_watch(self, manifests: str, *extra: str) -> None:
        log = open(os.path.join(self.dir, "watch.log"), "ab")
        self.watch = subprocess.Popen(
            self.ipvlanctl_argv("watch", "--host", self.name, "--state-dir", self.state_dir,
                                "--status-file", self.status_file, "--bird-config", self.bird_conf,
                                "--bird-socket", self.bird_sock, "--debounce", "0.2", *extra, manifests),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def stop_watch(self) -> None:
        _stop(self.watch, signal.SIGTERM)
        self.watch = None

    def status(self) -> Optional[dict]:
        try:
            with open(self.status_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # BIRD ----------------------------------------------------------------------------------------
    def start_bird(self, config: Optional[str] = None) -> None:
        """Start BIRD on this host (foreground process, our child); ``config`` replaces the
        configuration file first. Waits until BIRD answers on its socket."""
        if config is not None:
            with open(self.bird_conf, "w") as f:
                f.write(config)
        assert self.bird is None or self.bird.poll() is not None, "BIRD already runs"
        log = open(os.path.join(self.dir, "bird.log"), "ab")
        self.bird = subprocess.Popen(self.argv(["bird", "-f", "-c", self.bird_conf, "-s", self.bird_sock]),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        def up() -> bool:
            if self.bird.poll() is not None:
                raise AssertionError(f"BIRD on {self.name} exited: {self.bird_log()}")
            r = self.birdc("show", "status", check=False)
            return r.returncode == 0 and "Daemon is up" in r.stdout

        wait_for(up, 30, f"BIRD on {self.name}")

    def bird_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "bird.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop_bird(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.bird, sig)
        self.bird = None

    def birdc(self, *cmd: str, check: bool = True):
        return self.sh(["birdc", "-s", self.bird_sock, *cmd], check=check, timeout=30)

    def established(self) -> int:
        out = self.birdc("show", "protocols", check=False).stdout
        return sum(1 for line in out.splitlines() if " BGP " in line and "Established" in line)

    # kernel state --------------------------------------------------------------------------------
    def routes(self, table: str = "main", family: str = "-4") -> Dict[str, dict]:
        out = _run(["ip", family, "-n", self.netns, "-j", "route", "show", "table", table]).stdout
        return {r["dst"]: r for r in (json.loads(out) if out.strip() else [])}

    def bgp_routes(self, family: str = "-4") -> Dict[str, str]:
        """Main-table routes BIRD installed: dst -> gateway."""
        return {d: r.get("gateway", "") for d, r in self.routes(family=family).items() if r.get("protocol") == "bird"}

    def cut(self) -> None:
        """Take this host off the switch: the bridge port stops forwarding (carrier stays up)."""
        _run(["ip", "netns", "exec", self.fleet.sw, "bridge", "link", "set", "dev", self.veth, "state", "0"])

    def heal(self) -> None:
        _run(["ip", "netns", "exec", self.fleet.sw, "bridge", "link", "set", "dev", self.veth, "state", "3"])

    def close(self) -> None:
        self.stop_watch()
        self.stop_bird(signal.SIGKILL)
        if self.holder is not None:
            _stop(self.holder, signal.SIGKILL)
            self.holder = None
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def _stop(p: Optional[subprocess.Popen], sig: int) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=20)


class Fleet:
    TOOLS = ("nsenter", "unshare", "bridge", "bird", "birdc")  # a subclass without BIRD needs fewer

    def __init__(self, n: int = 3, prefix: str = "kf-", workdir: Optional[str] = None, v6: bool = False):
        for tool in self.TOOLS:
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is not installed (BIRD: apt-get install bird2)")
        self.prefix = prefix
        self.v6 = v6  # hosts also get 2001:db8:1::1N/64 on eth0
        self.sw = f"{prefix}sw"
        self.dir = workdir or tempfile.mkdtemp(prefix="ipvlan-fleet-")
        self.hosts: List[FleetHost] = []
        try:
            _run(["ip", "netns", "add", self.sw])
            _run(["ip", "-n", self.sw, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.sw, "link", "set", "br0", "up"])
            for i in range(1, n + 1):
                h = FleetHost(self, i)
                self.hosts.append(h)
                h.create()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)

    def close(self) -> None:
        for h in self.hosts:
            h.close()
        subprocess.run(["ip", "netns", "del", self.sw], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
