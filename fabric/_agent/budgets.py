"""Hard budgets on the node: watch what budgeted work consumes, stop what breaks its budget.

A task or actor runs under the effective budget its admission wrote into its spec (its own
request under the tenant's ceiling, see `fabric.policy.decide_budget`). Here:

- every worker of a tenant with budgets, and every worker running budgeted work, is watched
  by the :class:`~fabric._agent.monitor.BudgetMonitor` (its own thread, sampling the
  worker's whole process tree every `BUDGET_INTERVAL`);
- a pooled worker runs one task after another, so its budget is re-armed as each task
  becomes its current one: CPU and wall time count from that moment;
- an actor's budget covers its worker's life;
- the kernel backs the monitor up: each watched worker gets its own cgroup where the
  machine has writable ones (memory and pids held at the ceiling), and RLIMIT_CORE 0;
- a tenant's `memory` and `processes` budgets bound the sum over its workers here: when
  the sum breaks one, its largest worker is stopped.

A stop is decided (`decide_stop`), recorded, and only then acted on. The worker's tree is
killed; its current task fails with ``BUDGET_EXCEEDED`` (retried only when its budget says
``retry``), tasks queued behind it on the worker go back to the queue, and an actor dies with
the breach as the cause of every pending and later call (restarted only with ``retry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabric import _metrics
from fabric._agent import procfs
from fabric._agent.actors import Actors
from fabric._agent.base import E, error_info
from fabric._agent.budget_errors import BudgetError
from fabric._agent.cgroup_setup import detect_kernel_limits
from fabric._agent.limits import Budget, KernelLimits, WorkerGroup
from fabric._agent.monitor import BudgetBreach, BudgetMonitor
from fabric._agent.rlimits import plan_rlimits
from fabric._agent.state import TaskEntry
from fabric._agent.workers import Worker, WorkerState
from fabric._budget_wire import from_wire
from fabric._proto import fabric_pb2 as pb
from fabric.policy import Decision, Limits
from fabric.policy._budget_decisions import decide_stop
from fabric.policy._budgets import format_limit

log = logging.getLogger(__name__)

BUDGET_INTERVAL = 0.05  # seconds between samples of a watched worker
TENANT_CHECK_INTERVAL = 0.1  # seconds between checks of tenants' per-node sums
ORPHAN_REAP_DELAY = 0.5  # seconds after a worker exits: its killed tree has died by then
PR_SET_CHILD_SUBREAPER = 36

# The monitor's names for what it measures, and the policy's.
_POLICY_NAME = {
    "cpu_seconds": "cpu_seconds",
    "memory_bytes": "memory",
    "pids": "processes",
    "wall_seconds": "wall_seconds",
}


@dataclass
class Stop:
    """Why a worker is being stopped: the budget, its limit and what was measured."""

    budget: str  # "task.cpu_seconds", "actor.memory", "tenant.memory", ...
    limit: float
    measured: float
    message: str


@dataclass
class _Watch:
    worker: Worker
    started: float  # monotonic, when the watch began (the monitor's wall clock origin)
    group: WorkerGroup | None
    task: TaskEntry | None = None  # the pooled worker's current budgeted task


class BudgetKeeper(Actors):
    """The node agent's budget enforcement (see the module docstring)."""

    if TYPE_CHECKING:
        # Defined by window_budgets.py.
        def _charge_cpu(self) -> None: ...

    def start_budgets(self, kernel: KernelLimits | None = None) -> None:
        self.kernel_limits = kernel or detect_kernel_limits(
            agent=f"{_group_name(self.node_id)}-{os.getpid()}"
        )
        log.info("%s", self.kernel_limits.describe())
        self.budget_monitor = BudgetMonitor(self._breach_from_thread, interval=BUDGET_INTERVAL)
        self._watches: dict[int, _Watch] = {}
        self._stops: dict[int, Stop] = {}  # worker id -> why it was stopped
        self._tenant_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # (policy version, tenant, kind, asked, exhausted) -> the admission's decision and
        # the effective budget (see NodeAgent._budget_decision).
        self._budget_decisions: dict[tuple[object, ...], tuple[Decision, pb.Budget]] = {}
        self._tenant_of: dict[int, str] = {}  # watched worker id -> tenant (CPU charges)
        # Killed trees leave orphans; where pid 1 does not reap them, this agent does.
        self._reaping = _adopt_orphans()

    def close_budgets(self) -> None:
        self.budget_monitor.close()
        self.kernel_limits.close()

    # --- which workers are watched ----------------------------------------------------

    def _tenant_budgeted(self, tenant: str) -> bool:
        owner = self.policy.tenant(tenant)
        if owner is None:
            return False
        b = owner.budgets
        return b.memory is not None or b.processes is not None or b.leased or b.task.bounded

    def _watch_worker(self, worker: Worker, limits: Limits) -> None:
        """Watch `worker` from now, its kernel group (if any) holding `limits`' memory and
        processes. Idempotent."""
        if worker.worker_id in self._watches or worker.state is WorkerState.DEAD:
            return
        group = None
        if self.kernel_limits.available and (limits.memory or limits.processes):
            try:
                # The kernel counts threads as tasks: the group leaves room for them, and
                # the monitor counts processes against the budget itself.
                group = self.kernel_limits.create_group(
                    f"w{worker.worker_id}", _monitor_budget(limits).kernel_limits()
                )
                group.add(worker.pid)
            except (BudgetError, OSError) as error:
                log.warning("worker %d gets no cgroup: %s", worker.pid, error)
                group = None
        budget = _monitor_budget(limits)
        try:
            self.budget_monitor.start()
            self.budget_monitor.watch(worker.worker_id, group or worker.pid, budget)
        except ProcessLookupError:
            return
        self._watches[worker.worker_id] = _Watch(worker, time.monotonic(), group)
        self._tenant_of[worker.worker_id] = worker.tenant
        if self._tenant_timer is None:
            self._tenant_timer = self._loop.call_later(TENANT_CHECK_INTERVAL, self._check_tenants)

    def _budget_worker_spawned(self, worker: Worker, budget: pb.Budget | None) -> None:
        """A new worker: watch it if its tenant has budgets or it hosts a budgeted actor."""
        if worker.actor_id and budget is not None:
            limits = from_wire(budget)
            if limits.bounded or self._tenant_budgeted(worker.tenant):
                self._watch_worker(worker, limits)
            return
        if self._tenant_budgeted(worker.tenant):
            self._watch_worker(worker, self._idle_limits(worker.tenant))

    # --- pooled workers: one task's budget at a time ------------------------------------

    def _budget_task_current(self, worker: Worker) -> None:
        """Arm the budget of the task `worker` runs now (the first it holds), if any."""
        if worker.actor_id:
            return
        task = next(iter(worker.running.values()), None)
        if not isinstance(task, TaskEntry) or not task.spec.HasField("budget"):
            watch = self._watches.get(worker.worker_id)
            if watch is not None and watch.task is not None:
                watch.task = None
                self._rearm(watch, _monitor_budget(self._idle_limits(worker.tenant)))
            return
        if worker.worker_id not in self._watches:
            self._watch_worker(worker, Limits())
        watch = self._watches.get(worker.worker_id)
        if watch is None or watch.task is task:
            return
        watch.task = task
        self._rearm(watch, _segment_budget(task.spec.budget))

    def _rearm(self, watch: _Watch, budget: Budget) -> None:
        with contextlib.suppress(BudgetError):
            self.budget_monitor.begin(watch.worker.worker_id, budget)

    def _idle_limits(self, tenant: str) -> Limits:
        """What a pooled worker between budgeted tasks is held to: the tenant's ceiling."""
        owner = self.policy.tenant(tenant)
        if owner is None:
            return Limits()
        return Limits(memory=owner.budgets.task.memory, processes=owner.budgets.task.processes)

    # --- stopping -------------------------------------------------------------------

    def _breach_from_thread(self, breach: BudgetBreach) -> None:
        """On the monitor's thread, after the kill: hand the breach to the loop."""
        self._loop.call_soon_threadsafe(self._breached, breach)

    def _breached(self, breach: BudgetBreach) -> None:
        watch = self._watches.get(breach.key)  # type: ignore[call-overload]
        if watch is None or watch.worker.worker_id in self._stops:
            return
        self._stops[watch.worker.worker_id] = self._stop_for(watch, breach)

    def _stop_for(self, watch: _Watch, breach: BudgetBreach) -> Stop:
        worker = watch.worker
        what = "actor" if worker.actor_id else "task"
        key = _POLICY_NAME.get(breach.budget_name, breach.budget_name)
        limit, measured = breach.limit, breach.measured
        spec = watch.task.spec if watch.task is not None else self._actor_spec(worker)
        own = getattr(from_wire(spec.budget), key, None) if spec is not None else None
        if key in ("cpu_seconds", "wall_seconds"):  # counted from the segment's start
            origin = breach.origin_cpu if key == "cpu_seconds" else breach.origin_wall
            limit, measured = (limit - origin if own is None else own), measured - origin
        elif own is not None and own < limit:
            # A kernel limit (held at the tenant's ceiling) acted before the monitor saw
            # the work pass its own, lower, budget.
            limit = own
        budget = f"{what}.{key}"
        enforced = (
            "" if breach.enforced_by == "monitor" else f", enforced by the {breach.enforced_by}"
        )
        why = (
            f"it used {format_limit(key, measured)} of its {budget} budget of "
            f"{format_limit(key, limit)}{enforced}"
        )
        return self._decide_stop(worker, watch.task, budget, limit, measured, why)

    def _decide_stop(
        self,
        worker: Worker,
        task: TaskEntry | None,
        budget: str,
        limit: float,
        measured: float,
        why: str,
    ) -> Stop:
        """Decide and record the stop of `worker` (running `task`, or its actor)."""
        subject = self._subject(worker, task)
        decision = decide_stop(self.policy, worker.tenant, budget, limit, measured, subject)
        spec = task.spec if task is not None else self._actor_spec(worker)
        if spec is not None:
            self._record(decision, spec, kind="budget.stop", parent=spec.audit_parent)
        message = (
            f"{subject} was stopped: {why} [rule budget.stopped, policy {decision.policy_version}]"
        )
        log.info("%s", message)
        return Stop(budget, limit, measured, message)

    def _subject(self, worker: Worker, task: TaskEntry | None) -> str:
        if worker.actor_id:
            spec = self._actor_spec(worker)
            name = spec.actor_options.class_name if spec is not None else "?"
            return f"actor {name} ({worker.actor_id.hex()[:12]})"
        if task is not None:
            return f"task {task.spec.function_name} ({task.task_id.hex()[:12]})"
        return f"worker {worker.pid}"

    def _actor_spec(self, worker: Worker) -> pb.TaskSpec | None:
        actor = self.actors.get((worker.tenant, worker.actor_id))
        return actor.creation.spec if actor is not None else None

    def _stop_worker(self, worker: Worker, stop: Stop) -> None:
        """Stop `worker` for `stop` (a tenant-wide budget the agent itself enforces)."""
        if worker.worker_id in self._stops or worker.state is WorkerState.DEAD:
            return
        self._stops[worker.worker_id] = stop
        watch = self._watches.get(worker.worker_id)
        if watch is not None and watch.group is not None:
            try:
                watch.group.kill()
                return
            except BudgetError as error:
                log.warning("could not kill the group of worker %d: %s", worker.pid, error)
        worker.kill()

    def worker_environment(self, tenant: str, budget: pb.Budget | None) -> dict[str, str]:
        """The rlimits a new worker of `tenant` sets on itself before its first task: core
        dumps off always; for an actor, its CPU seconds; memory (as RLIMIT_DATA, beyond
        what the monitor and a cgroup enforce) at the actor's budget or the tenant's
        ceiling for one task."""
        owner = self.policy.tenant(tenant)
        ceiling = owner.budgets.task if owner is not None else Limits()
        limits = from_wire(budget) if budget is not None else Limits(memory=ceiling.memory)
        plan = plan_rlimits(
            Budget(cpu_seconds=limits.cpu_seconds, memory_bytes=limits.memory),
            own_uid=self.launcher.tenant_owner is not None,
            tenant_tasks=owner.budgets.processes if owner is not None else None,
        )
        return plan.to_env()

    def _reap_orphans(self) -> None:
        """Reap zombies this agent adopted (never a worker: their Popen reaps them)."""
        if not self._reaping:
            return
        workers = {w.pid for pool in self.workers.values() for w in pool}
        workers |= {a.worker.pid for a in self.actors.values() if a.worker is not None}
        me = os.getpid()
        for stat in procfs.scan().values():
            if stat.ppid == me and stat.zombie and stat.pid not in workers:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(stat.pid, os.WNOHANG)

    def _budget_worker_exited(self, worker: Worker) -> pb.ErrorInfo | None:
        """The worker is gone: stop watching it; the error its work fails with when a
        budget stopped it, else None."""
        if self._reaping:
            self._loop.call_later(ORPHAN_REAP_DELAY, self._reap_orphans)
        watch = self._watches.pop(worker.worker_id, None)
        stop = self._stops.pop(worker.worker_id, None)
        if watch is not None:
            try:
                breach = self.budget_monitor.unwatch(
                    worker.worker_id, returncode=worker.process.returncode
                )
            except BudgetError:
                breach = None
            if breach is not None and stop is None:
                stop = self._stop_for(watch, breach)
            if watch.group is not None:
                try:
                    watch.group.kill()
                    watch.group.remove()
                except BudgetError as error:
                    log.warning("could not remove the group of worker %d: %s", worker.pid, error)
        if stop is None:
            return None
        _metrics.budget_kill(worker.tenant, stop.budget)
        kind = E.ACTOR_DIED if worker.actor_id else E.BUDGET_EXCEEDED
        info = error_info(kind, stop.message)
        info.budget.CopyFrom(
            pb.BudgetBreach(budget=stop.budget, limit=stop.limit, measured=stop.measured)
        )
        return info

    # --- tenants' sums on this node ---------------------------------------------------

    def _check_tenants(self) -> None:
        """Stop the largest worker of a tenant whose workers here, together, break its
        memory or processes budget."""
        self._tenant_timer = None
        if not self._watches:
            return
        self._tenant_timer = self._loop.call_later(TENANT_CHECK_INTERVAL, self._check_tenants)
        self._charge_cpu()
        by_tenant: dict[str, list[tuple[Worker, dict[str, int]]]] = {}
        for key, watch in self._watches.items():
            if key in self._stops:
                continue
            try:
                used = self.budget_monitor.usage(key)
            except BudgetError:
                continue
            by_tenant.setdefault(watch.worker.tenant, []).append(
                (watch.worker, {"memory": used.memory_bytes, "processes": used.pids})
            )
        for tenant, workers in by_tenant.items():
            owner = self.policy.tenant(tenant)
            if owner is None:
                continue
            for name, limit in (
                ("memory", owner.budgets.memory),
                ("processes", owner.budgets.processes),
            ):
                total = sum(used[name] for _, used in workers)
                if limit is None or total <= limit:
                    continue
                largest = max(workers, key=functools.partial(_used, name))[0]
                self._stop_tenant_worker(largest, f"tenant.{name}", limit, total)
                break

    def _stop_tenant_worker(self, worker: Worker, budget: str, limit: float, used: float) -> None:
        key = budget.split(".", 1)[1]
        watch = self._watches.get(worker.worker_id)
        task = watch.task if watch is not None else None
        if task is None and not worker.actor_id:
            task = next((t for t in worker.running.values() if isinstance(t, TaskEntry)), None)
        if key == "cpu_seconds":
            why = (
                f"tenant {worker.tenant!r} has used its whole {budget} budget of "
                f"{format_limit(key, limit)} for this window, across the cluster"
            )
        else:
            why = (
                f"the workers of tenant {worker.tenant!r} on node {self.node_id} used "
                f"{format_limit(key, used)} together, more than its {budget} budget of "
                f"{format_limit(key, limit)}, and this was the largest"
            )
        self._stop_worker(worker, self._decide_stop(worker, task, budget, limit, used, why))


def _used(name: str, worker: tuple[Worker, dict[str, int]]) -> int:
    return worker[1][name]


_SEGMENTS_KEPT = 256
_segment_budgets: dict[bytes, Budget] = {}


def _segment_budget(message: pb.Budget) -> Budget:
    """The monitor's budget for a task's budget; tasks mostly share a few, so each is
    built once."""
    key = message.SerializeToString()
    budget = _segment_budgets.get(key)
    if budget is None:
        if len(_segment_budgets) >= _SEGMENTS_KEPT:
            _segment_budgets.clear()
        budget = _segment_budgets[key] = _monitor_budget(from_wire(message))
    return budget


def _monitor_budget(limits: Limits) -> Budget:
    return Budget(
        cpu_seconds=limits.cpu_seconds,
        memory_bytes=limits.memory,
        pids=limits.processes,
        wall_seconds=limits.wall_seconds,
    )


def _adopt_orphans() -> bool:
    """Become the reaper of orphaned descendants (prctl PR_SET_CHILD_SUBREAPER)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _group_name(node_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in node_id)[:48] or "agent"
