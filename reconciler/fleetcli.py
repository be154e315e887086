"""The command line's fleet parts (SPEC 5.1): ``--host NAME`` on every command and
``plan --offline --all-hosts``. Kept apart from cli.py so that file only calls in here."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Tuple

from .errors import UserError
from .model import DesiredState


def host_arg(p: argparse.ArgumentParser) -> None:
    if any("--host" in a.option_strings for a in p._actions):
        return  # already there (a command's parser may be built from several helpers)
    p.add_argument(
        "--host",
        metavar="NAME",
        help="fleet manifests (hosts:): the host whose part to use (default: this machine's "
        "host name, or its short name); a name not under hosts: is an error. Single-host "
        "manifests ignore it",
    )


def validate_host(desired: DesiredState, args: argparse.Namespace) -> str:
    """validate checks the whole fleet; with --host also that the host is one of it.
    Returns words for the OK line ("" for a single-host manifest)."""
    if not desired.fleet:
        return ""
    from . import fleet

    words = f", {len(desired.hosts)} hosts"
    host = getattr(args, "host", None)
    if host is not None:
        mine = fleet.select(desired, host)
        words += f" (host {host}: {len(mine.networks)} networks, {len(mine.containers)} containers)"
    return words


def plan_all_hosts(args: argparse.Namespace) -> int:
    """``plan --offline --all-hosts``: every host's plan against an empty host, in the order of
    ``hosts:`` (a fleet's CI dry run). A single-host manifest prints its one plan."""
    from . import engine, fleet
    from .manifest import load
    from .objects import HostState
    from .render import plan_json, render_json, render_text

    if not args.offline or args.live_state:
        raise UserError(
            "--all-hosts needs --offline and no --live-state: it plans every host against an "
            "empty host (a live state is one host's)"
        )
    if getattr(args, "host", None) is not None:
        raise UserError("--all-hosts plans every host; leave out --host")
    desired = load(args.paths)
    if not desired.fleet:
        plan = engine.plan_for(desired, HostState(), engine.State(), offline=True).plan
        sys.stdout.write(render_json(plan) if args.format == "json" else render_text(plan))
        return (0 if plan.empty else 2) if args.detailed_exitcode else 0
    plans: List[Tuple[str, object]] = []
    for name in desired.hosts:
        mine = fleet.select(desired, name)
        plans.append((name, engine.plan_for(mine, HostState(), engine.State(), offline=True).plan))
    if args.format == "json":
        data = {
            "format_version": "1",
            "hosts": [
                {"host": name, "id": desired.hosts[name].id, "plan": plan_json(plan)}  # type: ignore[arg-type]
                for name, plan in plans
            ],
        }
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        out = []
        for name, plan in plans:
            out.append(f"=== host {name} (id {desired.hosts[name].id}) ===\n")
            out.append(render_text(plan))  # type: ignore[arg-type]
            out.append("\n")
        sys.stdout.write("".join(out).rstrip("\n") + "\n")
    if args.detailed_exitcode:
        return 2 if any(not p.empty for _, p in plans) else 0  # type: ignore[attr-defined]
    return 0
