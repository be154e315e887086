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


def _paths_arg(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument(
        "paths",
        nargs="*" if optional else "+",
        metavar="PATH",
        help="manifest directories (every *.yaml/*.yml inside) or single manifest files; "
        "all of them together are the desired state",
    )


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    from .fleetcli import host_arg

    host_arg(p)  # every command that takes a state dir takes --host too (SPEC 5.1)
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where automatic choices and ownership records live (default {DEFAULT_STATE_DIR})",
    )


def build_parser() -> argparse.ArgumentParser:
    from .helptext import decorate, doc_path

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
    from .fleetcli import host_arg

    host_arg(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: valid, error_count, warning_count and diagnostics (file, line, col, "
        "message, severity) on standard output (docs/plan-json.md)",
    )
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
        "--live-state. Without --live-state it assumes that every parent named in the "
        "manifests (e.g. eth0) exists, with no addresses or routes of its own, that no link "
        "or namespace it would create exists yet, and an empty state directory (automatic "
        "addresses are chosen as on a fresh host)",
    )
    p.add_argument(
        "--live-state",
        metavar="FILE",
        help="with --offline: the JSON printed by `ipvlanctl status --format json` on a host",
    )
    p.add_argument(
        "--all-hosts",
        action="store_true",
        help="with --offline, for a fleet manifest: print every host's plan (no --host needed)",
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="also save the plan to FILE, with fingerprints of the manifests and of the host; "
        "`ipvlanctl apply FILE` applies exactly it, or refuses if either changed "
        "(docs/saved-plans.md; not with --offline)",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "apply",
        help="converge the host to the manifests (one shot)",
        description="Validate, observe, plan, apply the plan under an exclusive lock, then "
        "verify. Exit 0 converged, 1 error, 3 converged except objects pending on a missing "
        "parent. Given a FILE saved by `plan -o FILE`, apply exactly that plan, or refuse "
        "(exit 1, nothing changed) if the manifests or the host changed since.",
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
    _bird_args(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "watch",
        help="daemon: converge on every manifest change and repair drift",
        description="Watch manifest directories and the kernel; converge on every change, "
        "repair drift made by hand, finish pending networks when their parent appears. A "
        "broken manifest changes nothing; stopping leaves the network in place. SIGHUP "
        f"reloads. Documentation: {doc_path('daemon.md')}",
    )
    _paths_arg(p, optional=True)  # none with --etcd
    _state_dir_arg(p)
    from .daemon.options import add_watch_arguments

    add_watch_arguments(p)
    _bird_args(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "status",
        help="show managed networks, containers and addresses",
        description="Show what the reconciler manages on this host, read from the kernel.",
    )
    _state_dir_arg(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    from .daemon.constants import DEFAULT_STATUS_FILE

    p.add_argument(
        "--status-file",
        default=DEFAULT_STATUS_FILE,
        metavar="FILE",
        help="the daemon's status file; when it exists its content is shown as \"daemon\" "
        f"(default {DEFAULT_STATUS_FILE})",
    )
    p.add_argument("--bird-socket", metavar="PATH", default=None,
                   help="BIRD's control socket: report whether BIRD runs and its BGP sessions "
                   "(default: /run/bird/bird.ctl when it exists)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "bird-config",
        help="print the BIRD 2 configuration of one fleet host (SPEC 5.2)",
        description="Print the complete, deterministic BIRD 2 configuration that announces "
        "this host's L3 container routes (kernel table bgp.table) over BGP to the other hosts "
        "of a fleet manifest with bgp:.",
    )
    _paths_arg(p)
    from .fleetcli import host_arg

    host_arg(p)
    p.set_defaults(func=cmd_bird_config)

    from .cluster.cli import add_parser as add_cluster_parser

    add_cluster_parser(sub)  # SPEC 6; imports no etcd client until a cluster command runs
    decorate(parser, sub)
    return parser


def _bird_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bird-config", metavar="PATH", default=None,
                   help="fleet with bgp: keep BIRD's configuration file PATH current (atomic "
                   "write; `birdc configure` when it changed); a missing or failing BIRD is "
                   "reported, never fatal")
    p.add_argument("--bird-socket", metavar="PATH", default=None,
                   help="BIRD's control socket for birdc (default /run/bird/bird.ctl)")


def _host_name(args: argparse.Namespace, desired=None) -> str:
    name = getattr(args, "host", None) or (getattr(desired, "local_host", None) if desired is not None else None)
    if name:
        return name
    import socket

    return socket.gethostname()


def _bird_sync(args: argparse.Namespace, desired):
    """apply/watch --bird-config: the BirdSync keeping that file current, or None."""
    if not getattr(args, "bird_config", None):
        return None
    from .birdctl import DEFAULT_SOCKET, BirdSync

    return BirdSync(args.bird_config, args.bird_socket or DEFAULT_SOCKET, host=_host_name(args, desired))


def _full_state(paths, desired):
    """The whole fleet when ``desired`` is one host's part (BIRD peers with every host and
    imports every L3 network's routes); loaded again, only for --bird-config."""
    if getattr(desired, "local_host", None) is None:
        return desired
    from .manifest import load

    return load(paths)


def cmd_bird_config(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .bird import render
    from .manifest import load

    from .fleet import resolve_host

    desired = load(args.paths)  # the whole fleet: never narrowed
    if not desired.fleet:
        raise UserError("bird-config needs a fleet manifest (hosts: and bgp:)")
    sys.stdout.write(render(desired, resolve_host(desired, getattr(args, "host", None))))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .manifest import load

    from .fleetcli import validate_host

    desired = load(args.paths)
    hosts = validate_host(desired, args)
    if args.format == "json":
        import json

        from .output import validate_document

        sys.stdout.write(json.dumps(validate_document(desired), indent=2) + "\n")
        return 0
    from .output import error_text

    for w in desired.warnings:
        print(error_text(w), file=sys.stderr)  # (file names may hold control characters)
    if not args.quiet:
        from .render import validate_summary

        print(validate_summary(desired, hosts))
    return 0


def _load(paths, host=None):
    from .fleet import narrow
    from .manifest import load

    return narrow(load(paths), host)  # a fleet manifest: this host's part (None: this machine)


def _load_saved(paths, saved_host, asked_host):
    """The manifests of a saved plan, narrowed to the fleet host it was made for; a --host
    naming another host is refused rather than silently overridden."""
    from .errors import UserError

    if asked_host is not None and saved_host is not None and asked_host != saved_host:
        raise UserError(f"the saved plan was made for host {saved_host!r}, not {asked_host!r}: "
                        f"run `ipvlanctl plan --host {asked_host} -o FILE` for that host")
    return _load(paths, saved_host)


def _kernel():
    import os

    from .errors import UserError

    if os.geteuid() != 0:
        raise UserError("this command changes or reads network namespaces and needs root "
                        "(use `plan --offline` to plan unprivileged)")
    from .kernel.host import Kernel

    return Kernel()


def cmd_plan(args: argparse.Namespace) -> int:
    from . import engine
    from .render import render_json, render_text
    from .statedir import StateStore

    if args.all_hosts:
        from .fleetcli import plan_all_hosts

        return plan_all_hosts(args)
    out_file = getattr(args, "out", None)
    if out_file:
        from . import savedplan
        from .errors import UserError

        if args.offline:
            raise UserError("-o/--out needs the host: a saved plan is checked against the live "
                                  "state it was computed on, and --offline does not read it")
        files = savedplan.manifest_digests(args.paths)
    desired = _load(args.paths, args.host)
    store = StateStore(args.state_dir)
    if args.live_state and not args.offline:
        raise ReconcilerError("--live-state needs --offline")
    if args.offline:
        live = engine.offline_live(args.live_state)
        state = store.load() if args.live_state else engine.State()
        planned = engine.plan_for(desired, live, state, offline=not args.live_state)
    else:
        from .kernel.observe import observe

        with _kernel() as kernel:
            state = store.load()
            live = observe(kernel, state.intents, tables=engine.export_tables(desired, state)).live
            planned = engine.plan_for(desired, live, state)
    plan = planned.plan
    if out_file:
        savedplan.save(out_file, args.paths, files, desired, live, state, plan, args.state_dir)
    sys.stdout.write(render_json(plan) if args.format == "json" else render_text(plan))
    if out_file:
        print(f"\nSaved the plan to {out_file}. `ipvlanctl apply {out_file}` applies exactly it, "
              "and refuses if the manifests or the host change before.",
              file=sys.stderr if args.format == "json" else sys.stdout)
    if args.detailed_exitcode:
        return 0 if plan.empty else 2
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    import json

    from . import engine
    from .render import render_text, result_json, result_text
    from .statedir import StateStore

    from .savedplan import prepare_apply

    check = None
    # a plan saved by `plan -o`? (``host``: the fleet host it was made for, None if none)
    saved = prepare_apply(args.paths, args.state_dir, lambda paths, host: _load_saved(paths, host, args.host))
    if saved is not None:
        desired, check = saved
    else:
        desired = _load(args.paths, args.host)
    store = StateStore(args.state_dir)
    with _kernel() as kernel:
        out = engine.apply(desired, store, kernel, rollback=args.rollback, lock_timeout=args.lock_timeout,
                           check=check)
    bird_sync = _bird_sync(args, desired)
    bird = bird_sync.sync(desired, _full_state(args.paths, desired)) if bird_sync is not None else None
    if args.format == "json":
        data = result_json(out)
        if bird is not None:
            data["bird"] = bird
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        if not (args.quiet and out.plan.empty and not out.plan.pending):
            sys.stdout.write(render_text(out.plan))
            sys.stdout.write(result_text(out))
        if bird is not None and (bird["error"] or bird["changed"] or not args.quiet):
            from .birdctl import report_text

            sys.stdout.write(report_text(bird))
    return out.exit_code


def cmd_watch(args: argparse.Namespace) -> int:
    from .daemon.watch import run_watch

    return run_watch(args)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from . import engine
    from .livestate import state_json
    from .statedir import StateStore

    from .kernel.observe import observe

    store = StateStore(args.state_dir)
    with _kernel() as kernel:
        state = store.load()
        live = observe(kernel, state.intents, tables=state.export_tables).live
    data = state_json(live, ula_prefix=engine.host_ula_prefix(state))
    from .daemon.statusfile import read_status

    daemon = read_status(args.status_file) if args.status_file else None
    if daemon is not None:
        data["daemon"] = daemon
    bird = _bird_status(args)
    if bird is not None:
        data["bird"] = bird
    if args.format == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    from .render import status_text

    sys.stdout.write(status_text(data))
    return 0


def _bird_status(args: argparse.Namespace):
    import os

    from .birdctl import DEFAULT_SOCKET, bird_status

    sock = getattr(args, "bird_socket", None)
    if sock is None and not os.path.exists(DEFAULT_SOCKET):
        return None  # BIRD not configured on this host
    return bird_status(sock or DEFAULT_SOCKET)


def main(argv: Optional[List[str]] = None) -> int:
    from .output import OutputError, guarded, write_failed

    try:
        with guarded() as guard:
            try:
                return _main(argv, guard)
            finally:
                if guard.active:
                    sys.stdout.flush()  # a write error shows here, not at the interpreter's exit
    except OutputError as e:
        return write_failed(e)


def _main(argv: Optional[List[str]], guard) -> int:
    import contextlib

    from .gcpause import no_cyclic_gc
    from .output import OutputError, error_document, error_text, wants_json

    args = build_parser().parse_args(argv)
    if args.command == "watch":
        guard.release()  # the daemon's logs handle their own stream
    # one-shot commands build one large graph, use it and exit: no cyclic GC (gcpause); the
    # daemon keeps the collector (a long-lived process)
    try:
        with no_cyclic_gc() if args.command != "watch" else contextlib.nullcontext():
            return int(args.func(args))
    except OutputError:
        raise
    except ReconcilerError as e:
        if wants_json(args):
            import json

            sys.stdout.write(json.dumps(error_document(e), indent=2) + "\n")
        else:
            print(error_text(e), file=sys.stderr)
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
