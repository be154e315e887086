"""`ipvlanctl watch DIR...`: the daemon.

Threads:
* main -- waits for signals (sigtimedwait; the signals are blocked in every
  thread, so no handler ever runs in the middle of anything) and pings the
  systemd watchdog while the reconcile thread is alive and not stuck;
* reconcile -- the only thread that loads manifests and changes the host: it
  takes batches of triggers from the :class:`TriggerQueue` and reconciles;
* watchers -- watchdog (manifest files), the netlink monitor (drift and
  /run/netns), the metrics HTTP server: they only enqueue (or read counters).

Any trigger -- a file edit, a link deleted by hand, a missing parent appearing,
the periodic resync -- converges everything. Between full reconciles (start,
SIGHUP, retries, the periodic resync) the plan is scoped to what changed
(``scope.ScopedPlanner``, docs/daemon.md). What it does not do every time
is dump every namespace: the netlink monitor watches each of ours, and a
namespace in which nothing that matters changed since its last dump (the same
namespace: netns cookie of the monitor's socket in it; monitored from before
that dump, no event since) is taken from the previous reconcile's snapshot.
All of that state lives in one object, ``memory.DaemonMemory`` (``self.memory``),
which asks the monitor before each run and hands the engine its answer as data.
The start, SIGHUP, a retry after a failure and the periodic resync observe
everything afresh, so a change the monitor cannot see (or missed) is found by
the next resync at the latest. Our own apply's netlink events cause one more
reconcile whose plan is empty (nothing written, so nothing more follows).

Error classes (``classify``): a manifest that does not load changes nothing
(the last valid desired state stays in force, drift repair included) and each
diagnostic is logged with file:line:col; permanent errors wait for an edit;
temporary errors and bugs are retried with capped exponential backoff. The
daemon never tears anything down on exit, on a broken manifest, or when a
manifest directory disappears or yields no manifest file (empty, only dangling
links: an error, SPEC 3); only a manifest that declares nothing (`version: 1`
alone) is a request to remove everything.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from typing import Callable, Dict, List, Optional

from ..errors import ReconcilerError, UserError
from ..render import action_line, daemon_status_line, failure_lines, plural
from . import logs
from .classify import BUG, PERMANENT, TEMPORARY, classify
from .fswatch import fingerprint
from .metrics import Metrics, MetricsServer, parse_addr
from .sdnotify import Notifier
from .settings import WatchSettings
from .statusfile import DaemonStatus, write_status
from .triggers import Backoff, Batch, TriggerQueue

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
DRIFT_SOURCES = ("netlink", "netns")
IDLE_SIGNAL_WAIT = 3600.0  # the main thread's wait without a systemd watchdog: signals wake it
# si_code of a signal someone sent: kill(), sigqueue(), tkill(), the kernel (e.g. a tty hangup)
_SENT = (0, -1, -6, 0x80)


def wait_signal(timeout: float) -> Optional[int]:
    """One of SIGNALS within ``timeout`` seconds, or None. CPython (3.11 at least) returns an
    unfilled siginfo -- garbage numbers -- when a stop/continue (SIGSTOP then SIGCONT, a
    debugger) interrupts sigtimedwait after its timeout passed; that was a crash (an invalid
    signal number) or a spurious SIGHUP. Such a wake-up consumed no signal: it is a timeout."""
    info = signal.sigtimedwait(SIGNALS, timeout)
    if info is None or info.si_signo not in SIGNALS or info.si_code not in _SENT:
        return None
    return info.si_signo
MAX_LOGGED_ACTIONS = 50


def _first_line(s: str) -> str:
    return (s.strip().splitlines() or [""])[0]


def managed_counts(desired) -> Dict[str, int]:
    return {
        "network": len(desired.networks),
        "vlan": len(desired.vlans),
        "container": len(desired.containers),
        "attachment": sum(len(c.attachments) for c in desired.containers.values()),
    }


class Daemon:
    def __init__(
        self,
        settings,  # a WatchSettings; or the manifest paths, with state_dir and options by name
        state_dir: Optional[str] = None,
        *,
        loader: Optional[Callable] = None,
        apply_fn: Optional[Callable] = None,
        kernel_factory: Optional[Callable] = None,
        notifier: Optional[Notifier] = None,
        clock: Callable[[], float] = time.monotonic,
        **options,
    ):
        from ..statedir import StateStore

        if not isinstance(settings, WatchSettings):
            settings = WatchSettings(paths=tuple(settings), state_dir=state_dir, **options)
        elif state_dir is not None or options:
            raise TypeError("Daemon(settings): the options are the settings' fields")
        self.settings = settings
        # (the settings' fields the daemon reads most, as attributes; tests change ``host``)
        self.paths = [os.path.abspath(p) for p in settings.paths]
        self.state_dir = settings.state_dir
        self.store = StateStore(settings.state_dir)
        self.status_file = settings.status_file
        self.resync_interval = settings.resync_interval
        self.lock_timeout = settings.lock_timeout
        self.metrics_addr = settings.metrics_addr
        self.netns_poll = settings.netns_poll
        self.clock = clock
        self.triggers = TriggerQueue(debounce=settings.debounce, clock=clock)
        self.backoff = Backoff(settings.backoff_base, settings.backoff_cap)
        self.notifier = notifier if notifier is not None else Notifier()
        self.metrics = Metrics()
        self.status = DaemonStatus(manifest_paths=list(self.paths), state_dir=settings.state_dir)
        self._loader = loader
        self.host = settings.host
        from ..manifest.incremental import IncrementalLoad
        from .memory import DaemonMemory

        # everything kept between reconciles (docs/daemon.md, "The daemon's memory"): the
        # entry-level manifest reload (an edit re-parses only the lines and checks only the
        # entries it changed), observations, compile memo, scoped planner; 0 in
        # IPVLAN_RECONCILER_SCOPE / _SCOPED_VERIFY / _SCOPED_OBSERVE: every plan / verify /
        # first observation in full (to compare)
        self.memory = DaemonMemory(scoped=os.environ.get("IPVLAN_RECONCILER_SCOPE", "1") != "0",
                                   scoped_verify=os.environ.get("IPVLAN_RECONCILER_SCOPED_VERIFY", "1") != "0",
                                   scoped_observe=os.environ.get("IPVLAN_RECONCILER_SCOPED_OBSERVE", "1") != "0",
                                   loader=IncrementalLoad())
        self._apply = apply_fn
        self._kernel_factory = kernel_factory
        # desired state in force
        self.desired = None
        self.generation = 0  # bumped on every successful load that changed the manifests
        self.digest: Optional[str] = None  # of the last load attempt (valid or not)
        self.converged_generation = -1  # generation of the last converged reconcile
        self.retry_at: Optional[float] = None
        self.last_error: Optional[str] = None  # to log a repeated permanent error only once
        self.last_missing: List[str] = []
        self.last_writing: List[str] = []
        self.ready_sent = False
        self.busy_since: Optional[float] = None  # clock() when the reconcile thread took its batch
        self.loop_ended = False  # the reconcile thread ended while the queue was open (a bug)
        self.watcher = None
        self.monitor = None
        self.monitor_kernel = None
        self.metrics_server: Optional[MetricsServer] = None
        self.thread: Optional[threading.Thread] = None
        self._status_warned = False
        self._last_status_line = ""
        self.bird_sync = None  # --bird-config: a birdctl.BirdSync, run after every reconcile
        self._bird_full = None  # (desired state in force, the whole fleet it was narrowed from)

    @property
    def parse_cache(self):
        """The manifest loader's memory (the fingerprint primes it), kept in ``self.memory``."""
        return self.memory.loader

    @parse_cache.setter
    def parse_cache(self, loader) -> None:
        self.memory.loader = loader

    # pluggable parts (tests replace them) --------------------------------------------------
    def load(self, paths):
        from ..fleet import narrow  # a fleet manifest: this host's part (unknown host: invalid)

        if self._loader is not None:
            return narrow(self._loader(paths), self.host)
        return narrow(self.memory.load(paths), self.host)

    def apply(self, desired):
        from .. import engine

        kernel = self._kernel_factory() if self._kernel_factory else self._new_kernel()
        try:
            fn = self._apply or engine.apply
            memory = self.memory.for_run()  # the netlink monitor asked now, before the run
            extra = {"memory": memory} if memory is not None else {}
            return fn(desired, self.store, kernel, rollback=True, lock_timeout=self.lock_timeout, **extra)
        finally:
            if kernel is not None:  # None: a test's kernel_factory
                kernel.close()

    @staticmethod
    def _new_kernel():
        # a fresh Kernel per reconcile, like `ipvlanctl apply`: no namespace socket
        # outlives the run (an open socket would keep a deleted namespace alive)
        from ..kernel.host import Kernel

        return Kernel()

    # manifests -----------------------------------------------------------------------------
    def reload(self, force: bool = False) -> bool:
        """Re-read every manifest. True when a new desired state is now in force."""
        writing = self.watcher.writing() if self.watcher is not None else []
        if writing:
            # a manifest is being written in place: its content may be half there (and
            # still valid YAML); its close event triggers the read
            if writing != self.last_writing:
                logs.info("waiting for manifests being written to be closed", files=writing)
            self.last_writing = writing
            self.triggers.schedule("settle", self.clock() + self.watcher.write_timeout)
            return False
        if self.last_writing:
            self.last_writing = []
            self.triggers.cancel("settle")
        digest, files, missing = fingerprint(self.paths, self.parse_cache)
        if self.watcher is not None:
            # (re)place watches first: anything that changed before a watch was in place is in
            # this read already; a change racing with it will show in the next event
            self.watcher.refresh()
        self.status.manifest_missing = list(missing)
        if missing:
            if missing != self.last_missing:
                logs.error(
                    "manifest path missing: keeping the last desired state (nothing is torn "
                    "down); waiting for it to come back",
                    paths=missing,
                )
                self.status.record_error(PERMANENT, f"manifest path missing: {', '.join(missing)}")
                self.metrics.error(PERMANENT)
            self.last_missing = list(missing)
            self.parse_cache.drop_primed()
            return False
        if self.last_missing:
            logs.info("manifest paths are back", paths=self.last_missing)
            self.last_missing = []
        if digest == self.digest and not force:
            self.parse_cache.drop_primed()  # not loaded: hold no copy of the files
            return False
        try:
            if not files:
                # nothing to load (an empty directory, only dangling links, a mount not
                # there yet) is an error, never "the desired state is empty" (SPEC 3):
                # keep the last valid desired state; a manifest with `version: 1` alone
                # empties the host on purpose
                from ..manifest import no_manifest_error

                raise no_manifest_error(self.paths)
            desired = self.load(self.paths)
        except UserError as e:  # ManifestError and friends: permanent until an edit
            self.digest = digest
            self.manifest_invalid(e)
            return False
        except OSError as e:  # a file vanished between listing and reading (mid-swap)
            logs.warning("manifests changed while being read; reading again", error=str(e))
            self.triggers.put("file", "re-read after a read error")
            return False
        # (any other exception is a bug: the digest stays, so the retry loads again)
        self.digest = digest
        previous = self.desired
        self.desired = desired
        self.status.manifest_valid = True
        self.status.manifest_errors = []
        self.status.manifest_loaded = time.time()
        self.metrics.set_manifest_valid(True)
        self.metrics.set_managed(managed_counts(desired))
        self.status.managed = managed_counts(desired)
        if self.last_error and self.last_error.startswith("manifest:"):
            self.last_error = None
        if previous is not None and previous == desired:
            logs.info("manifests reloaded: no change to the desired state")
            return False
        self.generation += 1
        for w in getattr(desired, "warnings", ()):
            logs.warning(str(w))
        logs.info(
            "manifests loaded" if not files else f"manifests loaded from {plural(len(files), 'file')}",
            networks=len(desired.networks),
            vlans=len(desired.vlans),
            containers=len(desired.containers),
            **({"load": self.parse_cache.last_mode} if self.parse_cache.last_mode else {}),
            **({"note": "the manifests declare nothing: everything the reconciler owns will be removed"}
               if not (desired.networks or desired.vlans or desired.containers) else {}),
        )
        return True

    def manifest_invalid(self, e: UserError) -> None:
        diags = getattr(e, "diagnostics", None)
        kept = "keeping the last valid desired state" if self.desired is not None else "nothing applied yet"
        rendered = [d.render() for d in diags] if diags else [str(e)]
        self.status.manifest_valid = False
        self.status.manifest_errors = [_first_line(r) for r in rendered]
        self.metrics.set_manifest_valid(False)
        self.metrics.error(PERMANENT)
        summary = f"{len(rendered)} error{'s' if len(rendered) != 1 else ''} in manifests"
        self.status.record_error(PERMANENT, f"{summary}: {self.status.manifest_errors[0]}")
        logs.error(f"manifests rejected ({summary}); {kept}; fix them to converge")
        if diags:
            for d in diags:
                loc = d.loc
                logs.error(
                    _first_line(d.render()),  # sanitised: a file name cannot forge log lines
                    file=loc.file,
                    line=loc.line,
                    col=loc.col,
                    **({"source": d.source_line.rstrip(chr(10))} if d.source_line else {}),
                )
        else:
            logs.error(str(e))
        self.last_error = "manifest:" + "|".join(rendered)

    # the reconcile thread --------------------------------------------------------------------
    def loop(self) -> None:
        while True:
            # no timeout: an idle daemon's threads sleep until something happens (the main
            # thread tells a stuck reconcile by busy_since, not by a heartbeat every second)
            batch = self.triggers.get()
            if batch is None:
                if self.triggers.closed:
                    return
                continue
            self.busy_since = self.clock()
            try:
                self.handle(batch)
            except Exception as e:  # a bug in the daemon itself: log it, keep running
                logs.error("internal error (a bug, please report); continuing", exc_info=True, error=str(e))
                self.metrics.error(BUG)
                self.status.record_error(BUG, f"internal error: {e}")
                self.schedule_retry()
            finally:
                self.busy_since = None
            if not self.ready_sent:
                self.ready_sent = True
                self.notifier.ready(self.status_line())

    def handle(self, batch: Batch) -> None:
        hup = batch.has("hup")
        start = batch.has("start")
        files = batch.has("file", "etcd")  # etcd: watch --etcd (clusterwatch.py)
        resync = "resync" in batch.timers
        settle = "settle" in batch.timers
        retry = "retry" in batch.timers
        now = self.clock()
        logs.debug("triggered", by=batch.describe(), details=batch.details[:5])
        if hup:
            logs.info("SIGHUP: reloading manifests and reconciling now")
            self.backoff.reset()
            self.retry_at = None
            self.triggers.cancel("retry")
            self.last_error = None
            self.parse_cache.reset()  # the full manifest check judges again (and makes a new base)
        if self.retry_at is not None and now < self.retry_at and not (hup or start or files):
            logs.debug("in backoff: the scheduled retry will cover this", retry_in=round(self.retry_at - now, 3))
            return
        changed = False
        if hup or start or files or resync or retry or settle:
            changed = self.reload(force=hup or start)
        if self.desired is None:
            self.publish()
            return
        drift = batch.has(*DRIFT_SOURCES) or resync
        needed = changed or drift or hup or start or retry or self.status.last_result not in ("converged", "pending")
        if not needed:
            self.publish()
            return
        self.reconcile(batch, changed)

    def reconcile(self, batch: Batch, changed: bool) -> None:
        desired = self.desired
        generation = self.generation
        started = time.time()
        t0 = self.clock()
        trigger = batch.describe()
        self.status.last_trigger = trigger
        if batch.has("start", "hup") or "resync" in batch.timers or "retry" in batch.timers:
            self.memory.forget()  # observe every namespace afresh and plan everything (docs/daemon.md)
        try:
            out = self.apply(desired)
        except Exception as e:
            self.reconcile_failed(e, self.clock() - t0, trigger)
            return
        finally:
            self.after_reconcile()
        seconds = self.clock() - t0
        self.status.last_netlink_writes = out.netlink_writes
        actions = list(out.plan.actions)
        self.status.last_actions = [action_line(a) for a in actions] if actions else self.status.last_actions
        pending = [str(p) for p in out.plan.pending]
        if out.converged:
            result = "pending" if pending else "converged"
            self.backoff.reset()
            self.retry_at = None
            self.triggers.cancel("retry")
            self.status.next_retry = 0.0
            if actions:
                drift = generation == self.converged_generation
                what = "repaired drift" if drift else "applied manifest changes"
                if drift:
                    self.metrics.drift_repaired()
                    self.status.drift_repairs += 1
                add, change, destroy = out.plan.counts()
                logs.info(
                    f"reconciled: {what}",
                    trigger=trigger,
                    added=add,
                    changed=change,
                    destroyed=destroy,
                    seconds=round(seconds, 3),
                    netlink_writes=out.netlink_writes,
                    **self.timing(out),
                )
                for a in actions[:MAX_LOGGED_ACTIONS]:
                    logs.info(f"  {action_line(a)}", op=a.op.value, kind=a.kind.label)
                if len(actions) > MAX_LOGGED_ACTIONS:
                    logs.info(f"  ... and {len(actions) - MAX_LOGGED_ACTIONS} more")
            else:
                logs.debug("reconciled: no changes", trigger=trigger, seconds=round(seconds, 3), **self.timing(out))
            if pending and pending != self.status.pending:
                for p in pending:
                    logs.warning(f"pending: {p}")
            elif not pending and self.status.pending:
                logs.info("nothing pending any more")
            self.converged_generation = generation
            self.last_error = None
            self.status.last_success = time.time()
            self.metrics.succeeded(self.status.last_success)
        else:
            result = "failed"
            lines = failure_lines(out)
            message = "; ".join(lines) or "apply did not converge"
            delay = self.schedule_retry()
            logs.error("reconcile failed; retrying", retry_in=delay, trigger=trigger)
            for line in lines:
                logs.error(f"  {line}")
            self.metrics.error(TEMPORARY)
            self.status.record_error(TEMPORARY, message)
        self.status.pending = pending
        self.metrics.set_pending(len(pending))
        self.sync_bird(desired)
        self.finish(result, started, seconds, out.exit_code)

    def sync_bird(self, desired) -> None:
        """--bird-config: keep BIRD's file current for the desired state in force; a BIRD
        problem is logged and shown in the status, never a reconcile failure."""
        if self.bird_sync is None or desired is None:
            return
        try:
            full = desired
            if getattr(desired, "local_host", None) is not None:  # one host's part: BIRD needs the fleet
                if self._bird_full is None or self._bird_full[0] is not desired:
                    if self._loader is not None:
                        loaded = self._loader(self.paths)
                    else:
                        loaded = self.memory.load(self.paths)  # unchanged files: not parsed again
                    self._bird_full = (desired, loaded)
                full = self._bird_full[1]
            report = self.bird_sync.sync(desired, full)
        except Exception as e:  # never let BIRD take the container work down
            report = {"config": self.bird_sync.path, "changed": False, "reloaded": False, "error": f"internal error: {e}"}
        previous = self.status.bird or {}
        if report["error"] and report["error"] != previous.get("error"):
            logs.warning(f"BIRD: {report['error']}", config=report["config"])
        elif report["changed"] or (not report["error"] and previous.get("error")):
            logs.info("BIRD configuration updated" if report["changed"] else "BIRD reloaded",
                      config=report["config"], reloaded=report["reloaded"])
        self.status.bird = report

    def timing(self, out) -> Dict[str, object]:
        """Where a reconcile's time went, and how much of the host it dumped (for the log)."""
        extra: Dict[str, object] = {}
        if out.phases:
            extra["phases"] = " ".join(f"{k}={v:.3f}" for k, v in out.phases.items())
        extra.update(self.memory.stats(out))
        return extra

    def reconcile_failed(self, e: BaseException, seconds: float, trigger: str) -> None:
        self.sync_bird(self.desired)
        cls = classify(e)
        message = str(e) or type(e).__name__
        self.metrics.error(cls)
        self.status.record_error(cls, message)
        if cls == PERMANENT:
            result = "rejected"
            if message != self.last_error:
                logs.error("reconcile refused; fix the manifests or the host, then it converges", trigger=trigger)
                for line in message.splitlines():
                    logs.error(f"  {line}")
            else:
                logs.debug("reconcile still refused", error=_first_line(message))
            self.last_error = message
            self.retry_at = None
            self.status.next_retry = 0.0
        elif cls == TEMPORARY:
            result = "failed"
            delay = self.schedule_retry()
            logs.warning(
                f"reconcile failed (temporary): {message}", retry_in=delay, error_class=cls, trigger=trigger
            )
        else:
            result = "bug"
            delay = self.schedule_retry()
            logs.log(
                logging.ERROR,
                f"reconcile failed: internal error (a bug, please report): {message}",
                exc_info=True,
                retry_in=delay,
                error_class=cls,
            )
        self.finish(result, time.time() - seconds, seconds, e.exit_code if isinstance(e, ReconcilerError) else 1)

    def schedule_retry(self) -> float:
        delay = self.backoff.next_delay()
        self.retry_at = self.clock() + delay
        self.triggers.schedule("retry", self.retry_at)
        self.status.next_retry = time.time() + delay
        return delay

    def after_reconcile(self) -> None:
        """Periodic resync from now on; monitor our namespaces as they are now."""
        if self.resync_interval > 0:
            self.triggers.schedule("resync", self.clock() + self.resync_interval)
        if self.monitor is not None and self.desired is not None:
            self.monitor.set_namespaces(self.desired.containers.keys())

    def finish(self, result: str, started: float, seconds: float, exit_code: Optional[int]) -> None:
        self.metrics.reconciled(result, seconds)
        self.status.reconciles[result] = self.status.reconciles.get(result, 0) + 1
        self.status.last_result = result
        self.status.last_reconcile = time.time()
        self.status.last_duration = seconds
        self.status.last_exit_code = exit_code
        self.publish()

    def publish(self) -> None:
        """Status file, and systemd's STATUS= line when it changed."""
        self.write_status()
        line = self.status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.status(line)

    # reporting -------------------------------------------------------------------------------
    def status_line(self) -> str:
        return daemon_status_line(self.status, self.desired)

    def write_status(self) -> None:
        if not self.status_file:
            return
        try:
            write_status(self.status_file, self.status.to_json())
        except OSError as e:
            if not self._status_warned:
                logs.warning("cannot write the status file", path=self.status_file, error=e.strerror or str(e))
                self._status_warned = True

    # lifecycle -------------------------------------------------------------------------------
    def start_watchers(self) -> None:
        self.start_metrics()
        self.start_source()
        self.start_monitor()

    def start_metrics(self) -> None:
        if self.metrics_addr:
            host, port = parse_addr(self.metrics_addr)
            self.metrics_server = MetricsServer(self.metrics, host, port)
            self.metrics_server.start()
            logs.info("metrics listening", address=f"{self.metrics_server.address[0]}:{self.metrics_server.address[1]}")

    def start_source(self) -> None:
        """What tells the daemon the desired state changed: here the manifest files' watcher
        (cluster mode replaces it with its etcd watch)."""
        from .fswatch import ManifestWatcher

        self.watcher = ManifestWatcher(self.paths, lambda detail: self.triggers.put("file", detail))
        self.watcher.start()

    def start_monitor(self) -> None:
        """The netlink monitor, which vouches for the namespace dumps the memory keeps."""
        from ..kernel.host import Kernel
        from .nlmonitor import NetlinkMonitor

        self.monitor_kernel = Kernel()
        self.monitor = NetlinkMonitor(
            self.monitor_kernel, lambda src, detail: self.triggers.put(src, detail), netns_poll=self.netns_poll
        )
        self.monitor.start()
        self.memory.attach(self.monitor)

    def stop_watchers(self) -> None:
        for name, fn in (
            ("manifest watcher", lambda: self.watcher and self.watcher.stop()),
            ("netlink monitor", lambda: self.monitor and self.monitor.stop()),
            ("kernel", lambda: self.monitor_kernel and self.monitor_kernel.close()),
            ("metrics server", lambda: self.metrics_server and self.metrics_server.stop()),
        ):
            try:
                fn()
            except Exception as e:
                logs.warning(f"stopping the {name} failed", error=str(e))

    def reconcile_stuck(self, wd: float) -> bool:
        """The reconcile thread has been on one batch longer than a reconcile may take (a
        stuck netlink call or lock); waiting for the next batch is not being stuck."""
        busy = self.busy_since
        return busy is not None and self.clock() - busy >= 2 * wd + self.lock_timeout

    def _reconcile_thread(self) -> None:
        try:
            self.loop()
        finally:
            if not self.triggers.closed:  # ended by a bug: wake the main thread to exit
                self.loop_ended = True
                signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # before any thread starts
        logs.info(
            "starting",
            paths=self.paths,
            state_dir=self.state_dir,
            status_file=self.status_file,
            debounce=self.triggers.debounce,
            resync_interval=self.resync_interval,
        )
        try:
            self.start_watchers()
        except BaseException:
            self.stop_watchers()
            raise
        self.status.phase = "running"
        self.triggers.put("start", "daemon started", immediate=True)
        self.thread = threading.Thread(target=self._reconcile_thread, name="reconcile", daemon=True)
        self.thread.start()
        wd = self.notifier.watchdog_interval
        next_ping = self.clock()
        code = 0
        try:
            while True:
                # no watchdog: sleep until a signal (a reconcile thread that ends sends one);
                # it used to wake once a second to look
                timeout = IDLE_SIGNAL_WAIT if wd is None else max(0.05, next_ping - self.clock())
                signo = wait_signal(timeout)
                if self.loop_ended or not self.thread.is_alive():
                    logs.error("the reconcile thread ended unexpectedly; exiting")
                    code = 1
                    break
                if signo is not None:
                    if signo == signal.SIGHUP:
                        self.triggers.put("hup", "SIGHUP", immediate=True)
                    else:
                        logs.info(f"{signal.Signals(signo).name}: stopping; the network stays as it is")
                        break
                if wd is not None and self.clock() >= next_ping:
                    # ping only while the reconcile thread makes progress (a stuck
                    # netlink call or lock stops the pings and systemd restarts us)
                    if not self.reconcile_stuck(wd):
                        self.notifier.watchdog()
                    next_ping = self.clock() + wd
        finally:
            self.status.phase = "stopping"
            self.notifier.stopping("stopping; the network stays as it is")
            self.triggers.close()
            if self.thread.is_alive():
                self.thread.join()
            self.stop_watchers()
            self.status.phase = "stopped"
            self.write_status()
            logs.info("stopped")
        return code


def run_watch(args: argparse.Namespace) -> int:
    settings = WatchSettings.from_args(args)
    logs.setup(settings.log_format, settings.log_level)
    if os.geteuid() != 0:
        raise UserError("watch changes network namespaces and needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    settings.check()
    if settings.etcd:
        from .clusterwatch import build

        return build(settings).run()
    daemon = Daemon(settings)
    if settings.bird_config:
        from ..birdctl import DEFAULT_SOCKET, BirdSync

        # the host: --host when the CLI has it, else the state's local host at each sync
        daemon.bird_sync = BirdSync(settings.bird_config, settings.bird_socket or DEFAULT_SOCKET,
                                    host=settings.host)
    return daemon.run()
