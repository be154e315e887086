"""Synthetic manifests for the benchmarks and the fault tests.

``generate(containers, networks)`` returns ``{filename: yaml_text}``: a mix of
L2 networks on VLAN parents ``eth0.<vid>``, L3/L3S networks (on VLAN parents,
two subnets each, so containers get scope-link routes), dual-stack networks
(explicit IPv6 subnet, or the automatic ULA /64) and internal networks (dummy
parent). Containers are spread round-robin over the networks; every fourth is
on a second network; some have explicit addresses and aliases, the rest get
automatic ones. Deterministic: same arguments, same text.

Addresses: network ``i`` uses 10.<i+1>.0.0/16 (automatic addresses fill it from
the bottom, explicit ones sit at 10.<i+1>.128.0 and up, so they never collide),
L3 networks add 10.<i+101>.0.0/24. Nothing is in 192.168.1.0/24, the VM's eth0.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Tuple

VID_BASE = 101


def network_specs(n: int) -> List[Tuple[str, dict]]:
    out = []
    for i in range(n):
        name = f"n{i:02d}"
        sub4 = f"10.{i + 1}.0.0/16"
        kind = i % 5
        if kind in (0, 1):  # L2 on a VLAN parent; gateway explicit or the first usable
            spec = {"parent": f"eth0.{VID_BASE + i}", "ipvlan_mode": "l2",
                    "subnets": [{"subnet": sub4, **({"gateway": f"10.{i + 1}.0.1"} if kind == 0 else {})}]}
        elif kind == 2:  # L3 (every other one L3S) on a VLAN parent with two subnets
            spec = {"parent": f"eth0.{VID_BASE + i}", "ipvlan_mode": "l3s" if (i // 5) % 2 else "l3",
                    "subnets": [{"subnet": sub4}, {"subnet": f"10.{i + 101}.0.0/24"}]}
        elif kind == 3:  # dual stack L2 on a VLAN parent
            spec = {"parent": f"eth0.{VID_BASE + i}", "ipv6": True,
                    "subnets": [{"subnet": sub4, "gateway": f"10.{i + 1}.0.1"},
                                {"subnet": f"fd00:{i + 1:x}::/64", "gateway": f"fd00:{i + 1:x}::1"}]}
        else:  # internal; every other one dual stack with the automatic ULA /64
            spec = {"internal": True, "subnets": [{"subnet": sub4}]}
            if (i // 5) % 2:
                spec["ipv6"] = True
        out.append((name, spec))
    return out


def container_specs(n: int, nets: List[Tuple[str, dict]]) -> List[Tuple[str, dict]]:
    k = len(nets)
    width = max(4, len(str(n)))
    out = []
    per_net: Dict[int, int] = {}
    for j in range(n):
        name = f"c{j:0{width}d}"
        primary = j % k
        pos = per_net.get(primary, 0)
        per_net[primary] = pos + 1
        att: dict = {}
        if j % 10 == 3:  # explicit address, high in the /16
            att["ip"] = f"10.{primary + 1}.{128 + pos // 250}.{pos % 250 + 2}"
            if nets[primary][1].get("ipv6") and "fd00" in str(nets[primary][1]["subnets"]):
                att["ip6"] = f"fd00:{primary + 1:x}::8000:{pos + 2:x}"
        if j % 7 == 0:
            att["aliases"] = [f"a{name}"]
        networks = {nets[primary][0]: att}
        if j % 4 == 1:
            second = (j * 7 + 3) % k
            if second != primary:
                networks[nets[second][0]] = {}
        out.append((name, {"networks": networks}))
    return out


def _flow(d: dict) -> str:
    """A dict as one YAML flow mapping (our values are simple: no quoting needed
    except IPv6 strings, which contain ':')."""
    parts = []
    for key, v in d.items():
        parts.append(f"{key}: {_flow_value(v)}")
    return "{" + ", ".join(parts) + "}"


def _flow_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return _flow(v)
    if isinstance(v, list):
        return "[" + ", ".join(_flow_value(x) for x in v) + "]"
    s = str(v)
    return f'"{s}"' if ":" in s else s


def generate(containers: int = 1000, networks: int = 20, per_file: int = 500) -> Dict[str, str]:
    nets = network_specs(networks)
    files: Dict[str, str] = {}
    lines = ["version: 1", "networks:"]
    lines += [f"  {name}: {_flow(spec)}" for name, spec in nets]
    files["00-networks.yaml"] = "\n".join(lines) + "\n"
    cs = container_specs(containers, nets)
    for f, start in enumerate(range(0, len(cs), per_file)):
        chunk = cs[start : start + per_file]
        lines = ["version: 1", "containers:"]
        lines += [f"  {name}: {_flow(spec)}" for name, spec in chunk]
        files[f"{f + 1:02d}-containers.yaml"] = "\n".join(lines) + "\n"
    return files


def write(directory: str, containers: int = 1000, networks: int = 20) -> List[str]:
    os.makedirs(directory, exist_ok=True)
    for old in os.listdir(directory):
        if old.endswith((".yaml", ".yml")):
            os.unlink(os.path.join(directory, old))
    out = []
    for name, text in generate(containers, networks).items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        out.append(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="write a synthetic manifest directory")
    p.add_argument("directory")
    p.add_argument("--containers", type=int, default=1000)
    p.add_argument("--networks", type=int, default=20)
    a = p.parse_args()
    write(a.directory, a.containers, a.networks)


if __name__ == "__main__":
    main()
