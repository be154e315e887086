"""`ipvlanctl cluster push|status|forget-host|rejoin` (SPEC 6). cli.py only calls :func:`add_parser`;
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
    from .options import add_credential_args

    add_credential_args(p)


def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    from ..helptext import doc_path

    p = sub.add_parser("cluster", help="cluster mode: the fleet's manifests and blocks in etcd",
                       description="Cluster mode (SPEC 6): etcd as the fleet's source of truth. "
                       "Needs the cluster extra (etcd3gw). Each host runs `ipvlanctl watch --etcd URL --host "
                       "NAME`. "
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

    q = csub.add_parser("rejoin", help="let a host that forget-host fenced take part again",
                        description="Bind host NAME, fenced by `cluster forget-host`, to a machine again: "
                        "the machine it was bound to (default), or another one (--this-machine, "
                        "--machine-id: replaced hardware). It starts from nothing it owned: what forget-host "
                        "freed stays freed (an interrupted forget-host is finished first), its agent claims "
                        "blocks and allocates new addresses for its containers. A fenced agent still running "
                        "on the machine resumes at its next trigger (at the latest after --resync-interval), "
                        "a stopped one at its start. Refused (exit 1, nothing written) for a host that is not "
                        "forgotten.")
    q.add_argument("name", metavar="NAME", help="the host's name")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--this-machine", action="store_true",
                     help="bind NAME to the machine this command runs on (its /etc/machine-id)")
    who.add_argument("--machine-id", metavar="ID", help="bind NAME to the machine with this machine id")
    _etcd_args(q)
    q.set_defaults(func=cmd_rejoin)
    for name, text in SUB_EXAMPLES.items():
        csub.choices[name].epilog = text
        csub.choices[name].formatter_class = _formatter()
    return p


SUB_EXAMPLES = {
    "push": """\
Examples:
  # validate a fleet directory and store it in etcd as a new revision
  ipvlanctl cluster push fleet.d --etcd http://10.0.0.1:2379,http://10.0.0.2:2379
""",
    "status": """\
Examples:
  # every host: state, converged revision, pending objects, last error, last seen
  ipvlanctl cluster status --etcd http://10.0.0.1:2379
  ipvlanctl cluster status --etcd http://10.0.0.1:2379 --format json
""",
    "forget-host": """\
Examples:
  # h3 is powered off for good: free its blocks and addresses (it is fenced)
  ipvlanctl cluster forget-host h3 --confirm-fenced --etcd http://10.0.0.1:2379
""",
    "rejoin": """\
Examples:
  # h3 came back after forget-host: let it take part again (same machine)
  ipvlanctl cluster rejoin h3 --etcd http://10.0.0.1:2379

  # on the machine that replaces h3's hardware, then start its agent
  ipvlanctl cluster rejoin h3 --this-machine --etcd http://10.0.0.1:2379
  sudo systemctl restart ipvlan-reconciler-cluster
""",
}


def _formatter():
    from ..helptext import Formatter

    return Formatter


def _open(args):
    from .keys import Keys
    from .store import Store, credentials

    return Store(args.etcd, creds=credentials(args)), Keys(args.prefix)


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
          f"generation is now {r['generation']} (it changes nothing until `ipvlanctl cluster rejoin "
          f"{args.name}`)")
    return 0


def cmd_rejoin(args: argparse.Namespace) -> int:
    from .admin import rejoin
    from .alloc import machine_id

    machine = machine_id() if args.this_machine else args.machine_id
    if machine is not None and not machine.strip():
        raise UserError("--machine-id: give the machine's id (the content of its /etc/machine-id)")
    store, keys = _open(args)
    r = rejoin(store, keys, args.name, machine)
    where = (f"machine {r['machine_id'][:12]}... (was {str(r['previous_machine_id'])[:12]}...)"
             if r["machine_id"] != r["previous_machine_id"] else f"its machine {r['machine_id'][:12]}...")
    extra = ""
    if r["freed_blocks"] or r["freed_addresses"]:
        extra = (f" Finished an interrupted forget-host: freed {r['freed_blocks']} block(s) and "
                 f"{r['freed_addresses']} address(es).")
    print(f"Host {args.name} rejoined the cluster as {where}, generation {r['generation']}.{extra} It starts "
          "from nothing it owned: its agent allocates new addresses for its containers (a running agent at "
          "its next resync, or restart it now).")
    return 0
