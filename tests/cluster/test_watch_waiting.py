"""A container waiting for an address (here: its pool is full) stays pending through every
reconcile: the daemon must not log "nothing pending any more" on each resync while it waits
(seen in test_hosts.py's partition test: logged every resync for four waiting containers)."""
from __future__ import annotations

import json

from reconciler.cluster.revision import push

from .helpers import write
from .test_watch import daemon, host, quiet_logs, step  # noqa: F401 (fixtures)

FULL = """\
version: 1
hosts:
  h1: {address: 192.168.1.11}
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.50.0.0/30, gateway: 10.50.0.1}], block_size: 30}
containers:
  web1: {host: h1, networks: {lan: {}}}
  web2: {host: h1, networks: {lan: {}}}
"""


def test_a_waiting_container_stays_pending_and_is_not_logged_as_done(tmp_path, etcd, store, keys, host, quiet_logs):
    push(store, keys, [write(tmp_path, FULL)])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    assert host.containers() == ["web1"]
    assert dm.status.last_result == "pending" and any("web2" in p for p in dm.status.pending)
    for _ in range(2):
        step(dm, "resync")
        assert dm.status.last_result == "pending" and any("web2" in p for p in dm.status.pending)
    msgs = [json.loads(line)["msg"] for line in quiet_logs.getvalue().splitlines() if line.startswith("{")]
    assert "nothing pending any more" not in msgs, msgs
    assert sum(1 for m in msgs if m.startswith("pending: container web2")) == 1  # said once, when it began
