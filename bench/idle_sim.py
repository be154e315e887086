"""Idle CPU of the daemon's netlink monitor at N namespaces, simulated on the host (root, no
ipvlan needed): issue 12's P5 idle figure at 10,000, where an initial converge in the VM
takes well over 10 minutes.

    sudo .venv/bin/python bench/idle_sim.py --namespaces 10000 --seconds 60

What is real: ``daemon.nlmonitor.NetlinkMonitor`` itself (its thread, its one poll object,
the /run/netns poll every second with a full ``stat`` of every entry every tenth time),
N+1 netlink sockets registered with it, the host one bound to the monitor's multicast
groups in the root namespace. What is simulated: the N namespaces are N empty files in a
temporary directory (the /run/netns the monitor lists and stats), and their sockets are
opened in the root namespace bound to no group (an idle namespace sends nothing; their
seed dumps read the root namespace's links). Nothing is created or changed in any network
namespace. The figure is the process's user+system CPU over ``--seconds`` after start-up
(the monitor is the daemon's only periodic work when idle; the manifest watcher is
inotify, the trigger loop sleeps on a queue).
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reconciler.daemon import nlmonitor  # noqa: E402


class FakeKernel:
    def __init__(self, netns_dir: str):
        self.netns_dir = netns_dir

    def ns_path(self, name: str) -> str:
        return os.path.join(self.netns_dir, name)

    def list_netns(self):
        return sorted(n for n in os.listdir(self.netns_dir) if not n.startswith("."))

    def open_monitor(self, name, groups, rcvbuf=1 << 16):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        s.bind((0, groups if name is None else 0))
        return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespaces", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as d:
        names = [f"c{i:05d}" for i in range(args.namespaces)]
        for n in names:
            open(os.path.join(d, n), "w").close()
        # the simulated namespaces' identities: the files' own (dev, inode)
        nlmonitor.socket_netns = lambda sock: (None, None)
        mon = nlmonitor.NetlinkMonitor(FakeKernel(d), lambda src, detail: None, netns_poll=1.0)
        t = time.monotonic()
        mon.start()
        mon.set_namespaces(names)
        while len(mon.monitored()) < len(names) and time.monotonic() - t < 600:
            time.sleep(0.5)
        print(f"monitoring {len(mon.monitored())} simulated namespaces after {time.monotonic() - t:.1f} s")
        time.sleep(2.0)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(args.seconds)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(f"idle CPU over {t1 - t0:.0f} s: {cpu:.3f} s = {100 * cpu / (t1 - t0):.2f} % of one core "
              f"(maxrss {r1.ru_maxrss / 1024:.0f} MB)")
        mon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
