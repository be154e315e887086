"""BIRD 2 configuration rendering (SPEC 5.2), each variant checked by `bird -p` itself."""
import ipaddress as ia
import shutil
import subprocess

import pytest

from reconciler import bird
from reconciler.errors import UserError
from reconciler.model import (
    Attachment,
    Bfd,
    Bgp,
    BgpPeer,
    Container,
    DesiredState,
    Host,
    Mode,
    Network,
    ParentKind,
    Subnet,
)

N = ia.ip_network
A = ia.ip_address


def fleet(bgp=None, hosts=None):
    hosts = hosts or {
        "h1": Host("h1", 1, A("192.168.1.11"), A("2001:db8:1::11")),
        "h2": Host("h2", 2, A("192.168.1.12"), A("2001:db8:1::12")),
        "h-3.x": Host("h-3.x", 3, A("192.168.1.13")),
    }
    nets = {
        "l3a": Network("l3a", mode=Mode.L3, parent="eth0", parent_kind=ParentKind.EXISTING, ipv6=True,
                       subnets=(Subnet(N("10.40.0.0/16")), Subnet(N("2001:db8:40::/64")))),
        "l3s": Network("l3s", mode=Mode.L3S, parent="eth1", parent_kind=ParentKind.EXISTING,
                       subnets=(Subnet(N("10.41.0.0/24")),)),
        "lan": Network("lan", parent="eth2", parent_kind=ParentKind.EXISTING, subnets=(Subnet(N("10.20.0.0/24")),)),
        "iso": Network("iso", mode=Mode.L3, parent="di-x", internal=True, subnets=(Subnet(N("10.99.0.0/24")),)),
    }
    cs = {"c1": Container("c1", (Attachment("l3a", "eth0"),), host="h1")}
    return DesiredState(nets, {}, cs, hosts=hosts, bgp=bgp or Bgp(asn=64512))


def bird_check(text, tmp_path):
    exe = shutil.which("bird")
    if exe is None:
        pytest.fail("`bird` (BIRD 2) is not installed: `apt-get install bird2` (scripts set up system packages)")
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    r = subprocess.run([exe, "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, f"bird -p rejected the config:\n{r.stderr}\n{text}"


VARIANTS = {
    "mesh": Bgp(asn=64512),
    "table-and-bfd": Bgp(asn=64512, table=77, bfd=Bfd(interval_ms=100, multiplier=5)),
    "reflector": Bgp(asn=64512, route_reflectors=("h1",)),
    "peers": Bgp(asn=64512, peers=(BgpPeer(A("192.168.1.1"), 65000), BgpPeer(A("2001:db8:1::1"), 64512))),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("host", ["h1", "h2", "h-3.x"])
def test_every_variant_is_valid_bird(variant, host, tmp_path):
    bird_check(bird.render(fleet(VARIANTS[variant]), host), tmp_path)


def test_router_id_kernel_learning_and_main_table_export():
    text = bird.render(fleet(Bgp(asn=64512, table=77)), "h1")
    assert "router id 192.168.1.11;" in text
    assert "  kernel table 77;\n  learn;" in text
    assert "import where krt_source = 149 && fleet_host4();" in text
    assert "peer table master4;" in text and "peer table master6;" in text
    # the main-table kernel protocol: BGP routes only, one path each
    main4 = text.split("protocol kernel k_main4 {")[1].split("\n}")[0]
    assert "merge paths off;" in main4 and "export where source = RTS_BGP && fleet_host4();" in main4
    assert "kernel table" not in main4


def test_import_only_host_routes_inside_announced_l3_subnets():
    text = bird.render(fleet(), "h1")
    assert "return net ~ [ 10.40.0.0/16{32,32}, 10.41.0.0/24{32,32} ];" in text
    assert "return net ~ [ 2001:db8:40::/64{128,128} ];" in text
    assert "10.20.0.0" not in text and "10.99.0.0" not in text  # L2 and internal never


def test_full_mesh_sessions_timers_next_hop_and_ipv6_only_where_both_have_address6():
    text = bird.render(fleet(), "h1")
    assert "neighbor 192.168.1.12 as 64512;" in text and "neighbor 192.168.1.13 as 64512;" in text
    assert "neighbor 2001:db8:1::12 as 64512;" in text
    assert "# host h-3.x: no address6, no IPv6 session" in text
    t4 = text.split("template bgp fleet4 {")[1].split("\n}")[0]
    for line in ("local 192.168.1.11 as 64512;", "direct;", "connect retry time 2;", "error wait time 1, 5;",
                 "hold time 6;", "keepalive time 2;", "gateway direct;"):
        assert line in t4
    assert "graceful restart" not in text  # BIRD's default (aware)
    assert "bfd" not in text
    assert "rr client" not in text
    # a host without address6 has no IPv6 part at all
    t3 = bird.render(fleet(), "h-3.x")
    assert "ipv6" not in t3 and "protocol bgp host4_h_3_x" not in t3
    assert "protocol bgp host4_h_3_x_" in text  # sanitised, with a hash against collisions


def test_route_reflectors():
    bgp = Bgp(asn=64512, route_reflectors=("h1",))
    rr = bird.render(fleet(bgp), "h1")
    assert rr.count("rr client;") == 3  # h2 (v4, v6), h-3.x (v4)
    client = bird.render(fleet(bgp), "h2")
    assert "neighbor 192.168.1.11 as 64512;" in client
    assert "192.168.1.13" not in client  # clients peer with the reflectors only
    assert "rr client" not in client and "next hop self" not in rr


def test_bfd_block_and_bfd_on_replace_short_hold_timers():
    text = bird.render(fleet(Bgp(asn=64512, bfd=Bfd(interval_ms=100, multiplier=5))), "h1")
    assert "protocol bfd {" in text and "min rx interval 100 ms;" in text and "multiplier 5;" in text
    fleet4 = text.split("template bgp fleet4 {")[1].split("\n}")[0]
    assert "bfd on;" in fleet4 and "hold time" not in fleet4
    # extra peers (routers outside the fleet) keep the short BGP timers, no BFD
    bgp = Bgp(asn=64512, bfd=Bfd(), peers=(BgpPeer(A("192.168.1.1"), 65000),))
    peer = bird.render(fleet(bgp), "h1").split("protocol bgp peer_192_168_1_1 {")[1].split("\n}")[0]
    assert "bfd on" not in peer and "hold time 6;" in peer


def test_extra_peers_get_this_hosts_routes_only_and_give_none():
    bgp = Bgp(asn=64512, peers=(BgpPeer(A("192.168.1.1"), 65000), BgpPeer(A("2001:db8:1::1"), 65000)))
    text = bird.render(fleet(bgp), "h1")
    p4 = text.split("protocol bgp peer_192_168_1_1 {")[1].split("\n}")[0]
    assert "neighbor 192.168.1.1 as 65000;" in p4
    assert "import none;" in p4 and 'export where proto = "k_export4";' in p4
    assert "neighbor 2001:db8:1::1 as 65000;" in text
    assert "no address6" in bird.render(fleet(bgp), "h-3.x")


def test_deterministic():
    a = bird.render(fleet(VARIANTS["peers"]), "h2")
    hosts = dict(reversed(list(fleet().hosts.items())))
    b = bird.render(fleet(VARIANTS["peers"], hosts=hosts), "h2")
    assert a == b


def test_errors_are_user_errors():
    with pytest.raises(UserError, match="not under hosts"):
        bird.render(fleet(), "nope")
    with pytest.raises(UserError, match="bgp"):
        bird.render(DesiredState(hosts=fleet().hosts), "h1")
    with pytest.raises(UserError, match="fleet"):
        bird.render(DesiredState(bgp=Bgp(asn=1)), "h1")
