"""The daemon's signal wait survives a stop/continue: CPython's sigtimedwait returns an
unfilled siginfo (garbage numbers) when SIGSTOP/SIGCONT interrupt it after its timeout; the
agent of tests/cluster/test_hosts.py died of it ("-132912672 is not a valid Signals")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from reconciler.daemon import watch

CHILD = """\
import signal, sys
from reconciler.daemon.watch import SIGNALS, wait_signal
signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
print("ready", flush=True)
print(wait_signal(float(sys.argv[1])), flush=True)
"""


def _child(timeout):
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(timeout)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_stop_and_continue_across_the_timeout_is_a_timeout_not_a_signal():
    p = _child(0.5)
    try:
        time.sleep(0.1)
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(1.0)  # past the wait's timeout while stopped
        os.kill(p.pid, signal.SIGCONT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0 and out.strip() == "None"


def test_a_signal_sent_is_returned():
    p = _child(30)
    try:
        os.kill(p.pid, signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    assert out.strip() == str(int(signal.SIGTERM))


def test_garbage_siginfo_is_ignored(monkeypatch):
    class Info:
        si_signo, si_code = -132912672, -1235276912

    monkeypatch.setattr(watch.signal, "sigtimedwait", lambda sigs, timeout: Info())
    assert watch.wait_signal(0.1) is None

    class Hup:  # the garbage can look like SIGHUP: its si_code gives it away
        si_signo, si_code = int(signal.SIGHUP), -1235276912

    monkeypatch.setattr(watch.signal, "sigtimedwait", lambda sigs, timeout: Hup())
    assert watch.wait_signal(0.1) is None
