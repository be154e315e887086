"""Prometheus metrics, kept and served by prometheus-client.

Each :class:`Metrics` has its own registry (not the library's global one: tests build
several daemons in one process), with the reconciler's metrics (docs/daemon.md) plus the
library's standard process, platform and GC collectors. :class:`MetricsServer` serves it
with the library's WSGI app on a threading wsgiref server in a daemon thread:
``GET /metrics`` (the text format 0.0.4, or OpenMetrics when a scraper asks for it),
``GET /`` a pointer to it, anything else 404. ``--metrics-addr PORT`` binds loopback
only; give a host (``0.0.0.0:PORT``, ``[::]:PORT``) to expose it further.
"""
from __future__ import annotations

import socket
import threading
from typing import Dict, Optional, Sequence, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from ..errors import UserError
from .classify import CLASSES
from .constants import KINDS, RESULTS

# no <name>_created series beside every counter and histogram: nothing here reads them
# (the library's switch is process-wide; the daemon is the only user in its process)
disable_created_metrics()

NAMESPACE = "ipvlan_reconciler"
PREFIX = NAMESPACE + "_"
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The daemon's metrics; the update methods are called by the reconcile loop."""

    def __init__(self, buckets: Sequence[float] = BUCKETS):
        self.registry = r = CollectorRegistry()
        ns = NAMESPACE
        self._reconciles = Counter("reconciles", "Reconcile runs by result (converged, pending, failed, rejected, bug).",
                                   ["result"], namespace=ns, registry=r)
        self._duration = Histogram("reconcile_duration_seconds", "Duration of reconcile runs (observe, plan, apply, verify).",
                                   namespace=ns, registry=r, buckets=tuple(sorted(buckets)))
        self._errors = Counter("errors", "Errors by class: permanent (operator must act), temporary (retried), bug.",
                               ["class"], namespace=ns, registry=r)
        self._managed = Gauge("managed_objects", "Objects in the desired state being enforced, by kind.",
                              ["kind"], namespace=ns, registry=r)
        self._drift = Counter("drift_repairs", "Reconciles that changed the host without a manifest change.",
                              namespace=ns, registry=r)
        self._pending = Gauge("pending_objects", "Objects waiting for the host (a missing parent link).",
                              namespace=ns, registry=r)
        self._last_success = Gauge("last_success_timestamp_seconds",
                                   "Unix time of the last reconcile that converged (0: never).", namespace=ns, registry=r)
        self._manifest_valid = Gauge("manifest_valid", "1 when the manifests loaded and validated at the last attempt.",
                                     namespace=ns, registry=r)
        # every label value from the start: a result or class that never happened reads 0, not absent
        for res in RESULTS:
            self._reconciles.labels(res)
        for cls in CLASSES:
            self._errors.labels(cls)
        for kind in KINDS:
            self._managed.labels(kind)
        self._kinds = set(KINDS)
        self._lock = threading.Lock()  # set_managed: one consistent set of gauges
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    # updates ------------------------------------------------------------------------------------
    def reconciled(self, result: str, seconds: float) -> None:
        self._reconciles.labels(result).inc()
        self._duration.observe(seconds)

    def error(self, cls: str) -> None:
        self._errors.labels(cls).inc()

    def set_managed(self, counts: Dict[str, int]) -> None:
        with self._lock:
            self._kinds |= set(counts)
            for k in self._kinds:
                self._managed.labels(k).set(counts.get(k, 0))

    def set_pending(self, n: int) -> None:
        self._pending.set(n)

    def drift_repaired(self) -> None:
        self._drift.inc()

    def succeeded(self, unix_ts: float) -> None:
        self._last_success.set(unix_ts)

    def set_manifest_valid(self, ok: bool) -> None:
        self._manifest_valid.set(1 if ok else 0)

    # reading ------------------------------------------------------------------------------------
    def value(self, name: str, labels: Optional[Dict[str, str]] = None) -> Optional[float]:
        """One sample's current value, by its name without the prefix (``drift_repairs_total``)."""
        return self.registry.get_sample_value(PREFIX + name, labels or {})

    def render(self) -> str:
        """The text exposition format (what ``GET /metrics`` answers a plain scraper)."""
        return generate_latest(self.registry).decode("utf-8")


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


INDEX = b'ipvlan-reconciler: metrics at <a href="/metrics">/metrics</a>\n'


def _routes(metrics_app):
    """/metrics -> the library's app; / -> a pointer to it; anything else 404."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [INDEX]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    server_version = "ipvlan-reconciler"

    def log_message(self, format: str, *args) -> None:  # scrapes are not news
        pass


class MetricsServer:
    """The metrics app on a threading wsgiref server in a daemon thread; ``port`` 0 picks a
    free port (see ``.address``)."""

    def __init__(self, metrics: Metrics, host: str, port: int):
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

            class Server(ThreadingWSGIServer):
                address_family = family
                allow_reuse_address = True

            self.httpd = make_server(host, port, _routes(make_wsgi_app(metrics.registry)), Server, _QuietHandler)
        except OSError as e:
            raise UserError(f"--metrics-addr {host}:{port}: cannot listen: {e.strerror or e}")
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
