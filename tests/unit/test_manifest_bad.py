"""The corpus of broken manifests: every rule, and hostile YAML, refused with a position.

Each ``tests/bad/*.yaml`` file (and each ``tests/bad/dirs/<case>/`` directory) states the
error it must produce in leading comment lines::

    # expect: 7:18: gateway 10.0.0.1 is outside subnet 192.168.1.0/24

(line:col and a substring of the message). ``ipvlanctl validate`` must exit 1, print
``<file>:<line>:<col>: ...<substring>...``, never a traceback, and do it quickly.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import time
from typing import List, Tuple

import pytest

from reconciler import cli
from reconciler.errors import ManifestError
from reconciler.manifest import MAX_FILE_BYTES, load, parse_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAD = os.path.join("tests", "bad")
EXPECT = re.compile(rb"^# expect: (\d+):(\d+): (.+)$")
HOSTILE = {
    "yaml-alias-bomb.yaml",
    "yaml-deep-nesting.yaml",
    "yaml-python-tag.yaml",
    "yaml-custom-tag.yaml",
    "yaml-multi-document.yaml",
    "yaml-not-utf8.yaml",
    "yaml-duplicate-key.yaml",
    "yaml-tab-indent.yaml",
    "yaml-unclosed-flow.yaml",
    "yaml-complex-key.yaml",
    "yaml-non-string-key.yaml",
}


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    # expectations name files relative to the repository root
    monkeypatch.chdir(ROOT)


def expectations(path: str) -> List[Tuple[int, int, str]]:
    out = []
    with open(path, "rb") as f:
        for raw in f:
            m = EXPECT.match(raw.rstrip(b"\r\n"))
            if not m:
                break
            out.append((int(m.group(1)), int(m.group(2)), m.group(3).decode("utf-8")))
    return out


def validate(*paths: str) -> Tuple[int, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["validate", *paths])
    return rc, out.getvalue() + err.getvalue(), time.monotonic() - t


def bad_files() -> List[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, BAD, "*.y*ml")))


def bad_dirs() -> List[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, BAD, "dirs", "*")))


def check_output(rc: int, output: str, expected: List[Tuple[str, int, int, str]]) -> None:
    assert rc == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    for file, line, col, text in expected:
        prefix = f"{file}:{line}:{col}: "
        hits = [ln for ln in output.splitlines() if ln.startswith(prefix)]
        assert hits, f"no diagnostic at {prefix!r}\n{output}"
        assert any(text in ln for ln in hits), f"{prefix}: expected {text!r}, got {hits}\n{output}"


def test_corpus_is_big_enough():
    assert len(bad_files()) >= 30
    for f in bad_files():
        assert expectations(os.path.join(ROOT, f)), f"{f}: no '# expect: line:col: text' first line"


@pytest.mark.parametrize("path", bad_files())
def test_bad_file(path):
    rc, output, _ = validate(path)
    check_output(rc, output, [(path, *e) for e in expectations(path)])


@pytest.mark.parametrize("path", bad_dirs())
def test_bad_directory(path):
    expected = []
    for f in sorted(glob.glob(os.path.join(path, "*.y*ml"))):
        expected += [(f, *e) for e in expectations(f)]
    assert expected, f"{path}: no file states its expected error"
    rc, output, _ = validate(path)
    check_output(rc, output, expected)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_refused_quickly(name):
    path = os.path.join(BAD, name)
    rc, output, seconds = validate(path)
    assert rc == 1
    assert "Traceback" not in output
    assert seconds < 5, f"{name} took {seconds:.1f} s"


def test_huge_file_is_refused_unread(tmp_path):
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as f:
        f.write(b"version: 1\nnetworks:\n")
        chunk = b"".join(b"  n%07d: {}\n" % i for i in range(1000))
        while f.tell() <= MAX_FILE_BYTES:
            f.write(chunk)
    rc, output, seconds = validate(str(p))
    assert rc == 1
    assert f"{p}:1:1: file too large" in output
    assert seconds < 5


def test_many_values_without_aliases_are_capped(tmp_path, monkeypatch):
    from reconciler.manifest import yamlload

    monkeypatch.setattr(yamlload, "MAX_NODES", 1000)
    p = tmp_path / "wide.yaml"
    p.write_text("version: 1\nx: [" + ",".join(["1"] * 2000) + "]\n")
    rc, output, _ = validate(str(p))
    assert rc == 1 and "too many values (more than 1000)" in output


def test_recursive_alias_is_refused(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text("version: 1\nnetworks: &a\n  x: *a\n")
    rc, output, _ = validate(str(p))
    assert rc == 1 and f"{p}:3:6: alias *a refers to no complete anchor" in output


def test_every_error_is_reported():
    text = """\
version: 1
networks:
  db_net:
    ipvlan_mode: l4
    parent: lo
    subnets:
      - subnet: 192.168.1.5/24
containers:
  c1:
    networks:
      nope: {}
"""
    with pytest.raises(ManifestError) as ei:
        parse_text(text, "three.yaml")
    msgs = [str(d.loc) + ": " + d.message for d in ei.value.diagnostics]
    # the schema error keeps db_net out of the semantic checks; the container is still checked
    assert len(msgs) == 2, msgs
    text = text.replace("ipvlan_mode: l4", "ipvlan_mode: l3")
    with pytest.raises(ManifestError) as ei:
        parse_text(text, "three.yaml")
    msgs = [str(d.loc) + ": " + d.message for d in ei.value.diagnostics]
    assert len(msgs) == 3, msgs
    assert msgs[0].startswith("three.yaml:5:13: network db_net: parent lo")
    assert msgs[1].startswith("three.yaml:7:17: network db_net: subnet 192.168.1.5/24 has host bits set")
    assert msgs[2].startswith("three.yaml:11:7: container c1: unknown network 'nope'")
    assert str(ei.value).endswith("3 errors in manifests")


def test_errors_in_several_files_are_all_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("version: 1\nnetworks:\n  a: {ipvlan_flag: bogus}\n")
    (tmp_path / "b.yaml").write_text("version: 1\nvlans:\n  v: {link: eth0, id: 0}\n")
    (tmp_path / "c.yaml").write_text("version: 1\nnetworks: [\n")
    rc, output, _ = validate(str(tmp_path))
    assert rc == 1
    assert f"{tmp_path}/a.yaml:3:20: network a: ipvlan_flag must be one of bridge, private, vepa" in output
    assert f"{tmp_path}/b.yaml:3:23: vlan v: id 0 is out of range 1-4094" in output
    assert f"{tmp_path}/c.yaml:3:1: YAML syntax error" in output
    assert output.rstrip().endswith("3 errors in manifests")


def test_no_unknown_network_noise_when_a_file_is_broken(tmp_path):
    """A container is not told its network is unknown when the file defining it is broken."""
    (tmp_path / "a.yaml").write_text("version: 1\nnetworks:\n  db_net: {parent: eth0\n")
    (tmp_path / "b.yaml").write_text("version: 1\ncontainers:\n  c1: {networks: {db_net: {}}}\n")
    with pytest.raises(ManifestError) as ei:
        load([str(tmp_path)])
    assert len(ei.value.diagnostics) == 1
    assert "YAML syntax error" in ei.value.diagnostics[0].message


def test_diagnostics_carry_source_line_and_caret():
    rc, output, _ = validate(os.path.join(BAD, "gateway-outside.yaml"))
    lines = output.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("tests/bad/gateway-outside.yaml:7:18:"))
    assert lines[i + 1] == "            gateway: 10.0.0.1"
    assert lines[i + 2] == "    " + " " * 17 + "^"


def test_control_characters_never_reach_the_terminal(tmp_path):
    p = tmp_path / "esc.yaml"
    p.write_bytes(b"version: 1\nnetworks:\n  db_net: {parent: \"\x1b[31mred\"}\n\x1b]0;title\x07: 1\n")
    rc, output, _ = validate(str(p))
    assert rc == 1
    assert "\x1b" not in output and "\x07" not in output


def test_missing_path():
    rc, output, _ = validate("tests/bad/does-not-exist")
    assert rc == 1
    # no position: the file alone, never file:0:0
    assert "tests/bad/does-not-exist: no such file or directory" in output and ":0:0" not in output
