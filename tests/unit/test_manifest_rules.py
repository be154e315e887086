"""Semantic rules that keep validate honest about what the kernel and the resolvers do:
link-local IPv6 gateways, host names in hosts files, and the pool count that must agree
with IPAM (the located errors themselves are in tests/bad/)."""
from __future__ import annotations

import ipaddress as ia

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import ipam
from reconciler.compile import HostsBuilder, compile_state
from reconciler.errors import ManifestError
from reconciler.manifest import parse_text, semantic
from reconciler.model import Attachment, Container, DesiredState, Network, Subnet
from reconciler.objects import Kind, Route

A = ia.ip_address
N = ia.ip_network


def compiled(text: str):
    d = parse_text(text, "m.yaml")
    resolved, _ = ipam.resolve(d, ipam.IpamFacts(machine_id="m"), ipam.Allocations())
    return d, compile_state(resolved, None, offline=True)


def routes(c, ns):
    return {str(o.dst): o for o in c.desired.objects.values() if isinstance(o, Route) and o.ns == ns}


def hosts(c, ns):
    return c.desired.get((Kind.HOSTS, ns)).content


# ---- link-local IPv6 gateway ------------------------------------------------------------------
def test_link_local_ipv6_gateway_is_accepted_and_is_the_default_route():
    _, c = compiled(
        """\
version: 1
networks:
  lan:
    parent: eth0
    ipv6: true
    subnets:
      - subnet: 10.9.0.0/24
      - subnet: "2001:db8:9::/64"
        gateway: "fe80::1"
containers:
  c1: {networks: {lan: {}}}
"""
    )
    r = routes(c, "c1")
    assert r["::/0"] == Route(ns="c1", dst=N("::/0"), gateway=A("fe80::1"), ifname="eth0")
    assert r["0.0.0.0/0"].gateway == A("10.9.0.1")
    # the link-local gateway reserves nothing in the subnet: the first address is handed out
    addrs = [str(o.address) for o in c.desired.objects.values() if getattr(o, "kind", None) is Kind.ADDRESS]
    assert "2001:db8:9::1/64" in addrs


def test_link_local_gateway_is_refused_for_l2_ipv4_and_as_a_subnet():
    with pytest.raises(ManifestError, match=r"only an IPv6 gateway may be link-local"):
        parse_text("version: 1\nnetworks:\n  n: {subnets: [{subnet: 10.0.0.0/24, gateway: 169.254.0.1}]}\n")
    with pytest.raises(ManifestError, match=r"fe80::/64 is link-local"):
        parse_text('version: 1\nnetworks:\n  n: {ipv6: true, subnets: [{subnet: "fe80::/64"}]}\n')


@pytest.mark.parametrize("text", ["2001:db8::/64", "fd00:1::/64", "10.0.0.0/8", "100.64.0.0/10", "192.0.2.0/24"])
def test_ordinary_subnets_are_not_kernel_special(text):
    assert semantic._kernel_special(N(text)) is None


@pytest.mark.parametrize(
    "text, what",
    [("0.0.0.0/0", "includes 0.0.0.0/8"), ("127.0.0.1", "loopback"), ("255.255.255.255", "limited broadcast"),
     ("::", "unspecified"), ("::1", "loopback"), ("::ffff:10.0.0.1", "IPv4-mapped"), ("ff02::1", "multicast"),
     ("fec0::/64", "site-local"), ("::/0", "includes ::1/128")],
)
def test_kernel_special_addresses_and_networks(text, what):
    x = N(text) if "/" in text else A(text)
    assert what in semantic._kernel_special(x)


# ---- host names -----------------------------------------------------------------------------
TWO = """\
version: 1
networks:
  lan: {subnets: [{subnet: 10.8.0.0/24}]}
containers:
  c1: {networks: {lan: {ip: 10.8.0.10, aliases: [C1, db, DB, www]}}}
  c2: {networks: {lan: {ip: 10.8.0.11}}}
"""


def test_alias_repeating_a_name_is_a_warning_and_is_dropped():
    d = parse_text(TWO, "m.yaml")
    assert d.containers["c1"].attachments[0].aliases == ("db", "www")
    warned = sorted((w.loc.line, w.loc.col, w.message) for w in d.warnings)
    assert [(line, col) for line, col, _ in warned] == [(5, 50), (5, 58)]
    assert "alias 'C1' repeats the container's own name" in warned[0][2]
    assert "alias 'DB' repeats alias 'db'" in warned[1][2]


def test_hosts_file_lists_each_name_once():
    _, c = compiled(TWO)
    text = hosts(c, "c2")
    assert "10.8.0.10\tc1 db www\n" in text
    names = [n.lower() for line in text.splitlines()[3:] for n in line.split()[1:]]  # after the header
    assert len(names) == len(set(names)), text


def test_hosts_builder_drops_repeated_names_even_from_a_state_built_elsewhere():
    """The rendering does not trust its input: an alias equal to the name, in any case,
    or repeated, is written once (a live-state file or another front end may carry it)."""
    nets = {"lan": Network("lan", parent="di-x", subnets=(Subnet(N("10.0.0.0/24"), gateway=A("10.0.0.1")),))}
    cs = {
        "web": Container("web", (Attachment("lan", "eth0", ip=A("10.0.0.2"), aliases=("WEB", "www", "WWW", "www")),)),
        "db": Container("db", (Attachment("lan", "eth0", ip=A("10.0.0.3")),)),
    }
    h = HostsBuilder(DesiredState(nets, {}, cs))
    assert "10.0.0.2\tweb www\n" in h.content(cs["db"])
    assert h.content(cs["web"]).count("web") == 1


def test_same_alias_on_two_networks_of_one_container_is_its_own():
    d = parse_text(
        """\
version: 1
networks:
  a: {subnets: [{subnet: 10.1.0.0/24}]}
  b: {subnets: [{subnet: 10.2.0.0/24}]}
containers:
  c1: {networks: {a: {aliases: [db]}, b: {aliases: [DB]}}}
""",
        "m.yaml",
    )
    assert [att.aliases for att in d.containers["c1"].attachments] == [("db",), ("DB",)]
    assert not d.warnings


def test_networks_sharing_a_subnet_are_fine_for_different_containers():
    d = parse_text(
        """\
version: 1
networks:
  a: {parent: eth0.10, subnets: [{subnet: 10.1.0.0/24}]}
  b: {parent: eth0.20, subnets: [{subnet: 10.1.0.0/24}]}
containers:
  c1: {networks: {a: {}}}
  c2: {networks: {b: {}}}
""",
        "m.yaml",
    )
    assert set(d.containers) == {"c1", "c2"}


# ---- pool exhaustion: validate counts what IPAM hands out ----------------------------------
@st.composite
def small_l2_network(draw):
    prefix = draw(st.integers(26, 31))
    sub = N(f"10.50.0.0/{prefix}")
    item = {"subnet": str(sub)}
    hosts_ = list(sub)
    if draw(st.booleans()):
        rp = draw(st.integers(prefix, 32))
        item["ip_range"] = str(list(sub.subnets(new_prefix=rp))[draw(st.integers(0, 2 ** (rp - prefix) - 1))])
    if len(hosts_) > 4 and draw(st.booleans()):
        item["gateway"] = str(draw(st.sampled_from(hosts_[1:-1])))
    usable = hosts_[1:-1] if prefix <= 30 else hosts_
    gw = item.get("gateway", str(sub[1]))
    free = [str(a) for a in usable if str(a) != gw]
    aux = draw(st.lists(st.sampled_from(free), max_size=2, unique=True)) if free else []
    if aux:
        item["aux_addresses"] = {f"r{i}": a for i, a in enumerate(aux)}
    left = [a for a in free if a not in aux]
    explicit = draw(st.lists(st.sampled_from(left), max_size=3, unique=True)) if left else []
    autos = draw(st.integers(0, 8))
    return item, explicit, autos


def _manifest(item, explicit, autos) -> str:
    lines = ["version: 1", "networks:", "  lan:", "    parent: eth0", f"    subnets: [{_flow(item)}]", "containers:"]
    for i, a in enumerate(explicit):
        lines.append(f"  x{i}: {{networks: {{lan: {{ip: {a}}}}}}}")
    for i in range(autos):
        lines.append(f"  a{i}: {{networks: {{lan: {{}}}}}}")
    return "\n".join(lines) + "\n"


def _flow(d) -> str:
    return "{" + ", ".join(f"{k}: {_flow(v) if isinstance(v, dict) else v}" for k, v in d.items()) + "}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=small_l2_network())
def test_validate_refuses_exactly_what_ipam_cannot_hand_out(net, monkeypatch_module):
    text = _manifest(*net)
    try:
        parse_text(text, "m.yaml")
        validate_ok = True
    except ManifestError as e:
        assert all("no automatic IPv4 address left" in d.message for d in e.diagnostics), str(e)
        validate_ok = False
    with monkeypatch_module.context() as m:
        m.setattr(semantic._Checker, "exhaustion", lambda *args: None)
        d = parse_text(text, "m.yaml")
    try:
        ipam.resolve(d, ipam.IpamFacts(machine_id="m"), ipam.Allocations())
        ipam_ok = True
    except ManifestError:
        ipam_ok = False
    assert validate_ok == ipam_ok, text


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# ---- property: what validate accepts renders unambiguous hosts files ------------------------
host_words = st.sampled_from(["web", "WEB", "Web", "db", "DB", "www", "api", "localhost", "IP6-loopback", "10.1", "123"])


@st.composite
def crowded_manifest(draw) -> str:
    """Few names, few subnets: collisions between names, aliases and subnets are the norm."""
    subnets = ["10.1.0.0/24", "10.1.0.0/25", "10.2.0.0/24", "10.1.0.128/26"]
    nets = {f"n{i}": draw(st.sampled_from(subnets)) for i in range(draw(st.integers(1, 4)))}
    lines = ["version: 1", "networks:"]
    lines += [f"  {n}: {{parent: eth0.{10 + i}, subnets: [{{subnet: {s}}}]}}" for i, (n, s) in enumerate(nets.items())]
    lines.append("containers:")
    for cname in draw(st.lists(host_words, min_size=1, max_size=5, unique=True)):
        atts = []
        for n in draw(st.lists(st.sampled_from(sorted(nets)), min_size=1, max_size=3, unique=True)):
            aliases = draw(st.lists(host_words, max_size=3, unique=True))
            atts.append(f"{n}: {{aliases: [{', '.join(repr(a) for a in aliases)}]}}")
        lines.append(f"  {cname!r}: {{networks: {{{', '.join(atts)}}}}}")
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=crowded_manifest())
def test_accepted_manifests_render_unambiguous_hosts_files(text):
    try:
        d, c = compiled(text)
    except ManifestError as e:
        for diag in e.diagnostics:  # refused: always located, never a crash
            assert diag.loc.line >= 1 and diag.loc.col >= 1, diag
        return
    for name, cont in d.containers.items():
        owner = {}
        for line in hosts(c, name).splitlines()[3:]:  # after the header
            ip, *names = line.split("\t")[0:1] + line.split("\t")[1].split(" ")
            lows = [n.lower() for n in names]
            assert len(lows) == len(set(lows)), line  # each name once per line
            for low in lows:
                assert low not in {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}, line
                assert not low[:1].isdigit(), line  # no address literals as names
                assert owner.setdefault(low, names[0]) == names[0], f"{low} names two containers:\n{line}"
        # a container on two networks never holds overlapping prefixes
        prefixes = [o.address.network for o in c.desired.objects.values()
                    if getattr(o, "kind", None) is Kind.ADDRESS and o.ns == name]
        for i, p in enumerate(prefixes):
            assert not any(p.overlaps(q) for q in prefixes[i + 1:]), prefixes


# ---- property: on a fleet host, validate counts the host's block as IPAM does --------------
@st.composite
def small_fleet(draw):
    size = draw(st.integers(27, 30))
    hid = draw(st.integers(0, 3))
    aux = draw(st.lists(st.integers(0, 40), max_size=3, unique=True))
    explicit = draw(st.lists(st.integers(0, 40), max_size=3, unique=True))
    autos = draw(st.integers(1, 12))
    underlay = draw(st.sampled_from(["192.168.1.11", f"10.60.0.{(hid << (32 - size)) + 2}"]))
    lines = ["version: 1", "hosts:", f"  h1: {{id: {hid}, address: {underlay}}}", "networks:", "  lan:",
             "    parent: eth0.20", "    block_size: %d" % size, "    subnets:", "      - subnet: 10.60.0.0/24"]
    aux = [a for a in aux if a not in explicit and a not in (0, 1)]
    if aux:
        lines.append("        aux_addresses: {%s}" % ", ".join(f"a{a}: 10.60.0.{a}" for a in aux))
    lines.append("containers:")
    for i, a in enumerate(a for a in explicit if a not in (0, 1)):
        lines.append(f"  x{i}: {{host: h1, networks: {{lan: {{ip: 10.60.0.{a}}}}}}}")
    for i in range(autos):
        lines.append(f"  c{i}: {{host: h1, networks: {{lan: {{}}}}}}")
    return "\n".join(lines) + "\n"


@given(text=small_fleet())
def test_validate_refuses_exactly_what_a_fleet_hosts_block_cannot_hand_out(text, monkeypatch_module):
    from reconciler import fleet

    try:
        parse_text(text, "m.yaml")
        validate_ok = True
    except ManifestError as e:
        if not all("no automatic IPv4 address left" in d.message for d in e.diagnostics):
            return  # another rule refused it (an explicit address on the underlay address, ...)
        validate_ok = False
    with monkeypatch_module.context() as m:
        m.setattr(semantic._Checker, "exhaustion", lambda *args: None)
        try:
            d = fleet.select(parse_text(text, "m.yaml"), "h1")
        except ManifestError:
            return
    try:
        ipam.resolve(d, ipam.IpamFacts(machine_id="m"), ipam.Allocations())
        ipam_ok = True
    except ManifestError:
        ipam_ok = False
    assert validate_ok == ipam_ok, text
