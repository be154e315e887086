"""Start-up cost (issue 12, P2): `validate` and `plan --offline` import only what they use.

Each case runs the CLI in a fresh interpreter and asserts on the set of modules it imported
(never on timings): the daemon's, the cluster's and the kernel's dependencies, jsonschema on a
valid manifest, and the error-only helpers must stay out. In the VM every import costs 20-25x
what it does on the host, and each `ipvlanctl` run pays them again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "manifests", "examples")

# run the CLI with its output discarded, then report the exit status and sys.modules
_SNIPPET = (
    "import contextlib, io, json, sys\n"
    "from reconciler.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
    "    rc = main(sys.argv[1:])\n"
    "print(json.dumps([rc, sorted(sys.modules)]))\n"
)

# never needed to validate or plan offline (a module, or a package and everything under it)
NEVER = (
    # the daemon's and the cluster's dependencies
    "prometheus_client", "watchdog", "etcd3gw", "requests", "urllib3", "wsgiref", "http",
    "threading", "concurrent", "logging", "subprocess", "tempfile",
    # the kernel's
    "pyroute2", "ctypes", "socket", "select", "selectors",
    # only for a manifest with errors: jsonschema words schema errors, difflib finds "did you mean"
    "jsonschema", "difflib",
    # the parts of the package that do I/O or serve other commands
    "reconciler.kernel", "reconciler.daemon.watch", "reconciler.daemon.metrics",
    "reconciler.daemon.fswatch", "reconciler.daemon.nlmonitor", "reconciler.daemon.statusfile",
    "reconciler.cluster.store", "reconciler.cluster.source", "reconciler.cluster.alloc",
    "reconciler.bird", "reconciler.birdctl", "reconciler.savedplan",
)


def _run(args: List[str]) -> Tuple[int, Set[str]]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    out = subprocess.run([sys.executable, "-c", _SNIPPET, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rc, modules = json.loads(out.stdout.splitlines()[-1])
    return rc, set(modules)


def _imported(modules: Set[str], name: str) -> List[str]:
    return sorted(m for m in modules if m == name or m.startswith(name + "."))


@pytest.mark.parametrize("args", [
    ["validate", EXAMPLES],
    ["validate", "--format", "json", EXAMPLES],
    ["plan", "--offline", EXAMPLES],
    ["plan", "--offline", "--format", "json", EXAMPLES],
], ids=["validate", "validate-json", "plan-offline", "plan-offline-json"])
def test_validate_and_plan_offline_import_only_what_they_use(args):
    rc, modules = _run(args)
    assert rc == 0
    assert "reconciler.manifest" in modules and "fastjsonschema" in modules  # it did the work
    found = {name: _imported(modules, name) for name in NEVER}
    assert {k: v for k, v in found.items() if v} == {}


def test_a_schema_error_imports_jsonschema_and_still_nothing_of_the_daemon(tmp_path):
    """The other side of the lazy import: a manifest with a schema error does load jsonschema
    (which words the error), and still none of the daemon's, cluster's or kernel's modules."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nnetworks:\n  n1:\n    parent: eth0\n    mode: l4\n")
    rc, modules = _run(["validate", str(bad)])
    assert rc != 0
    assert "jsonschema" in modules
    # (jsonschema's own dependencies bring threading and tempfile along)
    daemon_side = [n for n in NEVER if n not in ("jsonschema", "difflib", "threading", "tempfile")]
    found = {name: _imported(modules, name) for name in daemon_side}
    assert {k: v for k, v in found.items() if v} == {}
