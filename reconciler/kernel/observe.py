"""Observe: the host as it is now, turned into our objects plus host facts (``HostState``).

The first stage of every run (apply, plan, status, the daemon), in three steps that each
return what they made and change nothing they are given:

* :func:`take_snapshot` dumps the host namespace and every named namespace (ours in full:
  links, addresses, routes), reusing an earlier dump the caller can vouch for, and reads
  /etc/netns/NAME/hosts (``kernel.host.read_hosts_files``);
* :func:`translate` decides ownership (kernel markers, intents) and builds the objects;
* :func:`observe` does both and returns an :class:`Observation`: the live state, the
  snapshot (apply's executor looks ifindexes up in it), what was made of each namespace's
  dump and how many dumps were reused -- what the daemon keeps for its next run
  (``daemon.memory.DaemonMemory``, handed to the engine as ``engine.Previous``).

Kernel I/O goes through ``kernel.host.Kernel``; nothing here decides what to change.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from ..model import Flag, MacvlanMode, Mode
from ..objects import (
    ACCESS_MARKER,
    HOSTS_MARKER,
    MARKER,
    RTPROT,
    AccessLink,
    AccessRoute,
    Address,
    DummyLink,
    Endpoint,
    ExportRoute,
    HostFacts,
    HostLink,
    HostsFile,
    HostState,
    Key,
    Kind,
    KObject,
    Netns,
    Route,
    Sysctl,
    VlanLink,
)
from . import netlink as nl
from .host import (
    Changes,
    Held,
    Kernel,
    NsView,
    Snapshot,
    StillValid,
    dir_stamp,
    netns_identity,
    read_hosts_files,
    same_namespace,
)
from .netlink import RT_TABLE_MAIN, LinkRec, RouteRec


def _fam(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class NsObjects(NamedTuple):
    """What :func:`translate` made of one namespace's dump."""

    view: NsView  # the dump (reused only while it is this very object)
    host_sig: tuple  # the host's (index, name) links it was made with: endpoints name parents
    owned: bool  # is the namespace ours
    objects: List[KObject]  # our objects in it
    foreign: Dict[Tuple[str, str], str]  # (ns, ifname) -> kind of links in it that are not ours
    keyed: Dict[Key, KObject] = {}  # ``objects`` by key (HostState is assembled from these)
    # (content, key, object) of the namespace's HostsFile, reused while the content is the
    # very same string (a hosts file whose stamp did not change keeps its string)
    hosts_file: Optional[Tuple[str, Key, KObject]] = None


Made = Dict[str, NsObjects]


@dataclass(frozen=True)
class Observation:
    live: HostState
    snapshot: Snapshot
    made: Made  # per namespace, for the next translate of a snapshot reusing its dumps
    reused: int = 0  # namespace dumps taken from the previous snapshot
    dumped: int = 0  # namespaces dumped afresh


def observe(
    kernel: Kernel,
    intents: Sequence[Key] = (),
    previous: Optional[Snapshot] = None,
    still_valid: Optional[StillValid] = None,
    held: Optional[Held] = None,
    tables: Sequence[int] = (),
    made: Optional[Made] = None,
    changes: Optional[Callable[[Optional[int]], Changes]] = None,
) -> Observation:
    """The host now. ``intents``: keys the state directory says a run was about to create
    or delete (ours even unmarked). ``previous``/``still_valid``/``held``/``changes``: the
    daemon's last snapshot and who vouches for its dumps (:func:`take_snapshot`), ``made``:
    what was made of them. ``tables``: the host's BGP export tables to dump."""
    snap = take_snapshot(kernel, ours_predicate(intents), previous=previous, still_valid=still_valid, held=held,
                         tables=tables, changes=changes)
    old = previous.namespaces if previous is not None else {}
    reused = sum(1 for n, v in snap.namespaces.items() if old.get(n) is v)
    live, made_now = translate(snap, intents, made)
    return Observation(live=live, snapshot=snap, made=made_now, reused=reused, dumped=len(snap.namespaces) - reused)


def ours_predicate(intents: Iterable[Key]) -> Callable[[str, List[LinkRec]], bool]:
    """``is_ours(name, links)``: a namespace is ours when a run recorded the intent to make
    or delete it, or when its ``lo`` carries our marker."""
    intent_ns = {k[1] for k in intents if k[0] is Kind.NETNS}

    def is_ours(name: str, links: List[LinkRec]) -> bool:
        if name in intent_ns:
            return True
        return any(l.name == "lo" and l.alias == MARKER for l in links)

    return is_ours


def dump_namespaces(
    kernel: Kernel,
    names: Sequence[str],
    idents: Dict[str, Tuple[int, int]],
    is_ours: Callable[[str, List[LinkRec]], bool],
) -> Dict[str, NsView]:
    """One fresh view per namespace of ``names`` (``idents``: the identity its /run/netns
    entry had when listed): its links, and for ours its addresses and our routes; a
    namespace that cannot be entered is a broken view."""
    views: Dict[str, NsView] = {}
    if not names:
        return views
    socks = kernel.open_ns_sockets_lenient(list(names))
    for name in names:
        view = NsView(name, identity=idents[name], taken=time.monotonic())
        sock = socks.get(name)
        if sock is None:
            view.broken = True
            views[name] = view
            continue
        view.identity, view.cookie = kernel.ns_socket_identity(name) or (idents[name], None)
        view.links = sock.dump_links()
        if is_ours(name, view.links):
            view.addrs = sock.dump_addrs()
            view.routes = sock.dump_routes(table=RT_TABLE_MAIN, protocol=RTPROT)  # ours only
            view.full = True
        views[name] = view
        kernel.close_ns_socket(name)  # keep the fd count low; apply reopens on demand
    return views


def take_snapshot(
    kernel: Kernel,
    is_ours: Callable[[str, List[LinkRec]], bool],
    previous: Optional[Snapshot] = None,
    still_valid: Optional[StillValid] = None,
    held: Optional[Held] = None,
    tables: Iterable[int] = (),
    changes: Optional[Callable[[Optional[int]], Changes]] = None,
) -> Snapshot:
    """Dump the host namespace and every named namespace. Namespaces for which
    ``is_ours(name, links)`` is true get their addresses and routes dumped too.

    With ``previous``, ``still_valid`` and ``held`` (the daemon: its netlink monitor holds
    a socket in each of our namespaces and knows which changed since a given moment) a
    namespace's earlier view is reused instead of dumped when it is provably the same
    namespace (:func:`same_namespace`: its netns cookie, held open since before the stat
    of /run/netns/NAME), was dumped in full if it is ours, and ``still_valid`` vouches
    that nothing changed in it; and a hosts file's content is reused while its stat
    stamp is unchanged (:func:`read_hosts_files`). The host namespace is always dumped
    afresh, and so are ``tables`` (the BGP export tables: one more dump each, of our
    protocol's routes only).

    ``changes`` (the monitor's ``changes_since``, asked once, before anything is read,
    with ``previous.mark``) makes it proportional to what changed (the daemon's scoped
    first observation; docs/daemon.md, "Observation cache"):

    * /run/netns is listed and its entries ``stat``ed only when its stamp is not
      ``previous``'s settled one (:func:`host.dir_stamp`) or the monitor saw it change;
    * a view ``previous`` marks as vouched (proven, when taken, to be of the namespace the
      monitor holds) is reused without a ``stat`` or a question while the monitor logged
      nothing for its namespace (no change, lost event, socket opened or closed); every
      other view goes through the full check above;
    * hosts files are read (after a ``stat``) only for the namespaces inotify reported,
      those whose file had changed less than a second before it was read (the daemon's
      own writes), and namespaces that came or went; the rest are ``previous``'s. When
      the monitor cannot tell (no watch, events lost) every file is ``stat``ed."""
    daemon = previous is not None and still_valid is not None
    ch = changes(previous.mark if daemon else None) if changes is not None else None  # type: ignore[union-attr]
    mark = ch.mark if ch is not None else (previous.mark if daemon else None)  # type: ignore[union-attr]
    host = NsView("", taken=time.monotonic(), full=True)
    host.links = kernel.host.dump_links()
    host.addrs = kernel.host.dump_addrs()
    host.routes = kernel.host.dump_routes(table=RT_TABLE_MAIN)  # host facts: main table only
    exports: List[RouteRec] = []
    for t in sorted(set(tables)):
        exports.extend(kernel.host.dump_routes(table=t, protocol=RTPROT))
    scoped = daemon and held is not None and ch is not None and ch.namespaces is not None
    changed = ch.namespaces if scoped else frozenset()
    prevs = previous.namespaces if daemon else {}  # type: ignore[union-attr]
    stamp, settled = dir_stamp(kernel.netns_dir)
    listed = not (scoped and not ch.netns_dir and stamp is not None and stamp == previous.netns_stamp)
    stat_time = time.monotonic()  # before the stats; ``held`` is asked after them
    if listed:
        names = kernel.list_netns()
        stat_time = time.monotonic()
        idents = {n: netns_identity(kernel.ns_path(n)) for n in names}
        netns_stamp = stamp if settled else None
    else:  # not one entry added, removed or renamed since ``previous`` listed them
        names = list(prevs)
        idents = {}
        netns_stamp = stamp
    fast = (previous.vouched - changed) if scoped else frozenset()  # type: ignore[union-attr]
    namespaces: Dict[str, NsView] = {}
    vouched: List[str] = []
    todo: List[str] = []
    for name in names:
        prev = prevs.get(name)
        if prev is None:
            todo.append(name)
            continue
        if name in fast and (prev.full or not is_ours(name, prev.links)) and (
            not listed or idents[name] == prev.identity  # a replacement of a held namespace has another
        ):
            namespaces[name] = prev
            vouched.append(name)
            continue
        ident = idents[name] if listed else idents.setdefault(name, netns_identity(kernel.ns_path(name)))
        if (
            held is not None
            and not prev.broken
            and prev.identity == ident  # cheap: a changed pair needs no further look
            and same_namespace(prev, ident, stat_time, held(name))
            and (prev.full or not is_ours(name, prev.links))
            and still_valid(name, prev)  # type: ignore[misc]
        ):
            namespaces[name] = prev
            vouched.append(name)
        else:
            todo.append(name)
    for name in todo:
        if name not in idents:
            idents[name] = netns_identity(kernel.ns_path(name))
    namespaces.update(dump_namespaces(kernel, todo, idents, is_ours))
    if todo:
        namespaces = {n: namespaces[n] for n in names}  # listing order, reused or not
    if scoped and ch.hosts is not None:
        hosts, stamps = _hosts_changed(kernel, previous, ch.hosts, set(names) ^ set(prevs) if listed else ())
    else:
        hosts, stamps = read_hosts_files(
            kernel.etc_netns,
            sorted(set(names) | set(kernel.list_hosts_dirs())),
            previous if still_valid is not None else None,
        )
    return Snapshot(host=host, namespaces=namespaces, hosts_files=hosts, hosts_stamps=stamps, exports=exports,
                    mark=mark, netns_stamp=netns_stamp, vouched=frozenset(vouched))


def _hosts_changed(
    kernel: Kernel, previous: Snapshot, reported: Iterable[str], came_or_went: Iterable[str]
) -> Tuple[Dict[str, str], Dict[str, tuple]]:
    """``previous``'s hosts files, with those that may have changed read again: the
    namespaces inotify ``reported``, files without a settled stamp (changed less than a
    second before they were read: the daemon's own writes) and namespaces that
    ``came_or_went``. In name order, as :func:`read_hosts_files` gives them."""
    old = previous.hosts_files
    todo = set(reported) | (old.keys() - previous.hosts_stamps.keys()) | set(came_or_went)
    if not todo:
        return old, previous.hosts_stamps
    hosts = dict(old)
    stamps = dict(previous.hosts_stamps)
    got, got_stamps = read_hosts_files(kernel.etc_netns, sorted(todo), previous)
    for n in todo:  # in place: a file read again keeps its position
        if n in got:
            hosts[n] = got[n]
        else:
            hosts.pop(n, None)
        if n in got_stamps:
            stamps[n] = got_stamps[n]
        else:
            stamps.pop(n, None)
    if any((n in got) != (n in old) for n in todo):  # a file came or went: name order again
        hosts = {n: hosts[n] for n in sorted(hosts)}
    return hosts, stamps


def translate(
    snap: Snapshot, intents: Iterable[Key] = (), previous: Optional[Made] = None
) -> Tuple[HostState, Made]:
    """Turn one snapshot into our objects plus host facts, and say what it made of each
    namespace's dump (:class:`NsObjects`).

    Ownership comes from kernel markers (link alias, the alias on a namespace's lo,
    our route protocol, the hosts file's first line). ``intents`` -- keys the last
    run was about to create, from the state directory -- also count as ours, so a
    run killed between creating an object and marking it does not orphan it.

    ``previous``: what an earlier ``translate`` made of dumps reused in ``snap`` (the
    daemon's); a namespace whose dump is the very same object is not translated again while
    the host's links are the same and no intents are in play (intents change what counts as
    ours: such runs neither use nor return anything to reuse)."""
    intents = set(intents)
    objs: List[KObject] = []
    host = snap.host
    by_index = host.link_by_index()
    addrs_by_index: Dict[int, list] = {}
    for a in host.addrs:
        addrs_by_index.setdefault(a.index, []).append(a.interface)

    links: Dict[str, HostLink] = {}
    access_links: Dict[int, str] = {}
    for l in host.links:
        kind_key = (Kind.VLAN if l.kind == "vlan" else Kind.DUMMY, l.name)
        marked = l.alias == MARKER
        owned = l.kind in ("vlan", "dummy") and (marked or kind_key in intents)
        lower = by_index.get(l.link).name if l.link and l.link in by_index and l.link_netnsid is None else None
        if l.kind in ("ipvlan", "macvlan") and (
            l.alias.startswith(ACCESS_MARKER) or (Kind.ACCESS_LINK, l.name) in intents
        ):
            owned = True
            access_links[l.index] = l.name
            objs.append(_access_link(l, lower, addrs_by_index.get(l.index, ())))
        links[l.name] = HostLink(
            name=l.name,
            index=l.index,
            kind=l.kind,
            up=l.up,
            owned=owned,
            vid=l.vid,
            link=lower,
            addresses=tuple(addrs_by_index.get(l.index, ())),
        )
        if owned and l.kind == "vlan":
            objs.append(VlanLink(name=l.name, link=lower or f"#{l.link}", vid=l.vid or 0, up=l.up, marked=marked))
        elif owned and l.kind == "dummy":
            objs.append(DummyLink(name=l.name, up=l.up, marked=marked))

    host_routes = []
    for r in host.routes:
        if r.protocol == RTPROT and r.table == nl.RT_TABLE_MAIN and r.oif in access_links and r.dst:
            objs.append(AccessRoute(dst=ipaddress.ip_network(f"{r.dst}/{r.dst_len}", strict=False),
                                    ifname=access_links[r.oif]))
            continue
        if r.table == nl.RT_TABLE_MAIN and r.dst_len > 0 and r.dst and r.type == nl.RTN_UNICAST:
            try:
                host_routes.append(ipaddress.ip_network(f"{r.dst}/{r.dst_len}", strict=False))
            except ValueError:
                pass

    foreign_netns: List[str] = []
    foreign_links: Dict[Tuple[str, str], str] = {}
    # A namespace's objects depend only on its dump, the host's link names (its endpoints'
    # parents) and the intents; the daemon reuses dumps (its DaemonMemory), so what was made
    # of one is returned with it and reused while the host's links are the same.
    # The live state is assembled from each namespace's objects by key (NsObjects.keyed),
    # in the order a list of all objects would give: what was made of a reused dump is not
    # keyed again (at 10,000 namespaces that was a third of the daemon's observation).
    host_sig = tuple((l.index, l.name) for l in host.links)
    made: Made = {}
    keyed: Dict[Key, KObject] = {}
    for o in objs:
        keyed[o.key] = o
    for name, view in snap.namespaces.items():
        got = previous.get(name) if previous is not None and not intents else None
        if got is None or got.view is not view or got.host_sig != host_sig:
            owned, ns_objs, ns_foreign = _observe_ns(name, view, by_index, intents)
            got = NsObjects(view, host_sig, owned, ns_objs, ns_foreign, {o.key: o for o in ns_objs})
        if not intents:
            made[name] = got
        if not got.owned:
            foreign_netns.append(name)
            continue
        keyed.update(got.keyed)
        if got.foreign:
            foreign_links.update(got.foreign)
    objs = []

    for r in snap.exports:
        if r.protocol != RTPROT or not r.dst:
            continue
        dev = by_index.get(r.oif or -1)
        objs.append(
            ExportRoute(
                table=r.table,
                dst=ipaddress.ip_network(f"{r.dst}/{r.dst_len}", strict=False),
                dev=dev.name if dev is not None else f"#{r.oif}",
            )
        )
    for o in objs:
        keyed[o.key] = o

    for name, content in snap.hosts_files.items():
        got = made.get(name)
        hf = got.hosts_file if got is not None else None
        if hf is None or hf[0] is not content:
            o = HostsFile(ns=name, content=content, owned=content.startswith(HOSTS_MARKER))
            hf = (content, o.key, o)
            if got is not None:
                made[name] = got._replace(hosts_file=hf)
        keyed[hf[1]] = hf[2]

    facts = HostFacts(
        links=links,
        routes=tuple(host_routes),
        foreign_netns=tuple(sorted(foreign_netns)),
        foreign_links=foreign_links,
    )
    live = HostState((), facts)
    live.objects = keyed
    return live, made


def _access_link(l: LinkRec, lower: Optional[str], addrs) -> AccessLink:
    """A host access link (SPEC 2.3) as observed in the host namespace."""
    mac = mmode = ""
    if l.kind == "macvlan":
        try:
            mmode = MacvlanMode.from_kernel(l.macvlan_mode or 0).value
        except (KeyError, ValueError):
            mmode = str(l.macvlan_mode)
        mac = l.mac
    return AccessLink(
        name=l.name,
        parent=lower or f"#{l.link}",
        network=l.alias[len(ACCESS_MARKER):] if l.alias.startswith(ACCESS_MARKER) else "",
        driver=l.kind,
        mode=Mode.from_kernel(l.ipvlan_mode or 0) if l.kind == "ipvlan" else Mode.L2,
        flag=Flag.from_kernel(l.ipvlan_flags or 0) if l.kind == "ipvlan" else Flag.BRIDGE,
        macvlan_mode=mmode,
        mac=mac,
        addresses=tuple(sorted(str(a) for a in addrs if not nl.is_link_local(_fam(a.version), a.ip.packed))),
        up=l.up,
        marked=l.alias.startswith(ACCESS_MARKER),
    )


def _observe_ns(
    name: str, view: NsView, by_index: Dict[int, LinkRec], intents: Set[Key]
) -> Tuple[bool, List[KObject], Dict[Tuple[str, str], str]]:
    """One namespace: (ours?, our objects in it, foreign links in it)."""
    objs: List[KObject] = []
    foreign_links: Dict[Tuple[str, str], str] = {}
    lo = view.link_named("lo")
    marked = lo is not None and lo.alias == MARKER
    if not (marked or (Kind.NETNS, name) in intents):
        return False, objs, foreign_links
    objs.append(Netns(name=name, lo_up=bool(lo and lo.up), marked=marked, broken=view.broken))
    if view.broken:
        return True, objs, foreign_links
    names_by_index: Dict[int, str] = {}
    for l in view.links:
        if l.name == "lo":
            continue
        is_ours = l.kind in ("ipvlan", "macvlan") and (
            l.alias.startswith(MARKER) or (Kind.ENDPOINT, name, l.name) in intents
        )
        if not is_ours:
            foreign_links[(name, l.name)] = l.kind or "link"
            continue
        names_by_index[l.index] = l.name
        parent = by_index.get(l.link)
        network = ""
        if l.alias.startswith(MARKER + " net="):
            network = l.alias[len(MARKER + " net=") :]
        if l.kind == "macvlan":
            try:
                mmode = MacvlanMode.from_kernel(l.macvlan_mode or 0).value
            except (KeyError, ValueError):  # a mode this reconciler never sets (source): replaced
                mmode = str(l.macvlan_mode)
            objs.append(
                Endpoint(
                    ns=name,
                    ifname=l.name,
                    parent=parent.name if parent is not None else f"#{l.link}",
                    mode=Mode.L2,
                    flag=Flag.BRIDGE,
                    network=network,
                    up=l.up,
                    driver="macvlan",
                    macvlan_mode=mmode,
                    # passthru takes the parent's MAC: not ours to compare
                    mac="" if mmode == "passthru" else l.mac,
                )
            )
        else:
            objs.append(
                Endpoint(
                    ns=name,
                    ifname=l.name,
                    parent=parent.name if parent is not None else f"#{l.link}",
                    mode=Mode.from_kernel(l.ipvlan_mode or 0),
                    flag=Flag.from_kernel(l.ipvlan_flags or 0),
                    network=network,
                    up=l.up,
                )
            )
        if l.disable_ipv6 is not None:
            objs.append(Sysctl(ns=name, ifname=l.name, name="disable_ipv6", value=l.disable_ipv6))
    for a in view.addrs:
        ifname = names_by_index.get(a.index)
        if ifname is None:
            continue
        if nl.is_link_local(a.family, a.packed):  # fe80::/10, the kernel's own
            continue
        objs.append(Address(ns=name, ifname=ifname, address=a.interface))
    for r in view.routes:
        if r.table != nl.RT_TABLE_MAIN or r.protocol != RTPROT:
            continue
        ifname = names_by_index.get(r.oif or -1, f"#{r.oif}")
        zero = "0.0.0.0" if r.family == socket.AF_INET else "::"
        objs.append(
            Route(
                ns=name,
                dst=ipaddress.ip_network(f"{r.dst or zero}/{r.dst_len}", strict=False),
                gateway=ipaddress.ip_address(r.gateway) if r.gateway else None,
                ifname=ifname,
            )
        )
    return True, objs, foreign_links
