"""The facts of one dispatch, what the policy's rules say about them, and the value that
says which invariant they broke.

:class:`DispatchFacts` is what an invariant reads. :func:`rules_refusal` asks the
runtime's own decision functions (`decide_placement`, `decide_transfer`,
`admission_refusal`, `quota_allows`) whether the rules would take the dispatch the facts
describe: it is the ground truth that the Z3 encoding in ``_prove.py`` is tested against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fabric.policy._admission import Usage, admission_refusal, quota_allows
from fabric.policy._decision import (
    RULE_TENANT_UNKNOWN,
    NodeView,
    Outcome,
    PlacementRequest,
    decide_placement,
)
from fabric.policy._expr import ACTIONS
from fabric.policy._labels import NO_SELECTOR, LabelSelectorError, parse_selector
from fabric.policy._model import Policy, ResidencyLabelError, describe_regions
from fabric.policy._residency import Destination, decide_transfer

RULE_ACTION = "dispatch.action"
RULE_NODE_CLAIM = "node.region-claim"
RULE_RESIDENCY_LABEL = "residency.label"
RULE_INPUT_CLASSES = "residency.classes"
RULE_QUOTA_HELD = "quota.held"

_NODE = "n"  # the one node of the cluster view a dispatch is decided against


@dataclass(frozen=True, slots=True)
class DispatchFacts:
    """What an invariant may read about one dispatch: who, what, where and with what.

    `action` is one of "task", "actor.create", "actor.call" and "transfer" (an object's
    bytes going to a node). `input_regions` is where the request's inputs (and so its
    results) may live: the `data_regions` its placement is decided with, the residency of
    the object for a transfer. `input_classes` are the data classes of its inputs.
    `task_region` is the region the request asks for (``options(region=...)``), and
    `task_residency` its residency label, each None when it gives none. `cpus`, `gpus`
    and `memory` are the resources it asks for; `usage_*` what the tenant holds on the
    node (:class:`~fabric.policy.Usage`). The node's jurisdiction and the tenant's quotas
    come from the policy the invariants were compiled with.
    """

    tenant: str
    action: str
    node_region: str
    input_regions: frozenset[str]
    node_labels: Mapping[str, str] = field(default_factory=dict)
    task_region: str | None = None
    task_residency: str | None = None
    cpus: float = 0.0
    gpus: float = 0.0
    memory: float = 0.0
    input_classes: frozenset[str] = frozenset()
    usage_tasks: int = 0
    usage_actors: int = 0
    usage_cpus: float = 0.0
    usage_gpus: float = 0.0
    usage_memory: float = 0.0
    usage_object_store: int = 0

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus, "memory": self.memory}

    def usage(self) -> Usage:
        return Usage(
            tasks=self.usage_tasks,
            actors=self.usage_actors,
            cpus=self.usage_cpus,
            gpus=self.usage_gpus,
            memory=self.usage_memory,
            object_store=self.usage_object_store,
        )


@dataclass(frozen=True)
class Violation:
    """An invariant (or an invariant hook) that denies a dispatch, and why: `message`
    names it and the values that broke it; `values` has every field the invariant read."""

    invariant: str
    message: str
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def rule_id(self) -> str:
        """The rule a Decision cites for this denial."""
        return f"invariant.{self.invariant}"

    def __str__(self) -> str:
        return self.message


def rules_refusal(policy: Policy, facts: DispatchFacts) -> tuple[str, str] | None:
    """(rule, reason) when the policy's rules would not take the dispatch `facts` describe,
    None when they would. The node is taken to have the resources asked for: capacity is
    the cluster's state, not the policy's."""
    # (1) A declared tenant and a known action.
    tenant = policy.tenant(facts.tenant)
    if tenant is None:
        return RULE_TENANT_UNKNOWN, f"{facts.tenant!r} is not a tenant of the policy"
    if facts.action not in ACTIONS:
        return RULE_ACTION, f"{facts.action!r} is not an action ({', '.join(ACTIONS)})"
    # (2) A node may be in its region only if some node claim grants it.
    if not policy.open and not any(facts.node_region in c.regions for c in policy.nodes):
        return RULE_NODE_CLAIM, f"no node may claim region {facts.node_region!r}"
    # (3) The inputs are what their labels allow: the request's residency label bounds
    # where they may live, and so does each data class among them. (Work without a label
    # may inherit any residency from what the task that submits it read.)
    if facts.task_residency is not None:
        try:
            labelled = policy.residency(tenant, facts.task_residency)
        except ResidencyLabelError as e:
            return RULE_RESIDENCY_LABEL, str(e)
        if labelled is not None and not facts.input_regions <= labelled:
            return RULE_RESIDENCY_LABEL, (
                f"residency {facts.task_residency!r} allows only {describe_regions(labelled)}"
            )
    for label in sorted(facts.input_classes):
        regions = tenant.data_classes.get(label)
        if regions is None:
            return RULE_INPUT_CLASSES, f"tenant {tenant.name!r} has no data class {label!r}"
        if not facts.input_regions <= regions:
            return RULE_INPUT_CLASSES, (
                f"data of class {label!r} may live only in {describe_regions(regions)}"
            )
    # (4) The decision itself, by the runtime's functions.
    if facts.action == "transfer":
        decision = decide_transfer(
            policy,
            facts.tenant,
            b"",
            facts.input_regions,
            Destination.NODE,
            _NODE,
            facts.node_region,
        )
        if decision.outcome is not Outcome.ALLOW:
            return decision.rule_ids[0], decision.reasons[0]
        return None
    return _placement_refusal(policy, facts)


def _placement_refusal(policy: Policy, facts: DispatchFacts) -> tuple[str, str] | None:
    resources = facts.resources()
    try:
        selector = (
            NO_SELECTOR
            if facts.task_region is None
            else parse_selector({"region": facts.task_region})
        )
    except LabelSelectorError as e:
        return RULE_RESIDENCY_LABEL, str(e)
    request = PlacementRequest(
        tenant=facts.tenant,
        task_id=b"",
        resources=resources,
        local_node_id=_NODE,
        pinned_node_id=_NODE if facts.action == "actor.call" else None,
        data_regions=facts.input_regions,
        selector=selector,
    )
    node = NodeView(_NODE, facts.node_region, resources, resources, True, facts.node_labels)
    decision = decide_placement(request, [node], policy)
    if decision.outcome is not Outcome.PLACE:
        return decision.rule_ids[0], decision.reasons[0]
    creation = facts.action == "actor.create"
    usage = facts.usage()
    refused = admission_refusal(
        policy,
        facts.tenant,
        usage,
        tasks=1,
        actors=1 if creation else 0,
        resources=resources,
    )
    if refused is not None:
        return refused
    if facts.action == "actor.call":
        return None  # a call runs in its actor, on what the actor holds
    held = {"CPU": usage.cpus, "GPU": usage.gpus, "memory": usage.memory}
    if not quota_allows(policy, facts.tenant, held, resources.items()):
        return RULE_QUOTA_HELD, "the tenant's running work leaves no room under its quotas now"
    return None
