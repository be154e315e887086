"""A thin transactional etcd v3 client for cluster mode, on etcd3gw (the v3 JSON gateway).

Only what cluster mode needs: ranges with revisions, transactions (compare / success /
failure), leases. Every failure of the store becomes an error that says who must act:
:class:`EtcdUnavailable` (etcd down, wrong URL, not an etcd), :class:`StoreRefused` (etcd
answered but refused the request, e.g. a transaction over its size or operation limits).
etcd3gw is imported here, lazily, when a store is opened (the ``[cluster]`` extra).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ..errors import EnvironmentProblem, UserError

API_PATH = "/v3/"  # Debian's etcd 3.4 serves /v3/ (etcd3gw's discovery would pick /v3beta/ there)
DEFAULT_TIMEOUT = 5.0


class EtcdUnavailable(EnvironmentProblem):
    """etcd cannot be reached, or what answers is not an etcd v3 gateway: the operator (or
    the network) must act. Nothing was changed. Exit status 1."""

    exit_code = 1


class StoreRefused(UserError):
    """etcd answered and refused the request (size or operation limits, a bad request)."""


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode("ascii")


def _unb64(s: Optional[str]) -> bytes:
    return base64.b64decode(s) if s else b""


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1  # prefixes end in "/": never 0xff
    return base64.b64encode(bytes(b)).decode("ascii")


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int

    def json(self) -> Any:
        return json.loads(self.value.decode())


def _kv(d: Dict[str, Any]) -> KV:
    return KV(
        key=_unb64(d.get("key")).decode(),
        value=_unb64(d.get("value")),
        mod_revision=int(d.get("mod_revision", 0)),
        create_revision=int(d.get("create_revision", 0)),
        version=int(d.get("version", 0)),
        lease=int(d.get("lease", 0)),
    )


# ---- transaction building blocks (the gateway's JSON form) ------------------------------------


def absent(key: str) -> Dict[str, Any]:
    """Compare: the key does not exist (create-if-absent)."""
    return {"key": _b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}


def unchanged(key: str, mod_revision: int) -> Dict[str, Any]:
    """Compare: the key was last written at ``mod_revision`` (0: it does not exist)."""
    if mod_revision == 0:
        return absent(key)
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def put(key: str, value: str | bytes, lease: int = 0) -> Dict[str, Any]:
    req: Dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def delete(key: str) -> Dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_endpoints(url: str) -> List[Tuple[str, str, int]]:
    """``--etcd`` URLs: ``http://host:port`` (or https), several separated by commas."""
    out = []
    for part in url.split(","):
        part = part.strip()
        u = urlsplit(part)
        try:
            port = u.port
        except ValueError:
            port = None
        if u.scheme not in ("http", "https") or not u.hostname or port is None or u.path not in ("", "/") \
                or u.query or u.fragment:
            raise UserError(f"--etcd {part!r}: give the client URL of an etcd member as "
                            "http://HOST:PORT (or https://), several separated by commas, "
                            "e.g. --etcd http://10.0.0.1:2379")
        out.append((u.scheme, u.hostname, port))
    return out


@dataclass(frozen=True)
class Credentials:
    """How the client proves itself to etcd and checks etcd (docs/cluster.md, deploy/README.md):
    TLS (``cacert``: the CA that signed the members' certificates; ``cert``/``key``: this
    client's certificate, for etcd's --client-cert-auth, where the certificate's CN is also
    the etcd user when auth is on) and/or an etcd user with a password (read from a file,
    never from the command line)."""

    cacert: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None

    @property
    def tls(self) -> bool:
        return bool(self.cacert or self.cert or self.key)


def _readable(option: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot read it: {e.strerror or e}") from None


def credentials(args: Any) -> Credentials:
    """The --etcd-cacert/--etcd-cert/--etcd-key/--etcd-user/--etcd-password-file options
    (cluster commands and `watch --etcd`), checked: a certificate without its key (or the
    other way round), unreadable files, TLS options with http:// URLs, a user without a
    password file: a UserError naming the option."""
    cacert, cert, key = (getattr(args, n, None) for n in ("etcd_cacert", "etcd_cert", "etcd_key"))
    user, pwfile = getattr(args, "etcd_user", None), getattr(args, "etcd_password_file", None)
    if bool(cert) != bool(key):
        raise UserError("--etcd-cert and --etcd-key go together: the client certificate and its private key")
    for option, path in (("--etcd-cacert", cacert), ("--etcd-cert", cert), ("--etcd-key", key),
                         ("--etcd-password-file", pwfile)):
        if path:
            _readable(option, path)
    if (cacert or cert) and any(s != "https" for s, _, _ in parse_endpoints(getattr(args, "etcd", "") or "")):
        raise UserError("--etcd-cacert/--etcd-cert/--etcd-key are for TLS: give every --etcd URL as "
                        "https://HOST:PORT")
    if bool(user) != bool(pwfile):
        raise UserError("--etcd-user and --etcd-password-file go together (the password is read from the "
                        "file, never given on the command line)")
    password = None
    if pwfile:
        with open(pwfile) as f:
            password = f.read().rstrip("\r\n")
        if not password:
            raise UserError(f"--etcd-password-file {pwfile}: the file is empty")
    return Credentials(cacert, cert, key, user, password)


class Store:
    """One etcd cluster (its client URLs, tried in order when one cannot be reached)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, creds: Optional[Credentials] = None):
        self.url = url
        self.endpoints = parse_endpoints(url)
        self.creds = creds or Credentials()
        try:
            import etcd3gw  # noqa: F401
            from etcd3gw import exceptions as ex
        except ImportError:
            raise UserError("cluster mode needs the etcd3gw client: install the package with its "
                            "cluster extra, e.g. pip install 'ipvlan-reconciler[cluster]'") from None
        self._ex = ex
        c = self.creds
        self._clients = [
            etcd3gw.client(host=h, port=p, protocol=s, api_path=API_PATH, timeout=timeout,
                           ca_cert=c.cacert, cert_cert=c.cert, cert_key=c.key)
            for s, h, p in self.endpoints
        ]
        for cl in self._clients:
            # straight to etcd: no proxy, .netrc or CA bundle from the environment, which
            # requests would otherwise look up again on every request (about half its CPU
            # time per request: C1 in bench/README.md); --etcd-cacert is passed per request
            cl.session.trust_env = False
        self._first = 0
        self._token: Optional[str] = None
        # per request: requests lets REQUESTS_CA_BUNDLE (and CURL_CA_BUNDLE) in the environment
        # override a session's own CA (psf/requests#3829), and --etcd-cacert must win
        self._kw: Dict[str, Any] = {"verify": c.cacert} if c.cacert else {}

    # ---- etcd users (auth) --------------------------------------------------------------------

    def _authenticate(self, c) -> None:
        """--etcd-user: a token from /v3/auth/authenticate, sent on every request of every
        client (etcd's simple tokens expire: a refused token is renewed once per request)."""
        ex = self._ex
        self._token = None
        for cl in self._clients:  # an expired token sent along would make etcd refuse this request too
            cl.session.headers.pop("Authorization", None)
        try:
            out = c.post(c.get_url("auth/authenticate"), json={"name": self.creds.user,
                                                               "password": self.creds.password}, **self._kw)
        except ex.Etcd3Exception as e:
            if isinstance(e, (ex.ConnectionFailedError, ex.ConnectionTimeoutError)):
                raise
            detail = str(getattr(e, "detail_text", None) or e)
            raise EtcdUnavailable(f"etcd at {c.base_url} refused user {self.creds.user!r}: "
                                  f"{_error_text(detail)} (check --etcd-user and --etcd-password-file)") from None
        token = out.get("token") if isinstance(out, dict) else None
        if not token:
            raise EtcdUnavailable(f"etcd at {c.base_url} gave no token for user {self.creds.user!r} "
                                  "(is auth enabled there? without it, drop --etcd-user)")
        self._token = token
        for cl in self._clients:
            cl.session.headers["Authorization"] = token

    # ---- raw calls -------------------------------------------------------------------------

    def _post(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        ex = self._ex
        errors = []
        n = len(self._clients)
        for i in range(n):
            idx = (self._first + i) % n
            c = self._clients[idx]
            try:
                if self.creds.user and self._token is None:
                    self._authenticate(c)
                try:
                    out = c.post(c.get_url(path), json=body, **self._kw)
                except ex.Etcd3Exception as e:
                    if not (self.creds.user and "invalid auth token" in str(getattr(e, "detail_text", "") or e)):
                        raise
                    self._authenticate(c)  # the token expired: once more with a new one
                    out = c.post(c.get_url(path), json=body, **self._kw)
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError) as e:
                errors.append(f"{c.base_url}: {_short(e)}")
                continue
            except ex.Etcd3Exception as e:
                raise self._refused(c.base_url, path, e) from None
            except ValueError:  # a reply that is not JSON: not an etcd gateway
                raise EtcdUnavailable(f"{c.base_url} answered {path} with something that is not JSON: "
                                      "is --etcd the client URL of an etcd v3 member?") from None
            if not isinstance(out, dict):
                raise EtcdUnavailable(f"{c.base_url} answered {path} with {type(out).__name__}, not an "
                                      "etcd v3 reply: is --etcd the client URL of an etcd member?")
            self._first = idx
            return out
        raise EtcdUnavailable(f"cannot reach etcd at {self.url}: " + "; ".join(errors) +
                              " (is etcd running and is --etcd its client URL?) Nothing was changed.")

    def _refused(self, base: str, path: str, e: Exception) -> Exception:
        detail = getattr(e, "detail_text", None) or str(e)
        try:
            msg = json.loads(detail).get("error") or json.loads(detail).get("message") or detail
        except (ValueError, AttributeError):
            msg = detail
        msg = str(msg).strip()[:300]
        if "too many operations in txn" in msg:
            return StoreRefused(f"etcd refused the transaction: {msg} (raise etcd's --max-txn-ops, "
                                "default 128; a push writes one operation per explicit reservation)")
        if "request is too large" in msg:
            return StoreRefused(f"etcd refused the request: {msg} (raise etcd's --max-request-bytes, "
                                "default 1.5 MiB)")
        if "Not Found" in msg or "404" in msg or "Not Implemented" in msg or "501" in msg or "<" in msg:
            return EtcdUnavailable(f"{base} is not an etcd v3 JSON gateway ({path}: {msg[:120]}): "
                                   "is --etcd the client URL of an etcd member (etcd >= 3.4)?")
        return StoreRefused(f"etcd at {base} refused {path}: {msg}")

    # ---- key-value ---------------------------------------------------------------------------

    def get(self, key: str) -> Optional[KV]:
        out = self._post("kv/range", {"key": _b64(key)})
        kvs = out.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str, keys_only: bool = False) -> Tuple[List[KV], int]:
        """Every key under ``prefix`` (sorted) and the store revision of the read."""
        body: Dict[str, Any] = {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        if keys_only:
            body["keys_only"] = True
        out = self._post("kv/range", body)
        return [_kv(d) for d in out.get("kvs") or []], int(out.get("header", {}).get("revision", 0))

    def txn(self, compare: Sequence[Dict[str, Any]], success: Sequence[Dict[str, Any]],
            failure: Sequence[Dict[str, Any]] = ()) -> Tuple[bool, List[Dict[str, Any]]]:
        ok, responses, _ = self.txn_at(compare, success, failure)
        return ok, responses

    def txn_at(self, compare: Sequence[Dict[str, Any]], success: Sequence[Dict[str, Any]],
               failure: Sequence[Dict[str, Any]] = ()) -> Tuple[bool, List[Dict[str, Any]], int]:
        """:meth:`txn`, and the store revision it ran at (a put's mod revision when it wrote)."""
        out = self._post("kv/txn", {"compare": list(compare), "success": list(success),
                                    "failure": list(failure)})
        return (bool(out.get("succeeded", False)), list(out.get("responses") or []),
                int(out.get("header", {}).get("revision", 0)))

    # ---- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self._post("lease/grant", {"TTL": str(ttl), "ID": "0"})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; its remaining TTL (<= 0: it expired)."""
        out = self._post("lease/keepalive", {"ID": str(lease)})
        return int(out.get("result", {}).get("TTL", 0))

    def time_to_live(self, lease: int) -> int:
        """Seconds left on a lease; -1 when it does not exist (expired or revoked)."""
        out = self._post("kv/lease/timetolive", {"ID": str(lease)})
        return int(out.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self._post("kv/lease/revoke", {"ID": str(lease)})

    def check(self) -> Dict[str, Any]:
        """The member's status (is this an etcd at all?)."""
        return self._post("maintenance/status", {})


def _error_text(detail: str) -> str:
    try:
        v = json.loads(detail)
        return str(v.get("error") or v.get("message") or detail)[:200]
    except (ValueError, AttributeError):
        return detail[:200]


def _short(e: Exception) -> str:
    text = str(getattr(e, "detail_text", None) or e)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ("TLS: etcd's certificate is not trusted (give the CA that signed it with --etcd-cacert, "
                "and a URL whose host name or address the certificate names)")
    if ("certificate required" in text or "bad certificate" in text or "unknown ca" in text.lower()
            or "EOF occurred in violation of protocol" in text):  # TLS 1.3: the refusal comes as an EOF
        return ("TLS: etcd refused this client's certificate, or none was given (give --etcd-cert/--etcd-key, "
                "signed by a CA etcd trusts: its --trusted-ca-file)")
    if "SSL" in text:
        return f"TLS handshake failed ({text.splitlines()[0][:160]}): is the URL https:// and the certificate right?"
    for needle in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution"):
        if needle in text:
            return needle.lower()
    return text.splitlines()[0][:160] if text else type(e).__name__


# ---- watching one key (the daemon follows the `current` pointer) ------------------------------


@dataclass(frozen=True)
class WatchMessage:
    """One message of a watch stream: ``events`` (mod revisions of the changes), the store
    revision it was sent at, or ``compacted`` (the start revision was compacted away: the
    watch was cancelled, read everything afresh)."""

    revision: int
    events: Tuple[int, ...] = ()
    created: bool = False
    compacted: int = 0
    hosts: Tuple[str, ...] = ()  # per event: the "host" of the value written ("" for a delete)


def _event_host(e: Dict[str, Any]) -> str:
    if e.get("type") == "DELETE":
        return ""
    try:
        v = json.loads(_unb64(e.get("kv", {}).get("value")).decode() or "null")
        return str(v.get("host") or "") if isinstance(v, dict) else ""
    except ValueError:
        return ""


def watch_key(store: "Store", key: str, start_revision: int, stop=None, prefix: bool = False,
              slot: str = "last_watch"):
    """Follow ``key`` from ``start_revision`` (etcd's v3 watch over the JSON gateway; etcd3gw's
    own watcher hides compaction and disconnects, which the daemon must see). Yields
    :class:`WatchMessage`; returns when the connection ends (etcd stopped, network cut) or
    ``stop`` (a threading.Event) is set; raises EtcdUnavailable when no member answers.
    ``store.last_watch`` (or ``slot``) is the open response (closing it ends the generator).
    ``prefix``: every key under ``key``."""
    create: Dict[str, Any] = {"key": _b64(key), "progress_notify": True}
    if prefix:
        create["range_end"] = _prefix_end(key)
    if start_revision > 0:  # else: from now on
        create["start_revision"] = str(start_revision)
    body = {"create_request": create}
    errors = []
    if store.creds.user:
        store.get(key)  # a fresh token if the last one expired (the stream below sends it)
    for c in store._clients:
        try:
            import requests  # etcd3gw's own dependency; its own connection, not the shared session's

            resp = requests.post(c.get_url("/watch"), json=body, stream=True, timeout=(DEFAULT_TIMEOUT, None),
                                 verify=getattr(c.session, "verify", True), cert=getattr(c.session, "cert", None),
                                 headers={k: v for k, v in c.session.headers.items() if k == "Authorization"})
            resp.raise_for_status()
        except Exception as e:  # requests' own errors: connection refused, reset, HTTP error
            errors.append(f"{c.base_url}: {_short(e)}")
            continue
        setattr(store, slot, resp)
        try:
            for line in resp.iter_lines(chunk_size=None):
                if stop is not None and stop.is_set():
                    return
                if not line or not line.strip():
                    continue
                try:
                    result = json.loads(line.decode()).get("result") or {}
                except ValueError:
                    return
                rev = int(result.get("header", {}).get("revision", 0))
                if int(result.get("compact_revision", 0) or 0):
                    yield WatchMessage(rev, compacted=int(result["compact_revision"]))
                    return
                if result.get("canceled"):
                    return
                evs = result.get("events") or ()
                events = tuple(int(e.get("kv", {}).get("mod_revision", 0)) for e in evs)
                yield WatchMessage(rev, events, created=bool(result.get("created")),
                                   hosts=tuple(_event_host(e) for e in evs) if prefix else ())
        except Exception:  # the stream broke (etcd killed, connection reset): the caller resumes
            return
        finally:
            resp.close()
        return
    raise EtcdUnavailable(f"cannot watch etcd at {store.url}: " + "; ".join(errors))


def interrupt_watch(resp) -> None:
    """End a watch stream read by another thread: shut its socket down (closing the response
    from here would block on the reader); the reader sees the end and closes it."""
    import socket

    try:
        fd = resp.raw._fp.fileno()
        s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()  # the duplicate only
    except Exception:
        pass
