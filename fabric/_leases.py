"""Budget leases: the head's share-out of tenants' cluster-wide budgets.

A tenant's ``cpu_seconds`` and ``total_tasks`` budgets hold per window across the whole
cluster. No agent asks the head per task: each holds a slice (a lease) and asks for another
when it runs low. The head leases at most the budget in each window, so however the slices
are spread, the agents together never hold more than the budget. Windows are aligned to the
epoch (window ``k`` runs from ``k * window`` seconds), so every agent agrees on them;
whatever is unused when a window ends is gone with it.

The caller passes the clock. Each grant is written through the head's store before it is
returned, and a head starts from what its store holds, so a head restart never leases more
than the budget in a window either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabric.policy import Policy

if TYPE_CHECKING:  # agents import this module for LEASED; they need no store
    from fabric._head_store import HeadStore

LEASED = ("cpu_seconds", "total_tasks")


@dataclass(frozen=True)
class Grant:
    granted: float
    window: int
    window_seconds: float
    seconds_left: float
    limit: float
    leased: float  # leased to all agents in the window, this grant included


class UnknownBudgetError(ValueError):
    """A lease of something that is no cluster-wide budget of a tenant of the policy."""


class BudgetLeases:
    """What was leased of each budget in its current window; kept in `store` when given
    (the head's), in memory only otherwise."""

    def __init__(self, store: HeadStore | None = None) -> None:
        self._store = store
        # (tenant, budget) -> (window index, amount leased in it)
        self._leased: dict[tuple[str, str], tuple[int, float]] = (
            store.leases() if store is not None else {}
        )

    def grant(self, policy: Policy, tenant: str, budget: str, want: float, now: float) -> Grant:
        """Lease up to `want` more of `tenant`'s `budget` for the window `now` falls in:
        whatever is left of it, perhaps nothing."""
        if budget not in LEASED:
            raise UnknownBudgetError(f"{budget!r} is no cluster-wide budget ({', '.join(LEASED)})")
        owner = policy.tenant(tenant)
        if owner is None:
            raise UnknownBudgetError(f"{tenant!r} is not a tenant of policy {policy.version}")
        limit = getattr(owner.budgets, budget)
        length = owner.budgets.window
        window = math.floor(now / length)
        left = (window + 1) * length - now
        if limit is None:
            return Grant(0.0, window, length, left, 0.0, 0.0)
        if not math.isfinite(want) or want < 0:
            raise UnknownBudgetError(f"cannot lease {want!r}")
        held_window, leased = self._leased.get((tenant, budget), (window, 0.0))
        if held_window != window:
            leased = 0.0
        granted = max(0.0, min(want, limit - leased))
        if budget == "total_tasks":
            granted = float(math.floor(granted))
        leased += granted
        if granted and self._store is not None:
            # Durable before the grant leaves: a restarted head counts it.
            self._store.save_lease(tenant, budget, window, leased)
        self._leased[(tenant, budget)] = (window, leased)
        return Grant(granted, window, length, left, float(limit), leased)
