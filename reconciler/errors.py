"""Errors say who must act.

* :class:`UserError` -- the operator: a bad manifest, a name clash with an
  object we do not own. Permanent until the input changes. Exit status 1.
* :class:`EnvironmentProblem` -- the host: a parent link missing, the kernel
  busy, the lock held. Temporary: retrying later may succeed.
* :class:`Bug` -- us: an invariant broke. Report with a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .model import Location


class ReconcilerError(Exception):
    """Base class of every error the reconciler raises on purpose."""

    exit_code = 1


class UserError(ReconcilerError):
    """The operator must act (bad manifest, name clash, unsupported request)."""


# Control characters (and Unicode line separators and bidirectional overrides) from a
# hostile file or file name must not reach the terminal (escape sequences), split a
# diagnostic into several lines or reorder what is shown; one replacement character each
# keeps a caret under the right column.
_UNPRINTABLE = {
    c: "\ufffd"
    for c in list(range(0, 9)) + list(range(10, 32)) + list(range(127, 160))
    + [0x2028, 0x2029] + list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A))
}
MAX_QUOTED_CHARS = 200  # of a source line shown under a diagnostic
MAX_MESSAGE_CHARS = 400  # of a diagnostic's message (it may quote a hostile value)


def printable(text: str) -> str:
    """text with control characters replaced (tabs kept)."""
    return text.translate(_UNPRINTABLE)


def printable_path(path: str) -> str:
    """A file name fit for one line of terminal output (tabs and newlines replaced too)."""
    return printable(path).replace("\t", "\ufffd")


def _clip_message(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    head, tail = MAX_MESSAGE_CHARS - 100, 60
    return f"{message[:head]}\u2026 ({len(message) - head - tail} characters not shown) \u2026{message[-tail:]}"


def _clip_line(line: str, col: int) -> Tuple[str, int]:
    """At most MAX_QUOTED_CHARS of a source line around column ``col`` (1-based), and the
    caret's column in what is returned."""
    if len(line) <= MAX_QUOTED_CHARS:
        return line, col
    start = max(0, min(col - 1 - MAX_QUOTED_CHARS // 2, len(line) - MAX_QUOTED_CHARS))
    end = start + MAX_QUOTED_CHARS
    out = ("\u2026" if start else "") + line[start:end] + ("\u2026" if end < len(line) else "")
    return out, col - start + (1 if start else 0)


def location_text(loc: Location) -> str:
    """``file:line:col``, or the file alone when there is no position (never ``:0:0``)."""
    name = printable_path(loc.file)
    return f"{name}:{loc.line}:{loc.col}" if loc.line > 0 else name


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a manifest, at a location, with the source line for context."""

    loc: Location
    message: str
    source_line: Optional[str] = None

    def render(self) -> str:
        out = f"{location_text(self.loc)}: {printable(_clip_message(self.message))}"
        if self.source_line is not None and self.loc.line > 0:
            line = printable(self.source_line.rstrip("\n").expandtabs(1))
            line, col = _clip_line(line, self.loc.col)
            caret = " " * max(col - 1, 0) + "^"
            out += f"\n    {line}\n    {caret}"
        return out

    def json(self, severity: str = "error") -> Dict[str, Any]:
        """The diagnostic as ``--format json`` shows it (docs/plan-json.md)."""
        has_pos = self.loc.line > 0
        return {
            "severity": severity,
            "file": self.loc.file,
            "line": self.loc.line if has_pos else None,
            "col": self.loc.col if has_pos else None,
            "message": self.message,
        }


class ManifestError(UserError):
    """Every problem found in the manifests, not just the first."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics: List[Diagnostic] = sorted(
            diagnostics, key=lambda d: (d.loc.file, d.loc.line, d.loc.col, d.message)
        )
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.diagnostics)
        body = "\n".join(d.render() for d in self.diagnostics)
        return f"{body}\n{n} error{'s' if n != 1 else ''} in manifests"


class PlanError(UserError):
    """The desired state cannot be reached without touching what we do not own."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(f"plan error: {p}" for p in self.problems))


class EnvironmentProblem(ReconcilerError):
    """The host is not ready (missing parent, lock held, kernel busy): retry later."""

    exit_code = 3
    temporary = True


class LockHeld(EnvironmentProblem):
    exit_code = 1


class KernelError(EnvironmentProblem):
    """A netlink or filesystem operation failed; names the object and the operation."""

    exit_code = 1

    def __init__(self, operation: str, obj: str, errno_: int, detail: str = "", partial=None):
        self.partial = partial
        self.operation = operation
        self.obj = obj
        self.errno = errno_
        import os

        msg = f"{operation} {obj}: {os.strerror(errno_) if errno_ else detail}"
        if detail and errno_:
            msg += f" ({detail})"
        super().__init__(msg)


class Bug(ReconcilerError):
    """An internal invariant failed; this is our fault."""

    exit_code = 70
