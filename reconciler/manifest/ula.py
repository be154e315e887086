"""Top-level ``ula_prefix:``: the ULA /48 automatic IPv6 subnets come from (SPEC 2.2).

Without it each host derives its own from /etc/machine-id, so a plan computed anywhere else
(a CI dry run) would show other IPv6 subnets than the host gets. The key may appear in any
file of a manifest directory, with one value for all of them.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import Diagnostic
from ..model import Location
from .yamlload import Document, YMap

KEY = "ula_prefix"
ULA_SPACE = ipaddress.IPv6Network("fd00::/8")  # locally assigned ULAs (RFC 4193)
EXAMPLE = "fd12:3456:789a::/48"


def check(
    docs: Sequence[Document], schema_bad: Dict[int, Set[Tuple[Any, ...]]]
) -> Tuple[Optional[ipaddress.IPv6Network], List[Diagnostic]]:
    """The manifests' ULA prefix (None when no file gives one) and the problems with it."""
    diags: List[Diagnostic] = []
    first: Optional[Tuple[ipaddress.IPv6Network, str, Location]] = None
    for i, doc in enumerate(docs):
        root = doc.root
        if not doc.ok or not isinstance(root, dict) or KEY not in root or () in schema_bad.get(i, ()):
            continue  # schema errors (a non-string, an unreadable file) are reported already
        text = root[KEY]
        pos = root.vpos.get(KEY, doc.root_pos) if isinstance(root, YMap) else doc.root_pos
        prefix = _parse(text)
        if isinstance(prefix, str):
            diags.append(doc.diag(pos, prefix))
            continue
        loc = doc.loc(pos)
        if first is None:
            first = (prefix, str(text), loc)
        elif prefix != first[0]:
            diags.append(
                doc.diag(
                    pos,
                    f"{KEY} {text} differs from {KEY} {first[1]} ({first[2]}); all files of a "
                    "manifest directory must give the same one",
                )
            )
    return (first[0] if first is not None else None), diags


def _parse(text: Any) -> Any:
    """The /48, or what is wrong with ``text`` (a message)."""
    if not isinstance(text, str):
        return f"{KEY} must be an IPv6 /48 inside fd00::/8, like {EXAMPLE}"
    try:
        net = ipaddress.IPv6Network(text, strict=False)
    except ValueError:
        return f"{KEY} {text!r} is not an IPv6 prefix; give a /48 inside fd00::/8, like {EXAMPLE}"
    if "/" not in text or net.prefixlen != 48:
        return f"{KEY} {text} is not a /48; give one like {EXAMPLE}"
    if int(net.network_address) != int(ipaddress.IPv6Interface(text).ip):
        return f"{KEY} {text} has host bits set; did you mean {net}?"
    if not net.subnet_of(ULA_SPACE):
        return (
            f"{KEY} {text} is not inside fd00::/8 (locally assigned unique local addresses, "
            f"RFC 4193); give one like {EXAMPLE}"
        )
    return net
