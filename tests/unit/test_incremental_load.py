"""The daemon's entry-level reload (reconciler/manifest/incremental.py): for any sequence of
edits, ``IncrementalLoad.load`` gives exactly what a fresh ``manifest.load`` gives -- the same
desired state (== and repr: every location and the order of every mapping) or the same
diagnostics (messages, file:line:col, source lines) -- while it checks again only the
container entries that changed."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import manifest
from reconciler.errors import ManifestError
from reconciler.manifest import semantic
from reconciler.manifest.incremental import IncrementalLoad

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("bench_gen", os.path.join(ROOT, "bench", "gen.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

NETS = 5  # gen's kinds: n00 L2 (gateway given), n01 L2, n02 L3 (two subnets), n03 dual stack, n04 internal


def outcome(load):
    try:
        s = load()
    except ManifestError as e:
        return ("error", e.diagnostics)
    return ("ok", s, repr(s))


def write(d: str, files: Dict[str, List[str]]) -> None:
    for name in os.listdir(d):
        if name not in files:
            os.unlink(os.path.join(d, name))
    for name, lines in files.items():
        path = os.path.join(d, name)
        text = "\n".join(lines) + "\n"
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def check_step(d: str, inc: IncrementalLoad, modes: List[str]) -> None:
    got = outcome(lambda: inc.load([d]))
    want = outcome(lambda: manifest.load([d]))
    assert got[0] == want[0], (inc.last_mode, got[1] if got[0] == "error" else want[1])
    if got[0] == "ok":
        assert got[1] == want[1]
        assert got[2] == want[2]  # locations and order too
    else:
        assert got[1] == want[1]
    modes.append(inc.last_mode)


def initial(containers: int = 14) -> Dict[str, List[str]]:
    texts = gen.generate(containers, NETS, per_file=5)
    return {name: text.splitlines() for name, text in texts.items()}


def container_line(name: str, body: str) -> str:
    return f"  {name}: {body}"


NAMES = [f"c{j:04d}" for j in range(14)] + ["d1", "d2", "D1", "x1"]


def bodies(draw) -> str:
    """A container entry's value: valid, colliding or broken, in flow style."""
    k = draw(st.integers(0, NETS - 1))
    net = f"n{k:02d}"
    kind = draw(st.sampled_from(["auto", "ip", "ip", "two", "alias", "ip6", "unknown_net", "bad_key",
                                 "host", "bad_ip", "empty_nets", "null", "unclosed", "comment", "anchor",
                                 "quoted", "tab"]))
    if kind == "auto":
        return f"{{networks: {{{net}: {{}}}}}}"
    if kind == "ip":
        return f"{{networks: {{{net}: {{ip: 10.{k + 1}.250.{draw(st.integers(1, 3))}}}}}}}"
    if kind == "two":
        other = f"n{draw(st.integers(0, NETS - 1)):02d}"
        return f"{{networks: {{{net}: {{}}, {other}: {{}}}}}}"  # the same twice: a YAML duplicate key
    if kind == "alias":
        return f"{{networks: {{{net}: {{aliases: [{draw(st.sampled_from(NAMES + ['y1', 'y2', 'localhost']))}]}}}}}}"
    if kind == "ip6":
        return f"{{networks: {{n03: {{ip6: \"fd00:4::8000:{draw(st.integers(1, 3))}\"}}}}}}"
    if kind == "unknown_net":
        return "{networks: {nope: {}}}"
    if kind == "bad_key":
        return f"{{networks: {{{net}: {{ipp: 1}}}}}}"
    if kind == "host":
        return f"{{host: h1, networks: {{{net}: {{}}}}}}"
    if kind == "bad_ip":
        return f"{{networks: {{{net}: {{ip: 10.{k + 1}.0.0}}}}}}"
    if kind == "empty_nets":
        return "{networks: {}}"
    if kind == "unclosed":  # a flow mapping that the next line would have to close
        return f"{{networks: {{{net}: {{}}}}"
    if kind == "comment":
        return f"{{networks: {{{net}: {{}}}}}} # {{networks: {{nope: {{}}}}}}"
    if kind == "anchor":
        return f"&a{k} {{networks: {{{net}: {{}}}}}}"
    if kind == "quoted":
        return f"{{\"networks\": {{'{net}': {{ip: \"10.{k + 1}.250.1\"}}}}}}"
    if kind == "tab":
        return f"{{networks:\t{{{net}: {{}}}}}}"
    return ""


def edit(draw, files: Dict[str, List[str]], pristine: Dict[str, List[str]]) -> None:
    cfiles = sorted(n for n in files if n != "00-networks.yaml")
    op = draw(st.sampled_from(["body", "body", "body", "add", "remove", "swap", "move", "comment", "block",
                               "network", "restore", "syntax", "new_file", "drop_file", "small_pool"]))
    f = draw(st.sampled_from(cfiles)) if cfiles else None
    lines = files[f] if f else None
    entries = [i for i, line in enumerate(lines or []) if line.startswith("  ") and not line.startswith("   ")]
    if op == "body" and entries:  # in place: the parser may take only the changed lines
        i = draw(st.sampled_from(entries))
        name = lines[i].split(":")[0].strip()
        if draw(st.integers(0, 5)) == 0:
            name = draw(st.sampled_from(NAMES))  # renamed in place
        lines[i] = container_line(name, bodies(draw))
        if draw(st.booleans()) and len(entries) > 1:  # a second line of the same edit
            j = draw(st.sampled_from(entries))
            if j != i:
                lines[j] = container_line(lines[j].split(":")[0].strip(), bodies(draw))
    elif op == "add" and lines is not None:
        at = draw(st.integers(min(3, len(lines)), len(lines)))
        lines.insert(at, container_line(draw(st.sampled_from(NAMES)), bodies(draw)))
    elif op == "remove" and entries:
        del lines[draw(st.sampled_from(entries))]
    elif op == "swap" and len(entries) >= 2:
        i, j = draw(st.sampled_from(entries)), draw(st.sampled_from(entries))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "move" and entries and len(cfiles) > 1:
        line = lines.pop(draw(st.sampled_from(entries)))
        other = files[draw(st.sampled_from([n for n in cfiles if n != f]))]
        other.insert(draw(st.integers(min(3, len(other)), len(other))), line)
    elif op == "comment" and lines is not None:
        lines.insert(draw(st.integers(1, len(lines))), "# a comment moves what follows")
    elif op == "block" and entries:
        # the same value in block style: other positions, the same model but its locations
        i = draw(st.sampled_from(entries))
        name = lines[i].split(":")[0].strip()
        k = draw(st.integers(0, NETS - 1))
        lines[i:i + 1] = [f"  {name}:", "    networks:", f"      n{k:02d}: {{}}"]
    elif op == "network":
        nl = files["00-networks.yaml"]
        which = draw(st.sampled_from(["mode", "parent", "overlap", "restore"]))
        idx = next(i for i, line in enumerate(nl) if line.startswith("  n01:"))
        if which == "mode":
            nl[idx] = "  n01: {parent: eth0.102, ipvlan_mode: l3, subnets: [{subnet: 10.2.0.0/16}]}"
        elif which == "overlap":  # n00's subnet on another parent: allowed, but not both on one container
            nl[idx] = "  n01: {parent: eth0.102, ipvlan_mode: l2, subnets: [{subnet: 10.1.0.0/16}]}"
        elif which == "parent":  # n00's parent: two networks on one parent
            nl[idx] = "  n01: {parent: eth0.101, ipvlan_mode: l2, subnets: [{subnet: 10.2.0.0/16}]}"
        else:
            files["00-networks.yaml"] = list(pristine["00-networks.yaml"])
    elif op == "small_pool":
        nl = files["00-networks.yaml"]
        idx = next(i for i, line in enumerate(nl) if line.startswith("  n04:"))
        nl[idx] = "  n04: {internal: true, subnets: [{subnet: 10.5.0.0/29}]}"  # 5 addresses
    elif op == "restore" and f is not None:
        if f in pristine:
            files[f] = list(pristine[f])
        else:
            del files[f]
    elif op == "syntax" and lines is not None:
        lines.append("  broken: {networks: {n00: {}}")
    elif op == "new_file":
        files[f"50-extra-{len(files)}.yaml"] = [
            "# extra", "version: 1", "containers:", container_line(draw(st.sampled_from(NAMES)), bodies(draw))]
    elif op == "drop_file" and f is not None and len(cfiles) > 1:
        del files[f]


# longer: IPVLAN_INCREMENTAL_EXAMPLES=2000 (the count of random edit sequences)
@settings(max_examples=int(os.environ.get("IPVLAN_INCREMENTAL_EXAMPLES", "40")),
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_incremental_load_equals_a_full_load_after_every_edit(data):
    pristine = initial()
    files = {k: list(v) for k, v in pristine.items()}
    modes: List[str] = []
    with tempfile.TemporaryDirectory() as d:
        inc = IncrementalLoad()
        write(d, files)
        check_step(d, inc, modes)
        for _ in range(data.draw(st.integers(1, 25))):
            edit(data.draw, files, pristine)
            write(d, files)
            check_step(d, inc, modes)
    MODES.extend(modes)


MODES: List[str] = []  # every load's way, for a look at what the random test covered


def test_the_random_edits_take_the_incremental_path():
    """Not a vacuous comparison: a fixed walk of valid one-container edits is served by the
    incremental path, one entry checked each time."""
    files = initial()
    modes: List[str] = []
    with tempfile.TemporaryDirectory() as d:
        inc = IncrementalLoad()
        write(d, files)
        check_step(d, inc, modes)
        lines = files["02-containers.yaml"]
        for k in range(1, 4):
            i = next(i for i, line in enumerate(lines) if line.startswith("  c0006:"))
            lines[i] = container_line("c0006", f"{{networks: {{n01: {{ip: 10.2.250.{k}}}}}}}")
            write(d, files)
            check_step(d, inc, modes)
    assert modes == ["full(first load)"] + ["incremental(1 entry checked)"] * 3
    assert inc.spliced == 3  # and only the edited line was parsed again


def _dir(tmp_path, **files: str) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


NETS_YAML = "version: 1\nnetworks:\n  n1: {parent: eth0, subnets: [{subnet: 10.1.0.0/24}]}\n" \
            "  n2: {parent: eth1, subnets: [{subnet: 10.2.0.0/24}]}\n"


def test_moved_lines_get_their_new_locations(tmp_path):
    d = _dir(tmp_path, **{"00-n.yaml": NETS_YAML,
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {}}}\n  b: {networks: {n2: {}}}\n"})
    inc = IncrementalLoad()
    inc.load([d])
    (tmp_path / "10-c.yaml").write_text(
        "version: 1\n# two lines\n# of comment\ncontainers:\n  a: {networks: {n1: {}}}\n  b: {networks: {n2: {}}}\n")
    s = inc.load([d])
    assert inc.last_mode == "incremental(2 entries checked)"
    assert str(s.containers["b"].loc).endswith("10-c.yaml:6:3")
    assert str(s.containers["b"].attachments[0].loc).endswith("10-c.yaml:6:18")
    assert repr(s) == repr(manifest.load([d]))


def test_unchanged_entries_keep_their_model_objects(tmp_path):
    d = _dir(tmp_path, **{"00-n.yaml": NETS_YAML,
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {}}}\n  b: {networks: {n2: {}}}\n"})
    inc = IncrementalLoad()
    first = inc.load([d])
    (tmp_path / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n1: {ip: 10.1.0.9}}}\n"
                                        "  b: {networks: {n2: {}}}\n")
    second = inc.load([d])
    assert inc.last_mode == "incremental(1 entry checked)"
    assert second.containers["b"] is first.containers["b"]
    assert second.networks is first.networks


def test_an_error_then_the_fix(tmp_path, monkeypatch):
    """A duplicate address across files is the full check's error, word for word; once
    fixed, the state is a fresh load's again."""
    d = _dir(tmp_path, **{"00-n.yaml": NETS_YAML,
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {ip: 10.1.0.5}}}\n",
                          "20-c.yaml": "version: 1\ncontainers:\n  b: {networks: {n1: {}}}\n"})
    inc = IncrementalLoad()
    inc.load([d])
    (tmp_path / "20-c.yaml").write_text("version: 1\ncontainers:\n  b: {networks: {n1: {ip: 10.1.0.5}}}\n")
    with pytest.raises(ManifestError) as got:
        inc.load([d])
    with pytest.raises(ManifestError) as want:
        manifest.load([d])
    assert got.value.diagnostics == want.value.diagnostics
    assert "20-c.yaml:3:27: container b network n1: ip 10.1.0.5 is already used by container a" in str(got.value)
    assert inc.last_mode == "full(a changed entry needs the full check)"
    (tmp_path / "20-c.yaml").write_text("version: 1\ncontainers:\n  b: {networks: {n1: {ip: 10.1.0.6}}}\n")
    assert repr(inc.load([d])) == repr(manifest.load([d]))
    assert inc.last_mode == "full(first load)"  # the failed load left no base
    (tmp_path / "20-c.yaml").write_text("version: 1\ncontainers:\n  b: {networks: {n1: {ip: 10.1.0.7}}}\n")
    assert repr(inc.load([d])) == repr(manifest.load([d]))
    assert inc.last_mode == "incremental(1 entry checked)"


def test_a_duplicate_name_in_another_file_is_the_full_checks_error(tmp_path):
    d = _dir(tmp_path, **{"00-n.yaml": NETS_YAML,
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {}}}\n",
                          "20-c.yaml": "version: 1\ncontainers:\n  b: {networks: {n1: {}}}\n"})
    inc = IncrementalLoad()
    inc.load([d])
    (tmp_path / "20-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n2: {}}}\n")
    assert outcome(lambda: inc.load([d])) == outcome(lambda: manifest.load([d]))
    assert inc.last_mode == "full(a changed entry needs the full check)"


def test_a_network_change_takes_the_full_path(tmp_path):
    d = _dir(tmp_path, **{"00-n.yaml": NETS_YAML,
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {}}}\n"})
    inc = IncrementalLoad()
    inc.load([d])
    (tmp_path / "00-n.yaml").write_text(NETS_YAML.replace("n2: {parent: eth1", "n2: {parent: eth2"))
    s = inc.load([d])
    assert inc.last_mode == "full(a change outside containers:)"
    assert s.networks["n2"].parent == "eth2"


def test_fleet_manifests_are_always_checked_in_full(tmp_path):
    d = _dir(tmp_path, **{"00-n.yaml": "version: 1\nhosts:\n  h1: {id: 1, address: 192.168.1.11}\nnetworks:\n"
                                       "  n1: {parent: eth0, subnets: [{subnet: 10.1.0.0/24}], block_size: 28}\n",
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {host: h1, networks: {n1: {}}}\n"})
    inc = IncrementalLoad()
    inc.load([d])
    (tmp_path / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {host: h1, networks: {n1: {ip: 10.1.0.200}}}\n")
    assert outcome(lambda: inc.load([d])) == outcome(lambda: manifest.load([d]))
    assert inc.last_mode == "full(first load)"


def test_the_switch_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("IPVLAN_RECONCILER_INCREMENTAL", "0")
    d = _dir(tmp_path, **{"00-n.yaml": NETS_YAML,
                          "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {}}}\n"})
    inc = IncrementalLoad()
    inc.load([d])
    (tmp_path / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n2: {}}}\n")
    inc.load([d])
    assert inc.last_mode == "full(first load)"


def test_only_the_changed_entry_is_checked(tmp_path, monkeypatch):
    """The semantic container rule runs once for a one-container edit of 14 containers."""
    files = initial()
    d = str(tmp_path)
    write(d, files)
    inc = IncrementalLoad()
    inc.load([d])
    calls = []
    real = semantic._Checker.container
    monkeypatch.setattr(semantic._Checker, "container", lambda self, e, *a: calls.append(e.name) or real(self, e, *a))
    lines = files["01-containers.yaml"]
    i = next(i for i, line in enumerate(lines) if line.startswith("  c0001:"))
    lines[i] = container_line("c0001", "{networks: {n01: {ip: 10.2.250.1}}}")
    write(d, files)
    assert repr(inc.load([d])) == repr(manifest.load([d]))
    assert calls[0] == "c0001" and len(calls) == 1 + 14  # (the + 14: the fresh full load)


def test_splice_parses_only_the_changed_lines_and_falls_back_for_anything_else(tmp_path):
    from reconciler.manifest.incremental import splice
    from reconciler.manifest.yamlload import parse_text

    text = ("version: 1\nnetworks:\n  n1: {parent: eth0, subnets: [{subnet: 10.1.0.0/24}]}\ncontainers:\n"
            "  a: {networks: {n1: {}}}\n  b: {networks: {n1: {aliases: [x]}}}\n  c: {networks: {n1: {}}}\n")
    old, diags = parse_text(text, "f.yaml")
    assert not diags

    def same_as_a_parse(new_text: str) -> bool:
        got = splice(old, new_text.encode())
        if got is None:
            return False
        want, d = parse_text(new_text, "f.yaml")
        assert not d and got.root == want.root and got.text == want.text
        from reconciler.manifest.incremental import _same

        assert _same(got.root, want.root)  # every position too
        return True

    assert same_as_a_parse(text.replace("aliases: [x]", "ip: 10.1.0.9, aliases: [x, y]"))
    assert same_as_a_parse(text.replace("  a: {networks: {n1: {}}}", "  a: {networks: {n1: {ip: \"10.1.0.7\"}}}"))
    for other in (
        text.replace("  b: {", "  d: {"),  # renamed: a full parse
        text.replace("  b: {networks: {n1: {aliases: [x]}}}", "  b: {networks: {n1: {}}"),  # unclosed
        text.replace("  b: {networks: {n1: {aliases: [x]}}}", "  b: {networks: {n1: {}}} # c"),  # a comment
        text.replace("  b: {networks: {n1: {aliases: [x]}}}", "  b:\n    networks: {n1: {}}"),  # lines added
        text.replace("  b: {networks: {n1: {aliases: [x]}}}", "  b: &x {networks: {n1: {}}}"),  # an anchor
        text.replace("[{subnet: 10.1.0.0/24}]", "[{subnet: 10.1.1.0/24}]"),  # not a container
        text.replace("  c: {networks: {n1: {}}}", "  c: {networks: {n1: {}}, networks: {}}"),  # duplicate key
        text.replace("  b: {networks: {n1: {aliases: [x]}}}", "  b: {networks: {n1: {aliases: [x\u2028]}}}"),
    ):
        assert not same_as_a_parse(other)


def test_the_daemons_reload_goes_through_it(tmp_path):
    """Daemon.reload: a one-container edit is loaded incrementally; a broken edit keeps the
    last valid state and reports manifest.load's diagnostics; the fix is loaded again; a
    reset (SIGHUP) makes the next load a full one."""
    from reconciler.daemon.watch import Daemon

    m = tmp_path / "m"
    m.mkdir()
    d = _dir(m, **{"00-n.yaml": NETS_YAML,
                   "10-c.yaml": "version: 1\ncontainers:\n  a: {networks: {n1: {}}}\n  b: {networks: {n2: {}}}\n"})
    daemon = Daemon([d], str(tmp_path / "state"), status_file=str(tmp_path / "status.json"),
                    kernel_factory=lambda: None)
    assert daemon.reload() and daemon.parse_cache.last_mode == "full(first load)"
    (m / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n1: {ip: 10.1.0.9}}}\n"
                                 "  b: {networks: {n2: {}}}\n")
    assert daemon.reload() and daemon.parse_cache.last_mode == "incremental(1 entry checked)"
    assert str(daemon.desired.containers["a"].attachments[0].ip) == "10.1.0.9"
    assert daemon.desired == manifest.load([d])
    (m / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n1: {ip: 10.1.0.9}}}\n"
                                 "  b: {networks: {n2: {ip: 10.1.0.9}}}\n")
    assert not daemon.reload() and daemon.status.manifest_valid is False
    with pytest.raises(ManifestError) as e:
        manifest.load([d])
    assert daemon.status.manifest_errors == [d.render().splitlines()[0] for d in e.value.diagnostics]
    assert str(daemon.desired.containers["a"].attachments[0].ip) == "10.1.0.9"  # the last valid state
    (m / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n1: {ip: 10.1.0.9}}}\n"
                                 "  b: {networks: {n2: {ip: 10.2.0.9}}}\n")
    assert daemon.reload() and daemon.desired == manifest.load([d])
    (m / "10-c.yaml").write_text("version: 1\ncontainers:\n  a: {networks: {n1: {ip: 10.1.0.9}}}\n"
                                 "  b: {networks: {n2: {ip: 10.2.0.8}}}\n")
    assert daemon.reload() and daemon.parse_cache.last_mode == "incremental(1 entry checked)"
    daemon.parse_cache.reset()
    assert daemon.reload(force=True) is False  # (the same desired state)
    assert daemon.parse_cache.last_mode == "full(first load)"


def test_old_versions_of_an_edited_file_are_not_kept(tmp_path, monkeypatch):
    """Edits of one container after another: the loader holds the file's current document
    and at most the one of the last full check (whose entries' host names it indexed), not
    one per edit."""
    import gc
    import weakref

    from reconciler.manifest import incremental

    monkeypatch.setattr(incremental, "splice", lambda old, data: None)  # whole-file parses
    names = [f"c{i}" for i in range(6)]
    path = tmp_path / "10-c.yaml"

    def write_with(edited: int) -> None:
        path.write_text("version: 1\ncontainers:\n" + "".join(
            f"  {n}: {{networks: {{n1: {{ip: 10.1.0.{100 + i + (50 if i == edited else 0)}}}}}}}\n"
            for i, n in enumerate(names)))

    (tmp_path / "00-n.yaml").write_text(NETS_YAML)
    write_with(-1)
    inc = IncrementalLoad()
    inc.load([str(tmp_path)])
    docs = [weakref.ref(inc._files[str(path)][1])]
    for k in range(len(names)):
        write_with(k)
        inc.load([str(tmp_path)])
        assert inc.last_mode == ("incremental(1 entry checked)" if k == 0 else "incremental(2 entries checked)")
        docs.append(weakref.ref(inc._files[str(path)][1]))
    gc.collect()
    assert sum(r() is not None for r in docs) <= 2
