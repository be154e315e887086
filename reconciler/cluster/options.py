"""The etcd connection options shared by `ipvlanctl cluster ...` and `watch --etcd` (cheap to
import: the CLI builds its parser with it; reconciler.cluster.store.credentials checks them)."""
from __future__ import annotations

from typing import Any


def add_credential_args(p: Any) -> None:
    """The TLS and auth options of every command that talks to etcd (argparse)."""
    p.add_argument("--etcd-cacert", metavar="FILE",
                   help="TLS: the CA certificate that signed the etcd members' certificates (https:// URLs)")
    p.add_argument("--etcd-cert", metavar="FILE",
                   help="TLS: this client's certificate, for etcd's --client-cert-auth (with --etcd-key)")
    p.add_argument("--etcd-key", metavar="FILE", help="TLS: the private key of --etcd-cert")
    p.add_argument("--etcd-user", metavar="NAME", help="etcd auth: the user (with --etcd-password-file)")
    p.add_argument("--etcd-password-file", metavar="FILE",
                   help="etcd auth: a file holding --etcd-user's password (never on the command line)")
