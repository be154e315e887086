"""The daemon's status file: what `ipvlanctl status` shows under "daemon".

JSON, rewritten atomically (temp file in the same directory, then rename)
after every reconcile and every manifest load, so a reader never sees a
half-written file. ``format_version`` changes when a field changes meaning.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional

from ..atomicfile import write_atomic
from .classify import CLASSES
from .logs import iso_utc
from .constants import KINDS, RESULTS

FORMAT_VERSION = "1"
MAX_ERRORS = 10
MAX_ACTIONS = 50


def iso(unix_ts: Optional[float]) -> Optional[str]:
    """The log lines' timestamp format (``logs.iso_utc``); None for 0 or None (never)."""
    return iso_utc(unix_ts) if unix_ts else None


@dataclass
class DaemonStatus:
    manifest_paths: List[str]
    state_dir: str
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    phase: str = "starting"  # starting | running | stopping
    last_reconcile: float = 0.0  # unix time the last reconcile finished
    last_result: Optional[str] = None  # one of metrics.RESULTS
    last_duration: float = 0.0
    last_trigger: str = ""
    last_exit_code: Optional[int] = None
    last_actions: List[str] = field(default_factory=list)
    last_netlink_writes: int = 0
    last_success: float = 0.0
    pending: List[str] = field(default_factory=list)
    last_errors: Deque[Dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ERRORS))
    reconciles: Dict[str, int] = field(default_factory=lambda: {r: 0 for r in RESULTS})
    errors: Dict[str, int] = field(default_factory=lambda: {c: 0 for c in CLASSES})
    drift_repairs: int = 0
    managed: Dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    manifest_valid: Optional[bool] = None
    manifest_loaded: float = 0.0  # when the desired state in force was loaded
    manifest_errors: List[str] = field(default_factory=list)  # of the last failed load
    manifest_missing: List[str] = field(default_factory=list)  # paths that do not exist
    next_retry: float = 0.0  # unix time of the next retry after an error (0: none)
    bird: Optional[Dict[str, Any]] = None  # --bird-config: the last BirdSync report

    def record_error(self, cls: str, message: str, when: Optional[float] = None) -> None:
        self.errors[cls] = self.errors.get(cls, 0) + 1
        self.last_errors.append({"ts": iso(when or time.time()), "class": cls, "message": message})

    def to_json(self) -> Dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "pid": self.pid,
            "started": iso(self.started),
            "phase": self.phase,
            "manifest_paths": list(self.manifest_paths),
            "state_dir": self.state_dir,
            "last_reconcile": iso(self.last_reconcile),
            "last_result": self.last_result,
            "last_duration_seconds": round(self.last_duration, 6),
            "last_trigger": self.last_trigger,
            "last_exit_code": self.last_exit_code,
            "last_actions": list(self.last_actions[:MAX_ACTIONS]),
            "last_actions_total": len(self.last_actions),
            "last_netlink_writes": self.last_netlink_writes,
            "last_success": iso(self.last_success),
            "pending": list(self.pending),
            "pending_objects": len(self.pending),
            "last_errors": list(self.last_errors),
            "counts": {
                "reconciles": dict(self.reconciles),
                "errors": dict(self.errors),
                "drift_repairs": self.drift_repairs,
                "managed_objects": dict(self.managed),
            },
            "manifest": {
                "valid": self.manifest_valid,
                "loaded": iso(self.manifest_loaded),
                "errors": list(self.manifest_errors),
                "missing": list(self.manifest_missing),
            },
            "next_retry": iso(self.next_retry),
            **({"bird": dict(self.bird)} if self.bird is not None else {}),
        }


def write_status(path: str, data: Dict[str, Any]) -> None:
    """Atomic replace: readers see the old file or the new one, never a mix. Not fsync'ed:
    it lives under /run and is rewritten after every reconcile."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n", durable=False)


def read_status(path: str) -> Optional[Dict[str, Any]]:
    """The status file's content, or None when absent or unreadable (a daemon not running)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
