"""Why deploy/*.service use no mount-namespace hardening (ProtectSystem=, PrivateTmp=, ...):
systemd gives such a unit its own mount namespace, remounted MS_SLAVE then MS_SHARED
(systemd.exec(5), PrivateMounts=/MountFlags=). A namespace created there is a bind mount
the host never sees: /run/netns/NAME is an empty file outside, unusable by `ip netns exec`,
podman or NetworkNamespacePath=. This reproduces exactly that setup with unshare(1)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

from conftest import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CREATE = "from reconciler.kernel.host import Kernel; k = Kernel(); k.create_netns({name!r}); k.close()"


def _create(name: str, sandboxed: bool) -> None:
    py = [sys.executable, "-c", CREATE.format(name=name)]
    if sandboxed:
        # what systemd does for a unit with any mount-namespace option
        cmd = ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
               'mount --make-rshared / && exec "$@"', "sh", *py]
    else:
        cmd = py
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def _usable(name: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", name, "true"], capture_output=True).returncode == 0


def _cleanup(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    try:
        os.unlink(f"/run/netns/{name}")
    except FileNotFoundError:
        pass


def test_namespace_created_in_a_unit_mount_namespace_is_invisible_to_the_host():
    name = "kt-sbx-" + uuid.uuid4().hex[:8]
    try:
        _create(name, sandboxed=True)
        assert os.path.exists(f"/run/netns/{name}")  # the file is there (same tmpfs) ...
        assert not _usable(name)  # ... but the namespace is not: the bind mount stayed inside
        mounts = open("/proc/self/mountinfo").read()
        assert f"/run/netns/{name} " not in mounts
    finally:
        _cleanup(name)


def test_namespace_created_without_a_mount_namespace_is_usable():
    name = "kt-nosbx-" + uuid.uuid4().hex[:8]
    try:
        _create(name, sandboxed=False)
        assert _usable(name)
        assert "lo" in run(["ip", "-n", name, "link", "show"])
    finally:
        _cleanup(name)
