"""Prometheus metrics in the text exposition format (0.0.4), served by stdlib http.server.

No client library: a handful of counters, gauges and one histogram, rendered
on each scrape under a lock. ``--metrics-addr PORT`` binds loopback only;
give a host (``0.0.0.0:PORT``, ``[::]:PORT``) to expose it further.
"""
from __future__ import annotations

import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import UserError
from .classify import CLASSES
from .constants import KINDS, RESULTS

PREFIX = "ipvlan_reconciler_"
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt_value(v: float) -> str:
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


class Metrics:
    def __init__(self, buckets: Sequence[float] = BUCKETS):
        self.lock = threading.Lock()
        self.reconciles: Dict[str, int] = {r: 0 for r in RESULTS}
        self.errors: Dict[str, int] = {c: 0 for c in CLASSES}
        self.buckets = tuple(sorted(buckets))
        self.bucket_counts = [0] * len(self.buckets)
        self.duration_sum = 0.0
        self.duration_count = 0
        self.managed: Dict[str, int] = {k: 0 for k in KINDS}
        self.drift_repairs = 0
        self.pending = 0
        self.last_success: float = 0.0
        self.manifest_valid = 0

    # updates ------------------------------------------------------------------------------------
    def reconciled(self, result: str, seconds: float) -> None:
        with self.lock:
            self.reconciles[result] = self.reconciles.get(result, 0) + 1
            self.duration_sum += seconds
            self.duration_count += 1
            for i, b in enumerate(self.buckets):
                if seconds <= b:
                    self.bucket_counts[i] += 1

    def error(self, cls: str) -> None:
        with self.lock:
            self.errors[cls] = self.errors.get(cls, 0) + 1

    def set_managed(self, counts: Dict[str, int]) -> None:
        with self.lock:
            for k in set(self.managed) | set(counts):
                self.managed[k] = counts.get(k, 0)

    def set_pending(self, n: int) -> None:
        with self.lock:
            self.pending = n

    def drift_repaired(self) -> None:
        with self.lock:
            self.drift_repairs += 1

    def succeeded(self, unix_ts: float) -> None:
        with self.lock:
            self.last_success = unix_ts

    def set_manifest_valid(self, ok: bool) -> None:
        with self.lock:
            self.manifest_valid = 1 if ok else 0

    # rendering ----------------------------------------------------------------------------------
    def render(self) -> str:
        out: List[str] = []

        def head(name: str, typ: str, help_: str) -> None:
            out.append(f"# HELP {PREFIX}{name} {help_}")
            out.append(f"# TYPE {PREFIX}{name} {typ}")

        def sample(name: str, value: float, labels: Optional[List[Tuple[str, str]]] = None) -> None:
            lab = ""
            if labels:
                lab = "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"
            out.append(f"{PREFIX}{name}{lab} {fmt_value(value)}")

        with self.lock:
            head("reconciles_total", "counter", "Reconcile runs by result (converged, pending, failed, rejected, bug).")
            for r in sorted(self.reconciles):
                sample("reconciles_total", self.reconciles[r], [("result", r)])
            head("reconcile_duration_seconds", "histogram", "Duration of reconcile runs (observe, plan, apply, verify).")
            for b, n in zip(self.buckets, self.bucket_counts):
                sample("reconcile_duration_seconds_bucket", n, [("le", fmt_value(float(b)))])
            sample("reconcile_duration_seconds_bucket", self.duration_count, [("le", "+Inf")])
            sample("reconcile_duration_seconds_sum", float(self.duration_sum))
            sample("reconcile_duration_seconds_count", self.duration_count)
            head("errors_total", "counter", "Errors by class: permanent (operator must act), temporary (retried), bug.")
            for c in sorted(self.errors):
                sample("errors_total", self.errors[c], [("class", c)])
            head("managed_objects", "gauge", "Objects in the desired state being enforced, by kind.")
            for k in sorted(self.managed):
                sample("managed_objects", self.managed[k], [("kind", k)])
            head("drift_repairs_total", "counter", "Reconciles that changed the host without a manifest change.")
            sample("drift_repairs_total", self.drift_repairs)
            head("pending_objects", "gauge", "Objects waiting for the host (a missing parent link).")
            sample("pending_objects", self.pending)
            head("last_success_timestamp_seconds", "gauge", "Unix time of the last reconcile that converged (0: never).")
            sample("last_success_timestamp_seconds", float(self.last_success))
            head("manifest_valid", "gauge", "1 when the manifests loaded and validated at the last attempt.")
            sample("manifest_valid", self.manifest_valid)
        return "\n".join(out) + "\n"


def parse_addr(spec: str) -> Tuple[str, int]:
    """``PORT``, ``:PORT`` (both loopback), ``HOST:PORT``, ``[V6]:PORT``."""
    s = spec.strip()
    host = "127.0.0.1"
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1 :].startswith(":"):
            raise UserError(f"--metrics-addr {spec!r}: expected [ADDRESS]:PORT")
        host, port_s = s[1:end], s[end + 2 :]
    elif ":" in s:
        h, port_s = s.rsplit(":", 1)
        if h:
            host = h
    else:
        port_s = s
    try:
        port = int(port_s)
    except ValueError:
        raise UserError(f"--metrics-addr {spec!r}: bad port {port_s!r}")
    if not 0 <= port <= 65535:
        raise UserError(f"--metrics-addr {spec!r}: port out of range")
    return host, port


class _Handler(BaseHTTPRequestHandler):
    server_version = "ipvlan-reconciler"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.server.metrics.render().encode("utf-8")  # type: ignore[attr-defined]
            ctype = CONTENT_TYPE
            code = 200
        elif path == "/":
            body = b'ipvlan-reconciler: metrics at <a href="/metrics">/metrics</a>\n'
            ctype = "text/html; charset=utf-8"
            code = 200
        else:
            body = b"not found\n"
            ctype = "text/plain; charset=utf-8"
            code = 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # scrapes are not news
        pass


class MetricsServer:
    """http.server in a daemon thread; ``port`` 0 picks a free port (see ``.address``)."""

    def __init__(self, metrics: Metrics, host: str, port: int):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        try:
            self.httpd = Server(infos[0][4][:2], _Handler)
        except OSError as e:
            raise UserError(f"--metrics-addr {host}:{port}: cannot listen: {e.strerror}")
        self.httpd.metrics = metrics  # type: ignore[attr-defined]
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
