"""Cluster-wide budgets on the node: what this agent holds of its tenants' windows.

A tenant's ``cpu_seconds`` and ``total_tasks`` budgets hold per window across the cluster
(see `fabric._leases`). This agent holds slices the head leased it (`leases.Ledger`) and
counts its tenants' use against them: a task as it is admitted, CPU seconds as the monitor
measures them. A submission that finds nothing held waits for the head's answer instead of
being refused; once the head has nothing left, the tenant's work here is stopped and new
work is refused until the window ends.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

from fabric._agent.base import log
from fabric._agent.budgets import BudgetKeeper
from fabric._agent.leases import Ledger, Supply
from fabric._agent.limits import KernelLimits
from fabric._agent.state import Session
from fabric._leases import LEASED
from fabric._proto import fabric_pb2 as pb

LEASE_RETRY = 0.5  # seconds before asking an unreachable head for a lease again


class WindowBudgets(BudgetKeeper):
    """The agent's share of its tenants' cluster-wide budgets (see the module docstring)."""

    if TYPE_CHECKING:
        # Defined by node.py.
        def _submit(self, session: Session, spec: pb.TaskSpec, request_id: int) -> None: ...

    def start_budgets(self, kernel: KernelLimits | None = None) -> None:
        super().start_budgets(kernel)
        self.ledger = Ledger()
        self._parked: dict[str, collections.deque[tuple[int, pb.TaskSpec, int]]] = {}

    def budget_exhausted(self, tenant: str) -> tuple[str, float, float] | None:
        """(budget, limit, used) when `tenant`'s cluster-wide budget for the window is used
        up (the head has leased all of it and this agent's share is spent)."""
        owner = self.policy.tenant(tenant)
        if owner is None or not owner.budgets.leased:
            return None
        now = time.monotonic()
        for budget in LEASED:
            if getattr(owner.budgets, budget) is None:
                continue
            holding = self.ledger.holding(tenant, budget, now)
            if holding.exhausted and holding.left < (1.0 if budget == "total_tasks" else 1e-9):
                return budget, holding.limit, holding.limit
        return None

    # --- cluster-wide budgets: leases from the head ---------------------------------

    def park_for_lease(self, session: Session, spec: pb.TaskSpec, request_id: int) -> bool:
        """Hold a task submission while this agent has no lease of its tenant's
        ``total_tasks`` to admit it under (and one is asked for); True if it was held."""
        if spec.kind != pb.NORMAL_TASK:
            return False
        tenant = session.tenant
        parked = self._parked.get(tenant)
        if parked is None:
            owner = self.policy.tenant(tenant)
            if owner is None or owner.budgets.total_tasks is None:
                return False
            supply = self.ledger.supply(tenant, "total_tasks", 1, time.monotonic())
            if supply is not Supply.WAIT:
                return False
            parked = self._parked[tenant] = collections.deque()
            self._ask_lease(tenant, "total_tasks")
        parked.append((session.session_id, spec, request_id))
        return True

    def lease_prefetch(self, tenant: str) -> None:
        """Ask for this window's first leases of `tenant` before its work needs them."""
        owner = self.policy.tenant(tenant)
        if owner is not None and owner.budgets.leased:
            for budget in LEASED:
                self._ask_lease(tenant, budget)

    def task_admitted(self, tenant: str) -> None:
        owner = self.policy.tenant(tenant)
        limit = owner.budgets.total_tasks if owner is not None else None
        if limit is not None:
            holding = self.ledger.use(tenant, "total_tasks", 1, time.monotonic())
            if holding.left < self.ledger.slice_of("total_tasks", limit) / 4:
                self._ask_lease(tenant, "total_tasks")

    def _ask_lease(self, tenant: str, budget: str) -> None:
        owner = self.policy.tenant(tenant)
        limit = getattr(owner.budgets, budget) if owner is not None else None
        if limit is None:
            return
        now = time.monotonic()
        want = self.ledger.want(tenant, budget, limit, now)
        if want is not None:
            used = self.ledger.holding(tenant, budget, now).used
            self._loop.create_task(self._request_lease(tenant, budget, want, used))

    async def _request_lease(self, tenant: str, budget: str, want: float, used: float) -> None:
        try:
            lease = await self.directory.lease_budget(tenant, budget, want, used)
        except Exception as error:  # the head is away: work waits, and we ask again
            log.warning("no lease of %s's %s from the head: %s", tenant, budget, error)
            self.ledger.failed(tenant, budget, time.monotonic())
            self._loop.call_later(LEASE_RETRY, self._ask_lease, tenant, budget)
            return
        self.ledger.granted(
            tenant,
            budget,
            lease.granted,
            want,
            lease.window,
            lease.seconds_left,
            lease.limit,
            time.monotonic(),
        )
        if budget == "total_tasks":
            self._release_parked(tenant)
        else:
            self._enforce_cpu(tenant)

    def _release_parked(self, tenant: str) -> None:
        parked = self._parked.pop(tenant, None)
        while parked:
            session_id, spec, request_id = parked[0]
            session = self.sessions.get(session_id)
            if session is None:
                parked.popleft()
                continue
            if self.ledger.supply(tenant, "total_tasks", 1, time.monotonic()) is Supply.WAIT:
                self._parked[tenant] = parked
                self._ask_lease(tenant, "total_tasks")
                return
            parked.popleft()
            self._submit(session, spec, request_id)

    def _charge_cpu(self) -> None:
        """Charge the CPU the monitor measured to the tenants' leases."""
        for key, seconds in self.budget_monitor.take_cpu_deltas().items():
            tenant = self._tenant_of.get(key)  # type: ignore[call-overload]
            if tenant is not None:
                self.ledger.use(tenant, "cpu_seconds", seconds, time.monotonic())
        for key in [k for k in self._tenant_of if k not in self._watches]:
            del self._tenant_of[key]
        for tenant in {w.worker.tenant for w in self._watches.values()}:
            owner = self.policy.tenant(tenant)
            if owner is not None and owner.budgets.cpu_seconds is not None:
                self._ask_lease(tenant, "cpu_seconds")
                self._enforce_cpu(tenant)

    def _enforce_cpu(self, tenant: str) -> None:
        """Stop every worker of `tenant` here once its window's CPU seconds are spent."""
        exhausted = self.budget_exhausted(tenant)
        if exhausted is None or exhausted[0] != "cpu_seconds":
            return
        _, limit, _ = exhausted
        for watch in list(self._watches.values()):
            if watch.worker.tenant == tenant:
                self._stop_tenant_worker(watch.worker, "tenant.cpu_seconds", limit, limit)
