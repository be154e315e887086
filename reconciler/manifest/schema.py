"""JSON Schema validation of one manifest, with operator-friendly, positioned messages.

The schema (``schemas/manifest-v1.schema.json``, shipped as package data in
``reconciler/schemas/``) is the reference; ``jsonschema.Draft202012Validator``
produces every error. jsonschema is slow on large documents (about 1.3 s for
10,000 containers), so a valid document is first confirmed by a small
compiled checker (:func:`compile_checker`) that evaluates exactly the keywords
the schema uses, as plain Python closures (about 30x faster). Only documents
or entries that fail it go through jsonschema, entry by entry, for the
messages. A schema keyword the compiler does not know disables the fast path
(everything goes through jsonschema), so a schema change can make validation
slower, never wrong; tests check that both agree.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

if TYPE_CHECKING:  # pragma: no cover
    import jsonschema  # imported where used: only a manifest with errors needs it (1/5 of startup)

from ..errors import Diagnostic
from .yamlload import Document, key_position, position_of, type_name

SCHEMA_NAME = "manifest-v1.schema.json"
# section -> the $defs entry its values follow
SECTIONS = {"networks": "network", "vlans": "vlan", "containers": "container", "hosts": "host"}


def schema_path() -> str:
    """The schema file: the package copy (always installed), else the repository's."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packaged = os.path.join(here, "schemas", SCHEMA_NAME)
    if os.path.exists(packaged):
        return packaged
    return os.path.join(os.path.dirname(here), "schemas", SCHEMA_NAME)  # pragma: no cover


@functools.lru_cache(maxsize=None)
def schema() -> Dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def validator() -> jsonschema.Draft202012Validator:
    """The full validator of a manifest (built once)."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def _shallow_schema() -> Dict[str, Any]:
    """The root schema without descending into section entries (names still checked)."""
    s = copy.deepcopy(schema())
    for sec in SECTIONS:
        s["properties"][sec]["additionalProperties"] = True
    return s


@functools.lru_cache(maxsize=None)
def _shallow_validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(_shallow_schema())


@functools.lru_cache(maxsize=None)
def _def_validator(name: str) -> jsonschema.Draft202012Validator:
    import jsonschema

    s = schema()
    return jsonschema.Draft202012Validator({"$schema": s["$schema"], "$defs": s["$defs"], "$ref": f"#/$defs/{name}"})


# ---- the fast checker ----------------------------------------------------------------------


class Unsupported(Exception):
    """The schema uses a keyword the fast checker does not implement."""


_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "examples", "default", "format", "$comment"}
Check = Callable[[Any], bool]


def _is_int(x: Any) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer())


_TYPES: Dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": _is_int,
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def _equal(a: Any, b: Any) -> bool:
    """JSON Schema equality: true is not 1, 1.0 is 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _all(checks: List[Check]) -> Check:
    """A predicate true when every check is (no generator: this runs per value)."""
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda x: a(x) and b(x)
    if len(checks) == 3:
        a, b, c = checks
        return lambda x: a(x) and b(x) and c(x)

    def every(x: Any) -> bool:
        for f in checks:
            if not f(x):
                return False
        return True

    return every


_KNOWN = {
    "$ref", "type", "const", "enum", "required", "properties", "additionalProperties",
    "propertyNames", "pattern", "maxLength", "minLength", "minimum", "maximum",
    "maxItems", "minItems", "uniqueItems", "items", "maxProperties", "minProperties",
}


def _size_bounds(s: Dict[str, Any], max_key: str, min_key: str) -> List[Check]:
    """len() bounds (maxProperties/minProperties, maxLength/minLength, maxItems/minItems)."""
    out: List[Check] = []
    if max_key in s:
        hi = s[max_key]
        out.append(lambda x, hi=hi: len(x) <= hi)
    if min_key in s:
        lo = s[min_key]
        out.append(lambda x, lo=lo: len(x) >= lo)
    return out


def _each(check: Check) -> Check:
    """True when every member passes: a dict's keys (propertyNames), a list's items."""

    def each(x: Any) -> bool:
        for v in x:
            if not check(v):
                return False
        return True

    return each


def compile_checker(root: Dict[str, Any], node: Optional[Dict[str, Any]] = None) -> Check:
    """Compile a (sub)schema of ``root`` into a predicate equal to jsonschema's
    ``is_valid`` for the keywords listed in ``_KNOWN`` (others raise Unsupported)."""
    refs: Dict[str, Check] = {}

    def ref(target: str) -> Check:
        if target in refs:
            return refs[target]
        if not target.startswith("#/$defs/"):
            raise Unsupported(f"$ref {target}")
        cell: List[Check] = []
        refs[target] = lambda x: cell[0](x)  # a recursive reference sees the final check
        cell.append(comp(root["$defs"][target[len("#/$defs/"):]]))
        refs[target] = cell[0]
        return cell[0]

    def comp(s: Any) -> Check:
        if s is True:
            return lambda x: True
        if s is False:
            return lambda x: False
        if not isinstance(s, dict):
            raise Unsupported(repr(s))
        unknown = set(s) - _ANNOTATIONS - _KNOWN
        if unknown:
            raise Unsupported(", ".join(sorted(unknown)))
        checks: List[Check] = []
        if "$ref" in s:
            checks.append(ref(s["$ref"]))
        if "type" in s:
            ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
            if ts == ["object", "null"]:
                checks.append(lambda x: x is None or isinstance(x, dict))
            elif len(ts) == 1:
                checks.append(_TYPES[ts[0]])
            else:
                tfs = [_TYPES[t] for t in ts]
                checks.append(lambda x, tfs=tfs: any(f(x) for f in tfs))
        if "const" in s:
            c = s["const"]
            checks.append(lambda x, c=c: _equal(x, c))
        if "enum" in s:
            en = s["enum"]
            if all(isinstance(v, str) for v in en):
                es = frozenset(en)
                checks.append(lambda x, es=es: isinstance(x, str) and x in es)
            else:
                checks.append(lambda x, en=en: any(_equal(x, v) for v in en))
        # object keywords: one function, one isinstance
        obj: List[Check] = []
        if "required" in s:
            req = tuple(s["required"])
            obj.append(lambda x, req=req: all(k in x for k in req))
        obj += _size_bounds(s, "maxProperties", "minProperties")
        if "propertyNames" in s:
            obj.append(_each(comp(s["propertyNames"])))
        if "properties" in s or "additionalProperties" in s:
            props = {k: comp(v) for k, v in s.get("properties", {}).items()}
            addl = s.get("additionalProperties", True)
            if addl is False:

                def check_props(x: dict, props: Dict[str, Check] = props) -> bool:
                    get = props.get
                    for k, v in x.items():
                        p = get(k)
                        if p is None or not p(v):
                            return False
                    return True

            else:
                addl_check = comp(addl)

                def check_props(x: dict, props: Dict[str, Check] = props, addl_check: Check = addl_check) -> bool:
                    get = props.get
                    for k, v in x.items():
                        p = get(k, addl_check)
                        if not p(v):
                            return False
                    return True

            obj.append(check_props)
        if obj:
            o = _all(obj)
            checks.append(lambda x, o=o: not isinstance(x, dict) or o(x))
        # string keywords
        st: List[Check] = []
        if "pattern" in s:
            rx = re.compile(s["pattern"])
            st.append(lambda x, search=rx.search: search(x) is not None)
        st += _size_bounds(s, "maxLength", "minLength")
        if st:
            sc = _all(st)
            checks.append(lambda x, sc=sc: not isinstance(x, str) or sc(x))
        # number keywords
        if "minimum" in s or "maximum" in s:
            lo, hi = s.get("minimum"), s.get("maximum")

            def num(x: Any, lo: Any = lo, hi: Any = hi) -> bool:
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    return True
                return (lo is None or x >= lo) and (hi is None or x <= hi)

            checks.append(num)
        # array keywords
        arr: List[Check] = []
        arr += _size_bounds(s, "maxItems", "minItems")
        if "items" in s:
            arr.append(_each(comp(s["items"])))
        if s.get("uniqueItems") is True:
            arr.append(_unique)
        if arr:
            ac = _all(arr)
            checks.append(lambda x, ac=ac: not isinstance(x, list) or ac(x))
        return _all(checks)

    return comp(root if node is None else node)


def _unique(items: list) -> bool:
    if all(isinstance(v, str) for v in items):
        return len(set(items)) == len(items)
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            if _equal(a, b):
                return False
    return True


@functools.lru_cache(maxsize=None)
def _fast() -> Optional[Tuple[Check, Dict[str, Check], Check]]:
    """(whole manifest, each section's entries, the manifest without its entries)."""
    s = schema()
    try:
        return (
            compile_checker(s),
            {d: compile_checker(s, s["$defs"][d]) for d in SECTIONS.values()},
            compile_checker(_shallow_schema()),
        )
    except Unsupported:  # pragma: no cover - only when the schema grows a new keyword
        return None


def is_valid(instance: Any) -> bool:
    """Schema validity of a whole manifest (fast path when available)."""
    fast = _fast()
    if fast is None:
        return validator().is_valid(instance)
    return fast[0](instance)


# ---- errors with positions and plain messages ----------------------------------------------


def iter_errors(root: Any) -> Iterable[Tuple[Tuple[Any, ...], jsonschema.ValidationError]]:
    """Every schema error of a manifest as (absolute path, error); nothing when valid."""
    fast = _fast()
    if fast is not None and fast[0](root):
        return
    if fast is None:
        for e in validator().iter_errors(root):
            yield tuple(e.absolute_path), e
        return
    if not fast[2](root):  # jsonschema only where something is wrong (10,000 names: 0.3 s)
        for e in _shallow_validator().iter_errors(root):
            yield tuple(e.absolute_path), e
    if not isinstance(root, dict):
        return
    for sec, def_name in SECTIONS.items():
        entries = root.get(sec)
        if not isinstance(entries, dict):
            continue
        check = fast[1][def_name]
        for name, entry in entries.items():
            if check(entry):
                continue
            for e in _def_validator(def_name).iter_errors(entry):
                yield (sec, name) + tuple(e.absolute_path), e


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}
_KIND = {"networks": "network", "vlans": "vlan", "containers": "container", "hosts": "host"}


def describe(path: Sequence[Any]) -> str:
    """Words for where a path points: 'network db_net subnet 2', 'container c1 network n1'."""
    words: List[str] = []
    i = 0
    if len(path) >= 2 and path[0] in _KIND:
        words.append(f"{_KIND[path[0]]} {path[1]}")
        i = 2
        if path[0] == "networks" and len(path) >= 4 and path[2] == "subnets" and isinstance(path[3], int):
            words.append(f"subnet {path[3] + 1}")
            i = 4
        elif path[0] == "containers" and len(path) >= 4 and path[2] == "networks":
            words.append(f"network {path[3]}")
            i = 4
    return " ".join(words)


def _field(path: Sequence[Any]) -> str:
    """The name of the key a value sits under ('ipvlan_mode', 'aliases item 2', 'network db')."""
    if not path:
        return "the file"
    last = path[-1]
    if isinstance(last, int):
        return f"{path[-2] if len(path) >= 2 else 'list'} item {last + 1}"
    if len(path) == 2 and path[0] in _KIND:
        return f"{_KIND[path[0]]} {last}"
    if len(path) == 4 and path[0] == "containers" and path[2] == "networks":
        return f"network {last}"
    if len(path) >= 2 and path[-2] == "aux_addresses":
        return f"aux address {last}"
    return str(last)


def _prefix(path: Sequence[Any]) -> str:
    d = describe(path)
    return f"{d}: " if d else ""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return f"a {type_name(value)}"
    return str(value)


def _allowed_keys(schema_node: Dict[str, Any]) -> List[str]:
    props = schema_node.get("properties", {})
    return list(props)


def _suggest(word: str, choices: Sequence[str]) -> str:
    m = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def diagnostics(doc: Document) -> Tuple[List[Diagnostic], Set[Tuple[Any, ...]]]:
    """Schema errors of one document, positioned; and what they concern:
    ``(section, name)`` one entry, ``("*",)`` an unknown top-level key (entries are
    fine but some names may be missing), ``()`` the file as a whole."""
    out: List[Diagnostic] = []
    where: Set[Tuple[Any, ...]] = set()
    seen: Set[Tuple[Any, ...]] = set()
    root = doc.root
    for path, e in iter_errors(root):
        if len(path) >= 2 and path[0] in SECTIONS:
            where.add(path[:2])
        elif len(path) == 1 and path[0] in SECTIONS and "propertyNames" in e.relative_schema_path:
            where.add((path[0], e.instance))  # a bad name: that entry only
        elif path and path[0] == "bgp":
            where.add(("bgp",))  # the bgp section only (reconciler.manifest.fleet skips it)
        elif not path and e.validator == "additionalProperties":
            where.add(("*",))  # an unknown top-level key: entries are fine, names may be missing
        else:
            where.add(())  # the file as a whole (not a mapping, wrong version, a section's type)
        for pos, msg in _messages(root, doc.root_pos, path, e):
            k = (pos.line, pos.column, msg)  # marks of the pure-Python parser are unhashable
            if k in seen:
                continue
            seen.add(k)
            out.append(doc.diag(pos, msg))
    return out, where


def _messages(root: Any, root_pos, path: Tuple[Any, ...], e: jsonschema.ValidationError):
    kw = e.validator
    inst = e.instance
    here = position_of(root, path, root_pos)
    pre = _prefix(path)
    if "propertyNames" in e.relative_schema_path:
        # inst is the offending key of the mapping at path
        kpos = key_position(_at(root, path), inst, here)
        if path and path[-1] in _KIND and (len(path) == 1 or path[0] == "containers"):
            what = f"{_KIND[path[-1]]} name {inst!r}"
        elif path and path[-1] == "aux_addresses":
            what = f"aux address name {inst!r}"
        else:
            what = f"name {inst!r}"
        desc = e.schema.get("description") if isinstance(e.schema, dict) else None
        if kw == "maxLength":
            yield kpos, f"{pre}{what} is too long ({len(inst)} characters; at most {e.validator_value})"
        else:
            yield kpos, f"{pre}{what} is not valid: expected {desc or 'a valid name'}"
        return
    if kw == "additionalProperties" and e.validator_value is False and isinstance(inst, dict):
        allowed = _allowed_keys(e.schema)
        for k in inst:
            if k in allowed:
                continue
            kpos = key_position(inst, k, here)
            hint = _suggest(k, allowed) or (f" (allowed: {', '.join(allowed)})" if allowed else "")
            yield kpos, f"{pre}unknown key {k!r}{hint}"
        return
    if kw == "required" and isinstance(inst, dict):
        ppos = position_of(root, path, root_pos, key=True) if path else root_pos
        for k in e.validator_value:
            if k in inst:
                continue
            if not path and k == "version":
                yield ppos, "not a manifest: `version: 1` is missing (every manifest file starts with it)"
            else:
                yield ppos, f"{pre}missing required key {k!r}"
        return
    field = _field(path)
    pre = _prefix(path[:-1])  # the entry the value belongs to
    if kw == "type":
        want = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        words = [_TYPE_WORDS.get(t, t) for t in want if t != "null"] or ["empty"]
        if not path:
            yield here, f"not a manifest: the file must be a mapping starting with `version: 1`, not a {type_name(inst)}"
            return
        yield here, f"{pre}{field} must be {' or '.join(words)}, not {type_name(inst)} {_show(inst)}".replace(
            f"not {type_name(inst)} a {type_name(inst)}", f"not a {type_name(inst)}"
        )
        return
    if kw == "const":
        if path == ("version",):
            yield here, (
                f"unsupported manifest version {_show(inst)}: this reconciler reads version 1 "
                "(`version: 1`)"
            )
        else:
            yield here, f"{pre}{field} must be {_show(e.validator_value)}, not {_show(inst)}"
        return
    if kw == "enum":
        choices = [str(c) for c in e.validator_value]
        sug = _suggest(str(inst), choices) if isinstance(inst, str) else ""
        yield here, f"{pre}{field} must be one of {', '.join(choices)}, not {_show(inst)}{sug}"
        return
    if kw in ("minimum", "maximum"):
        lo, hi = e.schema.get("minimum"), e.schema.get("maximum")
        rng = f"{lo}-{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        yield here, f"{pre}{field} {_show(inst)} is out of range {rng}"
        return
    if kw in ("pattern", "maxLength", "minLength"):
        desc = e.schema.get("description") if isinstance(e.schema, dict) else None
        if kw == "maxLength" and not desc:
            yield here, f"{pre}{field} is too long ({len(inst)} characters; at most {e.validator_value})"
        else:
            yield here, f"{pre}{field} {_show(inst)} is not valid: expected {desc or 'a match of ' + e.validator_value}"
        return
    if kw in ("maxProperties", "maxItems", "uniqueItems") and path:
        here = position_of(root, path, root_pos, key=True)  # the key that holds the collection
    if kw == "maxProperties":
        if len(path) >= 1 and path[-1] == "networks" and path[0] == "containers":
            yield here, (
                f"{pre}attached to {len(inst)} networks; a container can have at most "
                f"{e.validator_value} (eth0-eth{e.validator_value - 1})"
            )
        else:
            yield here, f"{pre}{field} has {len(inst)} entries; at most {e.validator_value} are allowed"
        return
    if kw == "maxItems":
        yield here, f"{pre}{field} has {len(inst)} items; at most {e.validator_value} are allowed"
        return
    if kw == "uniqueItems":
        seen: List[Any] = []
        for i, v in enumerate(inst):
            if any(_equal(v, s) for s in seen):
                ipos = inst.ipos[i] if hasattr(inst, "ipos") else here
                yield ipos, f"{pre}{field} lists {_show(v)} twice"
                break
            seen.append(v)
        else:
            yield here, f"{pre}{field} has duplicate items"
        return
    yield here, f"{pre}{field}: {e.message}"


def _at(root: Any, path: Sequence[Any]) -> Any:
    node = root
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node
