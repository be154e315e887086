"""cluster push / status / errors against a real etcd."""
from __future__ import annotations

import http.server
import ipaddress
import threading

import pytest

from reconciler.cli import main
from reconciler.cluster.keys import FORMAT
from reconciler.cluster.revision import NewerFormat, push, read_current
from reconciler.cluster.store import EtcdUnavailable, Store

from .helpers import FLEET, write


def all_keys(store, keys):
    return sorted(kv.key for kv in store.range(keys.prefix)[0])


def test_push_then_read_back(tmp_path, etcd, store, keys, capsys):
    d = write(tmp_path)
    assert main(["cluster", "push", d, "--etcd", etcd.url, "--prefix", keys.prefix]) == 0
    assert "Pushed revision 1" in capsys.readouterr().out
    rev = read_current(store, keys)
    assert rev.number == 1
    assert rev.files == [("fleet.yaml", FLEET)]
    # the cluster resolved what the manifest left out: /26 for lan, /24 as given for l3a
    assert rev.grid["lan"]["block_size"] == 26 and rev.grid["lan"]["ranges"][0]["blocks"] == 64
    assert rev.grid["l3a"]["block_size"] == 24
    assert rev.doc["hosts"] == {"h1": {"id": 0}, "h2": {"id": None}, "h3": {"id": None}}
    # h1's explicit id reserved its block 0 of every range; web2's explicit address has its key
    b = {kv.key: kv.json() for kv in store.range(keys.blocks())[0]}
    assert b == {keys.block("lan", ipaddress.ip_network("10.50.0.0/26")): {"host": "h1", "explicit": True},
                 keys.block("l3a", ipaddress.ip_network("10.60.0.0/24")): {"host": "h1", "explicit": True}}
    a = store.get(keys.addr("lan", ipaddress.ip_address("10.50.8.5"))).json()
    assert a == {"host": "h2", "container": "web2", "explicit": True}
    # a second push is revision 2; dropping the explicit address releases its key
    write(tmp_path, FLEET.replace("{lan: {ip: 10.50.8.5}}", "{lan: {}}"))
    r = push(store, keys, [d])
    assert (r.revision, r.released) == (2, 1)
    assert store.get(keys.addr("lan", ipaddress.ip_address("10.50.8.5"))) is None
    assert read_current(store, keys).number == 2


def test_invalid_push_writes_nothing(tmp_path, etcd, store, keys, capsys):
    d = write(tmp_path, FLEET.replace("web2: {host: h2", "web2: {host: h9"))
    assert main(["cluster", "push", d, "--etcd", etcd.url, "--prefix", keys.prefix]) == 1
    err = capsys.readouterr().err
    assert "fleet.yaml:11:" in err and "unknown host 'h9'" in err
    assert all_keys(store, keys) == []


def test_file_mode_still_needs_ids_and_block_sizes(tmp_path):
    """Only cluster mode lets ids and block sizes be left out."""
    d = write(tmp_path)
    assert main(["validate", d]) == 1


def test_push_conflicting_with_a_claim_writes_nothing(tmp_path, etcd, store, keys):
    from reconciler.cluster.alloc import Agent

    d = write(tmp_path)
    push(store, keys, [d])
    agent = Agent(store, keys, "h3", "machine-3")
    agent.bind()
    a = agent.allocate("lan", "db1")  # h3 claims the lowest free block, 10.50.0.64/26
    assert a in ipaddress.ip_network("10.50.0.64/26")
    before = all_keys(store, keys)
    # now a revision gives 10.50.0.70 (inside h3's block) to h2's web2
    write(tmp_path, FLEET.replace("10.50.8.5", "10.50.0.70"))
    with pytest.raises(Exception, match="held by host h3"):
        push(store, keys, [d])
    assert all_keys(store, keys) == before
    assert read_current(store, keys).number == 1


def test_etcd_down(tmp_path, capsys):
    from .conftest import free_port

    d = write(tmp_path)
    assert main(["cluster", "push", d, "--etcd", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach etcd" in err and "connection refused" in err and "Traceback" not in err


def test_wrong_url(tmp_path, capsys):
    """A URL that is not an etcd (an HTTP server answering 404), and one that is not a URL."""

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"404 page not found")

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        d = write(tmp_path)
        assert main(["cluster", "status", "--etcd", f"http://127.0.0.1:{srv.server_port}"]) == 1
        assert "is not an etcd v3 JSON gateway" in capsys.readouterr().err
        assert main(["cluster", "push", d, "--etcd", "127.0.0.1:2379/x"]) == 1
        assert "give the client URL of an etcd member" in capsys.readouterr().err
    finally:
        srv.shutdown()


def test_newer_format_refused(tmp_path, etcd, store, keys, capsys):
    d = write(tmp_path)
    store.txn([], [{"request_put": {"key": _b(keys.format), "value": _b(str(FORMAT + 1))}}])
    assert main(["cluster", "push", d, "--etcd", etcd.url, "--prefix", keys.prefix]) == 1
    assert "written by a newer ipvlanctl" in capsys.readouterr().err
    assert all_keys(store, keys) == [keys.format]
    with pytest.raises(NewerFormat):
        read_current(store, keys)


def test_status_lists_every_host(tmp_path, etcd, store, keys, capsys):
    from reconciler.cluster.alloc import Agent

    push(store, keys, [write(tmp_path)])
    agent = Agent(store, keys, "h2", "machine-2")
    agent.bind()
    agent.allocate("lan", "web2b")
    agent.report(1, ["network lan: parent eth0 missing"], "boom")
    assert main(["cluster", "status", "--etcd", etcd.url, "--prefix", keys.prefix]) == 0
    out = capsys.readouterr().out
    assert "revision: 1" in out
    line = next(l for l in out.splitlines() if l.startswith("h2 "))
    assert " up " in line and "boom" in line and "s ago" in line
    assert "pending: network lan: parent eth0 missing" in out
    assert next(l for l in out.splitlines() if l.startswith("h3 ")).split()[2] == "never"
    agent.stop()
    assert main(["cluster", "status", "--etcd", etcd.url, "--prefix", keys.prefix, "--format", "json"]) == 0
    import json

    h2 = next(h for h in json.loads(capsys.readouterr().out)["hosts"] if h["host"] == "h2")
    assert (h2["alive"], h2["revision"], h2["blocks"], h2["addresses"]) == (False, 1, 1, 2)  # web2b, and web2's explicit address


def _b(s):
    import base64

    return base64.b64encode(s.encode()).decode()


def test_store_needs_no_etcd_for_single_host_paths():
    """The single-host path never imports the etcd client."""
    import subprocess
    import sys

    code = ("import sys; from reconciler.cli import build_parser; build_parser(); "
            "import reconciler.manifest, reconciler.engine; print('etcd3gw' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_store_unused_variable_guard(etcd):
    assert Store(etcd.url).check()["version"]


def test_explicit_id_removed_keeps_a_used_block_as_a_claim(tmp_path, store, keys):
    """h1 loses its explicit id: its reserved blocks are released, except one it still has
    addresses in, which stays h1's (as an ordinary claim): never another host's block."""
    from reconciler.cluster.alloc import Agent

    d = write(tmp_path)
    push(store, keys, [d])
    a = Agent(store, keys, "h1", "m1")
    a.bind()
    x = a.allocate("lan", "web1")
    assert x == ipaddress.ip_address("10.50.0.2")  # block 0, reserved by id 0
    write(tmp_path, FLEET.replace("h1: {id: 0, ", "h1: {"))
    r = push(store, keys, [d])
    assert r.released == 2
    blocks = {kv.key: kv.json() for kv in store.range(keys.blocks())[0]}
    lan0 = blocks.pop(keys.block("lan", ipaddress.ip_network("10.50.0.0/26")))
    assert (lan0["host"], lan0["explicit"]) == ("h1", False)
    assert blocks == {}  # l3a's block 0 held nothing: freed


def test_newer_format_in_the_pointer_refused(tmp_path, etcd, store, keys, capsys):
    d = write(tmp_path)
    push(store, keys, [d])
    ptr = store.get(keys.current).json()
    ptr["format"] = FORMAT + 1
    import json

    store.txn([], [{"request_put": {"key": _b(keys.current), "value": _b(json.dumps(ptr))}}])
    before = all_keys(store, keys)
    assert main(["cluster", "push", d, "--etcd", etcd.url, "--prefix", keys.prefix]) == 1
    assert "written by a newer ipvlanctl" in capsys.readouterr().err
    assert all_keys(store, keys) == before
