"""The JSON Schema: shipped with the package, valid Draft 2020-12, and the fast path
(fastjsonschema) agrees with jsonschema."""
from __future__ import annotations

import glob
import json
import os
import time

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.manifest import load, parse_text, schema, yamlload
from reconciler.errors import ManifestError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = os.path.join(ROOT, "schemas", "manifest-v1.schema.json")
PACKAGED = os.path.join(ROOT, "reconciler", "schemas", "manifest-v1.schema.json")


def test_one_schema_file_the_package_data_links_to_it():
    # schemas/ is the documented location; pyproject ships reconciler/schemas/*.json, a
    # relative symlink to it (wheels and sdists carry the file's content, not the link)
    assert not os.path.islink(SCHEMA)
    assert os.path.islink(PACKAGED) and os.readlink(PACKAGED) == "../../schemas/manifest-v1.schema.json"
    assert os.path.samefile(schema.schema_path(), SCHEMA)


def test_schema_is_valid_draft_2020_12():
    s = json.load(open(SCHEMA))
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] and s["title"] and s["description"]


def _objects(node, path=()):
    if isinstance(node, dict):
        if node.get("type") == "object" or node.get("type") == ["object", "null"]:
            yield path, node
        for k, v in node.items():
            if k not in ("examples", "default", "const", "enum"):
                yield from _objects(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, path + (i,))


def test_every_object_is_closed_or_a_name_map():
    s = json.load(open(SCHEMA))
    for path, node in _objects(s):
        addl = node.get("additionalProperties")
        assert addl is False or (isinstance(addl, dict) and "propertyNames" in node) or addl == {"type": "string"}, path


def test_schema_examples_are_valid():
    s = json.load(open(SCHEMA))
    v = jsonschema.Draft202012Validator(s)
    for ex in s["examples"]:
        assert v.is_valid(ex)
    for name, d in s["$defs"].items():
        dv = schema._def_validator(name) if name in schema.SECTIONS.values() else None
        for ex in d.get("examples", []):
            sub = jsonschema.Draft202012Validator({"$defs": s["$defs"], "$ref": f"#/$defs/{name}"})
            assert sub.is_valid(ex), (name, ex)
            if dv is not None:
                assert dv.is_valid(ex)


def test_the_fast_path_changes_neither_the_schema_nor_the_document():
    """fastjsonschema rewrites the $refs of what it compiles and fills in defaults unless
    told not to: the schema jsonschema words errors with, and the manifest, stay as read."""
    before = json.dumps(schema.schema(), sort_keys=True)
    schema._fast.cache_clear()
    for check in schema._fast()[1].values():  # each section's check compiles on its first call
        check({})
    assert json.dumps(schema.schema(), sort_keys=True) == before
    doc = {"version": 1, "networks": {"n1": {"parent": "eth0", "subnets": [{"subnet": "10.0.0.0/24"}]}},
           "containers": {"c1": {"networks": {"n1": {}}}}}
    kept = json.loads(json.dumps(doc))
    assert schema.is_valid(doc)
    assert doc == kept


def _docs():
    for f in sorted(glob.glob(os.path.join(ROOT, "tests", "bad", "**", "*.y*ml"), recursive=True)) + sorted(
        glob.glob(os.path.join(ROOT, "manifests", "**", "*.yaml"), recursive=True)
    ):
        doc, _ = yamlload.read_file(f)
        if doc.ok:
            yield f, doc.root


def test_fast_checker_agrees_with_jsonschema_on_the_corpus():
    v = schema.validator()
    n = 0
    for f, root in _docs():
        assert schema.is_valid(root) == v.is_valid(root), f
        assert schema._fast()[2](root) == schema._shallow_validator().is_valid(root), f
        n += 1
    assert n > 40


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=False) |
    st.sampled_from(["l2", "l3", "bridge", "eth0", "eth0.20", "lo", "a b", "10.0.0.0/24", "", "x" * 70]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["version", "networks", "vlans", "containers", "parent", "ipvlan_mode", "ipvlan_flag",
                         "internal", "ipv6", "subnets", "subnet", "gateway", "ip_range", "aux_addresses",
                         "link", "id", "ip", "ip6", "aliases", "n1", "c1", "bogus"]),
        children,
        max_size=4,
    ),
    max_leaves=20,
)


@st.composite
def near_manifests(draw):
    doc = {"version": draw(st.sampled_from([1, 1, 1, 2, "1", True, 1.0]))}
    for sec in draw(st.lists(st.sampled_from(["networks", "vlans", "containers"]), unique=True)):
        doc[sec] = draw(st.dictionaries(st.sampled_from(["a", "b", "n1", "eth0.5", "a b", ""]), json_values, max_size=3))
    return doc


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, near_manifests()))
def test_fast_checker_agrees_with_jsonschema(value):
    assert schema.is_valid(value) == schema.validator().is_valid(value)
    assert schema._fast()[2](value) == schema._shallow_validator().is_valid(value)
    # and the per-entry error path finds errors exactly when there are some
    assert (not list(schema.iter_errors(value))) == schema.validator().is_valid(value)


def test_schema_errors_are_plain_sentences():
    with pytest.raises(ManifestError) as ei:
        parse_text("version: 1\nnetworks:\n  a:\n    subnets: {subnet: 10.0.0.0/24}\n", "m.yaml")
    (d,) = ei.value.diagnostics
    assert str(d.loc) == "m.yaml:4:14"
    assert d.message == "network a: subnets must be a list, not a mapping"


def test_big_manifest_loads_fast(tmp_path):
    """10,000 containers on 20 networks: YAML + schema + semantic (sanity bound, not a benchmark)."""
    lines = ["version: 1", "networks:"]
    for i in range(20):
        lines += [f"  net{i}:", f"    parent: eth0.{i + 10}", "    subnets:", f"      - subnet: 10.{i}.0.0/16"]
    lines.append("containers:")
    for j in range(10000):
        i = j % 20
        lines += [f"  c{j}:", "    networks:", f"      net{i}:", f"        ip: 10.{i}.{j // 250}.{j % 250 + 2}"]
    p = tmp_path / "big.yaml"
    p.write_text("\n".join(lines) + "\n")
    t = time.process_time()
    state = load([str(p)])
    cpu = time.process_time() - t
    assert len(state.containers) == 10000
    assert cpu < 5, f"{cpu:.2f} s CPU"


def test_jsonschema_is_imported_only_for_a_manifest_with_schema_errors(tmp_path):
    """The compiled checker decides validity; jsonschema (a fifth of start-up) only words
    the errors. Fresh interpreters: this process has imported it already."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nnetworks:\n  n1: {parnet: eth0}\n")
    code = (
        "import sys\nfrom reconciler.manifest import load\nfrom reconciler.errors import ManifestError\n"
        "try:\n    load([sys.argv[1]])\nexcept ManifestError:\n    pass\nprint('jsonschema' in sys.modules)\n"
    )
    examples = os.path.join(os.path.dirname(__file__), "..", "..", "manifests", "examples")
    for path, imported in ((examples, "False"), (str(bad), "True")):
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == imported, (path, out.stdout, out.stderr)
