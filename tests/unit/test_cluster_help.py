"""`ipvlanctl cluster SUBCOMMAND --help` has examples of itself, as every top-level command does."""
from __future__ import annotations

import re

from reconciler.cli import build_parser


def test_every_cluster_subcommand_help_has_examples_of_itself():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    cluster = sub.choices["cluster"]
    csub = next(a for a in cluster._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(csub.choices) >= {"push", "status", "forget-host", "rejoin"}
    for name, p in csub.choices.items():
        text = p.format_help()
        assert "\nExamples:\n" in text, name
        examples = text.split("\nExamples:\n", 1)[1]
        assert re.search(rf"^  (sudo )?ipvlanctl cluster {name}\b", examples, re.M), (name, examples)
        assert all(len(line) <= 100 for line in text.splitlines()), name
