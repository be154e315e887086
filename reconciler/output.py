"""The command line's output plumbing: write errors and ``--format json`` errors.

* Standard output and error are wrapped while a command runs: a write that fails
  (``> /dev/full``, a closed pipe) becomes one :class:`OutputError`, reported in one line,
  exit status 1 -- never a traceback, never Python's "Exception ignored" at exit.
* With ``--format json`` an error is a JSON document on standard output
  (:func:`error_document`, docs/plan-json.md "Errors and validate"), with the same exit
  status as the text.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional

from .errors import ManifestError, PlanError, ReconcilerError, printable

FORMAT_VERSION = "1"


class OutputError(ReconcilerError):
    """Standard output or error cannot be written (disk full, pipe closed)."""

    def __init__(self, stream_name: str, error: OSError, stream: Any):
        self.stream_name = stream_name
        self.stream = stream
        self.reason = error.strerror or str(error)
        super().__init__(f"ipvlanctl: cannot write {stream_name}: {self.reason}")


class _Guarded:
    """A text stream whose write errors are OutputError (everything else delegated)."""

    def __init__(self, stream: Any, name: str):
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            raise OutputError(self._name, e, self._stream) from None

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise OutputError(self._name, e, self._stream) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Guard:
    """Wraps sys.stdout and sys.stderr until released (the daemon logs on its own)."""

    def __init__(self) -> None:
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = _Guarded(self.stdout, "standard output")  # type: ignore[assignment]
        sys.stderr = _Guarded(self.stderr, "standard error")  # type: ignore[assignment]
        self.active = True

    def release(self) -> None:
        if self.active:
            sys.stdout, sys.stderr = self.stdout, self.stderr
            self.active = False


@contextlib.contextmanager
def guarded() -> Iterator[Guard]:
    g = Guard()
    try:
        yield g
    finally:
        g.release()


def _silence(stream: Any) -> None:
    """Point a failed stream's file descriptor at /dev/null, so that the interpreter's
    flush at exit succeeds (discarding) instead of printing "Exception ignored"."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def write_failed(e: OutputError) -> int:
    """Report a write error in one line (on standard error, unless that is what failed)."""
    _silence(e.stream)
    if e.stream_name != "standard error":
        try:
            sys.stderr.write(str(e) + "\n")
            sys.stderr.flush()
        except (OSError, OutputError):
            _silence(sys.stderr)
    return 1


def error_text(e: BaseException) -> str:
    """An error's text, one printable line per line (paths and values in messages may
    come from hostile files)."""
    return "\n".join(printable(line) for line in str(e).split("\n"))


def warning_json(w: Any) -> Dict[str, Any]:
    loc = w.loc
    has_pos = loc.line > 0
    return {
        "severity": "warning",
        "file": loc.file,
        "line": loc.line if has_pos else None,
        "col": loc.col if has_pos else None,
        "message": w.message,
    }


def _no_file(message: str) -> Dict[str, Any]:
    return {"severity": "error", "file": None, "line": None, "col": None, "message": message}


def error_document(e: ReconcilerError, warnings: Iterable[Any] = ()) -> Dict[str, Any]:
    """What ``--format json`` prints on an error (exit status as in text)."""
    manifest = isinstance(e, ManifestError)
    if manifest:
        diags: List[Dict[str, Any]] = [d.json() for d in e.diagnostics]  # type: ignore[attr-defined]
    elif isinstance(e, PlanError):
        diags = [_no_file(p) for p in e.problems]
    else:
        diags = [_no_file(str(e))]
    warns = [warning_json(w) for w in warnings]
    return {
        "format_version": FORMAT_VERSION,
        # the manifests: false when they are invalid; null when the error is not about them
        "valid": False if manifest else None,
        "error_count": len(diags),
        "warning_count": len(warns),
        "diagnostics": diags + warns,
        "exit_code": e.exit_code,
    }


def validate_document(desired: Any) -> Dict[str, Any]:
    """What ``validate --format json`` prints for valid manifests."""
    warns = [warning_json(w) for w in getattr(desired, "warnings", ())]
    return {
        "format_version": FORMAT_VERSION,
        "valid": True,
        "error_count": 0,
        "warning_count": len(warns),
        "diagnostics": warns,
        "summary": {
            "networks": len(desired.networks),
            "vlans": len(desired.vlans),
            "containers": len(desired.containers),
        },
        "exit_code": 0,
    }


def wants_json(args: Optional[Any]) -> bool:
    return args is not None and getattr(args, "format", None) == "json"
