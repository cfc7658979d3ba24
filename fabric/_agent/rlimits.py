"""Rlimits for workers: the kernel limits every machine has, per process.

`plan_rlimits` says which rlimits back a worker's `Budget` and why (see its docstring for
each choice); the plan is applied from outside (`apply`, prlimit), in the child before
exec (`preexec`), or by the worker itself at startup from its environment (`to_env`,
`apply_rlimits_from_env`), whichever the spawning code can use.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from fabric._agent.budget_errors import RlimitError
from fabric._agent.limits import Budget, WorkerGroup

RLIMIT_CPU_MARGIN = 1.0  # seconds of CPU past the budget before the kernel steps in
RLIMIT_DATA_HEADROOM = 1 << 30
RLIMITS_ENV = "FABRIC_WORKER_RLIMITS"
_RLIMIT_NAMES = frozenset({"RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_NPROC"})


@dataclass(frozen=True)
class Rlimit:
    resource: int
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class RlimitPlan:
    """The rlimits of one worker, and why each was or was not set."""

    limits: tuple[Rlimit, ...]
    notes: tuple[str, ...]

    def preexec(self) -> None:
        """Set the limits on the calling process (for a child between fork and exec)."""
        for r in self.limits:
            resource.setrlimit(r.resource, (r.soft, r.hard))

    def apply(self, pid: int) -> None:
        """Set the limits on process `pid` from outside (prlimit): no preexec function,
        which is unsafe in a threaded agent. Apply before the worker's first task, like
        `WorkerGroup.add`. The kernel allows it for a process of the caller's own uid, or
        with CAP_SYS_RESOURCE, which a container's root may lack; for a worker under its
        tenant's uid there, pass `to_env()` and let the worker call
        `apply_rlimits_from_env` at startup."""
        for r in self.limits:
            try:
                resource.prlimit(pid, r.resource, (r.soft, r.hard))
            except PermissionError as e:
                raise RlimitError(f"cannot set {r.name} of process {pid}: {e.strerror}") from e

    def to_env(self) -> dict[str, str]:
        """The limits as an environment variable, for `apply_rlimits_from_env`."""
        text = ",".join(f"{r.name}={r.soft}:{r.hard}" for r in self.limits)
        return {RLIMITS_ENV: text}

    def value(self, name: str) -> tuple[int, int] | None:
        for r in self.limits:
            if r.name == name:
                return r.soft, r.hard
        return None

    def describe(self) -> str:
        parts = [f"{r.name}={_fmt(r.soft)}/{_fmt(r.hard)}" for r in self.limits]
        return "; ".join([", ".join(parts), *self.notes])


def _fmt(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def plan_rlimits(
    budget: Budget,
    *,
    group: WorkerGroup | None = None,
    own_uid: bool = False,
    tenant_tasks: int | None = None,
    cpu_margin: float = RLIMIT_CPU_MARGIN,
    data_headroom: int = RLIMIT_DATA_HEADROOM,
) -> RlimitPlan:
    """The rlimits that back `budget` for one worker.

    - RLIMIT_CORE 0, always: a core dump would copy tenant memory to the node's disk.
    - RLIMIT_CPU, where the budget has CPU seconds: SIGXCPU at the budget plus
      max(`cpu_margin`, 5 %) rounded up to whole seconds (the monitor acts first), SIGKILL
      a second later. It counts one process, not the tree: each child inherits its own.
    - RLIMIT_DATA, where the budget has memory and no memory cgroup holds the worker: the
      budget plus max(budget, `data_headroom`). It counts writable private mappings, so
      address space reserved PROT_NONE (glibc arenas, jemalloc in pyarrow, the Python
      allocator) does not count, where RLIMIT_AS would refuse numpy and pyarrow long
      before any memory is used. It still counts allocated-but-untouched memory, hence
      the headroom: this is a backstop against a spike that outruns the monitor's
      sampling, while the monitor enforces the budget on resident memory.
    - RLIMIT_NPROC, only when the worker runs under its tenant's own uid (isolation.py):
      the kernel counts every task of the uid, so it is a ceiling for the tenant's tasks
      on this host (`tenant_tasks`), not for one worker; under a shared uid it would count
      the agent's own processes too, and root ignores it.
    """
    limits = [Rlimit(resource.RLIMIT_CORE, "RLIMIT_CORE", 0, 0)]
    notes: list[str] = []
    if budget.cpu_seconds is not None:
        margin = max(cpu_margin, 0.05 * budget.cpu_seconds)
        soft = max(1, math.ceil(budget.cpu_seconds + margin))
        limits.append(_capped(resource.RLIMIT_CPU, "RLIMIT_CPU", soft, soft + 1))
    if budget.memory_bytes is not None:
        if group is not None and group.holds("memory"):
            notes.append("RLIMIT_DATA not set: the memory cgroup holds the budget")
        else:
            data = budget.memory_bytes + max(budget.memory_bytes, data_headroom)
            limits.append(_capped(resource.RLIMIT_DATA, "RLIMIT_DATA", data, data))
    if own_uid and tenant_tasks is not None:
        limits.append(_capped(resource.RLIMIT_NPROC, "RLIMIT_NPROC", tenant_tasks, tenant_tasks))
    elif budget.pids is not None or tenant_tasks is not None:
        if group is not None and group.holds("pids"):
            notes.append("RLIMIT_NPROC not set: the pids cgroup holds the budget")
        else:
            notes.append("RLIMIT_NPROC not set: workers share the agent's uid")
    return RlimitPlan(tuple(limits), tuple(notes))


def apply_rlimits_from_env(environ: Mapping[str, str] | None = None) -> RlimitPlan | None:
    """Set on this process the limits `RlimitPlan.to_env` put in the environment (a
    worker calls this before it reads its first task); None if there are none. Lowering a
    limit needs no privilege. A value it cannot parse or set raises: a worker that cannot
    take its limits must not run."""
    text = (os.environ if environ is None else environ).get(RLIMITS_ENV)
    if not text:
        return None
    limits = []
    for item in text.split(","):
        name, _, values = item.partition("=")
        soft, _, hard = values.partition(":")
        if name not in _RLIMIT_NAMES or not soft.isdigit() or not hard.isdigit():
            raise RlimitError(f"cannot parse {RLIMITS_ENV} item {item!r}")
        limits.append(Rlimit(getattr(resource, name), name, int(soft), int(hard)))
    plan = RlimitPlan(tuple(limits), ())
    try:
        plan.preexec()
    except (OSError, ValueError) as e:
        raise RlimitError(f"cannot set {RLIMITS_ENV}={text!r}: {e}") from e
    return plan


def _capped(res: int, name: str, soft: int, hard: int) -> Rlimit:
    """Never above the agent's own hard limit, which an unprivileged agent cannot raise."""
    _, current_hard = resource.getrlimit(res)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    return Rlimit(res, name, soft, hard)
