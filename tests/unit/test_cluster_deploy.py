"""deploy/ipvlan-reconciler-cluster.service (cluster mode, SPEC 6): verified by systemd-analyze,
hardened like the file-mode units, exclusive with them, and its command line -- with the
example environment file expanded as systemd would -- is one `ipvlanctl watch --etcd` accepts."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from reconciler.cli import build_parser

from test_daemon_deploy import DEPLOY, EXE, MOUNT_NAMESPACE_OPTIONS, VENV, unit

NAME = "ipvlan-reconciler-cluster.service"


def env_example() -> dict:
    out = {}
    with open(os.path.join(DEPLOY, "cluster.env.example")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k] = v
    return out


def test_cluster_unit_passes_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:  # the CI script installs it (apt-get install systemd): there, this runs
        pytest.skip("systemd-analyze is not installed")
    ipvlanctl = os.path.join(os.path.dirname(sys.executable), "ipvlanctl")
    if not os.access(ipvlanctl, os.X_OK):
        ipvlanctl = str(tmp_path / "ipvlanctl")
        with open(ipvlanctl, "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} -m reconciler \"$@\"\n")
        os.chmod(ipvlanctl, 0o755)
    text = open(os.path.join(DEPLOY, NAME)).read()
    assert re.search(rf"^ExecStart={EXE} ", text, re.M)
    (tmp_path / NAME).write_text(re.sub(rf"^ExecStart={EXE} ", f"ExecStart={ipvlanctl} ", text, flags=re.M))
    p = subprocess.run([exe, "verify", "--man=no", str(tmp_path / NAME)], capture_output=True, text=True,
                       cwd=str(tmp_path))
    problems = [l for l in (p.stdout + p.stderr).splitlines() if str(tmp_path) in l or NAME in l]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


def test_cluster_unit_is_the_daemon_on_etcd_exclusive_with_the_file_mode_units():
    u = unit(NAME)
    assert u["Type"] == ["notify"] and u["Restart"] == ["on-failure"] and u["WatchdogSec"] != ["0"]
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert set(" ".join(u["Conflicts"]).split()) == {"ipvlan-reconciler.service", "ipvlan-reconciler-apply.service"}
    assert u["EnvironmentFile"] == ["/etc/ipvlan-reconciler/cluster.env"]
    assert "network-online.target" in " ".join(u["Before"]).split()
    assert u["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_SYS_ADMIN"]
    assert u["NoNewPrivileges"] == ["yes"] and u["RestrictNamespaces"] == ["net"]
    assert "AF_INET" in u["RestrictAddressFamilies"][0]
    assert "IPAddressDeny" not in u  # it must reach etcd (a drop-in may narrow it)
    for opt in MOUNT_NAMESPACE_OPTIONS:
        assert opt not in u, f"{opt}= would hide /run/netns/NAME from the host"


def test_cluster_unit_command_line_parses_with_the_example_environment():
    (cmd,) = unit(NAME)["ExecStart"]
    env = env_example()
    assert env["IPVLAN_ETCD"].startswith("https://")
    # systemd: ${VAR} is one word, $VAR is split on white space
    words = []
    for w in shlex.split(cmd):
        m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", w)
        if m and m.group(1):
            words.append(env[m.group(1)])
        elif m:
            words.extend(env[m.group(2)].split())
        else:
            words.append(w)
    assert words[0] == f"{VENV}/bin/ipvlanctl"
    args = build_parser().parse_args(words[1:])
    assert args.command == "watch"
    assert args.etcd == env["IPVLAN_ETCD"] and args.host == "node1" and args.paths == []
    assert args.etcd_cacert and args.etcd_cert and args.etcd_key
