"""scripts/system-deps: installs only missing Debian packages, once, and is what `make demo`,
scripts/test and .ci/run call (README: two commands on a fresh Debian 12 machine). apt-get,
dpkg-query and id are stubs on PATH here: nothing is installed on this machine."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "system-deps")
CI_PACKAGES = ("qemu-system-x86 linux-image-amd64 busybox-static kmod iproute2 iputils-ping "
               "procps systemd bird2").split()


def _stub(d, name: str, body: str) -> None:
    p = d / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)


def run(tmp_path, installed, uid=0, args=()):
    """Run the script with stubs: dpkg-query knows INSTALLED, apt-get logs its arguments."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (tmp_path / "installed").write_text("".join(p + "\n" for p in installed))
    log = tmp_path / "apt.log"
    _stub(bin_, "dpkg-query",
          f'for a; do p="$a"; done\ngrep -qx "$p" {tmp_path}/installed && printf "ii " && exit 0\n'
          f'echo "dpkg-query: no packages found matching $p" >&2; exit 1')
    _stub(bin_, "apt-get", f'echo "$*" >> {log}')
    _stub(bin_, "id", f'echo {uid}')
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}")
    p = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env)
    calls = log.read_text().splitlines() if log.exists() else []
    return p, calls


def test_package_list_is_the_ci_list_plus_bird2():
    out = subprocess.run([SCRIPT, "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert set(CI_PACKAGES) <= set(out)


def test_prepared_machine_does_no_apt_work(tmp_path):
    everything = subprocess.run([SCRIPT, "--list"], capture_output=True, text=True).stdout.split()
    p, calls = run(tmp_path, everything)
    assert p.returncode == 0, p.stderr
    assert calls == []


def test_installs_only_the_missing_packages_after_one_update(tmp_path):
    everything = subprocess.run([SCRIPT, "--list"], capture_output=True, text=True).stdout.split()
    have = [x for x in everything if x not in ("linux-image-amd64", "bird2")]
    p, calls = run(tmp_path, have)
    assert p.returncode == 0, p.stderr
    assert len(calls) == 2, calls
    assert re.search(r"DPkg::Lock::Timeout=\d+", calls[0]) and calls[0].endswith("update -qq")
    assert "DPkg::Lock::Timeout" in calls[1]
    assert calls[1].split("install -y -qq ")[1].split() == ["linux-image-amd64", "bird2"]


def test_unit_part_needs_only_systemd_and_venv(tmp_path):
    p, calls = run(tmp_path, ["python3-venv", "systemd"], args=["unit"])
    assert p.returncode == 0 and calls == []


def test_unprivileged_names_packages_and_command_and_fails(tmp_path):
    p, calls = run(tmp_path, ["systemd", "python3-venv"], uid=1000)
    assert p.returncode == 1
    assert calls == []
    assert "qemu-system-x86" in p.stderr and "bird2" in p.stderr
    assert "apt-get install -y" in p.stderr
    assert "systemd " not in p.stderr.split("apt-get install -y", 1)[1]


@pytest.mark.parametrize("path,needle", [
    ("Makefile", "scripts/system-deps"),
    (".ci/run", "scripts/system-deps"),
    ("scripts/test", "scripts/system-deps"),
])
def test_entry_points_call_it(path, needle):
    text = open(os.path.join(ROOT, path)).read()
    assert needle in text
    if path == "Makefile":  # before the demo's venv and VM
        demo = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
        assert demo.index("scripts/system-deps") < demo.index("scripts/vm-run")
    if path == ".ci/run":  # the list lives in one place; CI still runs exactly scripts/test
        assert "apt-get" not in re.sub(r"#.*", "", text)
        assert re.search(r"^scripts/test \|\| rc=\$\?$", text, re.M)
