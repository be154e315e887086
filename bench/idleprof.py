"""Where an idle daemon's CPU goes, per thread (issue 12, P5 idle CPU).

Two clocks and a count per thread, read from /proc/PID/task/TID/:
  * ``stat`` utime+stime: the tick-sampled accounting `ps`/`top` (and bench/run.py's idle
    figure) use -- a thread running when the timer tick fires is charged the whole tick;
  * ``schedstat`` field 1: the scheduler's own run time in ns (CONFIG_SCHED_INFO), exact.
Under software emulation (TCG) the two can differ a lot for threads that wake briefly;
  * ``status`` voluntary_ctxt_switches: how often the thread went to sleep (its wake-ups), a
    count that the machine's load does not inflate.

Thread names: CPython 3.11 does not name OS threads, so every ``comm`` is "python"; ``py-spy
dump --json`` (when py-spy is on PATH) maps each OS thread id to its Python thread's name.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Dict, Optional, Tuple

Sample = Dict[int, Tuple[str, int, int, int]]  # tid -> (comm, ticks, run ns, voluntary context switches)


def sample(pid: int) -> Sample:
    out: Sample = {}
    base = f"/proc/{pid}/task"
    for t in os.listdir(base):
        try:
            with open(f"{base}/{t}/stat") as f:
                raw = f.read()
            with open(f"{base}/{t}/schedstat") as f:
                run_ns = int(f.read().split()[0])
            with open(f"{base}/{t}/status") as f:
                wakes = next(int(l.split()[1]) for l in f if l.startswith("voluntary_ctxt_switches"))
        except (OSError, ValueError, IndexError, StopIteration):
            continue  # the thread ended meanwhile (or no schedstat)
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        parts = raw.rsplit(")", 1)[1].split()
        out[int(t)] = (comm, int(parts[11]) + int(parts[12]), run_ns, wakes)
    return out


def thread_names(pid: int) -> Dict[int, str]:
    """OS thread id -> Python thread name (py-spy dump --json), {} without py-spy."""
    spy = shutil.which("py-spy")
    if not spy:
        return {}
    try:
        p = subprocess.run([spy, "dump", "--json", "--pid", str(pid)], capture_output=True, text=True, timeout=120)
        data = json.loads(p.stdout)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return {}
    return {t["os_thread_id"]: t.get("thread_name") or "?" for t in data if t.get("os_thread_id")}


def per_thread(pid: int, seconds: float, names: Optional[Dict[int, str]] = None) -> dict:
    """CPU of each thread of PID over ``seconds`` of wall time: ticks and exact run time."""
    hz = os.sysconf("SC_CLK_TCK")
    a, t0 = sample(pid), time.monotonic()
    time.sleep(seconds)
    b, t1 = sample(pid), time.monotonic()
    span = t1 - t0
    names = names if names is not None else thread_names(pid)
    rows = []
    for tid, (comm, ticks, ns, wakes) in sorted(b.items()):
        c0 = a.get(tid, (comm, 0, 0, 0))
        rows.append({
            "tid": tid, "name": names.get(tid, comm), "new": tid not in a,
            "tick_pct": 100.0 * (ticks - c0[1]) / hz / span, "run_pct": 100.0 * (ns - c0[2]) / 1e9 / span,
            "wakeups_per_s": (wakes - c0[3]) / span,
        })
    return {"span_s": span, "threads": rows, "tick_pct": sum(r["tick_pct"] for r in rows),
            "run_pct": sum(r["run_pct"] for r in rows), "gone": sorted(set(a) - set(b))}


def record(pid: int, seconds: float, out: str, rate: int = 100) -> Optional[str]:
    """py-spy record (non-blocking, raw collapsed stacks, idle frames left out) into OUT."""
    spy = shutil.which("py-spy")
    if not spy:
        return None
    p = subprocess.run([spy, "record", "--nonblocking", "--threads", "-r", str(rate), "-d", str(int(seconds)),
                        "-f", "raw", "-o", out, "--pid", str(pid)], capture_output=True, text=True)
    return out if p.returncode == 0 else f"py-spy record failed: {p.stderr[-500:]}"


def report(r: dict) -> str:
    lines = [f"idle {r['span_s']:.0f} s: ticks {r['tick_pct']:.2f} %, schedstat {r['run_pct']:.2f} % of one core"]
    for t in sorted(r["threads"], key=lambda t: -t["run_pct"]):
        lines.append(f"  {t['tid']:>7} {t['name'][:28]:28} ticks {t['tick_pct']:6.2f} %  run {t['run_pct']:6.3f} %"
                     f"  wake-ups {t['wakeups_per_s']:5.2f}/s"
                     + ("  (new)" if t["new"] else ""))
    return "\n".join(lines)
