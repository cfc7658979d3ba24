"""Admission against a tenant's quotas: may one more task, actor or object be admitted?

Counts (tasks admitted and unfinished, live actors, stored bytes) are checked at admission.
Resources (CPUs, GPUs, memory) are quotas on what a tenant's running work holds: a request
larger than the quota can never run and is refused at admission; otherwise it waits in the
queue until the tenant's running work leaves room (`quota_allows`, asked by the scheduler).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
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
Shape = Iterable[tuple[str, float]]


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


def admission_refusal(
    policy: Policy,
    tenant: str,
    usage: Usage,
    *,
    tasks: int = 0,
    actors: int = 0,
    resources: Mapping[str, float] | None = None,
    object_bytes: int = 0,
) -> tuple[str, str] | None:
    """(rule, reason) when the request would exceed one of `tenant`'s quotas, else None.
    The check alone, for the hot path; `decide_admission` makes it a Decision."""
    owner = policy.tenant(tenant)
    if owner is None:
        return RULE_TENANT_UNKNOWN, f"{tenant!r} is not a tenant"
    quotas = owner.quotas
    resources = resources or {}
    wanted = (
        ("tasks", usage.tasks, tasks),
        ("actors", usage.actors, actors),
        # Resources: only a request that could never fit is refused at admission.
        ("cpus", 0, resources.get("CPU", 0.0)),
        ("gpus", 0, resources.get("GPU", 0.0)),
        ("memory", 0, resources.get("memory", 0.0)),
        ("object_store", usage.object_store, object_bytes),
    )
    for name, held, more in wanted:
        limit = getattr(quotas, name)
        if limit is None or not more or held + more <= limit + 1e-9:
            continue
        return (
            QUOTA_RULES[name],
            f"tenant {tenant!r} would exceed its {name.replace('_', '-')} quota on this node: "
            f"{held:g} held + {more:g} asked > {limit:g}",
        )
    return None


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
    refused = admission_refusal(
        policy,
        tenant,
        usage,
        tasks=tasks,
        actors=actors,
        resources=resources,
        object_bytes=object_bytes,
    )
    digest = hashlib.sha256(
        f"{tenant}\0{usage.tasks}\0{usage.actors}\0{usage.cpus!r}\0{usage.gpus!r}"
        f"\0{usage.memory!r}\0{usage.object_store}\0{tasks}\0{actors}"
        f"\0{sorted(resources.items())}\0{object_bytes}\0{policy.version}".encode()
    ).hexdigest()
    if refused is not None:
        rule, reason = refused
        return Decision(Outcome.REFUSE, None, (rule,), (reason,), digest, policy.version)
    return Decision(
        Outcome.ADMIT, None, (RULE_ADMIT,), ("within the tenant's quotas",), digest, policy.version
    )


def quota_allows(policy: Policy, tenant: str, held: Mapping[str, float], more: Shape) -> bool:
    """Whether `tenant`'s running work, holding `held`, may take `more` resources now."""
    owner = policy.tenant(tenant)
    if owner is None:
        return False
    quotas = owner.quotas
    for quota, resource in _RESOURCE_OF.items():
        limit = getattr(quotas, quota)
        if limit is None:
            continue
        amount = sum(a for name, a in more if name == resource)
        if amount and held.get(resource, 0.0) + amount > limit + 1e-9:
            return False
    return True
