"""A free block holding another host's explicit address is never claimed (strict affinity):
the address is that host's, and with the block claimed by someone else the very next push of
the same manifests was refused ("an explicit address inside a host's block must be one of
that host's containers"). A host's own explicit address does not keep it from the block."""
from __future__ import annotations

import ipaddress

from reconciler.cluster.alloc import Agent
from reconciler.cluster.revision import push

from .helpers import FLEET, write

EXPLICIT = FLEET.replace("10.50.8.5", "10.50.0.70")  # web2 (h2) inside block 1, 10.50.0.64/26


def test_a_claim_skips_a_block_with_another_hosts_explicit_address(tmp_path, store, keys):
    d = write(tmp_path, EXPLICIT)
    push(store, keys, [d])
    h3 = Agent(store, keys, "h3", "machine-h3")
    h3.bind()
    # block 0 is h1's (explicit id 0), block 1 holds h2's explicit 10.50.0.70: h3 claims block 2
    a = h3.allocate("lan", "db1")
    assert a in ipaddress.ip_network("10.50.0.128/26"), a
    assert h3.blocks("lan") == [ipaddress.ip_network("10.50.0.128/26")]
    # the same manifests push again (before: refused, block 1 was h3's)
    push(store, keys, [d])
    # h2 may claim the block its own explicit address is in
    h2 = Agent(store, keys, "h2", "machine-h2")
    h2.bind()
    b = h2.allocate("lan", "web2b")
    assert b in ipaddress.ip_network("10.50.0.64/26") and b != ipaddress.ip_address("10.50.0.70"), b
    push(store, keys, [d])
