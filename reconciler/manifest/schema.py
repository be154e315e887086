"""JSON Schema validation of one manifest, with operator-friendly, positioned messages.

The schema (``schemas/manifest-v1.schema.json``, shipped as package data in
``reconciler/schemas/``, a symlink to it) is the reference. Whether a document is valid is decided by
fastjsonschema (the schema compiled to Python once per process); jsonschema
(``Draft202012Validator``) is imported and run only for documents that fail, entry by
entry, for the errors and their words (jsonschema alone takes about 1.3 s for 10,000
containers; the numbers are in docs/ARCHITECTURE.md). Tests check that both agree.
"""
from __future__ import annotations

import copy
import functools
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Sequence, Set, Tuple

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

    return jsonschema.Draft202012Validator(_def_schema(name))


# ---- the fast path: fastjsonschema ---------------------------------------------------------

Check = Callable[[Any], bool]


def _compiled(definition: Dict[str, Any]) -> Check:
    """fastjsonschema's compiled validator of ``definition`` as a predicate. It leaves the
    document alone (no defaults filled in) and checks no ``format`` (jsonschema, which
    words the errors, checks none either: addresses are the semantic layer's). It gets a
    copy: fastjsonschema rewrites the ``$ref`` values of what it compiles in place."""
    import fastjsonschema

    validate = fastjsonschema.compile(copy.deepcopy(definition), use_default=False, use_formats=False)
    invalid = fastjsonschema.JsonSchemaValueException

    def check(instance: Any) -> bool:
        try:
            validate(instance)
        except invalid:
            return False
        return True

    return check


def _def_schema(name: str) -> Dict[str, Any]:
    s = schema()
    return {"$schema": s["$schema"], "$defs": s["$defs"], "$ref": f"#/$defs/{name}"}


def _lazy_compiled(def_name: str) -> Check:
    """``_compiled(_def_schema(def_name))``, compiled on the first call."""
    compiled: List[Check] = []

    def check(instance: Any) -> bool:
        if not compiled:
            compiled.append(_compiled(_def_schema(def_name)))
        return compiled[0](instance)

    return check


@functools.lru_cache(maxsize=None)
def _fast() -> Tuple[Check, Dict[str, Check], Check]:
    """(whole manifest, each section's entries, the manifest without its entries).

    The whole-manifest check is the other two together (the full schema is the shallow one
    with each section's entries following their $defs entry): compiling it separately would
    generate all of it twice (fastjsonschema compiles at run time, in each process). Each
    section's check is compiled when first called: a manifest without ``hosts:`` or
    ``vlans:`` does not pay for theirs (compiling all five is most of a small plan's CPU)."""
    entry = {d: _lazy_compiled(d) for d in SECTIONS.values()}
    shallow = _compiled(_shallow_schema())
    sections = tuple((sec, entry[d]) for sec, d in SECTIONS.items())

    def whole(root: Any) -> bool:
        if not shallow(root):
            return False
        for sec, check in sections:
            entries = root.get(sec)
            if isinstance(entries, dict):
                for v in entries.values():
                    if not check(v):
                        return False
        return True

    return whole, entry, shallow


def is_valid(instance: Any) -> bool:
    """Schema validity of a whole manifest (the fast path)."""
    return _fast()[0](instance)


# ---- errors with positions and plain messages ----------------------------------------------


def iter_errors(root: Any) -> Iterable[Tuple[Tuple[Any, ...], jsonschema.ValidationError]]:
    """Every schema error of a manifest as (absolute path, error); nothing when valid."""
    fast = _fast()
    if fast[0](root):
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
    if len(path) >= 2 and path[0] in _KIND:
        words.append(f"{_KIND[path[0]]} {path[1]}")
        if path[0] == "networks" and len(path) >= 4 and path[2] == "subnets" and isinstance(path[3], int):
            words.append(f"subnet {path[3] + 1}")
        elif path[0] == "containers" and len(path) >= 4 and path[2] == "networks":
            words.append(f"network {path[3]}")
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
    import difflib  # only for a misspelt word: not on a valid manifest's path

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
