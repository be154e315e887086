from __future__ import annotations

import textwrap

FLEET = """\
version: 1
hosts:
  h1: {id: 0, address: 192.168.1.11}
  h2: {address: 192.168.1.12}
  h3: {address: 192.168.1.13}
networks:
  lan: {parent: eth0, subnets: [{subnet: 10.50.0.0/20, gateway: 10.50.0.1}]}
  l3a: {ipvlan_mode: l3, parent: eth1, subnets: [{subnet: 10.60.0.0/16}], block_size: 24}
containers:
  web1: {host: h1, networks: {lan: {}, l3a: {}}}
  web2: {host: h2, networks: {lan: {ip: 10.50.8.5}}}
"""


def write(tmp_path, text=FLEET, name="fleet.yaml"):
    d = tmp_path / "fleet.d"
    d.mkdir(exist_ok=True)
    (d / name).write_text(textwrap.dedent(text))
    return str(d)
