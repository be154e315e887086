"""Real etcd for the cluster tests (no mocks of the store semantics): one etcd member on
loopback ports in a temporary directory, for the whole session; every test works under its
own key prefix. A missing etcd binary FAILS the tests (scripts/system-deps installs
etcd-server): a cluster suite that skips would count as coverage it is not."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """One etcd member; ``cluster``: the whole initial cluster (name=peer URL, ...) when it
    is one of several (started with peer_port given)."""

    def __init__(self, tmp, name="m1", peer_port=None, cluster=None, wait=True, max_txn_ops=1024,
                 scheme="http", extra=()):
        if not os.access(ETCD, os.X_OK):
            pytest.fail("the etcd binary is missing: install etcd-server (scripts/system-deps installs it)")
        self.client_port, self.peer_port = free_port(), peer_port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"  # https: give the TLS flags in ``extra``
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.dir = os.path.join(tmp, name)
        self.log = open(os.path.join(tmp, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(
            [ETCD, "--name", name, "--data-dir", self.dir,
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", cluster or f"{name}={peer}", "--initial-cluster-state", "new",
             "--logger", "zap", "--log-level", "error"]
            + (["--max-txn-ops", str(max_txn_ops)] if max_txn_ops else [])
            + list(extra),
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait()

    def wait(self, ctx=None):
        """Until the member answers (``ctx``: the SSL context of a TLS member)."""
        deadline = time.monotonic() + 20
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(self.url + "/v3/maintenance/status", data=b"{}"),
                                       timeout=1, context=ctx).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"etcd did not start (log: {self.log.name})")
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_cluster(tmp, n=3):
    """``n`` members forming one cluster on loopback ports, with etcd's default limits."""
    ports = [free_port() for _ in range(n)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
    members = [Etcd(tmp, f"m{i}", peer_port=p, cluster=cluster, wait=False, max_txn_ops=None) for i, p in enumerate(ports)]
    for m in members:
        m.wait()
    return members


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    import tempfile

    tmp = tempfile.mkdtemp(prefix="ipvlan-etcd-", dir=base or str(tmp_path_factory.getbasetemp()))
    e = Etcd(tmp)
    yield e
    e.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def prefix():
    return f"/test-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def store(etcd):
    from reconciler.cluster.store import Store

    return Store(etcd.url)


@pytest.fixture
def keys(prefix):
    from reconciler.cluster.keys import Keys

    return Keys(prefix)
