"""deploy/: the systemd units (verified by systemd-analyze), the iproute2 protocol name,
and the CI dry-run script's exit codes."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from reconciler.objects import MARKER, RTPROT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
UNITS = ("ipvlan-reconciler.service", "ipvlan-reconciler-apply.service")
VENV = "/opt/ipvlan-reconciler"  # the README's install route (test_units_use_the_readme_install_route)
EXE = re.escape(f"{VENV}/bin/ipvlanctl")

# Every option that gives a unit its own mount namespace: the bind mounts on /run/netns/NAME
# would then be invisible to the host (see the comments in the unit files).
MOUNT_NAMESPACE_OPTIONS = (
    "PrivateMounts", "ProtectSystem", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
    "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset", "BindPaths",
    "BindReadOnlyPaths", "TemporaryFileSystem", "RootDirectory", "RootImage", "MountAPIVFS",
    "PrivateNetwork", "NetworkNamespacePath", "DynamicUser",
)


def unit(name: str) -> dict:
    """Directives of a unit file: {key: [values]} (all sections together)."""
    out: dict = {}
    with open(os.path.join(DEPLOY, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_units_pass_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:  # the CI script installs it (apt-get install systemd): there, this runs
        pytest.skip("systemd-analyze is not installed")
    # verify needs ExecStart's program to exist: point it at this checkout's ipvlanctl
    ipvlanctl = os.path.join(os.path.dirname(sys.executable), "ipvlanctl")
    if not os.access(ipvlanctl, os.X_OK):
        ipvlanctl = str(tmp_path / "ipvlanctl")
        with open(ipvlanctl, "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} -m reconciler \"$@\"\n")
        os.chmod(ipvlanctl, 0o755)
    d = tmp_path / "units"
    d.mkdir()
    for name in UNITS:
        text = open(os.path.join(DEPLOY, name)).read()
        assert re.search(rf"^ExecStart={EXE} ", text, re.M), name
        (d / name).write_text(re.sub(rf"^ExecStart={EXE} ", f"ExecStart={ipvlanctl} ", text, flags=re.M))
    p = subprocess.run([exe, "verify", "--man=no", *(str(d / n) for n in UNITS)],
                       capture_output=True, text=True, cwd=str(d))
    problems = [l for l in (p.stdout + p.stderr).splitlines()
                if str(d) in l or any(n in l for n in UNITS)]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


def test_daemon_unit():
    u = unit("ipvlan-reconciler.service")
    assert u["Type"] == ["notify"]
    assert u["Restart"] == ["on-failure"]
    assert u["WatchdogSec"] and u["WatchdogSec"][0] != "0"
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert u["ExecStart"][0].startswith(f"{VENV}/bin/ipvlanctl watch /etc/ipvlan-reconciler/manifests.d")
    assert "--status-file /run/ipvlan-reconciler/status.json" in u["ExecStart"][0]
    assert "ipvlan-reconciler-apply.service" in " ".join(u["After"])


def test_apply_unit():
    u = unit("ipvlan-reconciler-apply.service")
    assert u["Type"] == ["oneshot"] and u["RemainAfterExit"] == ["yes"]
    assert u["ExecStart"][0].startswith(f"{VENV}/bin/ipvlanctl apply --quiet /etc/ipvlan-reconciler/manifests.d")
    assert u["SuccessExitStatus"] == ["3"]  # pending on a missing parent: the daemon finishes
    before = " ".join(u["Before"]).split()
    after = " ".join(u["After"]).split()
    assert "network-online.target" in before
    assert "network-pre.target" in after and "systemd-networkd.service" in after
    assert "network-pre.target" not in before


@pytest.mark.parametrize("name", UNITS)
def test_units_hardening_without_a_mount_namespace(name):
    u = unit(name)
    assert u["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_SYS_ADMIN"]
    assert u["NoNewPrivileges"] == ["yes"]
    assert u["RestrictNamespaces"] == ["net"]
    for opt in MOUNT_NAMESPACE_OPTIONS:
        assert opt not in u, f"{name}: {opt}= would hide /run/netns/NAME from the host"


def test_rt_protos_names_our_route_protocol():
    with open(os.path.join(DEPLOY, "rt_protos.d", "ipvlan-reconciler.conf")) as f:
        entries = [l.split() for l in f if l.strip() and not l.startswith("#")]
    assert entries == [[str(RTPROT), MARKER]]


def _plan_sh(args, env_extra=None):
    env = dict(os.environ)
    env["IPVLANCTL"] = f"{sys.executable} -m reconciler"
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update(env_extra or {})
    return subprocess.run(["sh", os.path.join(DEPLOY, "ci", "plan.sh"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_ci_plan_script_exit_codes(tmp_path):
    m = tmp_path / "manifests.d"
    m.mkdir()
    p = _plan_sh([str(m)])  # an empty directory is an error, never "remove everything"
    assert p.returncode == 1 and "no manifest file" in p.stderr, p.stdout + p.stderr
    (m / "00-empty.yaml").write_text("version: 1\n")  # declares nothing, on purpose
    p = _plan_sh([str(m)])
    assert p.returncode == 0 and "No changes" in p.stdout, p.stdout + p.stderr
    (m / "a.yaml").write_text(
        "version: 1\nnetworks:\n  n20: {parent: eth0.20, subnets: [{subnet: 192.168.20.0/24}]}\n"
        "containers:\n  c1: {networks: {n20: {ip: 192.168.20.10}}}\n")
    summary = tmp_path / "summary.md"
    p = _plan_sh([str(m)], {"PLAN_JSON": str(tmp_path / "plan.json"), "GITHUB_STEP_SUMMARY": str(summary)})
    assert p.returncode == 0 and "Changes:" in p.stdout and "+ netns c1" in p.stdout, p.stdout + p.stderr
    assert '"format_version"' in (tmp_path / "plan.json").read_text()
    assert "+ netns c1" in summary.read_text()
    p = _plan_sh([str(m)], {"FAIL_ON_CHANGES": "1"})
    assert p.returncode == 2
    (m / "b.yaml").write_text("version: 1\nnetworks:\n  x: {parnet: eth0}\n")
    p = _plan_sh([str(m)])
    assert p.returncode == 1 and "b.yaml:3:" in p.stderr + p.stdout


def test_ci_workflow_runs_the_plan_script():
    from ruamel.yaml import YAML

    with open(os.path.join(DEPLOY, "ci", "github-actions.yml")) as f:
        wf = YAML(typ="safe").load(f)
    steps = wf["jobs"]["plan"]["steps"]
    assert any("plan.sh" in (s.get("run") or "") for s in steps)


def test_units_use_the_readme_install_route():
    """README.md and deploy/README.md install into one venv (pip refuses the system Python on
    Debian 12), with the fast extra, link ipvlanctl into sudo's secure_path; the units run
    that venv's ipvlanctl and name documentation the package installs there."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    deploy = open(os.path.join(DEPLOY, "README.md")).read()
    routes = []
    for text in (readme, deploy):
        venv = re.search(r"^python3 -m venv (\S+)$", text, re.M).group(1)
        assert re.search(rf"^{re.escape(venv)}/bin/pip install '\S*\[fast\]'", text, re.M)
        link = re.search(rf"^ln -s {re.escape(venv)}/bin/ipvlanctl (\S+)$", text, re.M).group(1)
        assert os.path.dirname(link) in ("/usr/local/sbin", "/usr/local/bin")  # sudo's secure_path
        routes.append(venv)
    assert routes == [VENV, VENV]
    assert "secure_path" in readme and "externally-managed-environment" in readme
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    m = re.search(r'^"(share/doc/ipvlan-reconciler)" = \[(.*)\]$', pyproject, re.M)
    shipped = {os.path.basename(x) for x in re.findall(r'"([^"]+)"', m.group(2))}
    for name in UNITS:
        u = unit(name)
        assert u["ExecStart"][0].split()[0] == f"{VENV}/bin/ipvlanctl", name
        for doc in " ".join(u["Documentation"]).split():
            assert doc.startswith(f"file://{VENV}/{m.group(1)}/"), (name, doc)
            assert os.path.basename(doc) in shipped, (name, doc)
