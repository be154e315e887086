"""Manifests: YAML files -> :class:`reconciler.model.DesiredState`.

Three stages, each reporting every problem it finds with file:line:col:

1. ``yamlload``: bytes -> plain values with positions (hostile input refused);
2. ``schema``: JSON Schema ``schemas/manifest-v1.schema.json`` (Draft 2020-12);
3. ``semantic``: the rules of SPEC sections 2-3 that need no kernel, and the
   model with defaults applied.

``load(paths)`` returns the desired state or raises :class:`ManifestError` with
all diagnostics. A path is a directory (every ``*.yaml``/``*.yml`` directly in
it, sorted by name, hidden files ignored; not recursive) or a single file; ``-`` is
standard input. A directory without any manifest file, a dangling or looping symlink,
a FIFO named ``*.yaml`` are errors: an unloadable directory never means "remove
everything" (SPEC section 3); emptying a host takes a manifest with `version: 1` alone.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import Diagnostic, ManifestError
from ..gcpause import no_cyclic_gc
from ..model import DesiredState, Location
from . import schema as _schema
from . import semantic as _semantic
from . import ula as _ula
from .yamlload import (  # noqa: F401  (re-exported)
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    STDIN,
    STDIN_NAME,
    Document,
    file_kind,
    open_error,
    type_name,
    parse_bytes,
    read_bytes,
    read_file,
)
from .yamlload import parse_text as parse_document

MANIFEST_SUFFIXES = (".yaml", ".yml")

__all__ = [
    "load",
    "load_documents",
    "ParseCache",
    "check_documents",
    "parse_text",
    "load_texts",
    "manifest_files",
    "scan",
    "Scan",
    "no_manifest_error",
    "is_manifest_name",
    "Document",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_DEPTH",
]


def is_manifest_name(name: str) -> bool:
    """A file name a manifest directory loads: *.yaml / *.yml, not hidden (editors' temp files)."""
    return not name.startswith(".") and name.endswith(MANIFEST_SUFFIXES)


# names that look meant as manifests but are not read, for the hint of a directory without any
_NEAR_MISS = re.compile(r"\.(ya?ml|json)", re.IGNORECASE)


@dataclass(frozen=True)
class Scan:
    """What manifest paths stand for: the files to load, in load order, each once; the
    paths that do not exist (the daemon waits for them); and every other reason the paths
    do not make a complete desired state (dangling or looping symlinks, FIFOs and other
    non-regular files named ``*.yaml``, a directory without any manifest file)."""

    files: List[str]
    missing: List[Diagnostic]
    problems: List[Diagnostic]


def _no_manifest(directory: str, names: Sequence[str]) -> Diagnostic:
    msg = (
        "no manifest file in this directory (a manifest is a *.yaml or *.yml file, not hidden); "
        "refusing to read that as \"remove everything\". To empty the host on purpose, give a "
        "manifest that declares nothing: `version: 1`"
    )
    near = [n for n in names if _NEAR_MISS.search(n) and not is_manifest_name(n)]
    if near:
        shown = ", ".join(near[:5]) + (f" and {len(near) - 5} more" if len(near) > 5 else "")
        msg += f". Not read: {shown} (names are case-sensitive; hidden files are skipped)"
    return Diagnostic(Location(directory, 0, 0), msg)


def scan(paths: Sequence[str]) -> Scan:
    """The manifest files ``paths`` stand for (SPEC section 3): a directory yields every
    regular ``*.yaml``/``*.yml`` file directly in it (symlinks followed), sorted by name,
    hidden files ignored; a file stands for itself; ``-`` is standard input. A directory
    that yields no manifest file is a problem, never an empty desired state."""
    files: List[str] = []
    missing: List[Diagnostic] = []
    problems: List[Diagnostic] = []
    seen: Set[str] = set()

    def add(f: str) -> None:
        real = f if f == STDIN else os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            files.append(f)

    for p in paths:
        if p == STDIN:
            add(p)
            continue
        try:
            st = os.stat(p)
        except OSError as e:
            d = Diagnostic(Location(p, 0, 0), open_error(p, e))
            # a path (or the mount behind a symlink) that is not there yet: wait for it
            (missing if e.errno == errno.ENOENT else problems).append(d)
            continue
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISREG(st.st_mode):
                add(p)
            else:
                problems.append(Diagnostic(
                    Location(p, 0, 0), f"{file_kind(st.st_mode)}, not a manifest file (only regular files are read)"
                ))
            continue
        try:
            names = sorted(os.listdir(p))
        except OSError as e:
            problems.append(Diagnostic(Location(p, 0, 0), f"cannot read directory: {e.strerror or e}"))
            continue
        found = False
        for n in names:
            if not is_manifest_name(n):
                continue
            f = os.path.join(p, n)
            try:
                fst = os.stat(f)
            except OSError as e:
                problems.append(Diagnostic(Location(f, 0, 0), open_error(f, e)))
                found = True
                continue
            found = True
            if stat.S_ISREG(fst.st_mode):
                add(f)
            else:
                problems.append(Diagnostic(
                    Location(f, 0, 0), f"{file_kind(fst.st_mode)}, not a manifest file (only regular files are read)"
                ))
        if not found:
            problems.append(_no_manifest(p, names))
    return Scan(files, missing, problems)


def manifest_files(paths: Sequence[str]) -> Tuple[List[str], List[Diagnostic]]:
    """The files ``paths`` stand for, in load order, each once; and every problem (see scan)."""
    s = scan(paths)
    return s.files, s.missing + s.problems


def no_manifest_error(paths: Sequence[str]) -> ManifestError:
    """The error for manifest paths that yield no manifest file at all."""
    s = scan(paths)
    diags = s.missing + s.problems
    if not diags:  # (the files appeared meanwhile)
        diags = [Diagnostic(Location(p, 0, 0), "no manifest file") for p in paths]
    return ManifestError(diags)


class ParseCache:
    """Parsed manifest files by path and content, for a process that loads the same files
    again and again (the daemon): a file whose bytes did not change is not parsed again.
    Parsed documents are only read after parsing, so sharing them between loads is safe."""

    def __init__(self) -> None:
        self._files: Dict[str, Tuple[bytes, Document, Tuple[Diagnostic, ...]]] = {}
        self.parsed = 0  # files parsed (not taken from the cache) by the last load
        # path -> (bytes, digest) read by the daemon's fingerprint for the next read (``digest``)
        self._primed: Dict[str, Tuple[bytes, bytes]] = {}

    def digest(self, path: str, data: bytes) -> bytes:
        """The digest of ``data``, just read from ``path`` (the daemon's fingerprint): the
        next :meth:`read` of ``path`` takes these bytes and this digest instead of reading
        and hashing the file a second time. A load therefore sees exactly the bytes the
        fingerprint saw (a change after that is the next event's fingerprint and load)."""
        d = hashlib.blake2b(data, digest_size=20).digest()
        self._primed[path] = (data, d)
        return d

    def drop_primed(self) -> None:
        """Forget bytes :meth:`digest` kept that no load took (nothing changed)."""
        self._primed.clear()

    def read(self, path: str) -> Tuple[Document, List[Diagnostic]]:
        primed = self._primed.pop(path, None)
        if primed is not None:
            data, digest = primed
        else:
            data, failed = read_bytes(path)
            if data is None:
                assert failed is not None
                self._files.pop(path, None)
                return failed
            digest = hashlib.blake2b(data, digest_size=20).digest()
        hit = self._files.get(path)
        if hit is not None and hit[0] == digest:
            return hit[1], list(hit[2])
        doc, diags = self._parse(data, STDIN_NAME if path == STDIN else path, hit)
        self._files[path] = (digest, doc, tuple(diags))
        self.parsed += 1
        return doc, diags

    def _parse(
        self, data: bytes, name: str, previous: Optional[Tuple[bytes, Document, Tuple[Diagnostic, ...]]]
    ) -> Tuple[Document, List[Diagnostic]]:
        """Parse a file's new bytes (``previous``: its last version in the cache, if any)."""
        return parse_bytes(data, name)

    def keep_only(self, paths: Iterable[str]) -> None:
        keep = set(paths)
        self._primed.clear()  # bytes a load did not take are stale by the next fingerprint
        for p in [p for p in self._files if p not in keep]:
            del self._files[p]


def load_documents(
    paths: Sequence[str], cache: Optional[ParseCache] = None
) -> Tuple[List[Document], List[Diagnostic]]:
    """Read and parse every manifest file of ``paths`` (YAML level only)."""
    files, diags = manifest_files(paths)
    docs: List[Document] = []
    if cache is not None:
        cache.parsed = 0
    for f in files:
        doc, d = cache.read(f) if cache is not None else read_file(f)
        docs.append(doc)
        diags.extend(d)
    if cache is not None:
        cache.keep_only(files)
    return docs, diags


def check_documents(
    docs: Sequence[Document], diags: Iterable[Diagnostic] = (), keep: Optional[List[Any]] = None
) -> DesiredState:
    """Schema and semantic rules over parsed documents; raise ManifestError with every
    problem (including ``diags`` from earlier stages), else return the desired state.
    ``keep``: gets the semantic checker (see ``semantic.check``)."""
    problems: List[Diagnostic] = list(diags)
    bad: Dict[int, Set[Tuple[Any, ...]]] = {}
    incomplete = False
    for i, doc in enumerate(docs):
        if not doc.ok:
            incomplete = True
            continue
        if doc.root is None:
            problems.append(
                doc.diag(doc.root_pos, "empty file: not a manifest (a manifest starts with `version: 1`)")
            )
            bad[i] = {()}
            incomplete = True
            continue
        if not (isinstance(doc.root, dict) and "version" in doc.root):
            # not a manifest (a stray *.yaml, a symlink to some other file): say so once,
            # and nothing from its content (its keys may be secrets)
            if isinstance(doc.root, dict):
                msg = "not a manifest: `version: 1` is missing (every manifest file starts with it)"
            else:
                msg = (
                    "not a manifest: the file must be a mapping starting with `version: 1`, "
                    f"not a {type_name(doc.root)}"
                )
            problems.append(Diagnostic(doc.loc(doc.root_pos), msg))
            bad[i] = {()}
            incomplete = True
            continue
        if doc.schema is None:
            doc.schema = _schema.diagnostics(doc)
        d, where = list(doc.schema[0]), set(doc.schema[1])
        if d:
            problems.extend(d)
            bad[i] = where
            if () in where or ("*",) in where:
                incomplete = True
    state, d = _semantic.check(docs, bad, incomplete, keep)
    problems.extend(d)
    ula_prefix, d = _ula.check(docs, bad)
    problems.extend(d)
    if ula_prefix is not None:
        state = dataclasses.replace(state, ula_prefix=ula_prefix)
    if problems:
        raise ManifestError(_unquote_non_manifests(docs, problems))
    return state


_VERSION_LINE = re.compile(r"^version[ \t]*:", re.MULTILINE)


def _quote_from(doc: Document) -> Optional[int]:
    """The first line of ``doc`` that diagnostics may quote; None: no line at all. A file
    that is not a manifest -- not a mapping with `version` (say a ``*.yaml`` symlink to
    /etc/shadow) -- is never echoed to the terminal; in a file that does not parse, only
    lines from its top-level `version:` on."""
    if doc.ok:
        return 1 if isinstance(doc.root, dict) and "version" in doc.root else None
    m = _VERSION_LINE.search(doc.text)
    return None if m is None else doc.text.count("\n", 0, m.start()) + 1


def _unquote_non_manifests(docs: Sequence[Document], problems: List[Diagnostic]) -> List[Diagnostic]:
    first = {doc.file: _quote_from(doc) for doc in docs}
    out = []
    for d in problems:
        if d.source_line is not None and d.loc.file in first:
            q = first[d.loc.file]
            if q is None or d.loc.line < q:
                d = dataclasses.replace(d, source_line=None)
        out.append(d)
    return out


def load(paths: Sequence[str], cache: Optional[ParseCache] = None) -> DesiredState:
    """All manifests of ``paths`` as one desired state; ManifestError lists every problem.

    A directory without any manifest file is an error, not an empty desired state. With a ``cache`` only files whose
    content changed since the cache last saw them are parsed again."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [os.fsdecode(paths)]
    with no_cyclic_gc():
        docs, diags = load_documents(list(paths), cache)
        return check_documents(docs, diags)


def load_texts(items: Sequence[Tuple[str, str]]) -> DesiredState:
    """Like load(), from (filename, text) pairs: one manifest file each (for tests, stdin)."""
    docs: List[Document] = []
    diags: List[Diagnostic] = []
    with no_cyclic_gc():
        for filename, text in items:
            doc, d = parse_document(text, filename)
            docs.append(doc)
            diags.extend(d)
        return check_documents(docs, diags)


def parse_text(text: str, filename: str = "<string>") -> DesiredState:
    """One manifest's text as a desired state; ManifestError lists every problem."""
    return load_texts([(filename, text)])
