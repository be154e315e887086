"""Options of `ipvlanctl watch` (cheap to import: the CLI builds its parser with it)."""
from __future__ import annotations

import argparse

from .constants import DEFAULT_STATUS_FILE


def add_watch_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `ipvlanctl watch` (the paths and --state-dir are added by the CLI)."""
    p.add_argument("--debounce", type=float, default=0.5, metavar="SECONDS",
                   help="wait this long after the last change before reconciling (default 0.5)")
    p.add_argument("--resync-interval", type=float, default=60.0, metavar="SECONDS",
                   help="full reconcile at least this often, changes or not (default 60; 0 disables)")
    p.add_argument("--status-file", default=DEFAULT_STATUS_FILE, metavar="FILE",
                   help=f"where to write the daemon's status JSON (default {DEFAULT_STATUS_FILE}; "
                   "'' disables)")
    p.add_argument("--metrics-addr", metavar="[HOST:]PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (only a port: "
                   "127.0.0.1)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text, or one JSON object per line (default text)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="default info")
    p.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="wait this long for another apply holding the lock, then retry later (default 30)")
    p.add_argument("--max-backoff", type=float, default=60.0, metavar="SECONDS",
                   help="longest wait between retries after temporary errors (default 60)")
    p.add_argument("--etcd", metavar="URL",
                   help="cluster mode (SPEC 6): follow the newest revision in etcd instead of manifest "
                   "paths (http://HOST:PORT, several separated by commas; needs the cluster extra)")
    p.add_argument("--prefix", default="/ipvlan-reconciler/",
                   help="with --etcd: the key prefix of the fleet (default /ipvlan-reconciler/)")
    from ..cluster.options import add_credential_args

    add_credential_args(p)
