"""`ipvlanctl watch --etcd URL --host NAME`: the file-mode daemon with its desired state taken
from etcd (SPEC 6) instead of the manifest directories.

The seam is :meth:`ClusterDaemon.reload`: it asks a :class:`reconciler.cluster.source.ClusterSource`
for this host's desired state instead of loading files. Everything after it -- plan, apply,
verify, the netlink monitor and drift repair, backoff, the status file, metrics, sd_notify -- is
:class:`reconciler.daemon.watch.Daemon`'s, unchanged. Added around it:

* a thread following the revision pointer with an etcd watch (resuming after the last store
  revision it saw when the connection drops; after the watch was compacted away, a full
  re-read), and refreshing the status lease; both only enqueue triggers ("etcd");
* after a converge: this host's stale address keys are released (leak reconciliation: on
  start, on every revision and on every periodic resync), and the status (converged
  revision, pending objects, last error) is written under the lease;
* etcd unreachable: everything in force stays (the cached revision), new containers get
  addresses from the host's own blocks only (journalled), the status file and the log say so;
* fenced by `cluster forget-host`: nothing is applied, announced or changed any more.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

from ..errors import UserError
from . import logs
from .classify import PERMANENT, TEMPORARY
from .settings import SETTING_NAMES, WatchSettings
from .statusfile import DaemonStatus
from .watch import Daemon, managed_counts


@dataclass
class ClusterStatus(DaemonStatus):
    cluster: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        out = super().to_json()
        out["cluster"] = dict(self.cluster)
        return out


class ClusterDaemon(Daemon):
    def __init__(self, source, settings, etcd_url: str = "", lease_interval: Optional[float] = None, **kw):
        """``settings``: a WatchSettings, or the state directory with the options by name."""
        if not isinstance(settings, WatchSettings):
            settings = WatchSettings(paths=(), state_dir=settings,
                                     **{k: kw.pop(k) for k in list(kw) if k in SETTING_NAMES})
        super().__init__(replace(settings, paths=(), host=source.host), **kw)
        state_dir = settings.state_dir
        self.source = source
        self.status = ClusterStatus(manifest_paths=[], state_dir=state_dir)
        self.status.cluster = {"etcd": etcd_url, "prefix": source.keys.prefix, "host": source.host,
                               "revision": None, "converged_revision": None, "etcd_reachable": None,
                               "offline": None, "fenced": None, "waiting": [], "conflicts": [],
                               "journalled": 0, "released": []}
        self.revision: Optional[int] = None  # of the desired state in force
        self.converged_revision: Optional[int] = None
        self.stale = ()
        self.stale_generation = -1
        self.waiting = ()
        self.fenced: Optional[str] = None
        self.lease_interval = lease_interval or max(1.0, source.agent.lease_ttl / 3)
        self._stop = threading.Event()
        self._threads = []
        self._probe_wake = threading.Event()
        self.probe_interval = 1.0

    # the seam: the desired state comes from etcd ---------------------------------------------
    def reload(self, force: bool = False) -> bool:
        from ..cluster.alloc import HostForgotten, HostRejoined, HostTaken
        from ..cluster.store import EtcdUnavailable

        if self.fenced:
            return False
        c = self.status.cluster
        try:
            try:
                loaded = self.source.load()
            except HostRejoined as e:  # forgotten and rejoined while cut off: start from nothing
                self.start_again(str(e))
                loaded = self.source.load()
        except HostForgotten as e:
            self.fence(str(e))
            return False
        except EtcdUnavailable as e:  # and no revision cached: nothing known, nothing applied
            self.note_offline(str(e))
            self.schedule_retry()
            return False
        except (HostTaken, UserError) as e:  # an invalid revision (or name): keep the last good one
            kept = f"keeping revision {self.revision}" if self.revision is not None else "nothing applied yet"
            logs.error(f"etcd revision rejected; {kept}")
            self.manifest_invalid(e)
            c["revision_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.report()
            return False
        self.note_offline(loaded.offline)
        c.update(revision_error=None, waiting=list(loaded.waiting), conflicts=list(loaded.conflicts),
                 journalled=loaded.journalled)
        for conflict in loaded.conflicts:
            self.status.record_error(PERMANENT, conflict)
        if loaded.waiting != self.waiting:
            for w in loaded.waiting:
                logs.warning(f"pending: {w}")
        self.waiting = loaded.waiting
        if self.last_error and self.last_error.startswith("manifest:"):
            self.last_error = None
        previous, previous_rev = self.desired, self.revision
        self.desired, self.revision = loaded.state, loaded.revision
        self._bird_full = (loaded.state, loaded.fleet or loaded.state)  # --bird-config: the whole revision
        self.stale = loaded.stale
        c["revision"] = loaded.revision
        self.status.manifest_valid = True
        self.status.manifest_errors = []
        self.status.manifest_loaded = time.time()
        self.metrics.set_manifest_valid(True)
        self.metrics.set_managed(managed_counts(loaded.state))
        self.status.managed = managed_counts(loaded.state)
        if previous is not None and previous == loaded.state:
            if self.converged_generation == self.generation:
                self.converged_revision = loaded.revision
                self.stale_generation = self.generation
                self.release_stale()  # the kernel already has the state without them
            if previous_rev != loaded.revision:
                logs.info("etcd revision loaded: no change for this host", revision=loaded.revision)
            self.status.cluster["converged_revision"] = self.converged_revision
            self.report()  # e.g. after the heal: nothing to apply, the status is news
            return False
        self.generation += 1
        self.stale_generation = self.generation
        d = loaded.state
        logs.info("etcd revision loaded", revision=loaded.revision, networks=len(d.networks),
                  containers=len(d.containers), waiting=len(loaded.waiting),
                  **({"offline": "etcd unreachable: using the last revision read"} if loaded.offline else {}))
        return True

    def handle(self, batch) -> None:
        if self.fenced and not self.try_rejoin():  # forget-host fenced this host: it changes nothing
            self.publish()
            return
        super().handle(batch)

    def reconcile(self, batch, changed: bool) -> None:
        # the file daemon compares the plan's pending with the last one; containers waiting for
        # an address are added in finish() and announced by reload(): not "nothing pending any more"
        self.status.pending = [p for p in self.status.pending if p not in self.waiting]
        super().reconcile(batch, changed)

    def finish(self, result: str, started: float, seconds: float, exit_code: Optional[int]) -> None:
        if result in ("converged", "pending") and self.converged_generation == self.generation:
            self.converged_revision = self.revision
            if self.stale_generation == self.generation:
                self.release_stale()
        if self.waiting and result == "converged":
            result = "pending"
        if result in ("converged", "pending"):
            self.status.pending = list(self.status.pending) + [w for w in self.waiting if w not in self.status.pending]
        self.status.cluster["converged_revision"] = self.converged_revision
        super().finish(result, started, seconds, exit_code)
        self.report()

    def release_stale(self) -> None:
        from ..cluster.store import EtcdUnavailable

        if not self.stale or self.source.offline:
            return
        try:
            done = self.source.release(self.stale)
        except EtcdUnavailable as e:
            self.went_offline(str(e))
            return
        self.stale = ()
        if done:
            logs.info("released this host's address keys no converged container uses", addresses=done)
            self.status.cluster["released"] = (list(self.status.cluster.get("released") or []) + done)[-20:]

    def report(self) -> None:
        """Status under the host's lease (+ last-seen); never while fenced or offline."""
        from ..cluster.alloc import HostForgotten
        from ..cluster.store import EtcdUnavailable

        if self.fenced or self.source.offline or not self.source.bound:
            return
        errors = self.status.last_errors
        last = None
        if self.status.last_result not in ("converged", "pending") and errors:
            last = errors[-1]["message"]
        if self.status.cluster.get("revision_error"):
            last = f"revision rejected: {self.status.cluster['revision_error']}"
        if self.status.cluster.get("conflicts"):
            last = self.status.cluster["conflicts"][0]
        try:
            self.source.report(self.converged_revision, list(self.status.pending), last)
        except HostForgotten as e:
            self.fence(str(e))
        except EtcdUnavailable as e:
            self.went_offline(str(e))
        except UserError as e:
            logs.warning("status not written to etcd", error=str(e))

    def note_offline(self, why: Optional[str]) -> None:
        c = self.status.cluster
        if why and not c.get("offline"):
            logs.warning("etcd unreachable: keeping everything in force (nothing is torn down); new "
                         "containers get addresses only from blocks this host holds (journalled), no "
                         "block is claimed until etcd is back", error=why.splitlines()[0])
            self.status.record_error(TEMPORARY, f"etcd unreachable: {why.splitlines()[0]}")
        elif not why and c.get("offline"):
            logs.info("etcd reachable again")
        c["offline"] = why.splitlines()[0] if why else None
        c["etcd_reachable"] = not why

    def went_offline(self, why: str) -> None:
        """An etcd call of the reconcile path found no member: the next reloads use the cached
        revision without waiting on etcd (when the probe thread runs), until the probe reads."""
        self.source.mark_offline(why)
        self.note_offline(why)
        self._probe_wake.set()

    def fence(self, why: str) -> None:
        if not self.fenced:
            logs.error(f"{why}; this daemon applies, announces and changes nothing any more")
            self.status.record_error(PERMANENT, why)
        self.fenced = why
        self.status.cluster["fenced"] = why

    def try_rejoin(self) -> bool:
        """Fenced: has `cluster rejoin` bound this host to this machine again? Then start again
        from nothing it owned (its containers get new addresses: the old ones were freed)."""
        from ..cluster.store import EtcdUnavailable

        try:
            gen = self.source.rejoined()
        except EtcdUnavailable:
            return False
        if gen is None:
            return False
        self.start_again(f"host {self.source.host} rejoined the cluster (generation {gen})")
        self.triggers.put("etcd", "host rejoined", immediate=True)
        return False  # the trigger reloads

    def start_again(self, why: str) -> None:
        dropped = self.source.restart()
        logs.warning(f"{why}: starting again from nothing this host owned (what it held was freed by "
                     "forget-host; its containers get new addresses)",
                     dropped_journal=[f"{e['network']} {e['address']}" for e in dropped])
        self.fenced = None
        self.stale = ()
        self.status.cluster.update(fenced=None, conflicts=[], journalled=0)

    def status_line(self) -> str:
        if self.fenced:
            return "fenced by cluster forget-host: changing and announcing nothing"
        line = super().status_line()
        if self.status.cluster.get("offline"):
            line += "; etcd unreachable: keeping everything, no new blocks"
        return line

    def read_host_addresses(self):
        """The addresses on this host's links (the agent never hands out a parent's own)."""
        from ..kernel.hostaddrs import host_addresses

        kernel = self._kernel_factory() if self._kernel_factory else self._new_kernel()
        try:
            return host_addresses(kernel)
        finally:
            if kernel is not None:
                kernel.close()

    # the etcd watch and the lease ------------------------------------------------------------
    def follow(self) -> None:
        """Enqueue a reload whenever the revision pointer changes (thread)."""
        from ..cluster.store import EtcdUnavailable, watch_key

        resume, delay, connected = 0, 0.5, None
        while not self._stop.is_set():
            resume = max(resume, self.source.etcd_revision)
            compacted = False
            try:
                for msg in watch_key(self.source.store, self.source.keys.current,
                                     resume + 1 if resume else 0, self._stop):
                    if msg.compacted:
                        logs.warning("etcd watch compacted away: reading everything again",
                                     compact_revision=msg.compacted)
                        resume = self.source.etcd_revision = 0
                        self.triggers.put("etcd", "watch compacted: full resync")
                        compacted = True
                        break
                    if msg.created:
                        delay = 0.5
                        if connected is False:
                            self._probe_wake.set()  # offline: the probe lets the reload read etcd
                            self.triggers.put("etcd", "etcd watch re-established")
                        connected = True
                    if msg.events:
                        resume = max(resume, *msg.events)
                        self.triggers.put("etcd", "revision pointer changed", immediate=True)  # atomic: no debounce
                    elif msg.revision and not msg.created:
                        resume = max(resume, msg.revision)  # progress: nothing changed up to here
            except EtcdUnavailable:
                pass
            if self._stop.is_set():
                return
            if compacted:
                continue  # watch again from now: the full read covers what came before
            if connected is not False:
                self.triggers.put("etcd", "etcd watch lost")
            connected = False
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def follow_addresses(self) -> None:
        """Enqueue a reload when another host's address records change (thread): hosts files
        list every container of the fleet on shared networks, with the addresses other hosts
        allocate after a push (SPEC 6, 5.1). A burst of allocations coalesces: triggers that
        arrive while a reload or reconcile runs are one more reload after it.
        This host's own writes are skipped; a compacted or lost watch starts again from now
        after a reload (which reads every record)."""
        from ..cluster.store import EtcdUnavailable, watch_key

        me, delay, resume = self.source.host, 0.5, 0
        while not self._stop.is_set():
            resume = max(resume, self.source.etcd_revision)  # after the last full read: nothing missed
            lost = False
            try:
                for msg in watch_key(self.source.store, self.source.keys.addrs(), resume + 1 if resume else 0,
                                     self._stop, prefix=True, slot="last_addr_watch"):
                    if msg.compacted:
                        resume, lost = 0, True
                        break
                    if msg.created:
                        delay = 0.5
                    if msg.events:
                        resume = max(resume, *msg.events)
                        if any(h != me for h in msg.hosts):
                            self.triggers.put("etcd", "address records changed", immediate=True)
                    elif msg.revision and not msg.created:
                        resume = max(resume, msg.revision)
                else:
                    lost = True
            except EtcdUnavailable:
                lost = True
            if self._stop.is_set():
                return
            if lost and not resume:
                self.triggers.put("etcd", "address watch restarted")
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def keep_lease(self) -> None:
        from ..cluster.store import EtcdUnavailable

        while not self._stop.wait(self.lease_interval):
            if self.fenced or not self.source.agent.lease:
                continue
            try:
                if not self.source.keepalive():
                    self.triggers.put("etcd", "status lease expired")
            except EtcdUnavailable as e:
                self.lost_etcd(str(e))

    def lost_etcd(self, why: str) -> None:
        """A thread found no etcd member: offline from now on (the reloads use the cache at
        once), and one reload so that the status file and the log say so."""
        if not self.source.offline:
            self.source.mark_offline(why)
            self.triggers.put("etcd", "etcd unreachable", immediate=True)

    def probe(self) -> None:
        """While etcd is unreachable: one read per interval, off the reconcile path (thread).
        A partitioned member costs the client's timeout per member; before, every reload paid
        it (about 15 s with 3 members), delaying drift repair. When the read succeeds, the next
        reload reads etcd again (bind, journal, revision: SPEC 6's heal)."""
        from ..cluster.store import EtcdUnavailable

        while not self._stop.is_set():
            self._probe_wake.wait(self.probe_interval)
            self._probe_wake.clear()
            if self._stop.is_set():
                return
            src = self.source
            if not src.offline or src.etcd_back or self.fenced:
                continue
            try:
                src.probe()
            except EtcdUnavailable:
                continue
            except Exception as e:  # an answer (e.g. a refusal): etcd is there, the reload says more
                logs.debug("etcd probe answered with an error", error=str(e))
            if src.offline and not src.etcd_back:
                src.etcd_back = True
                self.triggers.put("etcd", "etcd reachable again", immediate=True)

    def start_threads(self) -> None:
        self.source.probing = True  # reloads while offline wait on no etcd: the probe thread decides
        for name, fn in (("etcd-watch", self.follow), ("etcd-addresses", self.follow_addresses),
                         ("etcd-lease", self.keep_lease), ("etcd-probe", self.probe)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_threads(self) -> None:
        self._stop.set()
        self._probe_wake.set()
        self.source.probing = False
        from ..cluster.store import interrupt_watch

        for slot in ("last_watch", "last_addr_watch"):
            resp = getattr(self.source.store, slot, None)
            if resp is not None:
                interrupt_watch(resp)
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    # lifecycle: the file daemon's, with the etcd watch instead of the manifest watcher --------
    def start_source(self) -> None:
        self.start_threads()

    def stop_watchers(self) -> None:
        self.stop_threads()
        super().stop_watchers()
        if not self.fenced:
            try:
                self.source.stop()  # revoke the lease: a clean stop shows at once
            except Exception as e:
                logs.warning("revoking the status lease failed", error=str(e))


def build(settings: WatchSettings) -> ClusterDaemon:
    """The daemon for `watch --etcd` (run_watch has checked root and the options)."""
    import socket

    from ..cluster.source import ClusterSource
    from ..cluster.store import Store, credentials

    host = settings.host or socket.gethostname().split(".")[0]
    source = ClusterSource(settings.etcd, host, settings.state_dir, prefix=settings.prefix,
                           store=Store(settings.etcd, creds=credentials(settings)))
    daemon = ClusterDaemon(source, settings, etcd_url=settings.etcd)
    source.host_addresses = daemon.read_host_addresses
    if settings.bird_config:  # as in file mode; the peers come from the revision
        from ..birdctl import DEFAULT_SOCKET, BirdSync

        daemon.bird_sync = BirdSync(settings.bird_config, settings.bird_socket or DEFAULT_SOCKET, host=host)
    return daemon
