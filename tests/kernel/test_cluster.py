"""Cluster mode end to end on the VM's kernel (issue 10 test 1): one `cluster push` of a
fleet directory, three simulated hosts (tests/kernel/fleetkit.py via tests/cluster/netkit.py:
namespaces on one bridge) each running a real `ipvlanctl watch --etcd` agent, real ipvlan
containers with addresses allocated from etcd, and `cluster status` showing the revision each
host converged. Lean on purpose (everything in the VM is 20-25x slower): one etcd member, in
h1's namespace, reached by the other hosts over the bridge."""
from __future__ import annotations

import ipaddress
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster"))
from netkit import ClusterFleet, duplicates, wait_for  # noqa: E402

FLEET = """\
version: 1
hosts:
  h1: {address: 192.168.1.11}
  h2: {address: 192.168.1.12}
  h3: {address: 192.168.1.13}
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.50.0.0/24, gateway: 10.50.0.1}], block_size: 28}
containers:
  web1: {host: h1, networks: {lan: {}}}
  web2: {host: h2, networks: {lan: {}}}
  web3: {host: h3, networks: {lan: {}}}
"""


def test_push_converges_three_hosts_with_ipvlan_containers_and_status_shows_each_revision(tmp_path):
    fleet = ClusterFleet(3, prefix="kcv-", workdir=str(tmp_path / "fleet"), members=1)
    try:
        d = tmp_path / "manifests"
        d.mkdir()
        (d / "fleet.yaml").write_text(FLEET)
        h1 = fleet.hosts[0]
        fleet.push(h1, str(d))
        for h in fleet.hosts:
            fleet.start_agent(h, "--resync-interval", "600")

        def reported(h):  # the agent's status file (cheap to poll), then etcd once
            s = h.status() or {}
            return s.get("last_result") == "converged" and (s.get("cluster") or {}).get("converged_revision") == 1
        wait_for(lambda: all(reported(h) for h in fleet.hosts), 600, "revision 1 converged on every host", 1)
        rows = {r["host"]: r for r in fleet.status(h1)["hosts"]}
        assert all(rows[h.name]["revision"] == 1 and rows[h.name]["pending"] == [] for h in fleet.hosts), rows
        assert all(rows[h.name]["alive"] and rows[h.name]["addresses"] == 1 for h in fleet.hosts), rows
        text = fleet.ctl(h1, "status").stdout
        table = {line.split()[0]: line.split() for line in text.splitlines()[2:] if line.strip()}
        for h in fleet.hosts:  # HOST ID STATE REV ...
            assert table[h.name][2:4] == ["up", "1"], text

        keys = fleet.addr_keys(h1)
        live = {}
        for n, h in enumerate(fleet.hosts, 1):
            c = f"web{n}"
            info = json.loads(h.sh(["ip", "-n", c, "-j", "-d", "addr", "show", "dev", "eth0"]).stdout)[0]
            assert info["linkinfo"]["info_kind"] == "ipvlan", info
            (a,) = [x["local"] for x in info["addr_info"] if x["family"] == "inet" and x["scope"] == "global"]
            assert keys[f"lan {a}"] == {**keys[f"lan {a}"], "host": h.name, "container": c}
            live[c] = a
        assert len(keys) == 3 and duplicates(live.values()) == []
        assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.50.0.0/24") for a in live.values())
        # the containers of two hosts reach each other over the switch
        p = fleet.hosts[0].sh(["ip", "netns", "exec", "web1", "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2",
                               live["web2"]], check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert all(p.poll() is None for p in fleet.agents.values())
    finally:
        logs = "".join(f"--- {h.name} watch.log\n{fleet.log(h)}\n" for h in fleet.hosts)
        fleet.close()
        print(logs)
