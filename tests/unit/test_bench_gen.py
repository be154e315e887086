"""bench/gen.py: valid, non-overlapping subnets for every network count it accepts (it wrote
10.258.0.0/24 above 155 networks), a clear refusal beyond, and it deletes only manifests it
wrote itself."""
from __future__ import annotations

import importlib.util
import ipaddress
import itertools
import os
import subprocess
import sys

import pytest

from reconciler.manifest import load_texts

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
# bench/gen.py is a script, not a package module: load it from its file
_SPEC = importlib.util.spec_from_file_location("bench_gen", os.path.join(BENCH, "gen.py"))
gen = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gen)


@pytest.mark.parametrize("networks", [1, 20, 101, 155, 156, gen.MAX_NETWORKS])
def test_every_accepted_count_gives_valid_disjoint_subnets(networks):
    subnets = []
    for _, spec in gen.network_specs(networks):
        for s in spec["subnets"]:
            subnets.append(ipaddress.ip_network(s["subnet"]))  # raises on 10.258.0.0/24
    for a, b in itertools.combinations(subnets, 2):
        assert not (a.version == b.version and a.overlaps(b)), (a, b)
    files = gen.generate(containers=2 * networks, networks=networks)
    desired = load_texts(sorted(files.items()))
    assert len(desired.networks) == networks and len(desired.containers) == 2 * networks


def test_counts_beyond_the_scheme_are_refused_clearly(tmp_path):
    with pytest.raises(gen.GenError, match="between 1 and 254"):
        gen.generate(10, gen.MAX_NETWORKS + 1)
    with pytest.raises(gen.GenError, match="per network"):
        gen.generate(gen.MAX_PER_NETWORK * 2 + 1, 2)
    p = subprocess.run([sys.executable, os.path.join(BENCH, "gen.py"), "--networks", "300",
                        str(tmp_path / "m")], capture_output=True, text=True)
    assert p.returncode == 2 and "--networks must be between 1 and 254" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "m").exists()


def test_only_its_own_files_are_replaced(tmp_path):
    d = tmp_path / "m"
    first = gen.write(str(d), containers=1200, networks=3)  # three container files
    assert len(first) == 4
    gen.write(str(d), containers=10, networks=3)  # the stale third file goes too
    assert sorted(os.listdir(d)) == ["00-networks.yaml", "01-containers.yaml"]
    (d / "mine.yaml").write_text("version: 1\n")
    (d / "notes.txt").write_text("x\n")
    with pytest.raises(gen.GenError, match="mine.yaml.*--force"):
        gen.write(str(d), containers=10, networks=3)
    assert (d / "mine.yaml").read_text() == "version: 1\n"
    gen.write(str(d), containers=10, networks=3, force=True)
    assert sorted(os.listdir(d)) == ["00-networks.yaml", "01-containers.yaml", "notes.txt"]


def test_help_shows_defaults():
    p = subprocess.run([sys.executable, os.path.join(BENCH, "gen.py"), "--help"],
                       capture_output=True, text=True, check=True)
    assert "(default: 1000)" in p.stdout and "(default: 20)" in p.stdout
