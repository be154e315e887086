"""Several cluster hosts on this machine's kernel, with real processes: one etcd member and one
``ipvlanctl watch --etcd`` agent per simulated host, macvlan containers (the host kernel has
no ipvlan; macvlan, veth, bridges and namespaces work).

The hosts are tests/kernel/fleetkit.py's: a bridge ``br0`` in the switch namespace
``<prefix>sw``, per host a network namespace with ``eth0`` (a veth on the bridge,
192.168.1.1N/24) and a private mount namespace (its own /run/netns: its containers). The
root namespace's links are never touched. Here each host also runs:

- an etcd member on 192.168.1.1N (client port 2379, peer port 2380) in its network namespace,
  the three forming one cluster over the switch: cutting a host's bridge port (``cut()``:
  ``bridge link set dev vethN state 0``) partitions that host *and* its member;
- the agent, ``ipvlanctl watch --etcd <own member first, then the others> --host hN``.

The test process is in the root namespace and cannot reach 192.168.1.0/24: everything that
talks to etcd (push, status, key dumps) runs inside a host's namespaces (``FleetHost.sh``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernel"))
from fleetkit import ROOT, Fleet, FleetHost, _stop, wait_for  # noqa: E402

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PREFIX = "/ipvlan-reconciler/"

# POST {} to an etcd gateway URL, print the reply (no curl needed)
_POST = """\
import sys, urllib.request
print(urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"{}"), timeout=2).read().decode())
"""
# every key under the prefix, as JSON {key: value}, read inside a host's namespace
_DUMP = """\
import json, sys
from reconciler.cluster.store import Store
kvs, _ = Store(sys.argv[1], timeout=3).range(sys.argv[2])
print(json.dumps({kv.key[len(sys.argv[2]):]: kv.value.decode() for kv in kvs}))
"""


class ClusterFleet(Fleet):
    TOOLS = ("nsenter", "unshare", "bridge")

    def __init__(self, n: int = 3, prefix: str = "kc-", workdir: Optional[str] = None, members: Optional[int] = None):
        if not os.access(ETCD, os.X_OK):
            raise AssertionError("the etcd binary is missing: install etcd-server (scripts/system-deps installs it)")
        super().__init__(n, prefix=prefix, workdir=workdir)
        self.etcd: Dict[str, subprocess.Popen] = {}
        self.agents: Dict[str, subprocess.Popen] = {}
        self.members = self.hosts[:n if members is None else members]  # the hosts running an etcd member
        if self.members:
            try:
                for h in self.members:
                    self.start_etcd(h, new=True)
                for h in self.members:
                    wait_for(lambda: self.sh_ok(h, "maintenance/status"), 120, f"etcd on {h.name}")
            except BaseException:
                self.close()
                raise

    # etcd --------------------------------------------------------------------------------------
    @staticmethod
    def client_url(h: FleetHost) -> str:
        return f"http://{h.address}:2379"

    def urls(self, h: FleetHost) -> str:
        """--etcd for host ``h``: its own member first (when it runs one), then the others."""
        return ",".join(self.client_url(o) for o in sorted(self.members, key=lambda o: o is not h))

    def start_etcd(self, h: FleetHost, new: bool = False) -> None:
        peer = f"http://{h.address}:2380"
        cluster = ",".join(f"{o.name}=http://{o.address}:2380" for o in self.members)
        data = os.path.join(self.dir, h.name, "etcd")
        log = open(os.path.join(h.dir, "etcd.log"), "ab")
        self.etcd[h.name] = subprocess.Popen(
            h.argv([ETCD, "--name", h.name, "--data-dir", data,
                    "--listen-client-urls", self.client_url(h), "--advertise-client-urls", self.client_url(h),
                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", cluster, "--initial-cluster-state", "new" if new else "existing",
                    # the defaults (100 ms heartbeat, 1 s election): leader isolation is measured with them
                    "--logger", "zap", "--log-level", "warn"]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def sh_ok(self, h: FleetHost, what: str) -> bool:
        p = h.sh([sys.executable, "-c", _POST, f"{self.client_url(h)}/v3/{what}"], check=False)
        return p.returncode == 0 and p.stdout.startswith("{") and '"error"' not in p.stdout

    def member_status(self, h: FleetHost) -> Optional[dict]:
        p = h.sh([sys.executable, "-c", _POST, f"{self.client_url(h)}/v3/maintenance/status"], check=False)
        try:
            return json.loads(p.stdout) if p.returncode == 0 else None
        except ValueError:
            return None

    def leader(self) -> FleetHost:
        """The host whose member is the raft leader (asked of every member that answers)."""
        for h in self.hosts:
            st = self.member_status(h)
            if st and st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return h
        raise AssertionError("no etcd member says it is the leader")

    # the fleet's data ----------------------------------------------------------------------------
    def ctl(self, h: FleetHost, *args: str, check: bool = True):
        """``ipvlanctl cluster ARGS --etcd <h's urls>`` run on host ``h``."""
        p = h.ipvlanctl("cluster", *args, "--etcd", self.urls(h), "--prefix", PREFIX)
        if check and p.returncode != 0:
            raise AssertionError(f"ipvlanctl cluster {' '.join(args)} on {h.name}: exit {p.returncode}\n"
                                 f"{p.stdout}\n{p.stderr}")
        return p

    def push(self, h: FleetHost, directory: str) -> None:
        self.ctl(h, "push", directory)

    def status(self, h: FleetHost) -> dict:
        return json.loads(self.ctl(h, "status", "--format", "json").stdout)

    def dump(self, h: FleetHost) -> Dict[str, str]:
        p = subprocess.run(h.argv([sys.executable, "-c", _DUMP, self.urls(h), PREFIX]), capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        if p.returncode != 0:
            raise AssertionError(f"reading etcd from {h.name} failed: {p.stderr[-2000:]}")
        return json.loads(p.stdout)

    def addr_keys(self, h: FleetHost) -> Dict[str, dict]:
        """``addrs/<network>/<address>`` records: "net address" -> value."""
        out = {}
        for k, v in self.dump(h).items():
            if k.startswith("addrs/"):
                _, net, a = k.split("/", 2)
                out[f"{net} {a}"] = json.loads(v)
        return out

    # agents --------------------------------------------------------------------------------------
    def start_agent(self, h: FleetHost, *extra: str) -> subprocess.Popen:
        log = open(os.path.join(h.dir, "watch.log"), "ab")
        p = subprocess.Popen(
            h.ipvlanctl_argv("watch", "--etcd", self.urls(h), "--prefix", PREFIX, "--host", h.name,
                             "--state-dir", h.state_dir, "--status-file", h.status_file, "--debounce", "0.1",
                             "--max-backoff", "2", "--log-format", "json", *extra),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.agents[h.name] = p
        return p

    def log(self, h: FleetHost, name: str = "watch.log", tail: int = 4000) -> str:
        try:
            with open(os.path.join(h.dir, name), errors="replace") as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    # kernel state ---------------------------------------------------------------------------------
    def containers(self, h: FleetHost) -> List[str]:
        return sorted(h.sh(["ls", "/run/netns"]).stdout.split())

    def endpoints(self, h: FleetHost) -> Dict[str, str]:
        """container -> its IPv4 address on eth0 (the one network of these tests), from the kernel."""
        out = {}
        for c in self.containers(h):
            p = h.sh(["ip", "-n", c, "-j", "-4", "addr", "show", "dev", "eth0"], check=False)
            data = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else []
            for a in (data[0]["addr_info"] if data else []):
                if a.get("scope") == "global":
                    out[c] = a["local"]
        return out

    def close(self) -> None:
        for p in list(self.agents.values()):
            _stop(p, signal.SIGKILL)
        for p in list(self.etcd.values()):
            _stop(p, signal.SIGKILL)
        super().close()


def duplicates(addresses) -> List[str]:
    """Addresses that occur more than once (C3: must be none)."""
    seen, dup = set(), []
    for a in addresses:
        a = str(ipaddress.ip_address(a))
        if a in seen:
            dup.append(a)
        seen.add(a)
    return dup
