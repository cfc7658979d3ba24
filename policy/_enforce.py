"""What runs before each dispatch: the policy's compiled invariants, then the hooks."""

from __future__ import annotations

from collections.abc import Sequence

from fabric.policy._facts import DispatchFacts, Violation
from fabric.policy._hooks import INVARIANT_HOOKS, HookRegistry
from fabric.policy._invariants import Invariant


def check_invariants(
    invariants: Sequence[Invariant],
    facts: DispatchFacts,
    hooks: HookRegistry | None = INVARIANT_HOOKS,
) -> Violation | None:
    """The first invariant (in policy order), then the first hook, that `facts` violate;
    None when all hold. Pass ``hooks=None`` to check the invariants alone."""
    for invariant in invariants:
        if not invariant.test(facts):
            return invariant.violation(facts)
    if hooks:
        return hooks.check(facts)
    return None
