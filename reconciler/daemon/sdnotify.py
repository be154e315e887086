"""systemd's notification protocol (sd_notify(3)), spoken directly.

A datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace
(leading NUL byte). ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, when set, must
be our pid) asks for ``WATCHDOG=1`` at least that often; we send it at half the
interval. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""
from __future__ import annotations

import os
import socket
from typing import Mapping, Optional


class Notifier:
    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        env = os.environ if environ is None else environ
        self.address = self._address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = self._watchdog(env)
        self._sock: Optional[socket.socket] = None
        self.errors = 0

    @staticmethod
    def _address(name: str) -> Optional[str]:
        if not name:
            return None
        if name.startswith("@"):
            return "\0" + name[1:]
        if name.startswith("/"):
            return name
        return None  # vsock and other transports: not for a host daemon like this one

    @staticmethod
    def _watchdog(env: Mapping[str, str]) -> Optional[float]:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):
            return None
        try:
            v = int(usec)
        except ValueError:
            return None
        return v / 2e6 if v > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """sd_notify(0, "K=V\\n..."): e.g. send(READY="1", STATUS="converged")."""
        if self.address is None:
            return False
        msg = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()) + "\n"
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg.encode("utf-8"), self.address)
            return True
        except OSError:
            self.errors += 1  # systemd gone or not listening: never fatal
            return False

    def ready(self, status: str = "") -> bool:
        return self.send(READY="1", **({"STATUS": status} if status else {}))

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING="1", **({"STATUS": status} if status else {}))
