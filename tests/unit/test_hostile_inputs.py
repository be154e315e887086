"""A hostile corpus through the real command line (a subprocess each, so exit codes and
tracebacks are real): filesystem tricks (dangling and looping symlinks, FIFOs, near-miss
names, an empty directory, a ``*.yaml`` symlink to a secret file), file names with escape
sequences and newlines, a 1 MB line, standard input, write errors, bad ``--live-state``
files, and every ``tests/bad`` case.

Every case must exit 0 or 1 (or what it states), never print a traceback, name a location
for every error line (``file:line:col: ...`` or ``file: ...``, never ``:0:0``), and print
printable text only. Each case's duration is printed (``pytest -s``), not asserted.
"""
from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 60  # a hang (a FIFO read) fails the case instead of the whole run

# what must never reach a terminal: C0/C1 controls but tab and newline, line/paragraph
# separators, bidirectional overrides and isolates
UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SUMMARY = re.compile(r"^\d+ errors? in manifests$")

VALID = "version: 1\nnetworks:\n  n20:\n    parent: eth0.20\n    subnets: [{subnet: 192.168.20.0/24}]\n"
SECRET = "s3cr3t-HASH-do-not-print"


@dataclass
class Run:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: str, cwd: str, stdin: Optional[bytes] = None, stdout=None, stderr=None) -> Run:
    t = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        input=stdin if stdin is not None else b"",
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    dec = lambda b: (b or b"").decode("utf-8", errors="replace")  # noqa: E731
    return Run(p.returncode, dec(p.stdout), dec(p.stderr), time.monotonic() - t)


def check(name: str, r: Run, files: Sequence[str] = (), rc: Sequence[int] = (0, 1)) -> None:
    """The invariants every case keeps; ``files``: the printable names a diagnostic may
    start with (a forged line starts with something else)."""
    print(f"\n{name}: exit {r.rc} in {r.seconds:.3f} s")
    assert r.rc in rc, f"{name}: exit {r.rc}\n{r.text}"
    assert "Traceback" not in r.text and "internal error" not in r.text, r.text
    assert not UNPRINTABLE.search(r.text), f"{name}: unprintable output {r.text!r:.500}"
    # a location without a position ("file:0:0: ..."); "::ffff:a00:0/120" in a message is not one
    assert not re.search(r":0:0(:|$)", r.text, re.M), r.text
    if r.out.lstrip().startswith("{"):
        return  # --format json: checked by the case
    for line in r.err.splitlines():
        if not line or line.startswith("    ") or SUMMARY.match(line) or line.startswith("ipvlanctl: "):
            continue
        if "warning:" in line:
            continue
        assert any(line.startswith(f + ":") for f in files), f"{name}: unlocated or forged line {line!r}\n{r.err}"
        m = re.match(r"^(?:.*?)(?::(\d+):(\d+))?: ", line)
        assert m, line


# ---- filesystem-level cases ------------------------------------------------------------------


@dataclass
class Case:
    name: str
    setup: object  # (tmp) -> (args, files, expected substring)
    rc: Sequence[int] = (1,)
    stdin: Optional[bytes] = None


def _dir(tmp, name="d") -> str:
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    return d


def _write(path: str, text, mode="w") -> str:
    with open(path, mode) as f:
        f.write(text)
    return path


def c_empty_dir(tmp):
    d = _dir(tmp)
    return ["validate", d], [d], "no manifest file in this directory"


def c_dangling_symlink(tmp):  # the reproducer: was "OK: 0 networks", exit 0
    d = _dir(tmp)
    os.symlink("/nonexistent/x.yaml", os.path.join(d, "net.yaml"))
    return ["validate", d], [d + "/net.yaml"], "dangling symlink"


def c_dangling_next_to_a_valid_file(tmp):
    d = _dir(tmp)
    _write(os.path.join(d, "a.yaml"), VALID)
    os.symlink(os.path.join(tmp, "gone.yaml"), os.path.join(d, "b.yaml"))
    return ["validate", d], [d + "/b.yaml"], "dangling symlink"


def c_symlink_loop_in_dir(tmp):
    d = _dir(tmp)
    os.symlink("loop.yaml", os.path.join(d, "loop.yaml"))
    return ["validate", d], [d + "/loop.yaml"], "symlink loop"


def c_symlink_loop_path(tmp):
    p = os.path.join(tmp, "a.yaml")
    os.symlink("b.yaml", p)
    os.symlink("a.yaml", os.path.join(tmp, "b.yaml"))
    return ["validate", p], [p], "too many levels of symbolic links"


def c_fifo_in_dir(tmp):
    d = _dir(tmp)
    os.mkfifo(os.path.join(d, "x.yaml"))
    return ["validate", d], [d + "/x.yaml"], "FIFO"


def c_fifo_path(tmp):
    p = os.path.join(tmp, "x.yaml")
    os.mkfifo(p)
    return ["validate", p], [p], "FIFO"


def c_fifo_plan(tmp):
    d = _dir(tmp)
    os.mkfifo(os.path.join(d, "x.yaml"))
    return ["plan", "--offline", d], [d + "/x.yaml"], "FIFO"


def c_upper_case_suffix_only(tmp):
    d = _dir(tmp)
    _write(os.path.join(d, "x.YAML"), VALID)
    return ["validate", d], [d], "Not read: x.YAML"


def c_hidden_only(tmp):
    d = _dir(tmp)
    _write(os.path.join(d, ".a.yaml"), VALID)
    return ["validate", d], [d], "hidden files are skipped"


def c_directory_named_yaml(tmp):
    d = _dir(tmp)
    os.mkdir(os.path.join(d, "sub.yaml"))
    return ["validate", d], [d + "/sub.yaml"], "a directory, not a manifest file"


def c_dev_null_path(tmp):
    return ["validate", "/dev/null"], ["/dev/null"], "a character device"


def c_missing_path(tmp):
    p = os.path.join(tmp, "nope")
    return ["validate", p], [p], "no such file or directory"


def c_dangling_manifest_dir(tmp):  # a mount not there yet, behind a symlink
    p = os.path.join(tmp, "manifests.d")
    os.symlink(os.path.join(tmp, "mnt", "not-mounted"), p)
    return ["validate", p], [p], "dangling symlink"


def c_declares_nothing(tmp):  # how to empty a host on purpose: still works
    d = _dir(tmp)
    _write(os.path.join(d, "empty.yaml"), "version: 1\n")
    return ["validate", d], [], "OK: 0 networks"


def c_declares_nothing_plan(tmp):
    d = _dir(tmp)
    _write(os.path.join(d, "empty.yaml"), "version: 1\n")
    return ["plan", "--offline", d], [], "No changes"


def _secret_file(tmp) -> str:
    return _write(os.path.join(tmp, "shadow"), f"root:$6$salt${SECRET}:19000:0:99999:7:::\n"
                  f"daemon:*:19000:0:99999:7:::\nbin:{SECRET}::\n")


def c_symlink_to_secret_file(tmp):  # a *.yaml symlink to /etc/shadow
    d = _dir(tmp)
    os.symlink(_secret_file(tmp), os.path.join(d, "x.yaml"))
    return ["validate", d], [d + "/x.yaml"], "not a manifest"


def c_secret_mapping_without_version(tmp):
    p = _write(os.path.join(tmp, "creds.yaml"), f"password: {SECRET}\ntoken: {SECRET}\n")
    return ["validate", p], [p], "`version: 1` is missing"


def c_secret_with_syntax_error(tmp):
    p = _write(os.path.join(tmp, "x.yaml"), f"a: [\n{SECRET}: b: c\n")
    return ["validate", p], [p], "YAML syntax error"


def c_binary_file(tmp):
    p = _write(os.path.join(tmp, "bin.yaml"), b"\x7fELF\x02\x01\x01\x00" + SECRET.encode() + b"\xff\xfe\n", "wb")
    return ["validate", p], [p], "not UTF-8"


def c_escape_sequence_file_name(tmp):
    name = "\x1b]0;pwned\x07\x1b[31mred.yaml"
    d = _dir(tmp)
    _write(os.path.join(d, name), "version: 1\nnetworks:\n  n: {parnet: eth0}\n")
    return ["validate", d], [d + "/\ufffd]0;pwned\ufffd\ufffd[31mred.yaml"], "unknown key 'parnet'"


def c_newline_file_name_forges_a_line(tmp):
    name = "a.yaml\nforged.yaml:1:1: everything is fine\nb.yaml"
    d = _dir(tmp)
    _write(os.path.join(d, name), "version: 1\nnetworks: [\n")
    return ["validate", d], [d + "/a.yaml\ufffdforged.yaml:1:1: everything is fine\ufffdb.yaml"], "YAML syntax error"


def c_newline_in_missing_path(tmp):
    p = os.path.join(tmp, "x\n/etc/passwd:1:1: forged")
    return ["validate", p], [p.replace("\n", "\ufffd")], "no such file"


def c_bidi_override_file_name(tmp):
    d = _dir(tmp)
    name = "\u202eevil.yaml"
    _write(os.path.join(d, name), "version: 2\n")
    return ["validate", d], [d + "/\ufffdevil.yaml"], "unsupported manifest version"


def c_escape_sequences_in_values(tmp):
    p = _write(os.path.join(tmp, "esc.yaml"), "version: 1\nnetworks:\n  n: {parent: \"\\e[31mred\\a\"}\n")
    return ["validate", p], [p], "parent"


def c_megabyte_value(tmp):
    p = _write(os.path.join(tmp, "big.yaml"), "version: 1\nnetworks:\n  n:\n    parent: " + "x" * 1_000_000 + "\n")
    return ["validate", p], [p], "characters not shown"


def c_megabyte_line_syntax_error(tmp):
    p = _write(os.path.join(tmp, "big.yaml"), "version: 1\nnetworks: {n: [" + "1, " * 400_000 + "\n")
    return ["validate", p], [p], "YAML syntax error"


def c_stdin_valid(tmp):
    return ["validate", "-"], [], "OK: 1 network,"


def c_stdin_invalid(tmp):
    return ["validate", "-"], ["<stdin>"], "<stdin>:3:7: network n: unknown key 'parnet'"


def c_stdin_empty(tmp):
    return ["validate", "-"], ["<stdin>"], "<stdin>:1:1: empty file"


def c_stdin_plan(tmp):
    return ["plan", "--offline", "-"], [], "+ vlan eth0.20"


def _live(tmp, name: str, data) -> str:
    p = os.path.join(tmp, name)
    if isinstance(data, bytes):
        return _write(p, data, "wb")
    return _write(p, json.dumps(data) if not isinstance(data, str) else data)


def _live_case(name, data, expected):
    def setup(tmp):
        m = _write(os.path.join(tmp, "m.yaml"), VALID)
        p = data(tmp) if callable(data) else _live(tmp, "live.json", data)
        return ["plan", "--offline", "--live-state", p, m], [p], expected
    setup.__name__ = name
    return setup


def _host(**links):
    return {"format_version": "1", "host": {"links": [links] if links else []}, "objects": []}


LIVE_CASES = [
    _live_case("live_missing", lambda tmp: os.path.join(tmp, "nope.json"), "no such file or directory"),
    _live_case("live_directory", lambda tmp: _dir(tmp, "live.d"), "a directory, not a file"),
    _live_case("live_fifo", lambda tmp: (os.mkfifo(os.path.join(tmp, "p.json")), os.path.join(tmp, "p.json"))[1],
               "FIFO"),
    _live_case("live_not_utf8", b"\xff\xfe{}", "not UTF-8"),
    _live_case("live_not_json", "format_version: 1\n", "not JSON"),
    _live_case("live_deep_json", "[" * 100_000, "not JSON"),
    _live_case("live_wrong_document", {"hello": 1}, "not the output of `ipvlanctl status --format json`"),
    _live_case("live_link_without_index", _host(name="eth0"), "host.links[0] has no 'index'"),
    _live_case("live_link_name_number", _host(name=5, index=1), "name must be a string"),
    _live_case("live_links_not_list", {"format_version": "1", "host": {"links": 3}}, "host.links must be a list"),
    _live_case("live_unknown_kind", {"format_version": "1", "objects": [{"kind": "bogus"}]}, "unknown kind"),
    _live_case("live_object_not_mapping", {"format_version": "1", "objects": [3]}, "must be an object"),
    _live_case("live_object_extra_key", {"format_version": "1", "objects": [{"kind": "netns", "name": "x", "zz": 1}]},
               "unexpected keyword argument 'zz'"),
    _live_case("live_bad_address", {"format_version": "1", "objects": [
        {"kind": "address", "ns": "x", "ifname": "eth0", "address": "bad"}]}, "does not appear to be"),
    _live_case("live_bad_route", {"format_version": "1", "host": {"routes": ["10.0.0.1/8"]}}, "host.routes"),
]

CASES: List[Case] = [Case(f.__name__[2:], f) for f in (
    c_empty_dir, c_dangling_symlink, c_dangling_next_to_a_valid_file, c_symlink_loop_in_dir, c_symlink_loop_path,
    c_fifo_in_dir, c_fifo_path, c_fifo_plan, c_upper_case_suffix_only, c_hidden_only, c_directory_named_yaml,
    c_dev_null_path, c_missing_path, c_dangling_manifest_dir, c_symlink_to_secret_file,
    c_secret_mapping_without_version, c_secret_with_syntax_error, c_binary_file, c_escape_sequence_file_name,
    c_newline_file_name_forges_a_line, c_newline_in_missing_path, c_bidi_override_file_name,
    c_escape_sequences_in_values, c_megabyte_value, c_megabyte_line_syntax_error, c_stdin_empty,
)] + [
    Case("declares_nothing", c_declares_nothing, rc=(0,)),
    Case("declares_nothing_plan", c_declares_nothing_plan, rc=(0,)),
    Case("stdin_valid", c_stdin_valid, rc=(0,), stdin=VALID.encode()),
    Case("stdin_invalid", c_stdin_invalid, stdin=b"version: 1\nnetworks:\n  n: {parnet: eth0}\n"),
    Case("stdin_plan", c_stdin_plan, rc=(0,), stdin=VALID.encode()),
] + [Case(f.__name__, f) for f in LIVE_CASES]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_filesystem_and_input(case, tmp_path):
    args, files, expected = case.setup(str(tmp_path))
    r = cli(*args, cwd=str(tmp_path), stdin=case.stdin)
    check(case.name, r, files, rc=case.rc)
    assert expected in r.text, f"{case.name}: expected {expected!r}\n{r.text[:2000]}"
    assert SECRET not in r.text, r.text
    assert len(r.text) < 20_000, f"{case.name}: {len(r.text)} characters of output"


# ---- write errors ----------------------------------------------------------------------------


def _full():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    return open("/dev/full", "wb")


@pytest.mark.parametrize("args", [
    ["plan", "--offline", "m.yaml"],
    ["validate", "m.yaml"],
    ["validate", "--format", "json", "m.yaml"],
    ["plan", "--offline", "--format", "json", "m.yaml"],
    ["--help"],
    ["validate", "--help"],
], ids=lambda a: "-".join(a).replace("--", ""))
def test_stdout_write_error_is_one_line_exit_1(args, tmp_path):
    _write(str(tmp_path / "m.yaml"), VALID)
    with _full() as full:
        r = cli(*args, cwd=str(tmp_path), stdout=full)
    check("stdout-to-/dev/full " + " ".join(args), r)
    assert r.rc == 1
    assert r.err == "ipvlanctl: cannot write standard output: No space left on device\n", r.err


def test_stderr_write_error_exits_1_silently(tmp_path):
    with _full() as full:
        r = cli("validate", str(tmp_path / "nope"), cwd=str(tmp_path), stderr=full)
    check("stderr-to-/dev/full", r)
    assert r.rc == 1 and r.out == ""


def test_closed_pipe_is_one_line_exit_1(tmp_path):
    _write(str(tmp_path / "m.yaml"), "version: 1\ncontainers:\n" + "".join(f"  c{i}: {{}}\n" for i in range(3000)))
    t = time.monotonic()
    # (not under PYTHONUNBUFFERED: unbuffered, Python's text layer takes a partial write for
    # a whole one and never sees the EPIPE of a reader that left mid-write; it exits 0)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.Popen([sys.executable, "-m", "reconciler", "plan", "--offline", "m.yaml"], cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "PYTHONPATH": ROOT})
    p.stdout.read(10)
    p.stdout.close()  # the reader goes away, like `| head -c 10`
    err = p.stderr.read().decode()
    rc = p.wait(TIMEOUT)
    check("closed pipe", Run(rc, "", err, time.monotonic() - t))
    assert rc == 1 and err == "ipvlanctl: cannot write standard output: Broken pipe\n", err


# ---- --format json errors --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "plan --offline", "apply", "validate-ok"])
def test_json_format_errors_are_json_on_stdout(command, tmp_path):
    d = _dir(str(tmp_path))
    if command == "validate-ok":
        _write(os.path.join(d, "a.yaml"), VALID)
        _write(os.path.join(d, "b.yaml"), "version: 1\nnetworks:\n  n30: {parent: eth0.30, ipv6: false}\n")
        args = ["validate", "--format", "json", d]
    else:
        _write(os.path.join(d, "a.yaml"), "version: 1\nnetworks:\n  n: {parnet: eth0}\n")
        os.symlink("/nonexistent", os.path.join(d, "b.yaml"))
        args = command.split() + ["--format", "json", d]
    r = cli(*args, cwd=str(tmp_path))
    check("json " + command, r)
    doc = json.loads(r.out)
    assert doc["format_version"] == "1" and r.err == ""
    if command == "validate-ok":
        assert r.rc == 0 and doc["valid"] is True and doc["error_count"] == 0
        assert doc["summary"]["networks"] == 2
        return
    assert r.rc == 1 and doc["exit_code"] == 1 and doc["valid"] is False and doc["error_count"] == 2
    by_file = {os.path.basename(x["file"]): x for x in doc["diagnostics"]}
    assert by_file["a.yaml"] == {"severity": "error", "file": f"{d}/a.yaml", "line": 3, "col": 7,
                                 "message": by_file["a.yaml"]["message"]}
    assert "parnet" in by_file["a.yaml"]["message"]
    assert by_file["b.yaml"]["line"] is None and "dangling symlink" in by_file["b.yaml"]["message"]


def test_json_format_error_not_about_manifests(tmp_path):
    _write(str(tmp_path / "m.yaml"), VALID)
    r = cli("plan", "--offline", "--format", "json", "--live-state", "nope.json", "m.yaml", cwd=str(tmp_path))
    check("json live state", r)
    doc = json.loads(r.out)
    assert r.rc == 1 and doc["valid"] is None and doc["error_count"] == 1
    assert doc["diagnostics"][0]["file"] is None and "nope.json" in doc["diagnostics"][0]["message"]


# ---- every tests/bad case, through the real command line ---------------------------------------


def _bad_cases() -> List[str]:
    files = sorted(glob.glob(os.path.join(ROOT, "tests", "bad", "*.y*ml")))
    dirs = sorted(glob.glob(os.path.join(ROOT, "tests", "bad", "dirs", "*")))
    return [os.path.relpath(p, ROOT) for p in files + dirs]


BAD = _bad_cases()


@pytest.fixture(scope="module")
def bad_runs() -> Dict[str, Run]:
    """All of tests/bad validated, two subprocesses at a time (a module's worth of
    interpreter start-ups otherwise)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c: pool.submit(cli, "validate", c, cwd=ROOT) for c in BAD}
        return {c: f.result() for c, f in futures.items()}


def test_corpus_size():
    assert len(CASES) + len(BAD) >= 60


@pytest.mark.parametrize("case", BAD)
def test_bad_corpus_through_the_cli(case, bad_runs):
    r = bad_runs[case]
    files = [case] if not os.path.isdir(os.path.join(ROOT, case)) else [
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, case, "*"))]
    check(case, r, files, rc=(1,))
    assert "must-not-be-printed" not in r.text  # tests/bad/not-a-manifest-*: files that are not manifests
    located = [ln for ln in r.err.splitlines() if re.match(r"^.+?:\d+:\d+: ", ln)]
    assert located, r.err  # every tests/bad case states a position
    quoted = [ln for ln in r.err.splitlines() if ln.startswith("    ")]
    assert all(len(ln) <= 4 + 202 for ln in quoted), "a quoted source line is longer than the cap"


@pytest.mark.parametrize("argv", [["status", "--format", "json"], ["apply", "--format", "json", "m.yaml"]])
def test_json_format_errors_of_status_and_apply(argv, tmp_path, monkeypatch, capsys):
    """In process, the kernel refused (as for a user who is not root): still one JSON
    document on standard output, exit 1."""
    from reconciler import cli
    from reconciler.errors import UserError

    _write(str(tmp_path / "m.yaml"), VALID)
    monkeypatch.chdir(tmp_path)

    def refuse():
        raise UserError("this command changes or reads network namespaces and needs root")

    monkeypatch.setattr(cli, "_kernel", refuse)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert rc == 1 and err == "" and doc["exit_code"] == 1 and doc["valid"] is None
    assert doc["diagnostics"] == [{"severity": "error", "file": None, "line": None, "col": None,
                                   "message": "this command changes or reads network namespaces and needs root"}]
