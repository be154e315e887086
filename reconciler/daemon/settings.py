"""The daemon's settings: one frozen value built once from `ipvlanctl watch`'s options.

The defaults live in ``daemon.options`` (the parser); :meth:`WatchSettings.from_args` copies
what the parser gave and checks the combination (PATHs or --etcd); :meth:`check` the numbers.
The field defaults below are those of the parser too, for callers that build settings by
hand (tests, ``ClusterDaemon``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Optional, Tuple

from ..errors import UserError
from .constants import DEFAULT_STATUS_FILE


@dataclass(frozen=True)
class WatchSettings:
    paths: Tuple[str, ...]
    state_dir: str
    status_file: Optional[str] = DEFAULT_STATUS_FILE  # None: no status file
    debounce: float = 0.5
    resync_interval: float = 60.0  # 0: no periodic resync
    lock_timeout: float = 30.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0  # --max-backoff
    metrics_addr: Optional[str] = None
    netns_poll: float = 1.0
    host: Optional[str] = None  # fleet manifests: --host (None: this machine's name)
    bird_config: Optional[str] = None
    bird_socket: Optional[str] = None
    etcd: Optional[str] = None  # cluster mode (daemon.clusterwatch)
    prefix: str = "/ipvlan-reconciler/"
    etcd_cacert: Optional[str] = None  # TLS and auth towards etcd (cluster.store.credentials)
    etcd_cert: Optional[str] = None
    etcd_key: Optional[str] = None
    etcd_user: Optional[str] = None
    etcd_password_file: Optional[str] = None
    log_format: str = "text"
    log_level: str = "info"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "WatchSettings":
        """The parsed options of `ipvlanctl watch`; a combination that cannot work is a
        UserError. Options the parser does not have keep the defaults above."""
        names = {f.name for f in fields(cls)} - {"paths", "backoff_cap"}
        given = {n: getattr(args, n) for n in names if hasattr(args, n)}
        if hasattr(args, "max_backoff"):
            given["backoff_cap"] = args.max_backoff
        if "status_file" in given:
            given["status_file"] = given["status_file"] or None  # '' disables it
        s = cls(paths=tuple(getattr(args, "paths", None) or ()), **given)
        if s.etcd and s.paths:
            raise UserError("watch --etcd takes its manifests from etcd: give no PATH")
        if not s.etcd and not s.paths:
            raise UserError("watch needs manifest directories (PATH...), or --etcd URL for cluster mode")
        return s

    def check(self) -> None:
        """What argparse cannot check about the numbers (after the root check, as always)."""
        if self.debounce < 0:
            raise UserError("--debounce must not be negative")


SETTING_NAMES = frozenset(f.name for f in fields(WatchSettings))
