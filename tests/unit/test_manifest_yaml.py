"""The YAML layer: YAML 1.2 core scalars, positions, hostile input, both parsers alike."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.manifest import yamlload
from reconciler.manifest.yamlload import YMap, YSeq, lc, parse_bytes, parse_text, position_of, resolve_plain

PARSERS = [False, True] if yamlload._CParser is not None else [True]


def parse(text: str, pure: bool = False):
    doc, diags = parse_text(text, "t.yaml", pure=pure)
    return doc, [f"{d.loc.line}:{d.loc.col}: {d.message}" for d in diags]


@pytest.mark.parametrize(
    "text,value",
    [
        ("", None), ("~", None), ("null", None), ("Null", None), ("NULL", None),
        ("true", True), ("True", True), ("FALSE", False),
        ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"),  # YAML 1.1 booleans are strings
        ("0", 0), ("42", 42), ("-7", -7), ("+3", 3), ("0o17", 15), ("0x1f", 31),
        ("1.5", 1.5), ("-.5", -0.5), ("1e3", 1000.0), (".inf", math.inf), ("-.Inf", -math.inf),
        ("010", 10),  # 1.2: decimal, not octal
        ("2001:db8::10", "2001:db8::10"), ("192.168.1.0/24", "192.168.1.0/24"), ("10.0.0.1", "10.0.0.1"),
        ("12:30", "12:30"),  # 1.1 sexagesimal is a string in 1.2
        ("eth0.20", "eth0.20"), ("nan", "nan"), ("0b101", "0b101"), ("1_000", "1_000"),
        ("2024-01-01", "2024-01-01"),  # no timestamps in the core schema
    ],
)
def test_plain_scalars_resolve_per_yaml_12_core(text, value):
    assert resolve_plain(text) == value and type(resolve_plain(text)) is type(value)


def test_nan():
    assert math.isnan(resolve_plain(".nan"))


@pytest.mark.parametrize("pure", PARSERS)
def test_quoted_and_tagged_scalars(pure):
    doc, errs = parse('a: "1"\nb: \'true\'\nc: !!str 12\nd: !!int "12"\ne: !!float 1\nf: |\n  x\ng: !!null ""\nh: ! 5\n', pure)
    assert errs == []
    assert doc.root == {"a": "1", "b": "true", "c": "12", "d": 12, "e": 1.0, "f": "x\n", "g": None, "h": "5"}


@pytest.mark.parametrize("pure", PARSERS)
def test_bad_tagged_values(pure):
    _, errs = parse("a: !!int abc\nb: !!bool 1\n", pure)
    assert errs == ["1:4: 'abc' is not a valid !!int", "2:4: '1' is not a valid !!bool"]


@pytest.mark.parametrize("pure", PARSERS)
def test_positions_of_keys_and_values(pure):
    doc, errs = parse("version: 1\nnetworks:\n  db_net:\n    subnets:\n      - subnet: 10.0.0.0/24\n        gateway: 10.0.0.1\n", pure)
    assert errs == []
    root = doc.root
    assert isinstance(root, YMap) and isinstance(root["networks"]["db_net"]["subnets"], YSeq)
    assert lc(root.kpos["networks"]) == (2, 1)
    assert lc(root["networks"].kpos["db_net"]) == (3, 3)
    path = ("networks", "db_net", "subnets", 0, "gateway")
    assert lc(position_of(root, path)) == (6, 18)
    assert lc(position_of(root, path, key=True)) == (6, 9)
    assert lc(position_of(root, ("networks", "db_net", "subnets", 0))) == (5, 9)
    assert lc(position_of(root, ("networks", "nope", "x"))) == (3, 3)  # deepest known: the mapping value


@pytest.mark.parametrize("pure", PARSERS)
def test_duplicate_keys_report_both_positions(pure):
    doc, errs = parse("a:\n  x: 1\n  y: 2\n  x: 3\n", pure)
    assert errs == ["4:3: duplicate key 'x' (first given at line 2 column 3)"]
    assert doc.root == {"a": {"x": 1, "y": 2}}  # the first one is kept


@pytest.mark.parametrize("pure", PARSERS)
def test_merge_keys(pure):
    doc, errs = parse("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n  z: 4\nn:\n  y: 3\n  <<: [*b, {w: 5}]\n", pure)
    assert errs == []
    assert doc.root["m"] == {"x": 1, "y": 3, "z": 4}
    assert doc.root["n"] == {"y": 3, "x": 1, "w": 5}
    assert lc(doc.root["m"].kpos["x"]) == (1, 11)  # merged keys point at their definition


@pytest.mark.parametrize("pure", PARSERS)
def test_quoted_merge_key_is_a_plain_key(pure):
    doc, errs = parse('m:\n  "<<": {x: 1}\n', pure)
    assert errs == [] and doc.root == {"m": {"<<": {"x": 1}}}


@pytest.mark.parametrize("pure", PARSERS)
def test_merge_needs_mappings(pure):
    _, errs = parse("m:\n  <<: 5\n", pure)
    assert errs == ["2:7: a merge key '<<' needs a mapping or a list of mappings (e.g. <<: *defaults)"]


@pytest.mark.parametrize("pure", PARSERS)
def test_aliases_share_values(pure):
    doc, errs = parse("a: &x [1, 2]\nb: *x\n", pure)
    assert errs == [] and doc.root == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize("pure", PARSERS)
def test_alias_bomb_refused_fast(pure):
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    doc, errs = parse("\n".join(lines) + "\n", pure)
    assert not doc.ok and len(errs) == 1 and "alias bomb" in errs[0]


@pytest.mark.parametrize("pure", PARSERS)
def test_deep_nesting_refused(pure):
    doc, errs = parse("a: " + "[" * 1000 + "]" * 1000 + "\n", pure)
    assert not doc.ok and errs == ["1:67: nested too deeply (more than 64 levels)"]
    doc, errs = parse("a: " + "[" * 63 + "]" * 63 + "\n", pure)
    assert doc.ok and errs == []


def test_block_nesting_refused():
    text = "".join("  " * i + f"k{i}:\n" for i in range(200))
    doc, errs = parse(text)
    assert not doc.ok and errs[0].endswith("nested too deeply (more than 64 levels)")


@pytest.mark.parametrize("pure", PARSERS)
def test_second_document_refused(pure):
    doc, errs = parse("a: 1\n---\nb: 2\n", pure)
    assert not doc.ok and errs == ["2:1: a second YAML document in one file; put each manifest in its own file"]
    doc, errs = parse("---\na: 1\n...\n", pure)  # explicit markers around one document are fine
    assert doc.ok and errs == []


@pytest.mark.parametrize("pure", PARSERS)
def test_keys_must_be_strings(pure):
    _, errs = parse("1: a\ntrue: b\n~: c\n[x]: d\n", pure)
    assert errs == [
        "1:1: key 1 is a number, not a string; quote it: '1'",
        "2:1: key true is a boolean, not a string; quote it: 'true'",
        "3:1: key null is a null, not a string; quote it: 'null'",
        "4:1: a key must be a plain string, not a list",
    ]


def test_bom_is_accepted_and_positions_unchanged():
    doc, diags = parse_bytes("\ufeffa: 1\nb: [\n".encode("utf-8"), "t.yaml")
    assert [(d.loc.line, d.loc.col) for d in diags] == [(3, 1)]
    doc, diags = parse_bytes("\ufeffa: 1\n".encode("utf-8"), "t.yaml")
    assert diags == [] and doc.root == {"a": 1}


def test_not_utf8_reports_the_first_bad_byte():
    doc, diags = parse_bytes("a: 1\nb: é\xe9x\n".encode("latin-1"), "t.yaml")
    (d,) = diags
    assert (d.loc.line, d.loc.col) == (2, 4) and "not UTF-8: byte 0xe9" in d.message
    doc, diags = parse_bytes(b"a: 1\nb: \xc3\xa9\xffx\n", "t.yaml")
    (d,) = diags
    assert (d.loc.line, d.loc.col) == (2, 5) and "byte 0xff" in d.message


def test_syntax_error_hint_for_ipv6_in_flow_mapping():
    _, errs = parse("a: {ip6: 2001:db8::1}\n")
    assert len(errs) == 1 and errs[0].startswith("1:") and 'quote values that contain ":"' in errs[0]


def test_tab_hint():
    _, errs = parse("a:\n\tb: 1\n")
    assert errs == ["2:1: YAML syntax error: a tab cannot indent or start a value in YAML; use spaces"]


def test_control_characters_are_replaced_in_source_lines():
    doc, diags = parse_bytes(b"a: [\x1b[2J\n", "t.yaml")
    assert diags and all("\x1b" not in (d.source_line or "") + d.message for d in diags)


# strings from characters that make YAML resolution interesting (numbers, times, addresses,
# null/bool words), not parser corner cases (libyaml and ruamel's scanner differ on some)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=True),
    # (a leading ':' or '?' is left out: ruamel's emitter writes some of those unquoted
    # where libyaml reads them as indicators, an emitter quirk and not ours)
    st.text("0123456789abcdefxo.:-+_/ eEnNtTuUlLrRsS~", max_size=8).filter(lambda t: t[:1] not in (":", "?")),
    st.sampled_from(["yes", "no", "on", "off", "null", "Null", "~", "true", "False", "0o17", "0x1F", ".inf", "-.5", "1e3"]),
)
values = st.recursive(
    scalars,
    lambda ch: st.lists(ch, max_size=3) | st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), ch, max_size=3),
    max_leaves=12,
)


@pytest.mark.skipif(yamlload._CParser is None, reason="libyaml parser not installed")
@settings(max_examples=40, deadline=None)
@given(values)
def test_both_parsers_build_the_same_values(value):
    """ruamel's own dumper writes the value; libyaml and pure-Python parsing agree with it."""
    import io as _io

    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    buf = _io.StringIO()
    y.dump({"v": value}, buf)
    text = buf.getvalue()
    a, ea = parse_text(text, "t.yaml", pure=False)
    b, eb = parse_text(text, "t.yaml", pure=True)
    assert ea == [] and eb == [], (text, ea, eb)
    assert a.root == b.root == {"v": value}, text


@pytest.mark.parametrize("pure", PARSERS)
def test_core_tags_on_collections(pure):
    doc, errs = parse("a: !!map {x: 1}\nb: !!seq [1]\nc: !!str {x: 1}\nd: !!int [1]\n", pure)
    assert errs == [
        "3:4: tag !!str does not fit a mapping (use !!map or no tag)",
        "4:4: tag !!int does not fit a list (use !!seq or no tag)",
    ]


# ---- the daemon's parse cache -----------------------------------------------------------------

def _cache_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "00-net.yaml").write_text(
        "version: 1\nnetworks:\n  n1:\n    parent: eth0\n    subnets: [{subnet: 10.9.0.0/24}]\n"
    )
    (d / "10-c.yaml").write_text("version: 1\ncontainers:\n  c1: {networks: {n1: {}}}\n")
    return d


def test_parse_cache_parses_only_files_whose_bytes_changed(tmp_path):
    from reconciler.manifest import ParseCache, load

    d = _cache_dir(tmp_path)
    cache = ParseCache()
    first = load([str(d)], cache)
    assert cache.parsed == 2
    assert load([str(d)], cache) == first and cache.parsed == 0
    (d / "10-c.yaml").write_text("version: 1\ncontainers:\n  c1: {networks: {n1: {}}}\n  c2: {networks: {n1: {}}}\n")
    edited = load([str(d)], cache)
    assert cache.parsed == 1
    assert sorted(edited.containers) == ["c1", "c2"]
    assert edited == load([str(d)])  # the same as an uncached load


def test_parse_cache_reports_a_cached_broken_file_every_time(tmp_path):
    """A file that did not change is not parsed again, but its errors are still errors."""
    from reconciler.errors import ManifestError
    from reconciler.manifest import ParseCache, load

    d = _cache_dir(tmp_path)
    (d / "10-c.yaml").write_text("version: 1\ncontainers:\n  c1: {networks: {n1: {}}\n")  # unclosed
    cache = ParseCache()
    for parsed in (2, 0):
        with pytest.raises(ManifestError) as e:
            load([str(d)], cache)
        assert cache.parsed == parsed
        assert "10-c.yaml:4:1: YAML syntax error" in str(e.value)


def test_parse_cache_forgets_removed_files(tmp_path):
    from reconciler.manifest import ParseCache, load

    d = _cache_dir(tmp_path)
    cache = ParseCache()
    load([str(d)], cache)
    (d / "10-c.yaml").unlink()
    assert load([str(d)], cache).containers == {}
    assert sorted(cache._files) == [str(d / "00-net.yaml")]


def test_libyaml_comes_from_ruamel_yaml_clib_never_clibz():
    """ruamel.yaml.clibz's wheels are compiled with AVX-512 instructions: constructing its
    CParser on a CPU without AVX-512 (many servers, qemu's software CPU) kills the process with
    SIGILL, which no ``except`` catches. Only ruamel.yaml.clib's ``_ruamel_yaml`` may be used;
    without it, the pure-Python parser -- even when clibz is installed."""
    import os
    import subprocess
    import sys

    if not os.environ.get("IPVLAN_RECONCILER_PURE_YAML"):
        try:
            import _ruamel_yaml  # type: ignore
        except ImportError:
            assert yamlload._CParser is None
        else:
            assert yamlload._CParser is _ruamel_yaml.CParser
    # a fresh interpreter without clib but with a (stand-in) clibz: ruamel.yaml.cyaml would
    # hand out clibz's CParser there; the loader must not
    code = (
        "import sys, types\n"
        "sys.modules['_ruamel_yaml'] = None\n"
        "clibz = types.ModuleType('_ruamel_yaml_clibz')\n"
        "class CParser:\n"
        "    def __init__(self, *a): pass\n"
        "    def dispose(self): pass\n"
        "clibz.CParser = CParser\n"
        "clibz.CEmitter = type('CEmitter', (), {})\n"
        "sys.modules['_ruamel_yaml_clibz'] = clibz\n"
        "from ruamel.yaml.cyaml import CParser as offered\n"
        "from reconciler.manifest import yamlload\n"
        "print(offered is CParser, yamlload._CParser)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "IPVLAN_RECONCILER_PURE_YAML"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "None"], out


def test_parse_cache_schema_checks_only_files_whose_bytes_changed(tmp_path, monkeypatch):
    """The daemon's reload: a file taken from the parse cache keeps its schema check's
    result; its schema errors are still reported every time, the same."""
    from reconciler.errors import ManifestError
    from reconciler.manifest import ParseCache, load
    from reconciler.manifest import schema

    calls = []
    real = schema.diagnostics
    monkeypatch.setattr(schema, "diagnostics", lambda doc: calls.append(doc.file) or real(doc))
    d = _cache_dir(tmp_path)
    cache = ParseCache()
    first = load([str(d)], cache)
    assert len(calls) == 2
    assert load([str(d)], cache) == first and len(calls) == 2  # nothing checked again
    (d / "10-c.yaml").write_text("version: 1\ncontainers:\n  c1: {networks: {n1: {ip: 1}}}\n")
    messages = []
    for checked in (3, 3):
        with pytest.raises(ManifestError) as e:
            load([str(d)], cache)
        assert len(calls) == checked
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "10-c.yaml:3:" in messages[0]
