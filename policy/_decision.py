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

# Rule ids cited by decisions. They are part of the audit vocabulary: never renumber.
RULE_FITS_LOCAL = "place.local-fits"
RULE_FITS_REMOTE = "place.remote-fits"
RULE_PINNED_NODE = "place.pinned-node"
RULE_WAIT_CAPACITY = "place.wait-capacity"
RULE_WAIT_LOCAL = "place.wait-local"
RULE_INFEASIBLE = "place.infeasible"
RULE_NODE_GONE = "place.pinned-node-gone"


class Outcome(enum.Enum):
    PLACE = "place"  # run on `Decision.node_id` now
    QUEUE = "queue"  # satisfiable, no capacity now: wait (on `node_id` when it is set)
    REFUSE = "refuse"  # can never be satisfied: fail the request


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


@dataclass(frozen=True)
class PolicyBundle:
    """The policy the decision is taken under. The default bundle allows every tenant
    everywhere; the tenancy rules replace it with a loaded, versioned policy."""

    version: str = "default"


DEFAULT_BUNDLE = PolicyBundle()


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    node_id: str | None
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    input_digest: str
    policy_version: str


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items() if amount > 0)


def _digest(request: PlacementRequest, view_version: int, bundle: PolicyBundle) -> str:
    h = hashlib.sha256()
    h.update(request.tenant.encode())
    h.update(b"\0")
    h.update(request.task_id)
    for name in sorted(request.resources):
        h.update(f"\0{name}={request.resources[name]!r}".encode())
    h.update(
        f"\0{request.local_node_id}\0{request.pinned_node_id}\0{view_version}\0{bundle.version}".encode()
    )
    return h.hexdigest()


def _describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


def decide_placement(
    request: PlacementRequest,
    nodes: Sequence[NodeView],
    bundle: PolicyBundle = DEFAULT_BUNDLE,
    view_version: int = 0,
) -> Decision:
    """Where `request` runs. Prefers the local node, then the remote node with the most
    headroom; queues when some node could fit it later; refuses when none ever could."""
    digest = _digest(request, view_version, bundle)

    def decide(outcome: Outcome, node: str | None, rule: str, reason: str) -> Decision:
        return Decision(outcome, node, (rule,), (reason,), digest, bundle.version)

    if request.pinned_node_id is not None:
        pinned = next((n for n in nodes if n.node_id == request.pinned_node_id), None)
        if pinned is None or not pinned.alive:
            return decide(
                Outcome.REFUSE, None, RULE_NODE_GONE, f"node {request.pinned_node_id} is gone"
            )
        return decide(Outcome.PLACE, pinned.node_id, RULE_PINNED_NODE, "pinned to its node")

    alive = [n for n in nodes if n.alive]
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
    return decide(
        Outcome.REFUSE,
        None,
        RULE_INFEASIBLE,
        f"no node in the cluster has {_describe(request.resources)}",
    )
