"""etcd unreachable *without* a quick refusal (a partition, a hung member: here the member is
stopped with SIGSTOP, so connections hang until the client's timeout): drift repair keeps its
normal speed. Before, every reload while cut off read etcd again and waited the client's
timeout per member (about 15 s with 3 members and the 5 s default), so a drift arriving with a
reload (the periodic resync, a retry) was repaired that much later. Now the daemon's threads
notice the loss (the lease refresh, a probe), every reload uses the cached revision at once,
and a probe thread reads etcd off the reconcile path until it answers (SPEC 6: nothing torn
down, nothing claimed while cut off, everything reconverges after the heal)."""
from __future__ import annotations

import json
import os
import signal
import time

from reconciler.cluster.keys import Keys
from reconciler.cluster.revision import push
from reconciler.cluster.store import Store
from reconciler.objects import Kind

from .conftest import Etcd
from .helpers import write
from .test_watch import FLEET, daemon, host, own_tmp, quiet_logs, step, wait_for  # noqa: F401 (fixtures)

TIMEOUT = 3.0  # the client's timeout per member; three members: one blocked read takes about 9 s


def drift_remove(host, name):
    """Someone deletes the container's namespace behind the daemon's back."""
    host.objects = {k: o for k, o in host.objects.items()
                    if not (o.kind is Kind.NETNS and o.name == name) and getattr(o, "ns", None) != name}


def handle_until(dm, pred, what, timeout):
    def step_once():
        b = dm.triggers.poll()
        if b is not None:
            dm.handle(b)
        return pred()

    wait_for(step_once, what, timeout=timeout)


def test_drift_is_repaired_promptly_while_etcd_hangs_and_everything_heals(tmp_path, host, own_tmp):
    own = Etcd(own_tmp)
    stopped = False
    try:
        url = ",".join([own.url] * 3)  # three members to try, as a 3-member cluster seen from a cut host
        store, keys = Store(url, timeout=TIMEOUT), Keys("/t/")
        push(store, keys, [write(tmp_path, FLEET)])
        dm = daemon(tmp_path, url, keys, store=store)
        step(dm, "start")
        assert host.containers() == ["web1"] and dm.status.last_result == "converged"
        dm.start_threads()
        try:
            os.kill(own.proc.pid, signal.SIGSTOP)  # every request now hangs until the timeout
            stopped = True
            # the daemon's own threads notice (the lease refresh fails); the reload they
            # trigger uses the cached revision
            handle_until(dm, lambda: dm.status.cluster["offline"], "the daemon to see etcd unreachable",
                         timeout=60)
            assert "etcd unreachable" in dm.status_line()
            # drift while cut off: each repair comes with a reload (the periodic resync) and
            # must not wait on etcd (one blocked read would take 3 x TIMEOUT = 9 s)
            for _ in range(2):
                drift_remove(host, "web1")
                assert host.containers() == []
                t0 = time.monotonic()
                step(dm, "resync")
                took = time.monotonic() - t0
                assert host.containers() == ["web1"], dm.status.last_errors
                assert dm.status.last_result == "converged"
                assert dm.status.cluster["offline"]  # still cut off: repaired from the cached revision
                print(f"drift repaired while etcd hangs: {took:.3f} s (resync reload + reconcile)")
                assert took < 4.5, f"a drift repair waited {took:.1f} s on the unreachable etcd"
            # the heal: the probe reads etcd again and the daemon reconverges with no manual step
            os.kill(own.proc.pid, signal.SIGCONT)
            stopped = False
            handle_until(dm, lambda: dm.status.cluster["offline"] is None and dm.source.bound,
                         "the probe to find etcd back and the daemon to reload", timeout=60)
            wait_for(lambda: store.get(keys.status("h1")) is not None, "the status written again", timeout=20)
        finally:
            if stopped:
                os.kill(own.proc.pid, signal.SIGCONT)
            dm.stop_threads()
        assert host.containers() == ["web1"]
        assert json.loads(store.get(keys.status("h1")).value)["revision"] == 1
    finally:
        own.stop()
