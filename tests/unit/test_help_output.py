"""What people read: --help has examples for every subcommand and names documents that exist
on the machine; plan text shows sysctl values, a dummy parent's network and the lines a hosts
file gains or loses; summaries say "1 network", not "1 networks"; validate counts VLANs
implied by eth0.N parents apart from declared ones; status on an empty host says so."""
from __future__ import annotations

import os
import re

import pytest

from reconciler import engine
from reconciler.cli import build_parser
from reconciler.render import result_text, status_text
from reconciler.manifest import load_texts
from reconciler.model import dummy_parent_name
from reconciler.objects import DummyLink, Endpoint, HostsFile, HOSTS_MARKER
from reconciler.model import Flag, Mode
from reconciler.plan import Action, Change, Op, Plan
from reconciler.render import plural, render_text, validate_summary


def subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, sub.choices


def test_every_subcommand_help_has_examples_of_itself():
    parser, choices = subcommands()
    assert "Examples:" in parser.format_help()
    assert set(choices) >= {"validate", "plan", "apply", "watch", "status"}
    for name, p in choices.items():
        text = p.format_help()
        assert "\nExamples:\n" in text, name
        examples = text.split("\nExamples:\n", 1)[1]
        assert re.search(rf"^  (sudo )?ipvlanctl {name}\b", examples, re.M), (name, examples)


def test_examples_keep_their_layout_and_descriptions_still_wrap():
    _, choices = subcommands()
    text = choices["plan"].format_help()
    assert "\n  # unprivileged, without the kernel, against an empty host\n  ipvlanctl plan --offline manifests.d\n" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_watch_help_names_documentation_that_exists_here():
    _, choices = subcommands()
    text = " ".join(choices["watch"].format_help().split())  # unwrapped
    m = re.search(r"Documentation: (\S+daemon\.md)", text.replace("- ", "-"))
    assert m, text
    assert os.path.isabs(m.group(1)) and os.path.exists(m.group(1))
    assert "See docs/daemon.md" not in text


def test_plan_offline_help_says_what_it_assumes_about_parents():
    _, choices = subcommands()
    text = " ".join(choices["plan"].format_help().split())
    assert "every parent named in the manifests (e.g. eth0) exists, with no addresses" in text


def test_plurals():
    assert plural(1, "network") == "1 network"
    assert plural(0, "network") == "0 networks"
    assert plural(2, "VLAN") == "2 VLANs"


MANIFEST = """\
version: 1
networks:
  ipvlan20: {parent: eth0.20, subnets: [{subnet: 192.168.20.0/24}]}
  ipnet210: {ipvlan_mode: l3, subnets: [{subnet: 192.168.214.0/24}]}
vlans:
  foo: {link: eth0, id: 40}
containers:
  c1: {networks: {ipvlan20: {}}}
  c2: {networks: {ipvlan20: {}, ipnet210: {}}}
"""


def test_validate_summary_counts_implied_vlans_apart_and_uses_singulars():
    d = load_texts([("m.yaml", MANIFEST)])
    assert validate_summary(d) == ("OK: 2 networks, 1 VLAN, 2 containers; "
                                   "1 implied VLAN link (from eth0.N-style parents)")
    one = load_texts([("m.yaml", "version: 1\nnetworks:\n  n: {internal: true}\ncontainers:\n"
                                 "  c: {networks: {n: {}}}\n")])
    assert validate_summary(one) == "OK: 1 network, 0 VLANs, 1 container"


@pytest.fixture(scope="module")
def offline_plan_text():
    d = load_texts([("m.yaml", MANIFEST)])
    return render_text(engine.plan_for(d, engine.offline_live(None), engine.State(), offline=True).plan)


def test_plan_text_shows_sysctl_values(offline_plan_text):
    assert re.search(r"^ +\+ sysctl c1 net\.ipv6\.conf\.eth0\.disable_ipv6 = 1$", offline_plan_text, re.M)


def test_plan_text_names_the_network_of_a_dummy_parent(offline_plan_text):
    assert f"+ dummy {dummy_parent_name('ipnet210')} (network ipnet210)\n" in offline_plan_text


def test_plan_text_lists_the_lines_a_new_hosts_file_gets(offline_plan_text):
    block = offline_plan_text.split("+ hosts /etc/netns/c1/hosts\n", 1)[1].split("\n    ", 1)[0]
    assert re.fullmatch(r"(        \+ \S+ \S+.*\n?)+", block + "\n"), block
    assert "c1" in block and "localhost" not in block and HOSTS_MARKER not in block


def hosts(*lines):
    return "\n".join([HOSTS_MARKER, "127.0.0.1\tlocalhost", *lines]) + "\n"


def test_plan_text_lists_hosts_lines_added_and_removed():
    before = hosts("10.0.0.2\tc1", "10.0.0.3\tc2")
    after = hosts("10.0.0.2\tc1", "10.0.0.4\tc2", "10.0.0.5\tc3\x1b[31m")
    a = Action(Op.UPDATE, HostsFile("c1", after).key, HostsFile("c1", before), HostsFile("c1", after),
               (Change("content", before, after),))
    text = render_text(Plan(actions=(a,)))
    assert "content: 2 lines added, 1 removed" in text
    lines = [l.strip() for l in text.splitlines()]
    assert "+ 10.0.0.4 c2" in lines and "- 10.0.0.3 c2" in lines
    assert "+ 10.0.0.5 c3\\x1b[31m" in lines  # a control character never reaches the terminal
    assert "\x1b" not in text and "10.0.0.2 c1" not in text


def test_long_hosts_lists_are_cut_short():
    after = hosts(*(f"10.0.0.{i}\tc{i}" for i in range(2, 12)))  # 10 entries
    a = Action(Op.CREATE, HostsFile("c1", after).key, None, HostsFile("c1", after))
    text = render_text(Plan(actions=(a,)))
    assert text.count("        + 10.0.0.") == 4 and "\n        ...\n" in text
    four = hosts(*(f"10.0.0.{i}\tc{i}" for i in range(2, 6)))
    text = render_text(Plan(actions=(Action(Op.DELETE, HostsFile("c1", four).key, HostsFile("c1", four), None),)))
    assert text.count("        - 10.0.0.") == 4 and "..." not in text
    before = hosts("10.0.0.1\tc1")
    after = hosts(*(f"10.0.0.{i}\tc{i}" for i in range(2, 12)))
    text = render_text(Plan(actions=(Action(Op.UPDATE, HostsFile("c1", after).key, HostsFile("c1", before),
                                            HostsFile("c1", after), (Change("content", before, after),)),)))
    assert "content: 10 lines added, 1 removed" in text and "... and 7 more lines" in text


def test_deleted_dummy_is_named_after_the_network_of_its_deleted_endpoints():
    name = dummy_parent_name("old")
    dummy = DummyLink(name)
    ep = Endpoint("c9", "eth0", name, Mode.L2, Flag.BRIDGE, "old")
    plan = Plan(actions=(Action(Op.DELETE, ep.key, ep, None), Action(Op.DELETE, dummy.key, dummy, None)))
    assert f"- dummy {name} (network old)" in render_text(plan)


def test_status_on_an_empty_host_says_nothing_is_managed():
    text = status_text({"summary": {"networks": [], "containers": []}, "objects": []})
    assert text.startswith("Nothing managed on this host") and "NETWORK" not in text
    text = status_text({"summary": {"networks": [], "containers": []},
                        "objects": [{"kind": "vlan", "name": "eth0.20"}]})
    assert "eth0.20 (vlan)" in text and "NETWORK" not in text


def test_apply_summary_singulars():
    class Out:
        plan = Plan(pending=("x",))
        result = None
        rollback = None
        verify = None
    assert "1 object pending on missing parents" in result_text(Out())
