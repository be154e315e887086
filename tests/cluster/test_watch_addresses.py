"""`watch --etcd` follows the other hosts' address records (SPEC 6, 5.1: hosts files list every
container of the fleet on shared networks, with the addresses other hosts allocate after a
push), not only the revision pointer; its own writes do not wake it."""
from __future__ import annotations

import time

from reconciler.cluster.alloc import Agent
from reconciler.cluster.revision import push

from .helpers import write
from .test_watch import FLEET, daemon, host, quiet_logs, step, wait_for  # noqa: F401  (fixtures)


def test_another_hosts_new_address_reaches_this_hosts_state_without_a_push(tmp_path, etcd, store, keys, host):
    push(store, keys, [write(tmp_path, FLEET)])
    dm = daemon(tmp_path, etcd.url, keys)
    step(dm, "start")
    assert dm.status.last_result == "converged"
    assert "web2" not in dm.desired.remote  # h2 has not allocated web2's address yet
    dm.start_threads()
    try:
        time.sleep(0.3)  # the watches are established
        while dm.triggers.poll() is not None:  # h1's own allocation at start: no trigger expected
            pass
        h2 = Agent(store, keys, "h2", "machine-h2")
        h2.bind()
        a = h2.allocate("lan", "web2")  # what h2's agent does for its container
        seen = []

        def arrived():
            b = dm.triggers.poll()
            if b is not None:
                seen.extend(b.details)
                dm.handle(b)
            return "web2" in dm.desired.remote

        wait_for(arrived, "h2's address to reach h1's desired state")
        assert "address records changed" in seen
        assert dm.desired.remote["web2"].attachments[0].ip == a
        assert dm.status.last_result == "converged"
        # h1's own writes wake nothing: allocate and release on h1's behalf, no trigger
        h1 = Agent(store, keys, "h1", "machine-h1")
        h1.bind()
        h1.release("lan", h1.allocate("lan", "scratch"))
        deadline = time.monotonic() + 1.0
        own = []
        while time.monotonic() < deadline:
            b = dm.triggers.poll()
            if b is not None:
                own.extend(d for d in b.details if d == "address records changed")
            time.sleep(0.05)
        # the release is a delete (no host in it): at most that one wakes h1
        assert len(own) <= 1
    finally:
        dm.stop_threads()
