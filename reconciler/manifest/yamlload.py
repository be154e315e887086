"""YAML to plain Python values, with the position of every key and value.

We never let a YAML library construct objects. ruamel.yaml's event parser
(libyaml through ruamel.yaml.clib when importable, else ruamel's pure-Python
parser: both yield the same events) gives scalars, collection starts/ends and
aliases with their marks; this module builds ``dict``/``list``/``str``/``int``/
``float``/``bool``/``None`` values itself with an explicit stack (no
recursion, so no RecursionError on deep input) and records positions:

* :class:`YMap` (a ``dict``): ``pos`` of the mapping, ``kpos[key]`` and
  ``vpos[key]`` of each key and its value;
* :class:`YSeq` (a ``list``): ``pos`` of the sequence, ``ipos[i]`` of each item.

Positions are ``(line, col)`` tuples, 1-based. Being ``dict``/``list``
subclasses, the values go straight into jsonschema, and an error's
``absolute_path`` maps back to a position by walking the tree
(:func:`position_of`).

Plain scalars resolve per the YAML 1.2 core schema (``yes``/``on`` stay
strings, ``2001:db8::10`` stays a string); quoted and block scalars are strings.

Hostile input is refused quickly, with a positioned message: files larger than
:data:`MAX_FILE_BYTES`, bytes that are not UTF-8, duplicate keys, tags other
than the core ones, alias expansion beyond :data:`MAX_NODES` nodes, nesting
deeper than :data:`MAX_DEPTH`, several documents in one file, keys that are not
strings, syntax errors.

Merge keys (``<<: *defaults``) are supported, as most YAML users expect: keys
given explicitly in the mapping win over merged ones.
"""
from __future__ import annotations

import errno
import io
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ruamel.yaml import events as _ev
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ..errors import Diagnostic, printable  # noqa: F401  (printable: re-exported)
from ..model import Location

# libyaml through ruamel.yaml.clib (module ``_ruamel_yaml``), ~10x faster than ruamel's pure-Python
# parser. Never ruamel.yaml.clibz: its 0.3.x wheels are compiled with AVX-512 instructions
# (EVEX-encoded vpbroadcastq in CParser's constructor), so on a CPU without AVX-512 -- many
# servers, and qemu's software CPU -- the process dies with SIGILL, which no ``except`` catches.
# ruamel.yaml.clib's wheels are built for the x86-64 baseline. IPVLAN_RECONCILER_PURE_YAML=1
# forces the pure-Python parser (tests compare the two).
_CParser = None
if not os.environ.get("IPVLAN_RECONCILER_PURE_YAML"):
    try:
        from _ruamel_yaml import CParser as _CParser  # type: ignore

        _CParser("a: 1").dispose()
    except Exception:  # pragma: no cover - depends on the installation
        _CParser = None

MAX_FILE_BYTES = 4 * 1024 * 1024  # a manifest larger than this is refused unread
MAX_NODES = 1_000_000  # values per file after alias expansion (alias bombs); a 4 MiB file holds fewer
MAX_DEPTH = 64  # nesting of mappings and sequences


class P:
    """A position made up by us (parser marks have the same two fields): 0-based."""

    __slots__ = ("line", "column")

    def __init__(self, line: int, column: int):
        self.line = line
        self.column = column

    def __repr__(self) -> str:
        return f"P({self.line}, {self.column})"


# A position: a parser mark or a P, with 0-based ``line`` and ``column`` (marks are
# kept as they come from the parser: no tuple per value). Location() makes them 1-based.
Pos = Any
START = P(0, 0)


def lc(pos: Pos) -> Tuple[int, int]:
    """(line, col), 1-based."""
    return pos.line + 1, pos.column + 1


_CORE = "tag:yaml.org,2002:"
TAG_STR, TAG_INT, TAG_FLOAT = _CORE + "str", _CORE + "int", _CORE + "float"
TAG_BOOL, TAG_NULL, TAG_MAP, TAG_SEQ = _CORE + "bool", _CORE + "null", _CORE + "map", _CORE + "seq"
_SCALAR_TAGS = (TAG_STR, TAG_INT, TAG_FLOAT, TAG_BOOL, TAG_NULL, "!")
_ALLOWED_TAGS_TEXT = "!!str, !!int, !!float, !!bool, !!null, !!map, !!seq"
_LINE_BREAKS = re.compile("\r\n|\r|\n|\x85|\u2028|\u2029")  # what YAML counts as a new line


class YMap(dict):
    """A YAML mapping: a dict that knows where it, its keys and its values are."""

    __slots__ = ("pos", "kpos", "vpos")

    def __init__(self, pos: Pos = START):
        super().__init__()
        self.pos = pos
        self.kpos: Dict[str, Pos] = {}
        self.vpos: Dict[str, Pos] = {}


class YSeq(list):
    """A YAML sequence: a list that knows where it and its items are."""

    __slots__ = ("pos", "ipos")

    def __init__(self, pos: Pos = START):
        super().__init__()
        self.pos = pos
        self.ipos: List[Pos] = []


@dataclass
class Document:
    """One parsed manifest file."""

    file: str
    text: str
    root: Any = None
    root_pos: Pos = START
    ok: bool = True  # False: a fatal error; root is unusable
    _lines: Optional[List[str]] = field(default=None, repr=False)
    # its schema check's result, once made: a parsed document is never changed, and the
    # daemon's ParseCache hands the same one to every load while its file's bytes are equal
    schema: Optional[Tuple[Any, Any]] = field(default=None, repr=False, compare=False)

    def line(self, n: int) -> Optional[str]:
        """Source line n (1-based), for diagnostics."""
        if self._lines is None:
            self._lines = _LINE_BREAKS.split(self.text)
        if 1 <= n <= len(self._lines):
            return self._lines[n - 1]
        return None

    def loc(self, pos: Pos) -> Location:
        return Location(self.file, pos.line + 1, pos.column + 1)

    def diag(self, pos: Pos, message: str) -> Diagnostic:
        src = self.line(pos.line + 1)
        return Diagnostic(
            Location(self.file, pos.line + 1, pos.column + 1),
            printable(message),
            None if src is None else printable(src),
        )


# ---- scalar resolution (YAML 1.2 core schema) ----------------------------------------------

_NULLS = {"": None, "~": None, "null": None, "Null": None, "NULL": None}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT_DEC = re.compile(r"[-+]?[0-9]+")
_INT_OCT = re.compile(r"0o[0-7]+")
_INT_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
# first characters that can start a non-string plain scalar
_SPECIAL_FIRST = frozenset("0123456789+-.~nNtTfF")
_MAX_NUMBER_CHARS = 100


class _BadScalar(ValueError):
    pass


def resolve_plain(text: str) -> Any:
    """The value of a plain (unquoted, untagged) scalar under the YAML 1.2 core schema."""
    if not text:
        return None
    c = text[0]
    if c not in _SPECIAL_FIRST:
        return text
    if c in "nNtTfF~":  # null, true, false, or a word
        if text in _NULLS:
            return None
        return _BOOLS.get(text, text)
    if text.isdigit() and text.isascii():
        return int(text) if len(text) <= _MAX_NUMBER_CHARS else text
    if len(text) > _MAX_NUMBER_CHARS or text.count(".") > 1 or ":" in text or "/" in text:
        return text  # addresses and CIDRs: no number has these
    if _INT_DEC.fullmatch(text):
        return int(text, 10)
    if _INT_OCT.fullmatch(text):
        return int(text[2:], 8)
    if _INT_HEX.fullmatch(text):
        return int(text[2:], 16)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _INF.fullmatch(text):
        return float("-inf") if text[0] == "-" else float("inf")
    if _NAN.fullmatch(text):
        return float("nan")
    return text


def _resolve_tagged(tag: str, text: str) -> Any:
    if tag == TAG_STR or tag == "!":
        return text
    if len(text) > _MAX_NUMBER_CHARS and tag in (TAG_INT, TAG_FLOAT):
        raise _BadScalar(f"!!{tag[len(_CORE):]} value is too long")
    v = resolve_plain(text)
    if tag == TAG_NULL:
        if v is None:
            return None
    elif tag == TAG_BOOL:
        if isinstance(v, bool):
            return v
    elif tag == TAG_INT:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif tag == TAG_FLOAT:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    raise _BadScalar(f"{text!r} is not a valid !!{tag[len(_CORE):]}")


def _tag_text(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


def type_name(value: Any) -> str:
    """How an operator calls the YAML type of a value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _show_key(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---- decoding --------------------------------------------------------------------------------


class _Fatal(Exception):
    def __init__(self, pos: Pos, message: str):
        super().__init__(message)
        self.pos = pos
        self.message = message


def decode(data: bytes) -> str:
    """UTF-8 (an optional BOM is dropped); raises _Fatal at the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = e.start
        line_start = data.rfind(b"\n", 0, start) + 1
        line = data.count(b"\n", 0, start)
        col = len(data[line_start:start].decode("utf-8", errors="replace"))
        raise _Fatal(
            P(line, col),
            f"not UTF-8: byte 0x{data[start]:02x} cannot be decoded (save the file as UTF-8)",
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


# ---- the event walker ----------------------------------------------------------------------


def _yaml_error_diag(doc: Document, e: YAMLError) -> Diagnostic:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if isinstance(e, MarkedYAMLError):
        problem = e.problem or e.context or "YAML syntax error"
    else:  # ReaderError and friends
        problem = getattr(e, "reason", None) or str(e).splitlines()[0]
    if mark is not None:
        pos = P(mark.line, mark.column)
    else:
        index = getattr(e, "position", None)
        if isinstance(index, int):
            pos = P(doc.text.count("\n", 0, index), index - (doc.text.rfind("\n", 0, index) + 1))
        else:
            pos = START
    src = doc.line(pos.line + 1) or ""
    char = src[pos.column] if 0 <= pos.column < len(src) else ""
    problem = problem.strip()
    if char == "\t" or (problem.startswith("found character") and "\\t" in problem):
        msg = "YAML syntax error: a tab cannot indent or start a value in YAML; use spaces"
    else:
        msg = f"YAML syntax error: {problem}"
        ctx = getattr(e, "context", None) if isinstance(e, MarkedYAMLError) else None
        cmark = getattr(e, "context_mark", None)
        if ctx and cmark is not None and ctx != problem:
            msg += f" ({ctx} started at line {cmark.line + 1} column {cmark.column + 1})"
        if "unexpected ':'" in problem:
            msg += '; inside {...} or [...] quote values that contain ":", e.g. "2001:db8::10"'
    return doc.diag(pos, msg)


def build(doc: Document, diags: List[Diagnostic], pure: bool = False) -> None:
    """Parse doc.text into doc.root; append every problem to diags."""
    try:
        _build(doc, diags, pure)
    except _Fatal as f:
        doc.ok = False
        doc.root = None
        diags.append(doc.diag(f.pos, f.message))
    except YAMLError as e:
        doc.ok = False
        doc.root = None
        diags.append(_yaml_error_diag(doc, e))


def _merge(m: YMap, merged: Set[str], value: Any, pos: Pos, err) -> None:
    """Apply a merge key: keys of the source mapping(s) that m does not have yet."""
    if isinstance(value, dict):
        sources = [value]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        sources = value
    else:
        err(pos, "a merge key '<<' needs a mapping or a list of mappings (e.g. <<: *defaults)")
        return
    for src in sources:  # the first source wins; explicit keys win over all
        kp, vp = getattr(src, "kpos", {}), getattr(src, "vpos", {})
        for k, v in src.items():
            if k in m:
                continue
            m[k] = v
            m.kpos[k] = kp.get(k, pos)
            m.vpos[k] = vp.get(k, pos)
            merged.add(k)


def _build(doc: Document, diags: List[Diagnostic], pure: bool) -> None:
    """The walker. Hot loop: 10,000 containers are ~150,000 events; the state of the
    innermost collection lives in local variables, the outer ones on ``stack``."""
    ScalarEvent = _ev.ScalarEvent
    MappingStartEvent = _ev.MappingStartEvent
    MappingEndEvent = _ev.MappingEndEvent
    SequenceStartEvent = _ev.SequenceStartEvent
    SequenceEndEvent = _ev.SequenceEndEvent
    AliasEvent = _ev.AliasEvent
    DocumentStartEvent = _ev.DocumentStartEvent
    StreamEndEvent = _ev.StreamEndEvent
    max_nodes, max_depth = MAX_NODES, MAX_DEPTH
    special_first = _SPECIAL_FIRST
    scalar_tags = _SCALAR_TAGS

    def err(pos: Pos, message: str) -> None:
        diags.append(doc.diag(pos, message))

    parser = None
    if _CParser is not None and not pure:
        parser = _CParser(doc.text)
        get = parser.get_event
    else:
        from ruamel.yaml import YAML

        get = YAML(typ="safe", pure=True).parse(io.StringIO(doc.text)).__next__

    # the innermost open collection
    cur: Any = None  # YMap / YSeq, None at the top level
    is_map = False
    expect_key = False  # in a mapping: the next value is a key
    key: Optional[str] = None  # in a mapping: the pending key (None: an invalid one)
    kmark: Pos = START
    key_is_merge = False
    merged: Optional[Set[str]] = None  # keys that came from '<<' (explicit ones override)
    anchor: Optional[str] = None
    start_nodes = 0
    stack: List[tuple] = []
    anchors: Dict[str, Tuple[Any, int]] = {}  # anchor -> (value, expanded node count)
    nodes = 0
    documents = 0
    root_set = False
    plain_merge = False
    try:
        while True:
            e = get()
            t = type(e)
            if t is ScalarEvent:
                nodes += 1
                text = e.value
                ctag = e.ctag
                vmark = e.start_mark
                plain_merge = False
                if ctag is None:
                    if e.implicit[0]:  # plain
                        if not text:
                            value = None
                        elif text[0] in special_first:
                            value = resolve_plain(text)
                        else:
                            value = text
                            plain_merge = text == "<<"
                    else:
                        value = text
                else:
                    tag = str(ctag)
                    if tag in scalar_tags:
                        try:
                            value = _resolve_tagged(tag, text)
                        except _BadScalar as b:
                            err(vmark, str(b))
                            value = text
                    else:
                        err(vmark, f"tag {_tag_text(tag)} is not allowed (only {_ALLOWED_TAGS_TEXT})")
                        value = text
                if e.anchor is not None:
                    anchors[e.anchor] = (value, 1)
                if nodes > max_nodes:
                    raise _Fatal(vmark, f"too many values (more than {max_nodes}) in one file")
            elif t is MappingStartEvent or t is SequenceStartEvent:
                nodes += 1
                m = e.start_mark
                if nodes > max_nodes:
                    raise _Fatal(m, f"too many values (more than {max_nodes}) in one file")
                if len(stack) >= max_depth:
                    raise _Fatal(m, f"nested too deeply (more than {max_depth} levels)")
                ctag = e.ctag
                new_is_map = t is MappingStartEvent
                if ctag is not None:
                    tag = str(ctag)
                    if tag != (TAG_MAP if new_is_map else TAG_SEQ) and tag != "!":
                        if tag in _SCALAR_TAGS:
                            kind, fits = ("mapping", "!!map") if new_is_map else ("list", "!!seq")
                            err(m, f"tag {_tag_text(tag)} does not fit a {kind} (use {fits} or no tag)")
                        else:
                            err(m, f"tag {_tag_text(tag)} is not allowed (only {_ALLOWED_TAGS_TEXT})")
                stack.append((cur, is_map, expect_key, key, kmark, key_is_merge, merged, anchor, start_nodes))
                if new_is_map:
                    cur = YMap(m)
                    expect_key = True
                else:
                    cur = YSeq(m)
                    expect_key = False
                is_map = new_is_map
                key, kmark, key_is_merge, merged = None, START, False, None
                anchor, start_nodes = e.anchor, nodes
                plain_merge = False
                continue
            elif t is MappingEndEvent or t is SequenceEndEvent:
                value, vmark = cur, cur.pos
                if anchor is not None:
                    anchors[anchor] = (value, nodes - start_nodes + 1)
                cur, is_map, expect_key, key, kmark, key_is_merge, merged, anchor, start_nodes = stack.pop()
                plain_merge = False
            elif t is AliasEvent:
                vmark = e.start_mark
                got = anchors.get(e.anchor)
                if got is None:
                    raise _Fatal(vmark, f"alias *{e.anchor} refers to no complete anchor &{e.anchor} before it")
                nodes += got[1]
                if nodes > max_nodes:
                    raise _Fatal(vmark, f"aliases expand to more than {max_nodes} values (an alias bomb?); refused")
                value = got[0]
                plain_merge = False
            elif t is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _Fatal(
                        e.start_mark, "a second YAML document in one file; put each manifest in its own file"
                    )
                continue
            elif t is StreamEndEvent:
                break
            else:
                continue

            # deliver value (at vmark) to the enclosing collection
            if cur is None:
                doc.root, doc.root_pos = value, vmark
                root_set = True
            elif not is_map:
                cur.append(value)
                cur.ipos.append(vmark)
            elif expect_key:
                expect_key = False
                kmark = vmark
                key_is_merge = plain_merge
                if type(value) is str:
                    key = value
                elif isinstance(value, (dict, list)):
                    err(vmark, "a key must be a plain string, not a " + type_name(value))
                    key = None
                else:
                    text = _show_key(value)
                    err(vmark, f"key {text} is a {type_name(value)}, not a string; quote it: '{text}'")
                    key = None
            else:
                expect_key = True
                if key is None:
                    continue
                if key_is_merge:
                    if merged is None:
                        merged = set()
                    _merge(cur, merged, value, vmark, err)
                    continue
                if key in cur:
                    if merged is not None and key in merged:
                        merged.discard(key)  # an explicit key wins over a merged one
                    else:
                        fl, fc = lc(cur.kpos[key])
                        err(kmark, f"duplicate key {key!r} (first given at line {fl} column {fc})")
                        continue
                cur[key] = value
                cur.kpos[key] = kmark
                cur.vpos[key] = vmark
    finally:
        if parser is not None:
            parser.dispose()
    if not root_set:
        doc.root = None
        doc.root_pos = START


# ---- entry points ---------------------------------------------------------------------------


def parse_bytes(data: bytes, filename: str, pure: bool = False) -> Tuple[Document, List[Diagnostic]]:
    """Parse one file's bytes; the Document's ok is False on a fatal error."""
    diags: List[Diagnostic] = []
    if len(data) > MAX_FILE_BYTES:
        doc = Document(filename, "", ok=False)
        diags.append(
            Diagnostic(
                Location(filename, 1, 1),
                f"file too large (more than {MAX_FILE_BYTES} bytes; a manifest may have at most "
                f"{MAX_FILE_BYTES // (1024 * 1024)} MiB): refused unread",
            )
        )
        return doc, diags
    try:
        text = decode(data)
    except _Fatal as f:
        # show the line with the bad byte replaced, for the caret
        lines = data.decode("utf-8", errors="replace").split("\n")
        src = lines[f.pos.line] if f.pos.line < len(lines) else None
        doc = Document(filename, "", ok=False)
        diags.append(
            Diagnostic(
                Location(filename, f.pos.line + 1, f.pos.column + 1),
                f.message,
                None if src is None else printable(src),
            )
        )
        return doc, diags
    return parse_text(text, filename, pure=pure, _diags=diags)


def parse_text(
    text: str, filename: str = "<string>", pure: bool = False, _diags: Optional[List[Diagnostic]] = None
) -> Tuple[Document, List[Diagnostic]]:
    """Parse one manifest's text into a Document (values with positions) and problems."""
    diags: List[Diagnostic] = [] if _diags is None else _diags
    if text.startswith("\ufeff"):
        text = text[1:]
    doc = Document(filename, text)
    if len(text) > MAX_FILE_BYTES:
        doc.ok = False
        diags.append(doc.diag(START, f"file too large (a manifest may have at most {MAX_FILE_BYTES} bytes)"))
        return doc, diags
    build(doc, diags, pure=pure)
    return doc, diags


STDIN = "-"  # the path that stands for standard input
STDIN_NAME = "<stdin>"  # how locations name it


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def open_error(path: str, e: OSError) -> str:
    """Why ``path`` cannot be opened, in words that say what to fix: a dangling symlink
    names its target, a symlink loop is called a loop (not "no such file")."""
    if e.errno == errno.ELOOP:
        return "symlink loop: too many levels of symbolic links"
    if e.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"dangling symlink: its target {target} does not exist"
    if e.errno == errno.ENOENT:
        return "no such file or directory"
    return f"cannot read: {e.strerror or e}"


class Unreadable(Exception):
    """A file ``read_regular`` would not or could not read; the message says why."""


def read_regular(path: str, limit: int, not_regular: str) -> bytes:
    """At most ``limit`` bytes of a regular file. Opened without blocking and checked with
    fstat, so a FIFO or a device is refused (``"<its kind>, " + not_regular``) instead of
    hanging the reader; Unreadable with the reason otherwise (missing, dangling, a loop, ...)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise Unreadable(open_error(path, e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"{file_kind(st.st_mode)}, {not_regular}")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read(limit)
    except OSError as e:
        raise Unreadable(f"cannot read: {e.strerror or e}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def read_bytes(path: str) -> Tuple[Optional[bytes], Optional[Tuple[Document, List[Diagnostic]]]]:
    """One manifest file's bytes (at most MAX_FILE_BYTES + 1 are read), or the error result.

    Only regular files are read: opened without blocking and checked with fstat, so a FIFO
    or a device named ``*.yaml`` is refused instead of hanging the loader. ``-`` is
    standard input (named ``<stdin>`` in locations)."""

    def failed(message: str):
        name = STDIN_NAME if path == STDIN else path
        return None, (Document(name, "", ok=False), [Diagnostic(Location(name, 0, 0), message)])

    if path == STDIN:
        try:
            return sys.stdin.buffer.read(MAX_FILE_BYTES + 1), None
        except (OSError, AttributeError, ValueError) as e:
            return failed(f"cannot read standard input: {getattr(e, 'strerror', None) or e}")
    try:
        return read_regular(path, MAX_FILE_BYTES + 1, "not a manifest file (only regular files are read)"), None
    except Unreadable as e:
        return failed(str(e))


def read_file(path: str) -> Tuple[Document, List[Diagnostic]]:
    """Read and parse one manifest file (``-``: standard input)."""
    data, failed = read_bytes(path)
    if data is None:
        assert failed is not None
        return failed
    return parse_bytes(data, STDIN_NAME if path == STDIN else path)


# ---- positions of values --------------------------------------------------------------------


def position_of(root: Any, path: Sequence[Any], root_pos: Pos = START, key: bool = False) -> Pos:
    """Position of the value at ``path`` (a JSON-pointer-like sequence of keys and
    indexes, e.g. a jsonschema error's ``absolute_path``) under ``root``; with
    ``key=True``, of the key that names it (for a mapping entry). Falls back to the
    deepest known position."""
    node, pos = root, root_pos
    n = len(path)
    for i, step in enumerate(path):
        if isinstance(node, YMap) and not isinstance(step, int) and step in node:
            if key and i == n - 1:
                return node.kpos.get(step, pos)
            pos = node.vpos.get(step, pos)
            node = node[step]
        elif isinstance(node, YSeq) and isinstance(step, int) and 0 <= step < len(node):
            pos = node.ipos[step]
            node = node[step]
        else:
            break
    return pos


def key_position(mapping: Any, key: str, default: Pos) -> Pos:
    if isinstance(mapping, YMap):
        return mapping.kpos.get(key, default)
    return default
