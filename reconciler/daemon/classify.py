"""Error classes of the daemon: who must act, and what the daemon does meanwhile.

* ``permanent`` -- the operator: a manifest that does not load or validate
  (ManifestError), a plan that would touch objects we do not own (PlanError),
  any other UserError. Retrying cannot help: the daemon logs it once and waits
  for an edit (or for a host change: it still re-plans on host events).
* ``temporary`` -- the host: EnvironmentProblem (KernelError, LockHeld, ...)
  and OSError (file descriptors, memory, a namespace vanishing mid-run). The
  daemon retries with capped exponential backoff.
* ``bug`` -- us: anything else. Logged with its traceback; the daemon keeps
  running and retries with the same backoff (it may have been a one-off).
"""
from __future__ import annotations

from ..errors import Bug, EnvironmentProblem, UserError

PERMANENT = "permanent"
TEMPORARY = "temporary"
BUG = "bug"
CLASSES = (PERMANENT, TEMPORARY, BUG)


def classify(exc: BaseException) -> str:
    if isinstance(exc, Bug):
        return BUG
    if isinstance(exc, UserError):
        return PERMANENT
    if isinstance(exc, (EnvironmentProblem, OSError)):
        return TEMPORARY
    return BUG
