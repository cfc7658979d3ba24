"""Admission against a tenant's quotas: may one more task, actor or object be admitted?"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from fabric.policy._decision import Decision, Outcome
from fabric.policy._model import Policy

RULE_ADMIT = "admit.within-quotas"
RULE_TENANT_UNKNOWN = "tenant.unknown"
QUOTA_RULES = {
    "tasks": "quota.tasks",
    "actors": "quota.actors",
    "cpus": "quota.cpus",
    "gpus": "quota.gpus",
    "memory": "quota.memory",
    "object_store": "quota.object-store",
}
_RESOURCE_OF = {"cpus": "CPU", "gpus": "GPU", "memory": "memory"}


@dataclass
class Usage:
    """What a tenant holds on one node: admitted and unfinished work, and stored bytes."""

    tasks: int = 0
    actors: int = 0
    cpus: float = 0.0
    gpus: float = 0.0
    memory: float = 0.0
    object_store: int = 0

    def add(self, resources: Mapping[str, float], sign: int = 1) -> None:
        self.cpus += sign * resources.get("CPU", 0.0)
        self.gpus += sign * resources.get("GPU", 0.0)
        self.memory += sign * resources.get("memory", 0.0)


def decide_admission(
    policy: Policy,
    tenant: str,
    usage: Usage,
    *,
    tasks: int = 0,
    actors: int = 0,
    resources: Mapping[str, float] | None = None,
    object_bytes: int = 0,
) -> Decision:
    """Admit a request that adds `tasks`, `actors`, `resources` and `object_bytes` to what
    `tenant` holds, or refuse it naming the quota it would exceed."""
    resources = resources or {}
    digest = hashlib.sha256(
        f"{tenant}\0{usage}\0{tasks}\0{actors}\0{sorted(resources.items())}\0{object_bytes}"
        f"\0{policy.version}".encode()
    ).hexdigest()

    def decide(outcome: Outcome, rule: str, reason: str) -> Decision:
        return Decision(outcome, None, (rule,), (reason,), digest, policy.version)

    owner = policy.tenant(tenant)
    if owner is None:
        return decide(Outcome.REFUSE, RULE_TENANT_UNKNOWN, f"{tenant!r} is not a tenant")
    quotas = owner.quotas
    wanted = {
        "tasks": (usage.tasks, tasks),
        "actors": (usage.actors, actors),
        "cpus": (usage.cpus, resources.get("CPU", 0.0)),
        "gpus": (usage.gpus, resources.get("GPU", 0.0)),
        "memory": (usage.memory, resources.get("memory", 0.0)),
        "object_store": (usage.object_store, object_bytes),
    }
    for name, (held, more) in wanted.items():
        limit = getattr(quotas, name)
        if limit is None or not more or held + more <= limit + 1e-9:
            continue
        return decide(
            Outcome.REFUSE,
            QUOTA_RULES[name],
            f"tenant {tenant!r} would exceed its {name.replace('_', '-')} quota on this node: "
            f"{held:g} held + {more:g} asked > {limit:g}",
        )
    return decide(Outcome.PLACE, RULE_ADMIT, "within the tenant's quotas")
