"""Manifests: YAML files -> :class:`reconciler.model.DesiredState`.

Three stages, each reporting every problem it finds with file:line:col:

1. ``yamlload``: bytes -> plain values with positions (hostile input refused);
2. ``schema``: JSON Schema ``schemas/manifest-v1.schema.json`` (Draft 2020-12);
3. ``semantic``: the rules of SPEC sections 2-3 that need no kernel, and the
   model with defaults applied.

``load(paths)`` returns the desired state or raises :class:`ManifestError` with
all diagnostics. A path is a directory (every ``*.yaml``/``*.yml`` directly in
it, sorted by name, hidden files ignored; not recursive) or a single file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import Diagnostic, ManifestError
from ..model import DesiredState, Location
from . import schema as _schema
from . import semantic as _semantic
from . import ula as _ula
from .yamlload import (  # noqa: F401  (re-exported)
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    Document,
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
    "is_manifest_name",
    "Document",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_DEPTH",
]


def is_manifest_name(name: str) -> bool:
    """A file name a manifest directory loads: *.yaml / *.yml, not hidden (editors' temp files)."""
    return not name.startswith(".") and name.endswith(MANIFEST_SUFFIXES)


def manifest_files(paths: Sequence[str]) -> Tuple[List[str], List[Diagnostic]]:
    """The files ``paths`` stand for, in load order, each once; and problems (missing paths)."""
    files: List[str] = []
    problems: List[Diagnostic] = []
    seen: Set[str] = set()

    def add(f: str) -> None:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            files.append(f)

    for p in paths:
        if os.path.isdir(p):
            try:
                names = sorted(os.listdir(p))
            except OSError as e:
                problems.append(Diagnostic(Location(p, 0, 0), f"cannot read directory: {e.strerror or e}"))
                continue
            for n in names:
                f = os.path.join(p, n)
                if is_manifest_name(n) and os.path.isfile(f):
                    add(f)
        elif os.path.exists(p):
            add(p)
        else:
            problems.append(Diagnostic(Location(p, 0, 0), "no such file or directory"))
    return files, problems


class ParseCache:
    """Parsed manifest files by path and content, for a process that loads the same files
    again and again (the daemon): a file whose bytes did not change is not parsed again.
    Parsed documents are only read after parsing, so sharing them between loads is safe."""

    def __init__(self) -> None:
        self._files: Dict[str, Tuple[bytes, Document, Tuple[Diagnostic, ...]]] = {}
        self.parsed = 0  # files parsed (not taken from the cache) by the last load

    def read(self, path: str) -> Tuple[Document, List[Diagnostic]]:
        data, failed = read_bytes(path)
        if data is None:
            assert failed is not None
            self._files.pop(path, None)
            return failed
        digest = hashlib.blake2b(data, digest_size=20).digest()
        hit = self._files.get(path)
        if hit is not None and hit[0] == digest:
            return hit[1], list(hit[2])
        doc, diags = parse_bytes(data, path)
        self._files[path] = (digest, doc, tuple(diags))
        self.parsed += 1
        return doc, diags

    def keep_only(self, paths: Iterable[str]) -> None:
        keep = set(paths)
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


def check_documents(docs: Sequence[Document], diags: Iterable[Diagnostic] = ()) -> DesiredState:
    """Schema and semantic rules over parsed documents; raise ManifestError with every
    problem (including ``diags`` from earlier stages), else return the desired state."""
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
        d, where = _schema.diagnostics(doc)
        if d:
            problems.extend(d)
            bad[i] = where
            if () in where or ("*",) in where:
                incomplete = True
    state, d = _semantic.check(docs, bad, incomplete)
    problems.extend(d)
    ula_prefix, d = _ula.check(docs, bad)
    problems.extend(d)
    if ula_prefix is not None:
        state = dataclasses.replace(state, ula_prefix=ula_prefix)
    if problems:
        raise ManifestError(problems)
    return state


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Loading allocates hundreds of thousands of small acyclic objects; the cyclic GC
    would walk the growing heap again and again for nothing (a quarter of the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load(paths: Sequence[str], cache: Optional[ParseCache] = None) -> DesiredState:
    """All manifests of ``paths`` as one desired state; ManifestError lists every problem.

    An empty directory is a valid, empty desired state. With a ``cache`` only files whose
    content changed since the cache last saw them are parsed again."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [os.fsdecode(paths)]
    with _no_gc():
        docs, diags = load_documents(list(paths), cache)
        return check_documents(docs, diags)


def load_texts(items: Sequence[Tuple[str, str]]) -> DesiredState:
    """Like load(), from (filename, text) pairs: one manifest file each (for tests, stdin)."""
    docs: List[Document] = []
    diags: List[Diagnostic] = []
    with _no_gc():
        for filename, text in items:
            doc, d = parse_document(text, filename)
            docs.append(doc)
            diags.extend(d)
        return check_documents(docs, diags)


def parse_text(text: str, filename: str = "<string>") -> DesiredState:
    """One manifest's text as a desired state; ManifestError lists every problem."""
    return load_texts([(filename, text)])
