"""The executor: runs a plan's actions, in order, through the kind handlers.

Actions are cut into stages: a run of consecutive actions of one kind (and
one phase of the plan: deletions or the rest) in which no action depends on
another. A stage's netlink requests are pipelined: queued per socket and
phase, sent in chunks, and their ACKs collected before the next stage. The
executor never decides anything: it executes the plan value it is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Set, Tuple

from ..errors import ReconcilerError
from ..objects import Key, Kind
from ..plan import Action, Op
from .ctx import Ctx
from .handlers import HANDLERS
from .host import Kernel, Snapshot


@dataclass
class ApplyResult:
    done: List[Action] = field(default_factory=list)
    failed: List[Tuple[Action, str]] = field(default_factory=list)
    not_run: List[Action] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _stages(actions: Tuple[Action, ...]) -> List[List[Action]]:
    stages: List[List[Action]] = []
    cur: List[Action] = []
    cur_keys: Set[Key] = set()
    cur_sig = None
    for a in actions:
        sig = (a.op is Op.DELETE, a.kind)
        depends = any(dep in cur_keys for dep in a.obj.requires())
        if cur and (sig != cur_sig or depends):
            stages.append(cur)
            cur, cur_keys = [], set()
        cur.append(a)
        cur_keys.add(a.key)
        cur_sig = sig
    if cur:
        stages.append(cur)
    return stages


def _dispatch(ctx: Ctx, a: Action) -> None:
    h = HANDLERS[a.kind]
    ctx.current = a.key
    if a.op is Op.CREATE:
        h.create(ctx, a.after)
    elif a.op is Op.DELETE:
        h.delete(ctx, a.before)
    elif a.op is Op.UPDATE:
        h.update(ctx, a.before, a.after)
    else:
        h.replace(ctx, a.before, a.after)


def execute(actions: Tuple[Action, ...], kernel: Kernel, snapshot: Snapshot) -> ApplyResult:
    """Run actions in order; stop at the first stage with a failure."""
    ctx = Ctx(kernel, snapshot)
    result = ApplyResult()
    stages = _stages(actions)
    for i, stage in enumerate(stages):
        ran = 0
        for a in stage:
            try:
                _dispatch(ctx, a)
            except ReconcilerError as e:
                ctx.failed.setdefault(a.key, str(e))
                break
            except OSError as e:
                ctx.failed.setdefault(a.key, f"{a.op.value} {a.kind.label} {a.obj.describe()}: {e.strerror or e}")
                break
            finally:
                ran += 1
        ctx.flush()
        for j, a in enumerate(stage):
            if a.key in ctx.failed:
                result.failed.append((a, ctx.failed[a.key]))
            elif j >= ran:
                result.not_run.append(a)
            else:
                result.done.append(a)
        if ctx.failed:
            for later in stages[i + 1 :]:
                result.not_run.extend(later)
            break
    return result


def inverse(a: Action) -> Action:
    if a.op is Op.CREATE:
        return Action(Op.DELETE, a.key, a.after, None)
    if a.op is Op.DELETE:
        return Action(Op.CREATE, a.key, None, a.before)
    return Action(a.op, a.key, a.after, a.before, a.changes, "rollback")


def rollback_plan(done: List[Action]) -> Tuple[Action, ...]:
    """Undo what this run did, newest first (children before parents)."""
    return tuple(inverse(a) for a in reversed(done) if a.kind is not Kind.SYSCTL or a.op is not Op.CREATE)
