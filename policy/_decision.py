"""Placement decisions as values.

`decide_placement` never performs I/O and never mutates its inputs: the agent's scheduler
calls it, appends the returned Decision to the audit trail, then acts on it. Tenancy,
residency, budgets and invariants extend the rules here; each rule has a stable id that a
Decision cites.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fabric.policy._labels import NO_SELECTOR, LabelSelector
from fabric.policy._model import (
    OPEN_POLICY,
    Policy,
    Regions,
    describe_regions,
    encode_regions,
    intersect,
)

# Rule ids cited by decisions. They are part of the audit vocabulary: never renumber.
RULE_FITS_LOCAL = "place.local-fits"
RULE_FITS_REMOTE = "place.remote-fits"
RULE_PINNED_NODE = "place.pinned-node"
RULE_WAIT_CAPACITY = "place.wait-capacity"
RULE_WAIT_LOCAL = "place.wait-local"
RULE_INFEASIBLE = "place.infeasible"
RULE_NODE_GONE = "place.pinned-node-gone"
RULE_NO_MATCHING_NODE = "place.no-matching-node"
RULE_TENANT_UNKNOWN = "tenant.unknown"
RULE_TENANT_REGIONS = "tenant.run-regions"
RULE_RESIDENCY_INPUTS = "residency.inputs"
RULE_RESIDENCY_PINNED = "residency.pinned-node"

# Refusals that follow from the request and the policy alone: no node joining later can
# change them, so they are final at once.
POLICY_RULES = frozenset(
    {RULE_TENANT_UNKNOWN, RULE_TENANT_REGIONS, RULE_RESIDENCY_INPUTS, RULE_RESIDENCY_PINNED}
)


class Outcome(enum.Enum):
    PLACE = "place"  # run on `Decision.node_id` now
    QUEUE = "queue"  # satisfiable, no capacity now: wait (on `node_id` when it is set)
    REFUSE = "refuse"  # can never be satisfied: fail the request
    ADMIT = "admit"  # admission: within the tenant's quotas
    ALLOW = "allow"  # an object may go there (another node, a driver, this node's store)


@dataclass(frozen=True)
class NodeView:
    node_id: str
    region: str
    total: Mapping[str, float]
    available: Mapping[str, float]
    alive: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacementRequest:
    tenant: str
    task_id: bytes
    resources: Mapping[str, float]
    local_node_id: str
    pinned_node_id: str | None = None  # an actor's calls go where the actor lives
    # Nodes the request came through: sending it back would make a loop.
    excluded_node_ids: frozenset[str] = frozenset()
    # Nodes it may not go to at all, local or not (e.g. those a declared invariant forbids).
    forbidden_node_ids: frozenset[str] = frozenset()
    # Regions its inputs (and so its results) may live in; None: anywhere.
    data_regions: Regions = None
    selector: LabelSelector = NO_SELECTOR


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    node_id: str | None
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    input_digest: str
    policy_version: str

    @property
    def final(self) -> bool:
        """A refusal that no change of the cluster can undo."""
        return self.outcome is Outcome.REFUSE and any(r in POLICY_RULES for r in self.rule_ids)


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items() if amount > 0)


def _digest(request: PlacementRequest, view_version: int, policy: Policy) -> str:
    h = hashlib.sha256()
    h.update(request.tenant.encode())
    h.update(b"\0")
    h.update(request.task_id)
    for name in sorted(request.resources):
        h.update(f"\0{name}={request.resources[name]!r}".encode())
    h.update(
        f"\0{request.local_node_id}\0{request.pinned_node_id}\0{view_version}"
        f"\0{policy.version}\0{encode_regions(request.data_regions)}\0{request.selector}"
        f"\0{','.join(sorted(request.excluded_node_ids))}"
        f"\0{','.join(sorted(request.forbidden_node_ids))}".encode()
    )
    return h.hexdigest()


def _describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


def allowed_regions(request: PlacementRequest, policy: Policy) -> tuple[Regions, str | None, str]:
    """The regions `request` may run in under `policy`: (regions, refusing rule, reason).
    A rule is set when the policy alone leaves no region."""
    tenant = policy.tenant(request.tenant)
    if tenant is None:
        return frozenset(), RULE_TENANT_UNKNOWN, f"{request.tenant!r} is not a tenant of the policy"
    declared: Regions = None if policy.open else frozenset(policy.regions)
    wanted = request.selector.regions(declared)
    regions = intersect(tenant.run_regions, wanted)
    if regions is not None and not regions:
        return (
            regions,
            RULE_TENANT_REGIONS,
            f"tenant {tenant.name!r} may run only in {describe_regions(tenant.run_regions)}; "
            f"the request asks for {describe_regions(wanted)}",
        )
    narrowed = intersect(regions, request.data_regions)
    if narrowed is not None and not narrowed:
        return (
            narrowed,
            RULE_RESIDENCY_INPUTS,
            f"its inputs may live only in {describe_regions(request.data_regions)}, "
            f"and it may run only in {describe_regions(regions)}",
        )
    return narrowed, None, ""


def decide_placement(
    request: PlacementRequest,
    nodes: Sequence[NodeView],
    policy: Policy = OPEN_POLICY,
    view_version: int = 0,
) -> Decision:
    """Where `request` runs. Only nodes in regions the tenant's policy, the request's label
    selector and the residency of its inputs all allow are candidates; among them, prefers
    the local node, then the remote node with the most headroom; queues when some candidate
    could fit it later; refuses when none ever could."""
    digest = _digest(request, view_version, policy)

    def decide(outcome: Outcome, node: str | None, rule: str, reason: str) -> Decision:
        return Decision(outcome, node, (rule,), (reason,), digest, policy.version)

    regions, rule, reason = allowed_regions(request, policy)
    if rule is not None:
        return decide(Outcome.REFUSE, None, rule, reason)
    selector = request.selector

    def eligible(n: NodeView) -> bool:
        if regions is not None and n.region not in regions:
            return False
        if n.node_id in request.forbidden_node_ids:
            return False
        return not selector or selector.matches({**n.labels, "region": n.region})

    if request.pinned_node_id is not None:
        pinned = next((n for n in nodes if n.node_id == request.pinned_node_id), None)
        if pinned is None or not pinned.alive or pinned.node_id in request.forbidden_node_ids:
            return decide(
                Outcome.REFUSE, None, RULE_NODE_GONE, f"node {request.pinned_node_id} is gone"
            )
        if regions is not None and pinned.region not in regions:
            return decide(
                Outcome.REFUSE,
                None,
                RULE_RESIDENCY_PINNED,
                f"node {pinned.node_id} is in {pinned.region}, outside {describe_regions(regions)}",
            )
        return decide(Outcome.PLACE, pinned.node_id, RULE_PINNED_NODE, "pinned to its node")

    alive = [n for n in nodes if n.alive and eligible(n)]
    if not alive:
        where = describe_regions(regions)
        what = f" matching {selector}" if selector else ""
        return decide(
            Outcome.REFUSE,
            None,
            RULE_NO_MATCHING_NODE,
            f"no node in the cluster{what} is in a region it may run in ({where})",
        )
    local = next((n for n in alive if n.node_id == request.local_node_id), None)
    if local is not None and _fits(request.resources, local.available):
        return decide(Outcome.PLACE, local.node_id, RULE_FITS_LOCAL, "fits on the local node")
    remote = [
        n
        for n in alive
        if n is not local
        and n.node_id not in request.excluded_node_ids
        and _fits(request.resources, n.available)
    ]
    if remote:
        best = max(remote, key=lambda n: (n.available.get("CPU", 0.0), n.node_id))
        return decide(Outcome.PLACE, best.node_id, RULE_FITS_REMOTE, f"fits on {best.node_id}")
    if local is not None and _fits(request.resources, local.total):
        return decide(
            Outcome.QUEUE, local.node_id, RULE_WAIT_LOCAL, "waiting for capacity on the local node"
        )
    if any(_fits(request.resources, n.total) for n in alive):
        return decide(
            Outcome.QUEUE, None, RULE_WAIT_CAPACITY, "waiting for capacity: no node has it free now"
        )
    where = "" if regions is None and not selector else " it may run on"
    return decide(
        Outcome.REFUSE,
        None,
        RULE_INFEASIBLE,
        f"no node{where} in the cluster has {_describe(request.resources)}",
    )
