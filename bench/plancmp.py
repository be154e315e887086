#!/usr/bin/env python3
"""Compare `ipvlanctl plan --offline` between two checkouts, byte for byte.

    .venv/bin/python bench/plancmp.py OLD_CHECKOUT [NEW_CHECKOUT] [--containers 1000]

Each checkout runs its own `.venv/bin/ipvlanctl` (scripts/venv) on the SAME input files
(NEW_CHECKOUT's manifests/examples and one bench/gen.py directory), so paths in messages
agree. Cases: the examples directory and each of its manifests alone, every alt/ directory,
macvlan/ and each of its files, the fleet with --host for each host, --all-hosts and no
--host, and the generated manifest; each in text and --format json. Stdout, stderr and exit
status must be identical. Exit status 1 when any case differs (the first lines of the diff
are printed). A refactor that must not change behaviour (issue 11) is checked with this.
"""
from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FLEET_HOSTS = ("h1", "h2", "h3")


def cases(examples: Path, generated: Path) -> list[list[str]]:
    out: list[list[str]] = [[str(examples)]]
    out += [[str(p)] for p in sorted(examples.glob("*.yaml"))]
    out += [[str(p)] for p in sorted((examples / "alt").iterdir()) if p.is_dir()]
    out.append([str(examples / "macvlan")])
    out += [[str(p)] for p in sorted((examples / "macvlan").glob("*.yaml"))]
    fleet = str(examples / "fleet")
    out += [[fleet, "--host", h] for h in FLEET_HOSTS]
    out += [[fleet, "--all-hosts"], [fleet]]
    out.append([str(generated)])
    return [c + fmt for c in out for fmt in ([], ["--format", "json"])]


def run(checkout: Path, args: list[str]) -> tuple[int, bytes, bytes]:
    cmd = [str(checkout / ".venv/bin/ipvlanctl"), "plan", "--offline", *args]
    p = subprocess.run(cmd, capture_output=True, cwd=tempfile.gettempdir())
    return p.returncode, p.stdout, p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="checkout with .venv (e.g. a `git worktree add --detach`)")
    ap.add_argument("new", type=Path, nargs="?", default=HERE)
    ap.add_argument("--containers", type=int, default=1000)
    a = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "gen"
        subprocess.run([sys.executable, str(a.new / "bench/gen.py"), "--containers", str(a.containers), str(gen)],
                       check=True, stdout=subprocess.DEVNULL)
        for args in cases(a.new / "manifests/examples", gen):
            old, new = run(a.old, args), run(a.new, args)
            label = " ".join(Path(x).name if "/" in x else x for x in args)
            if old == new:
                print(f"same  exit {new[0]}  {len(new[1]):>9} bytes  {label}")
                continue
            failed += 1
            print(f"DIFF  exit {old[0]} -> {new[0]}  {label}")
            for name, o, n in (("stdout", old[1], new[1]), ("stderr", old[2], new[2])):
                diff = list(difflib.unified_diff(o.decode(errors="replace").splitlines(),
                                                 n.decode(errors="replace").splitlines(),
                                                 f"old {name}", f"new {name}", lineterm="", n=1))
                print("\n".join("    " + line for line in diff[:20]))
    print(f"{failed} case(s) differ" if failed else "all cases identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
