"""Keeping BIRD's configuration current (`apply`/`watch --bird-config PATH`) and asking BIRD
how it is (`status`). SPEC 5.2.

BIRD is a separate daemon that starts on its own (bird.service); the reconciler only writes
its configuration file and asks it to reload. Nothing here is fatal to the container work: a
missing ``birdc``, a BIRD that is not running or refuses the configuration is *reported*
(the apply JSON's ``bird``, the daemon's status file, ``ipvlanctl status``), and the next run
tries again. The configuration file is written atomically and only when its content changed,
and BIRD is told to reload (``birdc configure``) only then -- or when the last attempt
failed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

DEFAULT_SOCKET = "/run/bird/bird.ctl"
BIRDC_TIMEOUT = 10.0


def write_if_changed(path: str, text: str) -> bool:
    """Atomically replace ``path`` with ``text`` (``atomicfile.write_atomic``, durable). False, and nothing written, when the file already holds exactly that."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        pass  # unreadable or not text: replace it
    from .atomicfile import write_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, text, durable=True, mode=0o644)  # BIRD reads it after a reboot too
    return True


def birdc(socket: str, *command: str, timeout: float = BIRDC_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``birdc -s SOCKET COMMAND...``. Raises FileNotFoundError without birdc."""
    exe = shutil.which("birdc")
    if exe is None:
        raise FileNotFoundError("birdc not found (install BIRD 2: apt-get install bird2)")
    return subprocess.run([exe, "-s", socket, *command], capture_output=True, text=True, timeout=timeout)


def _birdc_error(r: subprocess.CompletedProcess) -> Optional[str]:
    """birdc exits 0 even when BIRD refuses; its replies carry numeric codes (8xxx, 9xxx
    are errors) and 'Unable to connect' when BIRD is not there."""
    text = (r.stdout or "") + (r.stderr or "")
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(("Unable to connect", "Cannot connect")) or s[:1] in ("8", "9") and s[:4].isdigit():
            return s
    if r.returncode != 0:
        return text.strip().splitlines()[-1] if text.strip() else f"birdc exited {r.returncode}"
    return None


def reconfigure(socket: str) -> Optional[str]:
    """``birdc configure``: None when BIRD took the configuration, else why not."""
    try:
        r = birdc(socket, "configure")
    except FileNotFoundError as e:
        return str(e)
    except subprocess.TimeoutExpired:
        return f"birdc configure timed out after {BIRDC_TIMEOUT:g}s"
    err = _birdc_error(r)
    if err is not None:
        return f"birdc configure: {err}"
    out = r.stdout or ""
    if "Reconfigured" in out or "Reconfiguration in progress" in out or "Reconfiguration already in progress" in out:
        return None
    return f"birdc configure: unexpected reply: {out.strip()}"


def parse_protocols(text: str) -> List[Dict[str, str]]:
    """``birdc show protocols`` as rows: name, proto, table, state, since, info."""
    rows: List[Dict[str, str]] = []
    header_seen = False
    for line in text.splitlines():
        if line.startswith("Name") and "Proto" in line:
            header_seen = True
            continue
        if not header_seen or not line.strip() or line.startswith(("BIRD ", "0001")):
            continue
        parts = line.split(None, 5)
        if len(parts) < 4:
            continue
        rows.append({
            "name": parts[0],
            "proto": parts[1],
            "table": parts[2],
            "state": parts[3],
            "since": parts[4] if len(parts) > 4 else "",
            "info": parts[5].strip() if len(parts) > 5 else "",
        })
    return rows


def bird_status(socket: str) -> Dict[str, Any]:
    """Whether BIRD answers on ``socket`` and its BGP sessions (``show protocols``)."""
    try:
        r = birdc(socket, "show", "protocols")
    except FileNotFoundError as e:
        return {"socket": socket, "running": False, "error": str(e)}
    except subprocess.TimeoutExpired:
        return {"socket": socket, "running": False, "error": "birdc timed out"}
    err = _birdc_error(r)
    if err is not None:
        return {"socket": socket, "running": False, "error": err}
    rows = parse_protocols(r.stdout or "")
    sessions = [
        {"name": p["name"], "state": p["state"], "info": p["info"], "since": p["since"]}
        for p in rows if p["proto"] == "BGP"
    ]
    return {"socket": socket, "running": True, "sessions": sessions,
            "established": sum(1 for s in sessions if s["info"].startswith("Established"))}


@dataclass
class BirdSync:
    """Keeps one BIRD configuration file current for one host (apply and the daemon)."""

    path: str
    socket: str = DEFAULT_SOCKET
    host: Optional[str] = None  # default: the state's local host
    _failed: bool = False  # the last reload failed: try again even without a change (daemon)

    def sync(self, desired, full=None) -> Dict[str, Any]:
        """Render, write when changed, reload BIRD when changed (or when the last reload of
        this object failed: the daemon retries). ``full``: the whole fleet state when
        ``desired`` is one host's part (its peers and the fleet's subnets come from there).
        Never raises for BIRD's sake: the report says what happened."""
        from . import bird
        from .errors import ReconcilerError

        report: Dict[str, Any] = {"config": self.path, "changed": False, "reloaded": False, "error": None}
        host = self.host or getattr(desired, "local_host", None)
        try:
            if not host:
                raise ReconcilerError("--bird-config needs the host's name (--host) in a fleet manifest")
            text = bird.render(full if full is not None else desired, host)
        except ReconcilerError as e:
            report["error"] = f"cannot render the BIRD configuration: {e}"
            return report
        try:
            report["changed"] = write_if_changed(self.path, text)
        except OSError as e:
            report["error"] = f"cannot write {self.path}: {e.strerror or e}"
            return report
        if report["changed"] or self._failed:
            err = reconfigure(self.socket)
            self._failed = err is not None
            report["reloaded"] = err is None
            report["error"] = err
        return report


def report_text(report: Dict[str, Any]) -> str:
    if report.get("error"):
        return f"BIRD: {report['error']} (containers are not affected; retried on the next run)\n"
    what = "updated" if report.get("changed") else "unchanged"
    tail = ", BIRD reloaded" if report.get("reloaded") else ""
    return f"BIRD: configuration {report['config']} {what}{tail}.\n"
