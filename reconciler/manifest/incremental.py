"""The daemon's entry-level manifest reload (issue 12): after a one-container edit, only the
entries that changed are checked again.

:class:`IncrementalLoad` is a :class:`ParseCache` (files whose bytes did not change are not
parsed again; the daemon's fingerprint primes it) whose ``load(paths)`` gives exactly what
``manifest.load(paths)`` gives -- the same desired state, or the same ``ManifestError`` --
and keeps, after a valid load, a **base**: the semantic checker of the last full check with
its cross-entry indexes (host names and aliases -> container, each network's explicit
addresses -> container, each network's demand for automatic addresses), and per file its
container entries (parsed value, the positions the model takes, the ``Container`` built).

The next load, when every file is still there and each changed file differs from its last
version only in its ``containers:`` entries, takes the incremental path:

* an entry whose value (compared as parsed values, not text) and positions (its key, its
  networks' keys and their order) are equal keeps its ``Container`` object;
* the others are removed from the indexes and checked again one by one: the schema of the
  entry, its name and aliases as host names, its addresses against the network's reserved
  and used ones, its networks' demand, exactly the rules the full check applies to a
  container (``_Checker.host_name``, ``_Checker.container``), against indexes that hold
  every other container; the pool-exhaustion rule runs again for the networks whose
  addresses or demand changed;
* the desired state is the base's networks, VLANs and warnings with the containers in
  manifest order.

Anything else falls back to the full check, which stays the judge and makes the next base:
the first load, a file added or removed, a parse error, any change outside ``containers:``
(networks, VLANs, hosts, bgp, ula_prefix, even a moved line there), fleet manifests (host:,
hosts:, bgp:, block sizes), macvlan passthru networks, a base whose containers gave
warnings, and any problem the incremental path meets (a schema error, a duplicate name, an
address taken, a warning...): the full check then reports every diagnostic, with its
file:line:col, exactly as ``manifest.load`` does. ``IPVLAN_RECONCILER_INCREMENTAL=0`` makes
every load a full one (to compare).

The one-shot CLI never uses this: ``manifest.load`` is unchanged and pays nothing for it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import Diagnostic
from ..gcpause import no_cyclic_gc
from ..model import Container, DesiredState, Location, MacvlanMode
from . import ParseCache, check_documents, load_documents, parse_bytes
from . import schema as _schema
from .semantic import Entry, _Checker, _Named, _NetInfo
from .yamlload import MAX_FILE_BYTES, P, Document, YMap, YSeq, parse_text

CONTAINERS = "containers"


def _p(pos: Any) -> Tuple[int, int]:
    return pos.line, pos.column


def _same(a: Any, b: Any) -> bool:
    """Equal as the model sees them: the same types (1 is not true), values, key order and
    positions of every key, value and item."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        if list(a) != list(b):
            return False
        if isinstance(a, YMap):
            for k in a:
                if _p(a.kpos[k]) != _p(b.kpos[k]) or _p(a.vpos[k]) != _p(b.vpos[k]):
                    return False
        return all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        if len(a) != len(b):
            return False
        if hasattr(a, "ipos") and [_p(p) for p in a.ipos] != [_p(p) for p in b.ipos]:
            return False
        return all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _sig(kp: Any, value: Any) -> Tuple[Any, ...]:
    """The positions (and order) a valid container's model takes from its entry: the entry's
    key ``kp`` (Container.loc) and each network's key, in order (Attachment.ifname, .loc)."""
    nets = value.get("networks") if isinstance(value, dict) else None
    if isinstance(nets, YMap):
        return (kp.line, kp.column, tuple((k, p.line, p.column) for k, p in nets.kpos.items()))
    return (kp.line, kp.column, None if nets is None else tuple(nets))


def _entry_valid(value: Any) -> bool:
    """The schema of one container entry (the compiled fast path)."""
    return _schema._fast()[1]["container"](value)


class _FileOnly:
    """Stands for a document in the host-name index (only error messages read it: its
    ``loc``), so the index holds no parsed document of an older version of a file."""

    __slots__ = ("file",)

    def __init__(self, file: str):
        self.file = file

    def loc(self, pos: Any) -> Location:
        return Location(self.file, pos.line + 1, pos.column + 1)


class _Rec:
    """One valid container entry of the base: its parsed value, its key's position object
    (the same object: the same entry, from a spliced parse) and its model object."""

    __slots__ = ("value", "kp", "container")

    def __init__(self, value: Any, kp: Any, ct: Container):
        self.value = value
        self.kp = kp
        self.container = ct


def _contributions(ct: Container, infos: Dict[str, _NetInfo]):
    """What a valid container put into the checker's indexes: its host names (its name and
    aliases, lower case), its explicit addresses per network, the networks (and families)
    it asks for an automatic address (counted as _Checker.container counts them; host:
    is None outside a fleet). Worked out when the entry goes: a full load that makes the
    base pays nothing for it."""
    names = {ct.name.lower()}
    addrs: List[Tuple[str, Any]] = []
    demand: List[Tuple[int, str]] = []
    for att in ct.attachments:
        names.update(a.lower() for a in att.aliases)
        info = infos[att.network]
        for a in (att.ip, att.ip6):
            if a is not None:
                addrs.append((att.network, a))
        if not info.broken:
            if att.ip is None:
                demand.append((4, att.network))
            if att.ip6 is None and info.net.ipv6:
                demand.append((6, att.network))
    return names, addrs, demand


class _Base:
    """What the last valid load was made of (see the module's doc)."""

    def __init__(self, docs: Sequence[Document], c: _Checker, state: DesiredState):
        self.docs = list(docs)
        self.files = [d.file for d in docs]
        self.c = c
        self.infos: Dict[str, _NetInfo] = c.pools[0]
        self.state = state
        self.sections: List[Optional[YMap]] = []
        self.recs: List[Dict[str, _Rec]] = []
        self.where: Dict[str, int] = {}  # container -> index of its file
        for i, doc in enumerate(docs):
            section = doc.root.get(CONTAINERS)
            recs: Dict[str, _Rec] = {}
            if isinstance(section, YMap):
                kpos, containers, where = section.kpos, state.containers, self.where
                for name, value in section.items():
                    recs[name] = _Rec(value, kpos[name], containers[name])
                    where[name] = i
            self.sections.append(section if isinstance(section, YMap) else None)
            self.recs.append(recs)
        # the entries of the full check (only its error messages read them) hold every
        # document of that load: not kept
        c.entries = {}
        c.pools = (self.infos, {})

    @staticmethod
    def make(docs: Sequence[Document], c: _Checker, state: DesiredState) -> Optional["_Base"]:
        """A base for the incremental path, or None where it does not apply (see the doc)."""
        if state.hosts or state.bgp is not None or c.incomplete:
            return None
        if len(c.warnings) != getattr(c, "net_warnings", -1):
            return None  # containers gave warnings: their order is the full check's to make
        for doc in docs:
            root = doc.root
            if not doc.ok or not isinstance(root, YMap) or "hosts" in root or "bgp" in root:
                return None
            section = root.get(CONTAINERS)
            if section is not None and not isinstance(section, YMap):
                return None
        for info in c.pools[0].values():
            e = info.entry
            if e.get("block_size") is not None or e.get("block_size6") is not None:
                return None
            if info.net.macvlan and info.net.macvlan_mode is MacvlanMode.PASSTHRU:
                return None
        if sum(len(d.root.get(CONTAINERS) or ()) for d in docs) != len(state.containers):
            return None
        return _Base(docs, c, state)

    # ---- the incremental path ------------------------------------------------------------

    def _same_top(self, old: YMap, new: YMap) -> bool:
        """Everything of a file but its containers: unchanged, positions included."""
        ko = [k for k in old if k != CONTAINERS]
        kn = [k for k in new if k != CONTAINERS]
        if ko != kn:
            return False
        for k in ko:
            if _p(old.kpos[k]) != _p(new.kpos[k]) or _p(old.vpos[k]) != _p(new.vpos[k]):
                return False
            if not _same(old[k], new[k]):
                return False
        return True

    def _diff_file(self, i: int, section: Optional[YMap]) -> Tuple[Dict[str, _Rec], List[str], List[_Rec]]:
        """(entries kept, names to check, records to drop) of file ``i``'s new containers."""
        old = self.recs[i]
        kept: Dict[str, _Rec] = {}
        check: List[str] = []
        if section:
            kpos = section.kpos
            for name, value in section.items():
                rec = old.get(name)
                if rec is not None and rec.value is value and rec.kp is kpos[name]:
                    kept[name] = rec  # the very same parsed entry (splice() kept it)
                elif rec is not None and rec.value == value and _sig(rec.kp, rec.value) == _sig(kpos[name], value):
                    rec.value, rec.kp = value, kpos[name]  # (the old document can go)
                    kept[name] = rec
                else:
                    check.append(name)
        drop = [rec for name, rec in old.items() if name not in kept]
        return kept, check, drop

    def _remove(self, rec: _Rec, touched: Set[str]) -> None:
        c = self.c
        names, addrs, demand = _contributions(rec.container, self.infos)
        for low in names:
            c.hostnames.pop(low, None)
        for net, addr in addrs:
            self.infos[net].used.pop(addr, None)
            touched.add(net)
        for fam, key in demand:
            d = c.demand[fam]
            left = d[key] - 1
            if left:
                d[key] = left
            else:
                del d[key]
            touched.add(key)
        self.where.pop(rec.container.name, None)

    def _add(self, doc: Document, section: YMap, name: str, touched: Set[str]) -> Optional[_Rec]:
        c = self.c
        value = section[name]
        if not _entry_valid(value) or name in self.where:
            return None  # a schema error, a duplicate name: the full check words it
        if isinstance(value, dict) and value.get("host") is not None:
            return None  # host: outside a fleet is an error
        kpos = section.kpos[name]
        e = Entry(CONTAINERS, name, doc, value, kpos, True)
        ndiag, nwarn = len(c.diags), len(c.warnings)
        c.host_name(doc, kpos, name, name, f"container {name}: name", "the name")
        ct = c.container(e, self.infos, self.infos)
        if ct is None or len(c.diags) != ndiag or len(c.warnings) != nwarn:
            return None
        rec = _Rec(value, kpos, ct)
        touched.update(a.network for a in ct.attachments)
        where = _FileOnly(doc.file)
        for low in _contributions(ct, self.infos)[0]:
            n = c.hostnames.get(low)
            if isinstance(n, _Named) and n.doc is doc:
                c.hostnames[low] = n._replace(doc=where, pos=P(n.pos.line, n.pos.column))
        return rec

    def _rebuild(self, in_place: Optional[List[str]]) -> DesiredState:
        """The new desired state; ``in_place``: the only containers that changed, each where
        it was (the same names in the same order): the old mapping, copied, takes them."""
        if in_place is not None:
            containers = dict(self.state.containers)
            for name in in_place:
                containers[name] = self.recs[self.where[name]][name].container
        else:
            containers = {}
            for section, recs in zip(self.sections, self.recs):
                if section:
                    for name in section:
                        containers[name] = recs[name].container
        return dataclasses.replace(self.state, containers=containers)

    def update(self, docs: Sequence[Document]) -> Tuple[Optional[DesiredState], str]:
        """The desired state of ``docs`` by the incremental path, and how it went; (None,
        why) when it does not apply: the base is then spoilt (its indexes may be half
        updated) and the caller runs the full check."""
        if [d.file for d in docs] != self.files:
            return None, "files added or removed"
        changed = [i for i, d in enumerate(docs) if d is not self.docs[i]]
        if not changed:
            return self.state, "incremental(0 entries checked)"
        shallow = _schema._fast()[2]
        plans = []
        for i in changed:
            new = docs[i]
            root = new.root
            if not new.ok or not isinstance(root, YMap) or "version" not in root:
                return None, "a file is not a manifest"
            if not self._same_top(self.docs[i].root, root):
                return None, "a change outside containers:"
            if not shallow(root):
                return None, "schema"
            section = root.get(CONTAINERS)
            if section is not None and not isinstance(section, YMap):
                return None, "schema"
            plans.append((i, section) + self._diff_file(i, section))
        in_place: Optional[List[str]] = []
        for i, section, _, check, drop in plans:
            if in_place is not None and len(check) == len(drop) and list(section or ()) == list(self.sections[i] or ()):
                in_place.extend(check)
            else:
                in_place = None
        touched: Set[str] = set()
        for _, _, _, _, drop in plans:  # every removal before any addition: an entry may move files
            for rec in drop:
                self._remove(rec, touched)
        checked = 0
        for i, section, kept, check, _ in plans:
            for name in check:
                rec = self._add(docs[i], section, name, touched)
                if rec is None:
                    return None, "a changed entry needs the full check"
                kept[name] = rec
                self.where[name] = i
                checked += 1
            self.recs[i] = kept
            self.sections[i] = section
            self.docs[i] = docs[i]
        if not self._pools(touched):
            return None, "an address pool"
        self.state = self._rebuild(in_place)
        return self.state, f"incremental({checked} entr{'y' if checked == 1 else 'ies'} checked)"

    def _pools(self, touched: Set[str]) -> bool:
        """The exhaustion rule for the networks whose demand or explicit addresses changed."""
        c = self.c
        ndiag = len(c.diags)
        try:
            for fam in (4, 6):
                d = c.demand[fam]
                for net in touched:
                    wants = d.get(net)
                    if wants:
                        c.exhausted(self.infos[net], fam, None, wants, {}, self.state)
        except Exception:  # the error's wording needs every entry: the full check makes it
            return False
        return len(c.diags) == ndiag


# ---- re-parsing only the lines an in-place edit changed ------------------------------------

# one container entry on one line, as bench/gen.py writes them: `  name: {...}`, printable
# ASCII, nothing that reaches beyond the line or changes how it parses (comments, anchors,
# aliases, tags, merge keys, tabs)
_ENTRY_LINE = re.compile(r"  ([A-Za-z0-9][A-Za-z0-9_.-]*): \{[^#&*!<\t\x00-\x1f\x7f-\U0010ffff]*\}")
_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")  # what else YAML (1.1: libyaml) may count as a line break
MAX_SPLICE_LINES = 16
# the walker's node limit (yamlload.MAX_NODES) cannot be reached by a file this size
MAX_SPLICE_BYTES = MAX_FILE_BYTES // 8


def _entries(lines: Sequence[str], file: str) -> Optional[YMap]:
    """``lines`` (each a whole entry line) parsed alone as a containers: section, or None
    when that is not one entry per line without a problem."""
    doc, diags = parse_text("containers:\n" + "\n".join(lines) + "\n", file)
    section = doc.root.get(CONTAINERS) if doc.ok and isinstance(doc.root, YMap) else None
    if diags or not isinstance(section, YMap) or len(section) != len(lines):
        return None
    for k, p in enumerate(section.kpos.values()):
        if (p.line, p.column) != (k + 1, 2):
            return None
    return section


def _shift(node: Any, delta: int) -> None:
    """Move every position in ``node`` (a fresh parse's values, no shared nodes) down
    ``delta`` lines."""
    if isinstance(node, YMap):
        node.pos = P(node.pos.line + delta, node.pos.column)
        for d in (node.kpos, node.vpos):
            for k, p in d.items():
                d[k] = P(p.line + delta, p.column)
        for v in node.values():
            _shift(v, delta)
    elif isinstance(node, YSeq):
        node.pos = P(node.pos.line + delta, node.pos.column)
        node.ipos[:] = [P(p.line + delta, p.column) for p in node.ipos]
        for v in node:
            _shift(v, delta)


def splice(old: Document, data: bytes) -> Optional[Document]:
    """The parse of ``data``, a new version of ``old``'s file, made by parsing only the lines
    that changed -- or None, and the caller parses the whole file. Only for an in-place edit
    of a few one-line container entries (the same lines hold the same names, the line count
    is unchanged) in a block ``containers:`` mapping: every changed line, old and new, parses
    alone as exactly one complete entry on that line, so the parser is in the same state
    before and after those lines and everything else parses as before, at the same place."""
    if len(data) > MAX_SPLICE_BYTES or not old.ok or not isinstance(old.root, YMap):
        return None
    section = old.root.get(CONTAINERS)
    if not isinstance(section, YMap) or not section:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("\ufeff") or any(c in t for t in (text, old.text) for c in _OTHER_BREAKS):
        return None  # line numbers as the parser counts them are split("\n")'s
    ol, nl = old.text.split("\n"), text.split("\n")
    if len(ol) != len(nl):
        return None
    a = 0
    while a < len(nl) and ol[a] == nl[a]:
        a += 1
    b = len(nl)
    while b > a and ol[b - 1] == nl[b - 1]:
        b -= 1
    if a == b or b - a > MAX_SPLICE_LINES:
        return None
    # the containers: mapping is a block one (its first key starts it, not a "{")
    sp = section.pos
    if ol[sp.line][sp.column:sp.column + 1] == "{":
        return None
    names = []
    for i in range(a, b):
        mo, mn = _ENTRY_LINE.fullmatch(ol[i]), _ENTRY_LINE.fullmatch(nl[i])
        if mo is None or mn is None or mo.group(1) != mn.group(1):
            return None
        kp = section.kpos.get(mo.group(1))
        if kp is None or (kp.line, kp.column) != (i, 2):
            return None  # (also: the parser counted lines as split() does up to here)
        names.append(mo.group(1))
    if _entries(ol[a:b], old.file) is None:  # the old lines were whole entries too
        return None
    fresh = _entries(nl[a:b], old.file)
    if fresh is None or list(fresh) != names:
        return None
    _shift(fresh, a - 1)
    new_section = YMap(section.pos)
    new_section.update(section)
    new_section.kpos.update(section.kpos)
    new_section.vpos.update(section.vpos)
    for name in names:
        new_section[name] = fresh[name]
        new_section.kpos[name] = fresh.kpos[name]
        new_section.vpos[name] = fresh.vpos[name]
    root = YMap(old.root.pos)
    root.update(old.root)
    root.kpos.update(old.root.kpos)
    root.vpos.update(old.root.vpos)
    root[CONTAINERS] = new_section
    return Document(old.file, text, root=root, root_pos=old.root_pos)


class IncrementalLoad(ParseCache):
    """The daemon's manifest loader: ``load(paths)`` is ``manifest.load(paths)``, with
    unchanged files not parsed again and unchanged container entries not checked again."""

    def __init__(self) -> None:
        super().__init__()
        self._base: Optional[_Base] = None
        self.last_mode = ""  # how the last load went: full(...) or incremental(...)
        self.enabled = os.environ.get("IPVLAN_RECONCILER_INCREMENTAL", "1") != "0"
        self.spliced = 0  # files parsed by splice() (only their changed lines), ever

    def _parse(self, data: bytes, name: str, previous) -> Tuple[Document, List[Diagnostic]]:
        if self.enabled and previous is not None and not previous[2]:
            doc = splice(previous[1], data)
            if doc is not None:
                self.spliced += 1
                return doc, []
        return parse_bytes(data, name)

    def reset(self) -> None:
        """Forget the base: the next load is a full check."""
        self._base = None

    def load(self, paths: Sequence[str]) -> DesiredState:
        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [os.fsdecode(paths)]
        with no_cyclic_gc():
            docs, diags = load_documents(list(paths), self)
            base, self._base = self._base, None
            why = "first load" if base is None else "parse problems"
            if base is not None and not diags:
                state, why = base.update(docs)
                if state is not None:
                    self._base = base
                    self.last_mode = why
                    return state
            self.last_mode = f"full({why})"
            keep: List[Any] = []
            state = check_documents(docs, diags, keep=keep)  # ManifestError: no base
            if self.enabled:
                self._base = _Base.make(docs, keep[0], state)
            return state
