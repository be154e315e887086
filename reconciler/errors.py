"""Errors say who must act.

* :class:`UserError` -- the operator: a bad manifest, a name clash with an
  object we do not own. Permanent until the input changes. Exit status 1.
* :class:`EnvironmentProblem` -- the host: a parent link missing, the kernel
  busy, the lock held. Temporary: retrying later may succeed.
* :class:`Bug` -- us: an invariant broke. Report with a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from .model import Location


class ReconcilerError(Exception):
    """Base class of every error the reconciler raises on purpose."""

    exit_code = 1


class UserError(ReconcilerError):
    """The operator must act (bad manifest, name clash, unsupported request)."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a manifest, at a location, with the source line for context."""

    loc: Location
    message: str
    source_line: Optional[str] = None

    def render(self) -> str:
        out = f"{self.loc}: {self.message}"
        if self.source_line is not None and self.loc.line > 0:
            line = self.source_line.rstrip("\n").expandtabs(1)
            caret = " " * max(self.loc.col - 1, 0) + "^"
            out += f"\n    {line}\n    {caret}"
        return out


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
