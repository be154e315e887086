"""Examples and documentation pointers for `ipvlanctl --help` (kept apart from cli.py's
parser so the parser stays readable). Every subcommand gets an "Examples:" epilog; the
help formatter keeps multi-line texts (the epilogs) as written and wraps the rest."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict

DOC_DIR_INSTALLED = os.path.join("share", "doc", "ipvlan-reconciler")  # pyproject data-files


def doc_path(name: str) -> str:
    """Where the document NAME (README.md, daemon.md, ...) is on this machine: installed with
    the package under <prefix>/share/doc/ipvlan-reconciler/ (the docs/ tree is not part of
    the Python package), or in the source checkout (editable installs)."""
    installed = os.path.join(sys.prefix, DOC_DIR_INSTALLED, name)
    if os.path.exists(installed):
        return installed
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = os.path.join(checkout, name if name == "README.md" else os.path.join("docs", name))
    return source if os.path.exists(source) else installed


class Formatter(argparse.HelpFormatter):
    """Texts that contain a newline (the examples) are printed as written; one-line texts
    (descriptions) are wrapped to the terminal as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


MANIFESTS = "/etc/ipvlan-reconciler/manifests.d"

EXAMPLES: Dict[str, str] = {
    "validate": f"""\
Examples:
  # check a manifest directory (every *.yaml/*.yml in it): no root, no kernel
  ipvlanctl validate {MANIFESTS}

  # several directories and files together are one desired state
  ipvlanctl validate base.yaml site/

  # print errors only (CI)
  ipvlanctl validate -q manifests.d
""",
    "plan": f"""\
Examples:
  # what apply would change on this host (reads the kernel: root)
  sudo ipvlanctl plan {MANIFESTS}

  # unprivileged, without the kernel, against an empty host
  ipvlanctl plan --offline manifests.d

  # against a host's real state, saved there with `ipvlanctl status --format json`
  ipvlanctl plan --offline --live-state web1.json manifests.d

  # CI gate: exit 2 when there are changes; the plan as JSON, its format described in
  # {doc_path("plan-json.md")}
  ipvlanctl plan --offline --detailed-exitcode --format json manifests.d > plan.json

  # save the plan for review; `apply FILE` later applies exactly it (or refuses)
  sudo ipvlanctl plan -o tonight.plan {MANIFESTS}

  # a fleet manifest: one host's part, or every host's plan (the fleet's CI dry run)
  sudo ipvlanctl plan --host h1 fleet.d
  ipvlanctl plan --offline --all-hosts fleet.d
""",
    "apply": f"""\
Examples:
  # converge this host; run it again: "No changes."
  sudo ipvlanctl apply {MANIFESTS}

  # at boot (deploy/ipvlan-reconciler-apply.service): silent when nothing changes
  sudo ipvlanctl apply --quiet {MANIFESTS}

  # machine-readable result; fail at once if another apply holds the lock
  sudo ipvlanctl apply --format json --lock-timeout 0 manifests.d

  # apply a plan saved by `plan -o`; refused if the manifests or the host changed since
  sudo ipvlanctl apply tonight.plan
""",
    "watch": f"""\
Examples:
  # the daemon in the foreground: converge now and on every change, repair drift
  sudo ipvlanctl watch {MANIFESTS}

  # as the systemd unit runs it, with Prometheus metrics on 127.0.0.1:9478
  ipvlanctl watch {MANIFESTS} --state-dir /var/lib/ipvlan-reconciler \\
      --status-file /run/ipvlan-reconciler/status.json --metrics-addr 9478

  # re-read the manifests now (SIGHUP); its last result
  sudo systemctl reload ipvlan-reconciler
  sudo ipvlanctl status

  # cluster mode (docs/cluster.md): follow the revisions `cluster push` stores in etcd
  sudo ipvlanctl watch --etcd http://10.0.0.1:2379,http://10.0.0.2:2379 --host node1 \
      --state-dir /var/lib/ipvlan-reconciler
  ipvlanctl cluster status --etcd http://10.0.0.1:2379
""",
    "status": """\
Examples:
  # networks, containers and addresses managed here, and the daemon's last result
  sudo ipvlanctl status

  # save this host's state, to plan against it elsewhere with `plan --offline --live-state`
  sudo ipvlanctl status --format json > web1.json
""",
    "bird-config": """\
Examples:
  # the BIRD 2 configuration of fleet host h1 (SPEC 5.2), checked by BIRD itself
  ipvlanctl bird-config --host h1 fleet.d > /etc/bird/bird.conf && bird -p

  # or let apply/watch keep it current and reload BIRD when it changes
  sudo ipvlanctl apply --host h1 --bird-config /etc/bird/bird.conf fleet.d
""",
    "cluster": """\
Examples:
  # validate a fleet directory and store it in etcd as a new revision (docs/cluster.md)
  ipvlanctl cluster push fleet.d --etcd http://10.0.0.1:2379

  # every host: converged revision, pending objects, last error, last seen
  ipvlanctl cluster status --etcd http://10.0.0.1:2379

  # free the blocks and addresses of a host that is dead and fenced
  ipvlanctl cluster forget-host h3 --confirm-fenced --etcd http://10.0.0.1:2379

  # it came back: let it take part again, starting from nothing it owned
  ipvlanctl cluster rejoin h3 --etcd http://10.0.0.1:2379
""",
}

MAIN_EPILOG = f"""\
Examples:
  ipvlanctl validate {MANIFESTS}
  sudo ipvlanctl plan {MANIFESTS}
  sudo ipvlanctl apply {MANIFESTS}
  ipvlanctl COMMAND --help        (examples for each command)

Documentation: {doc_path("README.md")}
"""


def decorate(parser: argparse.ArgumentParser, sub: "argparse._SubParsersAction") -> None:
    """Add the examples to the top-level parser and to every subcommand that has some."""
    parser.formatter_class = Formatter
    parser.epilog = MAIN_EPILOG
    for name, p in sub.choices.items():
        p.formatter_class = Formatter
        if name in EXAMPLES:
            p.epilog = EXAMPLES[name]
