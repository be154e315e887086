"""--bird-config: atomic writes, reload only on change, BIRD problems reported (never raised)."""
import os
import stat

import pytest

from reconciler import birdctl
from reconciler.birdctl import BirdSync, parse_protocols, write_if_changed
from tests.unit.test_bird import fleet

SHOW_PROTOCOLS = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     10:00:00.000
k_export4  Kernel     t_export4  up     10:00:00.000
host4_h2   BGP        ---        up     10:00:01.000  Established
host4_h3   BGP        ---        start  10:00:01.000  Connect       Socket: Connection refused
"""


@pytest.fixture
def fake_birdc(tmp_path, monkeypatch):
    """A `birdc` on PATH that logs its arguments and answers from files in tmp_path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "birdc.log"
    reply = tmp_path / "reply"
    reply.write_text("BIRD 2.0.12 ready.\nReading configuration from x\nReconfigured\n")
    exe = bindir / "birdc"
    exe.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\ncat {reply}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log, reply


def test_write_if_changed_is_atomic_and_idempotent(tmp_path):
    path = tmp_path / "etc" / "bird.conf"
    assert write_if_changed(str(path), "a\n") is True
    ino = path.stat().st_ino
    assert write_if_changed(str(path), "a\n") is False
    assert path.stat().st_ino == ino  # untouched
    assert write_if_changed(str(path), "b\n") is True
    assert path.read_text() == "b\n" and path.stat().st_ino != ino  # replaced by rename
    assert [p.name for p in path.parent.iterdir()] == ["bird.conf"]  # no temp file left


def test_sync_writes_and_reloads_only_on_change(tmp_path, fake_birdc):
    log, _ = fake_birdc
    conf = tmp_path / "bird.conf"
    sync = BirdSync(str(conf), socket="/x/bird.ctl", host="h1")
    r = sync.sync(fleet())
    assert r == {"config": str(conf), "changed": True, "reloaded": True, "error": None}
    assert log.read_text() == "-s /x/bird.ctl configure\n"
    assert "router id 192.168.1.11;" in conf.read_text()
    r = sync.sync(fleet())
    assert r["changed"] is False and r["reloaded"] is False
    assert log.read_text().count("configure") == 1


def test_failing_bird_is_reported_and_retried_by_the_same_sync(tmp_path, fake_birdc):
    log, reply = fake_birdc
    reply.write_text("Unable to connect to server control socket (/x/bird.ctl): No such file or directory\n")
    sync = BirdSync(str(tmp_path / "bird.conf"), socket="/x/bird.ctl", host="h1")
    r = sync.sync(fleet())
    assert r["changed"] is True and r["reloaded"] is False
    assert "Unable to connect" in r["error"]
    reply.write_text("BIRD 2.0.12 ready.\nReconfigured\n")
    r = sync.sync(fleet())  # unchanged file, but the last reload failed: try again
    assert r["changed"] is False and r["reloaded"] is True and r["error"] is None
    reply.write_text("BIRD 2.0.12 ready.\n8002 /etc/bird.conf:3:1 syntax error\n")
    fresh = BirdSync(str(tmp_path / "other.conf"), socket="/x/bird.ctl", host="h1")
    assert "syntax error" in fresh.sync(fleet())["error"]


def test_missing_birdc_and_unrenderable_state_are_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    r = BirdSync(str(tmp_path / "bird.conf"), host="h1").sync(fleet())
    assert r["changed"] is True and "birdc not found" in r["error"]
    r = BirdSync(str(tmp_path / "bird2.conf"), host="nope").sync(fleet())
    assert "not under hosts" in r["error"] and not (tmp_path / "bird2.conf").exists()
    assert "BIRD:" in birdctl.report_text(r)


def test_parse_show_protocols_and_status(fake_birdc):
    rows = parse_protocols(SHOW_PROTOCOLS)
    assert [r["name"] for r in rows] == ["device1", "k_export4", "host4_h2", "host4_h3"]
    assert rows[3]["info"] == "Connect       Socket: Connection refused"
    _, reply = fake_birdc
    reply.write_text(SHOW_PROTOCOLS)
    st = birdctl.bird_status("/x/bird.ctl")
    assert st["running"] is True and st["established"] == 1
    assert [s["name"] for s in st["sessions"]] == ["host4_h2", "host4_h3"]
    reply.write_text("Unable to connect to server control socket (/x/bird.ctl): Connection refused\n")
    assert birdctl.bird_status("/x/bird.ctl")["running"] is False


def test_daemon_keeps_bird_config_from_the_whole_fleet_and_reports_problems(tmp_path, fake_birdc):
    """watch --bird-config: rendered from the whole fleet although the daemon enforces one
    host's part (the fleet's every L3 subnet is imported), reloaded on change only, and a
    failing BIRD lands in the status, never in the reconcile."""
    from dataclasses import replace

    from reconciler.daemon.watch import Daemon
    from reconciler.model import Attachment, Container

    log, reply = fake_birdc
    full = fleet()
    full = replace(full, containers={"c1": full.containers["c1"],
                                     "c2": Container("c2", (Attachment("l3s", "eth0"),), host="h2")})
    d = Daemon([str(tmp_path)], str(tmp_path / "state"), status_file=None, loader=lambda paths: full,
               kernel_factory=lambda: None, host="h1")
    conf = tmp_path / "bird.conf"
    d.bird_sync = BirdSync(str(conf), socket="/x/bird.ctl")
    mine = d.load([str(tmp_path)])
    assert mine.local_host == "h1" and "l3s" not in mine.networks  # h1's part: no l3s
    d.sync_bird(mine)
    assert d.status.bird["error"] is None and d.status.bird["changed"] is True
    assert "10.41.0.0/24{32,32}" in conf.read_text()  # ... but BIRD imports the fleet's l3s routes
    assert "router id 192.168.1.11;" in conf.read_text()
    d.sync_bird(mine)
    assert log.read_text().count("configure") == 1
    reply.write_text("Unable to connect to server control socket (/x/bird.ctl): Connection refused\n")
    conf.write_text("stale\n")
    d.sync_bird(mine)
    assert "Unable to connect" in d.status.bird["error"]
    assert d.status.to_json()["bird"]["error"] == d.status.bird["error"]


def test_cli_bird_config(tmp_path, capsys):
    from reconciler.cli import main

    fleet_dir = os.path.join(os.path.dirname(__file__), "..", "..", "manifests", "examples", "fleet")
    assert main(["bird-config", "--host", "h2", fleet_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# BIRD 2 configuration of host h2")
    assert "router id 192.168.1.12;" in out and "neighbor 192.168.1.11 as 64512;" in out
    assert "10.40.0.0/16{32,32}" in out and "10.20.0.0" not in out  # l3a announced, lan20 (L2) never
    assert main(["bird-config", "--host", "h9", fleet_dir]) == 1
    assert "h9" in capsys.readouterr().err
    single = tmp_path / "one.yaml"
    single.write_text("version: 1\nnetworks:\n  n: {}\n")
    assert main(["bird-config", "--host", "h1", str(single)]) == 1
    assert "fleet manifest" in capsys.readouterr().err


def test_status_text_shows_bird():
    from reconciler.render import status_text

    base = {"summary": {"networks": [], "containers": []}}
    text = status_text(dict(base, bird={"running": True, "established": 1, "sessions": [
        {"name": "host4_h2", "state": "up", "info": "Established", "since": ""},
        {"name": "host4_h3", "state": "start", "info": "Connect", "since": ""}]}))
    assert "BIRD: running, 1 of 2 BGP session(s) established" in text
    assert "host4_h3" in text and "Connect" in text
    text = status_text(dict(base, bird={"running": False, "error": "Unable to connect"}))
    assert "BIRD: not running (Unable to connect); this host's routes are not announced" in text
