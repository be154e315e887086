"""`ipvlanctl cluster push|status|forget-host` (SPEC 6). cli.py only calls :func:`add_parser`;
nothing here imports etcd3gw until a command runs (the ``[cluster]`` extra)."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError


def _etcd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--etcd", metavar="URL", required=True,
                   help="client URL of an etcd v3 member, http://HOST:PORT; several separated by commas")
    p.add_argument("--prefix", default="/ipvlan-reconciler/",
                   help="the key prefix of this fleet's data (default /ipvlan-reconciler/; docs/cluster.md)")


def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    from ..helptext import doc_path

    p = sub.add_parser("cluster", help="cluster mode: the fleet's manifests and blocks in etcd",
                       description="Cluster mode (SPEC 6): etcd as the fleet's source of truth. "
                       "Needs the cluster extra (etcd3gw). Each host runs `ipvlanctl watch --etcd URL --host "
                       "NAME`. Not implemented yet: `cluster rejoin`. "
                       f"Documentation: {doc_path('cluster.md')}")
    csub = p.add_subparsers(dest="cluster_command", metavar="CLUSTER_COMMAND")
    csub.required = True

    q = csub.add_parser("push", help="validate a fleet manifest directory and store it as a new revision",
                        description="Validate PATH fleet-wide (hosts' ids and networks' block sizes may be "
                        "left out), resolve the block grid, and store everything as one revision in one "
                        "transaction with the reservations of explicit host ids and addresses. An invalid "
                        "directory, an unreachable etcd or a conflict writes nothing (exit 1).")
    q.add_argument("paths", nargs="+", metavar="PATH", help="manifest directories or files")
    _etcd_args(q)
    q.set_defaults(func=cmd_push)

    q = csub.add_parser("status", help="every host's converged revision, pending objects, last error, last seen",
                        description="Show every host of the cluster: its revision, pending objects, last "
                        "error, when it was last seen, its blocks and addresses.")
    _etcd_args(q)
    q.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    q.set_defaults(func=cmd_status)

    q = csub.add_parser("forget-host", help="free a dead, fenced host's blocks and addresses",
                        description="Fence host NAME (its generation is bumped: it claims and changes "
                        "nothing until it rejoins) and free its automatic blocks and addresses. Refused "
                        "while its lease holds and until the lease expired at least --grace seconds ago.")
    q.add_argument("name", metavar="NAME", help="the host's name")
    q.add_argument("--confirm-fenced", action="store_true",
                   help="required: you made sure the host is down (powered off, isolated)")
    q.add_argument("--grace", type=float, default=60.0, metavar="SECONDS",
                   help="how long after its lease expired a host may be forgotten (default 60)")
    _etcd_args(q)
    q.set_defaults(func=cmd_forget_host)
    return p


def _open(args):
    from .keys import Keys
    from .store import Store

    return Store(args.etcd), Keys(args.prefix)


def cmd_push(args: argparse.Namespace) -> int:
    from .revision import push

    store, keys = _open(args)
    r = push(store, keys, args.paths)  # validates before it asks etcd anything
    nets = ", ".join(f"{n} /{g['block_size']}" + (f" /{g['block_size6']}" if g.get("block_size6") else "")
                     for n, g in r.grid.items()) or "none"
    print(f"Pushed revision {r.revision} to {args.etcd} under {keys.prefix}: {r.size} bytes in "
          f"{r.chunks} chunk(s); {r.reserved} reservation(s) added, {r.released} released. Blocks: {nets}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .admin import status, status_text

    store, keys = _open(args)
    data = status(store, keys)
    sys.stdout.write(json.dumps(data, indent=2) + "\n" if args.format == "json" else status_text(data))
    return 0


def cmd_forget_host(args: argparse.Namespace) -> int:
    from .admin import forget_host

    if not args.confirm_fenced:
        raise UserError(f"forget-host frees host {args.name}'s addresses for other hosts: if it still runs, "
                        "two containers get the same address. Make sure it is down and fenced, then add "
                        "--confirm-fenced")
    store, keys = _open(args)
    r = forget_host(store, keys, args.name, grace=args.grace)
    print(f"Forgot host {args.name}: freed {r['blocks']} block(s) and {r['addresses']} address(es); its "
          f"generation is now {r['generation']} (it changes nothing until it rejoins)")
    return 0
