"""Budget decisions: admit a task or actor under its effective budget, refuse it, or stop
it. Pure functions of the request, the policy and what the agents measured."""

from __future__ import annotations

import hashlib

from fabric.policy._budgets import Limits, format_limit
from fabric.policy._decision import Decision, Outcome
from fabric.policy._model import Policy

RULE_WITHIN = "budget.within"
RULE_CEILING = "budget.ceiling"
RULE_EXHAUSTED = "budget.exhausted"
RULE_STOPPED = "budget.stopped"


def decide_budget(
    policy: Policy,
    tenant: str,
    kind: str,
    asked: Limits,
    exhausted: tuple[str, float, float] | None = None,
) -> tuple[Decision, Limits]:
    """Admit a `kind` ("task" or "actor") of `tenant` asking for `asked`, with the
    effective budget it will run under, or refuse it: it asks for more than the tenant's
    policy allows one task or actor (``budget.ceiling``), or the tenant's budget for the
    window is used up (`exhausted` = (budget, limit, used), ``budget.exhausted``)."""
    owner = policy.tenant(tenant)
    ceiling = Limits() if owner is None else getattr(owner.budgets, kind)
    digest = hashlib.sha256(
        f"{tenant}\0{kind}\0{asked!r}\0{exhausted!r}\0{policy.version}".encode()
    ).hexdigest()
    effective = asked.within(ceiling)
    beyond = asked.beyond(ceiling)
    if beyond is not None:
        key, value, most = beyond
        reason = (
            f"a {kind} of tenant {tenant!r} asks for {key} {format_limit(key, value)}, more "
            f"than the {format_limit(key, most)} its policy allows one {kind}"
        )
        return Decision(
            Outcome.REFUSE, None, (RULE_CEILING,), (reason,), digest, policy.version
        ), effective
    if exhausted is not None:
        name, limit, used = exhausted
        reason = (
            f"tenant {tenant!r} has used {format_limit(name, used)} of its "
            f"{format_limit(name, limit)} {name} budget for this window"
        )
        return Decision(
            Outcome.REFUSE, None, (RULE_EXHAUSTED,), (reason,), digest, policy.version
        ), effective
    reason = f"within the tenant's budgets ({effective.describe()})"
    return Decision(
        Outcome.ADMIT, None, (RULE_WITHIN,), (reason,), digest, policy.version
    ), effective


def decide_stop(
    policy: Policy, tenant: str, budget: str, limit: float, measured: float, what: str
) -> Decision:
    """Stop `what` (a task or an actor of `tenant`): it consumed `measured` of `budget`,
    whose limit is `limit`."""
    key = budget.rsplit(".", 1)[-1]
    digest = hashlib.sha256(
        f"{tenant}\0{budget}\0{limit!r}\0{measured!r}\0{what}\0{policy.version}".encode()
    ).hexdigest()
    reason = (
        f"{what} used {format_limit(key, measured)} of {budget}, "
        f"whose limit is {format_limit(key, limit)}"
    )
    return Decision(Outcome.REFUSE, None, (RULE_STOPPED,), (reason,), digest, policy.version)
