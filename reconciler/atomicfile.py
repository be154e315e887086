"""Replace a file atomically: readers (and a crash) see the old content or the new, never a mix.

The one helper every file the reconciler writes goes through (state.json, the daemon's status
file, /etc/netns/NAME/hosts, saved plans). The temporary file is ``PATH.tmp`` beside the
target: a writer killed half-way leaves it, and the next write of that file replaces and
renames it (no stale temp files pile up). Callers never write the same path concurrently
(state.json under the state lock, the status file from one daemon, hosts files under the
apply lock).

``durable=True`` is for data that must survive a power loss (the state file: ownership
records and automatic choices): the content is fsync'ed before the rename and the directory
after it. Without it the rename is still atomic, only possibly undone by a crash; use it for
what is rebuilt anyway (the status file under /run, hosts files the next reconcile rewrites).
"""
from __future__ import annotations

import os
from typing import Union


def write_atomic(path: str, data: Union[bytes, str], *, durable: bool, mode: int = 0o644) -> None:
    """Write ``data`` (str: UTF-8) to ``path`` by rename; the file gets exactly ``mode``.
    OSError on failure, with the target untouched and no temporary file left."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # the umask does not narrow it; a stale temp file gets it too
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
