"""ipvlanctl: the command line.

Subcommands: validate, plan, apply, watch, status. Exit codes (SPEC section 4):
validate/apply 0 ok, 1 error, 3 converged except objects pending on a missing parent;
plan --detailed-exitcode 0 no changes, 2 changes, 1 error.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__
from .errors import Bug, ReconcilerError

DEFAULT_STATE_DIR = "/var/lib/ipvlan-reconciler"
DEFAULT_MANIFEST_DIR = "/etc/ipvlan-reconciler/manifests.d"


def _paths_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="manifest directories (every *.yaml/*.yml inside) or single manifest files; "
        "all of them together are the desired state",
    )


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where automatic choices and ownership records live (default {DEFAULT_STATE_DIR})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipvlanctl",
        description="Declarative reconciler for Linux IPvlan networks, VLAN links and "
        "container network namespaces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "validate",
        help="check manifests (schema and every rule that needs no kernel)",
        description="Load and validate manifests without touching the host. Every error is "
        "reported as file:line:col. Exit 0 when valid, 1 otherwise.",
    )
    _paths_arg(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "plan",
        help="show what apply would change (dry run)",
        description="Compute the ordered plan that `apply` would execute and print it. "
        "Reads the kernel unless --offline.",
    )
    _paths_arg(p)
    _state_dir_arg(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there are no changes, 2 when there are changes, 1 on error",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not read the kernel (unprivileged): diff against an empty host, or against "
        "--live-state",
    )
    p.add_argument(
        "--live-state",
        metavar="FILE",
        help="with --offline: the JSON printed by `ipvlanctl status --format json` on a host",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "apply",
        help="converge the host to the manifests (one shot)",
        description="Validate, observe, plan, apply the plan under an exclusive lock, then "
        "verify. Exit 0 converged, 1 error, 3 converged except objects pending on a missing "
        "parent.",
    )
    _paths_arg(p)
    _state_dir_arg(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="plan output format")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when nothing changes")
    p.add_argument(
        "--rollback",
        dest="rollback",
        action="store_true",
        default=True,
        help="on failure, undo the steps this run took (default)",
    )
    p.add_argument(
        "--no-rollback",
        dest="rollback",
        action="store_false",
        help="on failure, keep what was done (a consistent partial state) and report it",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for another apply to finish (default 60; 0 fails at once)",
    )
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "watch",
        help="daemon: converge on every manifest change and repair drift",
        description="Watch manifest directories and the kernel; converge on every change.",
    )
    _paths_arg(p)
    _state_dir_arg(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "status",
        help="show managed networks, containers and addresses",
        description="Show what the reconciler manages on this host, read from the kernel.",
    )
    _state_dir_arg(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.set_defaults(func=cmd_status)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from .manifest import load

    desired = load(args.paths)
    for w in desired.warnings:
        print(str(w), file=sys.stderr)
    if not args.quiet:
        print(
            f"OK: {len(desired.networks)} networks, {len(desired.vlans)} vlans, "
            f"{len(desired.containers)} containers"
        )
    return 0


def _not_implemented(name: str) -> int:
    print(f"ipvlanctl {name}: not implemented yet", file=sys.stderr)
    return 1


def cmd_plan(args: argparse.Namespace) -> int:
    return _not_implemented("plan")


def cmd_apply(args: argparse.Namespace) -> int:
    return _not_implemented("apply")


def cmd_watch(args: argparse.Namespace) -> int:
    return _not_implemented("watch")


def cmd_status(args: argparse.Namespace) -> int:
    return _not_implemented("status")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ReconcilerError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so, with the traceback
        import traceback

        traceback.print_exc()
        print(f"ipvlanctl: internal error (a bug, please report): {e}", file=sys.stderr)
        return Bug.exit_code


if __name__ == "__main__":
    sys.exit(main())
