"""etcd over TLS with client certificates, and etcd users with passwords (SPEC 6, deploy/README.md):
the --etcd-cacert/--etcd-cert/--etcd-key/--etcd-user/--etcd-password-file options reach the
client, against real etcd members started with self-signed certificates made by openssl."""
from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from types import SimpleNamespace

import pytest

from reconciler.cli import main
from reconciler.cluster.keys import Keys
from reconciler.cluster.store import EtcdUnavailable, Store, credentials, watch_key
from reconciler.errors import UserError

from .conftest import Etcd, free_port
from .helpers import write

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def run(*argv, cwd):
    subprocess.run(list(argv), cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA, a server certificate for 127.0.0.1, a client certificate (CN ipvlan), and a client
    certificate from another CA (not trusted by etcd)."""
    if not os.access(OPENSSL, os.X_OK):
        pytest.fail("the openssl binary is missing: install openssl (scripts/system-deps cluster installs it)")
    for ca in ("ca", "rogue"):
        run(OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN=test-{ca}", cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (("server", "ca", "server.ext"), ("client", "ca", "client.ext"),
                          ("rogueclient", "rogue", "client.ext")):
        run(OPENSSL, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={'ipvlan' if name != 'server' else '127.0.0.1'}", cwd=d)
        run(OPENSSL, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=d)
    return {k: os.path.join(d, k) for k in os.listdir(d)}


def Member(d, extra, scheme="http"):
    """One etcd member started with ``extra`` flags (TLS, auth); the caller waits for it."""
    return Etcd(d, "t1", wait=False, max_txn_ops=None, scheme=scheme, extra=extra)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    pki = make_pki(d)
    m = Member(d, ["--cert-file", pki["server.pem"], "--key-file", pki["server.key"],
                   "--trusted-ca-file", pki["ca.pem"], "--client-cert-auth"], scheme="https")
    ctx = ssl.create_default_context(cafile=pki["ca.pem"])
    ctx.load_cert_chain(pki["client.pem"], pki["client.key"])
    m.wait(ctx)
    yield m, pki
    m.stop()


def cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_tls_options_reach_the_client_and_are_checked(tmp_path):
    for name in ("ca.pem", "c.pem", "c.key", "pw"):
        (tmp_path / name).write_text("x\n")
    p = {n: str(tmp_path / n) for n in ("ca.pem", "c.pem", "c.key", "pw")}
    args = SimpleNamespace(etcd="https://10.0.0.1:2379,https://10.0.0.2:2379", etcd_cacert=p["ca.pem"],
                           etcd_cert=p["c.pem"], etcd_key=p["c.key"], etcd_user=None, etcd_password_file=None)
    store = Store(args.etcd, creds=credentials(args))
    assert len(store._clients) == 2
    for c in store._clients:  # etcd3gw's sessions: what requests sends and checks
        assert c.session.verify == p["ca.pem"] and c.session.cert == (p["c.pem"], p["c.key"])
        assert c.base_url.startswith("https://")

    def refused(**kw):
        with pytest.raises(UserError) as e:
            credentials(SimpleNamespace(**{**vars(args), **kw}))
        return str(e.value)

    assert "--etcd-cert and --etcd-key go together" in refused(etcd_key=None)
    assert "--etcd-cacert" in refused(etcd_cacert=str(tmp_path / "missing.pem")) and "cannot read" in \
        refused(etcd_cacert=str(tmp_path / "missing.pem"))
    assert "https://" in refused(etcd="http://10.0.0.1:2379")
    assert "go together" in refused(etcd_user="root")
    creds = credentials(SimpleNamespace(**{**vars(args), "etcd_user": "root", "etcd_password_file": p["pw"]}))
    assert creds.user == "root" and creds.password == "x"  # the trailing newline is not the password
    # watch --etcd builds its store with them
    from reconciler.cli import build_parser
    from reconciler.daemon.clusterwatch import build
    from reconciler.daemon.settings import WatchSettings

    ns = build_parser().parse_args(["watch", "--etcd", args.etcd, "--host", "h1", "--etcd-cacert", p["ca.pem"],
                                    "--etcd-cert", p["c.pem"], "--etcd-key", p["c.key"]])
    ns.state_dir = str(tmp_path / "state")
    for c in build(WatchSettings.from_args(ns)).source.store._clients:
        assert c.session.verify == p["ca.pem"] and c.session.cert == (p["c.pem"], p["c.key"])
    # the same options exist on every command that talks to etcd
    for argv in (["cluster", "status"], ["cluster", "push", "d"], ["cluster", "forget-host", "h"],
                 ["cluster", "rejoin", "h"], ["watch"]):
        from reconciler.cli import build_parser

        ns = build_parser().parse_args(argv + ["--etcd", "https://a:1", "--etcd-cacert", "F", "--etcd-cert", "C",
                                                "--etcd-key", "K", "--etcd-user", "u", "--etcd-password-file", "P"])
        assert (ns.etcd_cacert, ns.etcd_cert, ns.etcd_key, ns.etcd_user, ns.etcd_password_file) == \
            ("F", "C", "K", "u", "P"), argv


def test_push_status_and_watch_over_tls_with_a_client_certificate(tmp_path, tls, capsys):
    m, pki = tls
    d = write(tmp_path)
    opts = ["--etcd", m.url, "--prefix", "/tls/", "--etcd-cacert", pki["ca.pem"]]
    cert = ["--etcd-cert", pki["client.pem"], "--etcd-key", pki["client.key"]]
    rc, out, err = cli(capsys, "cluster", "push", d, *opts, *cert)
    assert rc == 0, err
    rc, out, err = cli(capsys, "cluster", "status", "--format", "json", *opts, *cert)
    assert rc == 0 and json.loads(out)["revision"] == 1
    # the watch stream (its own connection) carries the same certificates
    store = Store(m.url, creds=credentials(SimpleNamespace(etcd=m.url, etcd_cacert=pki["ca.pem"],
                                                           etcd_cert=pki["client.pem"], etcd_key=pki["client.key"])))
    first = next(watch_key(store, Keys("/tls/").current, 0))
    assert first.created
    store.last_watch.close()
    # without a client certificate, with one etcd does not trust, without the CA: clear errors
    rc, _, err = cli(capsys, "cluster", "status", *opts)
    assert rc == 1 and "refused this client's certificate" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "cluster", "status", *opts, "--etcd-cert", pki["rogueclient.pem"],
                     "--etcd-key", pki["rogueclient.key"])
    assert rc == 1 and "refused this client's certificate" in err
    rc, _, err = cli(capsys, "cluster", "status", "--etcd", m.url, "--prefix", "/tls/", *cert)
    assert rc == 1 and "certificate is not trusted" in err and "--etcd-cacert" in err


def _post(url, path, body, token=None):
    req = urllib.request.Request(url + "/v3/" + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": token} if token else {})
    return json.loads(urllib.request.urlopen(req, timeout=5).read() or b"{}")


def test_etcd_user_and_password_with_token_renewal(tmp_path, capsys):
    d = str(tmp_path / "auth")
    os.makedirs(d)
    m = Member(d, ["--auth-token", "simple", "--auth-token-ttl", "1"])
    try:
        m.wait()
        _post(m.url, "auth/role/add", {"name": "root"})
        _post(m.url, "auth/user/add", {"name": "root", "password": "s3cret"})
        _post(m.url, "auth/user/grant", {"user": "root", "role": "root"})
        _post(m.url, "auth/enable", {})
        pw = tmp_path / "pw"
        pw.write_text("s3cret\n")
        bad = tmp_path / "bad"
        bad.write_text("nope\n")
        fleet = write(tmp_path)
        opts = ["--etcd", m.url, "--prefix", "/auth/"]
        rc, _, err = cli(capsys, "cluster", "push", fleet, *opts, "--etcd-user", "root", "--etcd-password-file", str(pw))
        assert rc == 0, err
        rc, _, err = cli(capsys, "cluster", "status", *opts, "--etcd-user", "root", "--etcd-password-file", str(bad))
        assert rc == 1 and "refused user 'root'" in err and "--etcd-password-file" in err
        rc, _, err = cli(capsys, "cluster", "status", *opts)  # no user at all: refused, said so
        assert rc == 1 and "Traceback" not in err and err.strip()
        # a token that expired (TTL 1 s) is renewed: one Store, requests seconds apart
        store = Store(m.url, creds=credentials(SimpleNamespace(etcd=m.url, etcd_user="root",
                                                               etcd_password_file=str(pw))))
        keys = Keys("/auth/")
        assert store.get(keys.current) is not None
        first = store._token
        time.sleep(3)
        assert store.get(keys.current) is not None
        assert store._token != first
        assert next(watch_key(store, keys.current, 0)).created
        store.last_watch.close()
    finally:
        m.stop()


def test_unreachable_tls_url_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(EtcdUnavailable):
        Store(f"https://127.0.0.1:{free_port()}").get("/x")
