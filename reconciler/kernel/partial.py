"""A snapshot refreshed for a few namespaces only: the daemon's scoped verify (issue 12).

After a scoped apply (``daemon.scope.ScopedPlanner``) that changed no host link, only the
namespaces in the plan's scope can have been changed by it. :func:`refresh_snapshot`
dumps those again (and reads their /etc/netns/NAME/hosts) and takes everything else from
the snapshot the run started with: no listing of /run/netns, no ``stat`` of the other
namespaces and hosts files. What it does not look at is judged by the next run's
observation (the netlink monitor vouches for the other namespaces' dumps) and by the full
path at start, SIGHUP, retries and the periodic resync. The one-shot CLI never calls it.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, Iterable, Sequence

from ..objects import Key
from .host import Kernel, NsView, Snapshot, netns_identity, read_hosts_files
from .observe import dump_namespaces, ours_predicate


def refresh_snapshot(kernel: Kernel, previous: Snapshot, names: Iterable[str], intents: Sequence[Key] = ()) -> Snapshot:
    """``previous`` with the namespaces ``names`` dumped again (dropped when their
    /run/netns entry is gone, added when new) and their hosts files read again (a file
    whose stat stamp is unchanged keeps its content, as in ``read_hosts_files``). The host
    namespace's dump and the BGP export routes are ``previous``'s: callers use it only
    after a run that changed no host link and has no export tables."""
    names = sorted(set(names))
    present = [n for n in names if os.path.lexists(kernel.ns_path(n))]
    idents = {n: netns_identity(kernel.ns_path(n)) for n in present}
    namespaces: Dict[str, NsView] = dict(previous.namespaces)
    for n in names:
        namespaces.pop(n, None)
    namespaces.update(dump_namespaces(kernel, present, idents, ours_predicate(intents)))
    hosts = dict(previous.hosts_files)
    stamps = dict(previous.hosts_stamps)
    for n in names:
        hosts.pop(n, None)
        stamps.pop(n, None)
    got, got_stamps = read_hosts_files(kernel.etc_netns, names, previous)
    hosts.update(got)
    stamps.update(got_stamps)
    # previous's mark and /run/netns stamp still hold (the next observation compares them);
    # the views dumped here are not proven to be the monitor's namespaces yet
    return replace(previous, namespaces=namespaces, hosts_files=hosts, hosts_stamps=stamps,
                   exports=list(previous.exports), vouched=previous.vouched - set(names))
