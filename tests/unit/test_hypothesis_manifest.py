"""Property tests of the manifest layer: hypothesis writes manifests -- mostly
plausible ones, then broken in every way an operator's editor can break them
(near-miss keys, wrong types, bad CIDRs, unknown keys, duplicate names across
files, garbage text and bytes) -- and checks that

* `ipvlanctl validate` never crashes: exit 0 or 1, no traceback, no
  "internal error";
* every diagnostic starts with `file:line:col: ` (line and col >= 1, the file one
  of ours), followed only by its source line and caret, and a summary line;
* a valid manifest plans deterministically: `plan --offline --format json` twice
  gives byte-identical output, also in fresh interpreters with different hash
  seeds.
"""
from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from reconciler import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])

# ------------------------------------------------------------------------------------------------
# strategies: plausible manifests
# ------------------------------------------------------------------------------------------------
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,6}", fullmatch=True)
v4_subnets = st.integers(0, 40).map(lambda i: f"10.{i}.0.0/24")
v6_subnets = st.integers(1, 40).map(lambda i: f"fd00:{i:x}::/64")
parents = st.one_of(st.none(), st.just("eth0"), st.integers(1, 4094).map(lambda v: f"eth0.{v}"),
                    st.sampled_from(["bond0", "eth1.20", "foo"]))


@st.composite
def subnet(draw, v6: bool = False):
    cidr = draw(v6_subnets if v6 else v4_subnets)
    net = ipaddress.ip_network(cidr)
    d: dict = {"subnet": cidr}
    if draw(st.booleans()):
        d["gateway"] = str(net.network_address + draw(st.integers(1, 20)))
    if not v6 and draw(st.integers(0, 4)) == 0:
        d["ip_range"] = str(list(net.subnets(new_prefix=25))[draw(st.integers(0, 1))])
    if draw(st.integers(0, 5)) == 0:
        d["aux_addresses"] = {draw(names): str(net.network_address + draw(st.integers(21, 40)))}
    return d


@st.composite
def network(draw):
    d: dict = {}
    internal = draw(st.integers(0, 4)) == 0
    if internal:
        d["internal"] = True
    else:
        p = draw(parents)
        if p is not None:
            d["parent"] = p
    if draw(st.booleans()):
        d["ipvlan_mode"] = draw(st.sampled_from(["l2", "l3", "l3s"]))
    if draw(st.integers(0, 3)) == 0:
        d["ipvlan_flag"] = draw(st.sampled_from(["bridge", "private", "vepa"]))
    v6 = draw(st.integers(0, 3)) == 0
    if v6:
        d["ipv6"] = True
    if draw(st.integers(0, 4)) != 0:
        subs = [draw(subnet())]
        if v6 and draw(st.booleans()):
            subs.append(draw(subnet(v6=True)))
        d["subnets"] = subs
    return d


@st.composite
def manifest(draw) -> dict:
    nets: Dict[str, dict] = draw(st.dictionaries(names, network(), min_size=0, max_size=4))
    m: dict = {"version": 1}
    if nets or draw(st.booleans()):
        m["networks"] = nets
    if draw(st.integers(0, 5)) == 0:
        m["vlans"] = {draw(names): {"link": "eth0", "id": draw(st.integers(1, 4094))}}
    containers: Dict[str, dict] = {}
    for cname in draw(st.lists(names, max_size=5, unique=True)):
        atts: Dict[str, dict] = {}
        for net in draw(st.lists(st.sampled_from(sorted(nets)), max_size=2, unique=True)) if nets else []:
            a: dict = {}
            subs = nets[net].get("subnets") or []
            if subs and draw(st.booleans()):
                sn = ipaddress.ip_network(subs[0]["subnet"])
                a["ip"] = str(sn.network_address + draw(st.integers(2, 250)))
            if draw(st.integers(0, 4)) == 0:
                a["aliases"] = draw(st.lists(names, max_size=2))
            atts[net] = a
        containers[cname] = {"networks": atts}
    if containers or draw(st.booleans()):
        m["containers"] = containers
    return m


# ------------------------------------------------------------------------------------------------
# strategies: breaking it
# ------------------------------------------------------------------------------------------------
KEYS = ["version", "networks", "vlans", "containers", "parent", "ipvlan_mode", "ipvlan_flag", "internal", "ipv6",
        "subnets", "subnet", "gateway", "ip_range", "aux_addresses", "link", "id", "ip", "ip6", "aliases"]
BAD_VALUES = ["10.0.0.0/33", "10.0.0.1/24", "banana", "::/129", "300.1.1.0/24", "fd00::/200", "", "lo", "l4",
              "eth0.0", "eth0.4095", "eth0.x", "-1", "1.2.3", "10.0.0.0/8", "fe80::/10", "0.0.0.0/0",
              "a" * 80, "bad name!", "\u00e9t\u00e9", 0, -5, 4095, 1.5, True, None, [], {}, ["x", 1], {"k": "v"}]
bad_values = st.sampled_from(BAD_VALUES).map(copy.deepcopy)  # fresh: mutations must not leak
random_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 5000), st.floats(allow_nan=False),
                           st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
                           bad_values)
random_tree = st.recursive(random_scalars, lambda ch: st.one_of(
    st.lists(ch, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                                                                 min_size=1, max_size=8)), ch, max_size=3)),
    max_leaves=12)


def near_miss(key: str, how: int) -> str:
    if how == 0:
        return key[:-1]
    if how == 1:
        return key.upper()
    if how == 2 and len(key) > 2:
        return key[1] + key[0] + key[2:]
    if how == 3:
        return key.replace("_", "-") if "_" in key else key + "s"
    return key + "_"


def _paths(tree, prefix=()) -> List[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.extend(_paths(v, prefix + (i,)))
    return out


@st.composite
def broken_manifest(draw) -> dict:
    m = draw(manifest())
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(m) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        what = draw(st.integers(0, 4))
        if what == 0 and isinstance(last, str):  # near-miss key
            parent[near_miss(last, draw(st.integers(0, 4)))] = parent.pop(last)
        elif what == 1:  # a bad value or a wrong type
            parent[last] = draw(bad_values)
        elif what == 2:  # a random subtree
            parent[last] = draw(random_tree)
        elif what == 3 and isinstance(parent, dict):  # an unknown key
            parent[draw(st.sampled_from(KEYS + ["gatway", "subnet_", "mode", "vlan"]))] = draw(random_scalars)
        elif isinstance(parent, dict):
            parent.pop(last)
    return m


def dump_yaml(tree) -> Optional[str]:
    from ruamel.yaml import YAML

    y = YAML()
    y.default_flow_style = False
    buf = io.StringIO()
    try:
        y.dump(tree, buf)
    except Exception:
        return None
    return buf.getvalue()


@st.composite
def raw_text(draw) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == 1:
        return draw(st.binary(max_size=200))
    # a valid manifest's text, cut or with a character inserted or removed
    text = dump_yaml(draw(manifest())) or "version: 1\n"
    pos = draw(st.integers(0, len(text)))
    if kind == 2:
        return text[:pos].encode()
    ch = draw(st.sampled_from(["\t", ":", "-", "{", "[", "'", '"', "&a", "*a", "!!binary", "\n  ", "---\n", "%", "@"]))
    return (text[:pos] + ch + text[pos + 1 :]).encode()


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------
def run_cli(*argv: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # argparse; never expected here
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()


DIAG = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")
SUMMARY = re.compile(r"^\d+ errors? in manifests$")


def check_validate(directory: str, files: List[str]) -> int:
    code, out, err = run_cli("validate", directory)
    assert code in (0, 1), f"exit {code}\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    if code == 0:
        for line in lines:  # warnings only, each located
            m = DIAG.match(line)
            assert m or line.startswith("    "), f"unlocated output line: {line!r}\n{err}"
        return 0
    diags = 0
    prev_was_diag = 0  # source-context lines (4 spaces) follow a diagnostic: at most 2
    for line in lines:
        m = DIAG.match(line)
        if m:
            assert m.group("file") in files, f"diagnostic names a file we did not write: {line!r}"
            assert int(m.group("line")) >= 1 and int(m.group("col")) >= 1, line
            diags += 1
            prev_was_diag = 2
        elif line.startswith("    ") and prev_was_diag > 0:
            prev_was_diag -= 1
        elif SUMMARY.match(line):
            prev_was_diag = 0
        else:
            raise AssertionError(f"error output line without file:line:col: {line!r}\nfull output:\n{err}")
    assert diags >= 1, f"exit 1 without a located diagnostic:\n{err}"
    return 1


class ManifestDir:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hyp-manifest-")

    def write(self, files: Dict[str, bytes]) -> List[str]:
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        out = []
        for name, data in files.items():
            p = os.path.join(self.dir, name)
            with open(p, "wb") as f:
                f.write(data)
            out.append(p)
        return out

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def mdir():
    d = ManifestDir()
    yield d
    d.close()


def _split(m: dict, two_files: bool) -> Dict[str, bytes]:
    if not two_files or not isinstance(m, dict):
        text = dump_yaml(m)
        assume(text is not None)
        return {"m.yaml": text.encode()}
    a = {k: v for k, v in m.items() if k != "containers"}
    b = {"version": m.get("version", 1), **({"containers": m["containers"]} if "containers" in m else {})}
    ta, tb = dump_yaml(a), dump_yaml(b)
    assume(ta is not None and tb is not None)
    return {"10-networks.yaml": ta.encode(), "20-containers.yml": tb.encode()}


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------
@settings(max_examples=150, **SETTINGS)
@given(m=manifest(), two=st.booleans())
def test_plausible_manifests_validate_cleanly_and_plan_deterministically(mdir, m, two):
    files = mdir.write(_split(m, two))
    valid = check_validate(mdir.dir, files) == 0
    event("valid" if valid else "invalid")
    if not valid:
        return  # plausible is not always valid (e.g. two networks on one parent)
    first = run_cli("plan", "--offline", "--format", "json", mdir.dir)
    second = run_cli("plan", "--offline", "--format", "json", mdir.dir)
    assert first[0] in (0, 1) and "Traceback" not in first[2] and "internal error" not in first[2], first[2]
    assert first == second, "the same manifest planned twice gave different output"


@settings(max_examples=200, **SETTINGS)
@given(m=broken_manifest(), two=st.booleans())
def test_broken_manifests_fail_with_located_errors_never_a_crash(mdir, m, two):
    files = mdir.write(_split(m, two))
    event(f"exit {check_validate(mdir.dir, files)}")


@settings(max_examples=150, **SETTINGS)
@given(data=raw_text(), second=st.one_of(st.none(), raw_text()))
def test_garbage_text_and_bytes_never_crash(mdir, data, second):
    files = {"a.yaml": data}
    if second is not None:
        files["b.yml"] = second
    check_validate(mdir.dir, mdir.write(files))


@settings(max_examples=60, **SETTINGS)
@given(m=manifest(), other=manifest())
def test_duplicate_names_across_files_name_both_locations(mdir, m, other):
    nets = m.get("networks") or {}
    assume(nets)
    name = sorted(nets)[0]
    other = dict(other)
    other["networks"] = dict(other.get("networks") or {})
    other["networks"][name] = nets[name]
    ta, tb = dump_yaml(m), dump_yaml({"version": 1, "networks": other["networks"]})
    assume(ta is not None and tb is not None)
    files = mdir.write({"a.yaml": ta.encode(), "b.yaml": tb.encode()})
    assert check_validate(mdir.dir, files) == 1
    code, _, err = run_cli("validate", mdir.dir)
    dup = [l for l in err.splitlines() if DIAG.match(l) and name in l and ("a.yaml" in l and "b.yaml" in l)]
    assert dup, f"no diagnostic names both files for duplicate network {name}:\n{err}"


@settings(max_examples=8, **SETTINGS)
@given(m=manifest())
def test_plan_is_identical_in_fresh_interpreters_with_different_hash_seeds(mdir, m):
    files = mdir.write(_split(m, True))
    assume(check_validate(mdir.dir, files) == 0)
    outs = []
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        p = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--offline", "--format", "json", mdir.dir],
                           capture_output=True, cwd=ROOT, env=env)
        assert p.returncode in (0, 1) and b"Traceback" not in p.stderr, p.stderr.decode()
        outs.append((p.returncode, p.stdout, p.stderr))
    assert outs[0] == outs[1]
