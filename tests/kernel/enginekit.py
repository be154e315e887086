"""Helpers for engine kernel tests: run ipvlanctl, read real kernel state with `ip -j`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from typing import Dict, List, Optional

from conftest import ping  # noqa: F401  (one ping for every kernel test)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ipj(args: str, netns: Optional[str] = None):
    pre = f"ip -n {netns} " if netns else "ip "
    out = sh(pre + "-j " + args).stdout
    return json.loads(out) if out.strip() else []


def links(netns: Optional[str] = None, detail: bool = True) -> Dict[str, dict]:
    return {l["ifname"]: l for l in ipj(("-d " if detail else "") + "link show", netns)}


def addrs(netns: str, ifname: str = "eth0") -> List[str]:
    data = ipj(f"addr show dev {ifname}", netns)
    out = []
    for l in data:
        for a in l.get("addr_info", []):
            if a.get("scope") != "link":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return sorted(out)


def routes(netns: str, family: int = 4) -> List[dict]:
    return ipj(f"-{family} route show", netns)


def default_route(netns: str, family: int = 4) -> Optional[dict]:
    for r in routes(netns, family):
        if r.get("dst") == "default":
            return r
    return None


def netns_list() -> List[str]:
    return sorted(n["name"] for n in ipj("netns list")) if sh("ip netns list").stdout.strip() else []


class Reconciler:
    """One manifest directory and state directory; runs the real CLI as a subprocess."""

    def __init__(self, tmp_path, name: str = "m"):
        self.dir = os.path.join(str(tmp_path), name)
        self.state = os.path.join(str(tmp_path), name + "-state")
        os.makedirs(self.dir, exist_ok=True)

    def write(self, filename: str, text: str) -> None:
        with open(os.path.join(self.dir, filename), "w") as f:
            f.write(textwrap.dedent(text))

    def remove(self, filename: str) -> None:
        os.unlink(os.path.join(self.dir, filename))

    def clear(self) -> None:
        """Leave one manifest that declares nothing (an empty directory is an error, SPEC 3)."""
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        self.write("empty.yaml", "version: 1\n")

    def cli(self, *args: str, paths: Optional[List[str]] = None) -> subprocess.CompletedProcess:
        """Run ipvlanctl in this process (a fresh interpreter per call costs seconds under
        the VM's CPU emulation); the result looks like a finished subprocess."""
        import contextlib
        import io

        from reconciler.cli import main

        argv = list(args)
        if args and args[0] in ("apply", "plan", "validate"):
            argv += paths or [self.dir]
        if args and args[0] in ("apply", "plan", "status"):
            argv += ["--state-dir", self.state]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        return subprocess.CompletedProcess(["ipvlanctl", *argv], rc, out.getvalue(), err.getvalue())

    def cli_subprocess(self, *args: str, paths: Optional[List[str]] = None) -> subprocess.Popen:
        """Start ipvlanctl as a real process (for kill/concurrency tests)."""
        cmd = [sys.executable, "-m", "reconciler", *args]
        if args and args[0] in ("apply", "plan", "validate"):
            cmd += paths or [self.dir]
        if args and args[0] in ("apply", "plan", "status"):
            cmd += ["--state-dir", self.state]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    def apply(self, *extra: str, expect: int = 0, paths=None) -> dict:
        p = self.cli("apply", "--format", "json", *extra, paths=paths)
        if p.returncode != expect:
            raise AssertionError(f"apply exited {p.returncode}, expected {expect}\n{p.stdout}\n{p.stderr}")
        return json.loads(p.stdout) if p.stdout.strip().startswith("{") else {"stderr": p.stderr}

    def plan(self, *extra: str, paths=None) -> subprocess.CompletedProcess:
        return self.cli("plan", *extra, paths=paths)

    def teardown(self) -> None:
        """Remove everything this reconciler owns: apply a manifest that declares nothing."""
        empty = os.path.join(os.path.dirname(self.dir), "empty-" + os.path.basename(self.dir))
        os.makedirs(empty, exist_ok=True)
        with open(os.path.join(empty, "empty.yaml"), "w") as f:
            f.write("version: 1\n")
        p = self.cli("apply", paths=[empty])
        if p.returncode not in (0, 3):
            raise AssertionError(f"teardown apply failed:\n{p.stdout}\n{p.stderr}")
