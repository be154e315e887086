"""The daemon's manifest reload after a one-container edit, split by stage (CPU seconds).

    .venv/bin/python bench/reload.py --containers 1000,10000 [--edits 9] [--loader both]

bench/gen.py's manifests (500 containers per file) in a temporary directory; the edit is
bench/run.py's P4 edit (one container's line rewritten in place: an explicit address on
its one L2 network), alternated between two addresses. Each reload is what the daemon does:
``fswatch.fingerprint`` (scan, read and hash every file, the bytes handed to the cache), the
load, ``fleet.narrow``. ``--loader parse-cache`` is the daemon before the entry-level reload
(``manifest.load(paths, ParseCache())``), ``incremental`` after it
(``manifest.incremental.IncrementalLoad``). Figures: median CPU (``time.process_time``) of
the edits' reloads; the split comes from a second series with every stage's functions
wrapped by a timer (the wrappers add ~1 us per call: the container check runs once per
container, so the split's sum is a little above the unwrapped total).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from reconciler import fleet as _fleet  # noqa: E402
from reconciler import manifest  # noqa: E402
from reconciler.daemon import fswatch  # noqa: E402
from reconciler.manifest import fleet as _mfleet  # noqa: E402
from reconciler.manifest import schema as _schema  # noqa: E402
from reconciler.manifest import semantic as _semantic  # noqa: E402
from reconciler.manifest import ula as _ula  # noqa: E402
from reconciler.manifest import yamlload as _yamlload  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_gen", os.path.join(ROOT, "bench", "gen.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def _loader(kind: str):
    if kind == "incremental":
        from reconciler.manifest.incremental import IncrementalLoad

        cache = IncrementalLoad()
        return cache, cache.load
    cache = manifest.ParseCache()
    return cache, lambda paths: manifest.load(paths, cache)


class Split:
    """Wraps functions so that their CPU time adds up under a label (outermost call only)."""

    def __init__(self) -> None:
        self.cpu: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}
        self._undo: List[Callable[[], None]] = []
        self._depth = 0

    def wrap(self, owner, name: str, label: str) -> None:
        real = getattr(owner, name)
        split = self

        def timed(*a, **k):
            if split._depth:
                return real(*a, **k)
            split._depth += 1
            t = time.process_time()
            try:
                return real(*a, **k)
            finally:
                split.cpu[label] = split.cpu.get(label, 0.0) + time.process_time() - t
                split.calls[label] = split.calls.get(label, 0) + 1
                split._depth -= 1

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, real))

    def undo(self) -> None:
        for u in reversed(self._undo):
            u()
        self._undo.clear()

    def reset(self) -> None:
        self.cpu.clear()
        self.calls.clear()


STAGES = [
    (fswatch, "fingerprint", "read + hash (fingerprint: scan, read, blake2b, sha256)"),
    (manifest, "parse_bytes", "YAML parse (libyaml events -> values)"),
    (_schema, "diagnostics", "schema (whole files)"),
    (_semantic, "collect", "semantic: collect entries"),
    (_semantic._Checker, "unique", "semantic: unique names (3 kinds)"),
    (_semantic._Checker, "network", "semantic: networks (subnets, gateways, host access)"),
    (_semantic._Checker, "vlan", "semantic: vlans"),
    (_semantic._Checker, "vlan_cycles", "semantic: vlan cycles"),
    (_semantic._Checker, "find_net_overlaps", "semantic: network overlaps"),
    (_semantic._Checker, "host_name", "semantic: host names (per entry, when not in bulk)"),
    (_semantic._Checker, "container", "semantic: containers (addresses, aliases, demand, model)"),
    (_semantic._Checker, "passthru", "semantic: macvlan passthru"),
    (_semantic._Checker, "exhaustion", "semantic: pool exhaustion"),
    (_semantic._Checker, "exhausted", "semantic: pool exhaustion"),
    (_mfleet, "check", "semantic: fleet rules"),
    (_ula, "check", "semantic: ula_prefix"),
    (_fleet, "narrow", "fleet narrow"),
]


def incremental_stages():
    from reconciler.manifest import incremental as inc

    return [
        (inc, "splice", "incremental: re-parse the changed lines (splice)"),
        (inc, "parse_bytes", "YAML parse (libyaml events -> values)"),
        (inc._Base, "_same_top", "incremental: compare non-container parts"),
        (inc._Base, "_diff_file", "incremental: match entries (value, positions)"),
        (inc, "_entry_valid", "incremental: schema of changed entries"),
        (inc._Base, "_rebuild", "incremental: assemble the desired state"),
    ]


def run(n: int, kind: str, edits: int, split: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        files = gen.write(d, n, 20)
        src = files[-1]
        original = open(src).read().splitlines()
        # bench/run.py's edit target: the last container of the last file on one L2 network
        # with an automatic address (n00/n01 are L2 on VLAN parents)
        idx = max(i for i, line in enumerate(original)
                  if line.startswith("  c") and "{networks: {n00: {}}}" in line)
        name = original[idx].split(":")[0].strip()
        cache, load = _loader(kind)
        paths = [d]

        def reload():
            digest, fs, missing = fswatch.fingerprint(paths, cache)
            return _fleet.narrow(load(paths), None)

        first = reload()  # the daemon's start: everything parsed and checked
        assert name in first.containers
        sp = Split() if split else None
        if sp is not None:
            for owner, fn, label in STAGES + (incremental_stages() if kind == "incremental" else []):
                if hasattr(owner, fn):
                    sp.wrap(owner, fn, label)
        cpu = []
        try:
            for k in range(edits):
                lines = list(original)
                lines[idx] = f"  {name}: {{networks: {{n00: {{ip: 10.1.250.{10 + k % 2}}}}}}}"
                with open(src + ".tmp", "w") as f:
                    f.write("\n".join(lines) + "\n")
                os.replace(src + ".tmp", src)
                t = time.process_time()
                state = reload()
                cpu.append(time.process_time() - t)
                assert str(state.containers[name].attachments[0].ip) == f"10.1.250.{10 + k % 2}"
        finally:
            if sp is not None:
                sp.undo()
        out = {"containers": n, "loader": kind, "median_cpu_s": statistics.median(cpu), "cpu_s": cpu}
        if sp is not None:
            out["split"] = {k: v / edits for k, v in sp.cpu.items()}
            out["calls"] = {k: v // edits for k, v in sp.calls.items()}
            out["mode"] = getattr(cache, "last_mode", "full")
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--containers", default="1000,10000")
    ap.add_argument("--edits", type=int, default=9)
    ap.add_argument("--loader", choices=("parse-cache", "incremental", "both"), default="both")
    a = ap.parse_args()
    kinds = ["parse-cache", "incremental"] if a.loader == "both" else [a.loader]
    for n in [int(x) for x in a.containers.split(",")]:
        for kind in kinds:
            r = run(n, kind, a.edits, split=False)
            s = run(n, kind, a.edits, split=True)
            print(f"\n{n} containers, {kind}: reload CPU median {r['median_cpu_s'] * 1000:.1f} ms "
                  f"(min {min(r['cpu_s']) * 1000:.1f}, max {max(r['cpu_s']) * 1000:.1f}; {a.edits} edits)"
                  f"{'; ' + s['mode'] if kind == 'incremental' else ''}")
            for label, v in sorted(s["split"].items(), key=lambda kv: -kv[1]):
                print(f"  {v * 1000:8.2f} ms  {label} ({s['calls'][label]} calls)")


if __name__ == "__main__":
    main()
