"""What this agent holds of tenants' cluster-wide budgets (see `fabric._leases`).

Pure state, the caller passes the clock. For each (tenant, budget) the agent holds what the
head leased it in the current window and counts what its tenants' work used of it: tasks
as they are admitted, CPU seconds as the monitor measures them. It asks for another slice
while a quarter of a slice is still left, so that work seldom waits for the head; once the
head has nothing left, the budget is exhausted here until the window ends.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

SLICES_PER_WINDOW = 20  # a lease is this fraction of the budget (at least one task or 0.5 s)


class Supply(enum.Enum):
    AVAILABLE = "available"
    WAIT = "wait"  # nothing held, a lease is (or must be) asked for
    EXHAUSTED = "exhausted"


@dataclass
class Holding:
    held: float = 0.0  # leased to this agent in the window
    used: float = 0.0
    window: int | None = None
    expires: float = 0.0  # when the window ends, on this agent's monotonic clock
    limit: float = 0.0
    exhausted: bool = False  # the head had no more to lease in the window
    asking: bool = False  # a request is in flight

    @property
    def left(self) -> float:
        return self.held - self.used


class Ledger:
    def __init__(self) -> None:
        self.holdings: dict[tuple[str, str], Holding] = {}

    def holding(self, tenant: str, budget: str, now: float) -> Holding:
        """The holding of the window `now` is in (a new, empty one once the last ended)."""
        key = (tenant, budget)
        holding = self.holdings.get(key)
        if holding is None or (holding.window is not None and now >= holding.expires):
            asking = holding.asking if holding is not None else False
            holding = self.holdings[key] = Holding(asking=asking)
        return holding

    @staticmethod
    def slice_of(budget: str, limit: float) -> float:
        size = limit / SLICES_PER_WINDOW
        return max(1.0, math.ceil(size)) if budget == "total_tasks" else max(0.5, size)

    def want(self, tenant: str, budget: str, limit: float, now: float) -> float | None:
        """How much to ask the head for now, or None: enough is held, the budget is out,
        or a request is already in flight. Marks the request as in flight."""
        holding = self.holding(tenant, budget, now)
        size = self.slice_of(budget, limit)
        if holding.asking or holding.exhausted or holding.left >= size / 4:
            return None
        holding.asking = True
        return size

    def granted(
        self,
        tenant: str,
        budget: str,
        amount: float,
        asked: float,
        window: int,
        seconds_left: float,
        limit: float,
        now: float,
    ) -> None:
        holding = self.holding(tenant, budget, now)
        holding.asking = False
        if holding.window is not None and window != holding.window:
            # The window changed while the request was out: start the new one afresh.
            holding = self.holdings[(tenant, budget)] = Holding()
        holding.window = window
        holding.expires = now + seconds_left
        holding.limit = limit
        holding.held += amount
        if amount < asked:
            holding.exhausted = True

    def failed(self, tenant: str, budget: str, now: float) -> None:
        self.holding(tenant, budget, now).asking = False

    def supply(self, tenant: str, budget: str, amount: float, now: float) -> Supply:
        holding = self.holding(tenant, budget, now)
        if holding.left >= amount:
            return Supply.AVAILABLE
        return Supply.EXHAUSTED if holding.exhausted else Supply.WAIT

    def use(self, tenant: str, budget: str, amount: float, now: float) -> Holding:
        holding = self.holding(tenant, budget, now)
        holding.used += amount
        return holding
