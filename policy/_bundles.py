"""Placement-group decisions: on which node each bundle of a group is reserved, all or none.

`decide_bundles` is pure, like `decide_placement`: the agent that coordinates a group calls
it with its cluster view, records the returned Decision, then reserves the bundles where it
says. The regions a group may use are those of a task of its tenant with its label
selector (`allowed_regions`); within them:

- PLACE: an assignment of every bundle to a node fits the nodes' free resources now and
  respects the strategy (STRICT_PACK: one node; STRICT_SPREAD: a node each; PACK: as few
  nodes as the search finds; SPREAD: distinct nodes when possible);
- QUEUE: none fits now, but one would fit the nodes' totals: wait for capacity;
- REFUSE: none could ever fit (or the policy leaves no region): fail the group.

Fitting many bundles onto nodes is bin packing. The search is exact for the group sizes
seen in practice (it stops exploring node states it has seen fail, and nodes alike count
once); one that runs out of steps refuses, saying so, rather than wait for ever.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fabric.policy._decision import (
    RULE_NO_MATCHING_NODE,
    Decision,
    NodeView,
    Outcome,
    PlacementRequest,
    allowed_regions,
)
from fabric.policy._labels import NO_SELECTOR, LabelSelector
from fabric.policy._model import OPEN_POLICY, Policy, describe_regions

# Rule ids cited by group decisions; part of the audit vocabulary, like `_decision`'s.
RULE_PG_FITS = "pg.fits"
RULE_PG_WAIT_CAPACITY = "pg.wait-capacity"
RULE_PG_INFEASIBLE = "pg.infeasible"
RULE_PG_STRICT_PACK_INFEASIBLE = "pg.strict-pack-infeasible"
RULE_PG_STRICT_SPREAD_INFEASIBLE = "pg.strict-spread-infeasible"
RULE_PG_SEARCH_LIMIT = "pg.search-limit"

# Nodes tried, over all bundles, before a search gives up.
SEARCH_STEPS = 20_000
# The most bundles a group may have (the agent refuses bigger groups as invalid; the
# search recurses once per bundle).
MAX_BUNDLES = 256
_EPSILON = 1e-9


class Strategy(enum.Enum):
    PACK = "PACK"  # as few nodes as possible, best effort
    SPREAD = "SPREAD"  # distinct nodes, best effort
    STRICT_PACK = "STRICT_PACK"  # all bundles on one node
    STRICT_SPREAD = "STRICT_SPREAD"  # every bundle on a node of its own


@dataclass(frozen=True)
class BundleRequest:
    tenant: str
    group_id: bytes
    bundles: tuple[Mapping[str, float], ...]
    strategy: Strategy = Strategy.PACK
    selector: LabelSelector = NO_SELECTOR


class _SearchExhausted(Exception):
    pass


Capacity = dict[str, float]
Assignment = tuple[int, ...]  # node index per bundle


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) + _EPSILON >= v for k, v in need.items() if v > 0)


def _describe(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


def _sum(bundles: Sequence[Mapping[str, float]]) -> Capacity:
    total: Capacity = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            if amount > 0:
                total[name] = total.get(name, 0.0) + amount
    return total


def _digest(request: BundleRequest, view_version: int, policy: Policy) -> str:
    h = hashlib.sha256()
    h.update(request.tenant.encode())
    h.update(b"\0")
    h.update(request.group_id)
    for bundle in request.bundles:
        h.update(b"\0[" + ",".join(f"{k}={bundle[k]!r}" for k in sorted(bundle)).encode())
    h.update(
        f"\0{request.strategy.value}\0{request.selector}\0{view_version}\0{policy.version}".encode()
    )
    return h.hexdigest()


class _Search:
    """Assign bundles to nodes within `capacities` (one per node, in preference order).

    Only the resources some bundle asks for matter: amounts are vectors over those names,
    so nodes alike (the same free amounts of them) count once."""

    def __init__(self, bundles: Sequence[Mapping[str, float]], capacities: list[Capacity]) -> None:
        names = sorted(_sum(bundles))
        self.bundles = [tuple(max(b.get(n, 0.0), 0.0) for n in names) for b in bundles]
        self.capacities = [tuple(c.get(n, 0.0) for n in names) for c in capacities]
        self.steps = 0
        # Biggest bundles first: they are the hardest to fit.
        self.order = sorted(
            range(len(bundles)), key=lambda i: (tuple(-a for a in self.bundles[i]), i)
        )

    @staticmethod
    def _fits(need: Sequence[float], have: Sequence[float]) -> bool:
        return all(h + _EPSILON >= n for n, h in zip(need, have, strict=True))

    def _step(self) -> None:
        self.steps += 1
        if self.steps > SEARCH_STEPS:
            raise _SearchExhausted

    def one_node(self) -> Assignment | None:
        """STRICT_PACK: the first node (in preference order) that holds the whole group."""
        need = [sum(column) for column in zip(*self.bundles, strict=True)]
        for j, capacity in enumerate(self.capacities):
            if self._fits(need, capacity):
                return (j,) * len(self.bundles)
        return None

    def distinct(self) -> tuple[Assignment | None, int]:
        """A node each (bipartite matching, exact): the assignment, or None and how many
        bundles at most fit on distinct nodes."""
        owner: dict[int, int] = {}  # node -> bundle
        fitting = [
            [j for j, c in enumerate(self.capacities) if self._fits(b, c)] for b in self.bundles
        ]

        def augment(i: int, seen: set[int]) -> bool:
            for j in fitting[i]:
                if j in seen:
                    continue
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
            return False

        matched = sum(1 for i in self.order if augment(i, set()))
        if matched < len(self.bundles):
            return None, matched
        assignment = [0] * len(self.bundles)
        for j, i in owner.items():
            assignment[i] = j
        return tuple(assignment), matched

    def _may_fit(self) -> bool:
        """Necessary for any assignment: every bundle fits some node, and the nodes hold
        the group's sum of every resource."""
        if not all(any(self._fits(b, c) for c in self.capacities) for b in self.bundles):
            return False
        need = [sum(column) for column in zip(*self.bundles, strict=True)]
        have = [sum(column) for column in zip(*self.capacities, strict=True)]
        return self._fits(need, have)

    def any(self, prefer: Callable[[list[int]], list[int]]) -> Assignment | None:
        """Any assignment (bundles may share nodes), trying nodes in the order `prefer`
        gives from the count of bundles on each node. Depth first; a state of the nodes
        that failed once (as a multiset: nodes alike are interchangeable) is not tried
        again."""
        if not self._may_fit():
            return None
        remaining = [list(c) for c in self.capacities]
        counts = [0] * len(remaining)
        assignment = [0] * len(self.bundles)
        failed: set[tuple[int, tuple[tuple[float, ...], ...]]] = set()

        def place(k: int) -> bool:
            if k == len(self.order):
                return True
            here = (k, tuple(sorted(tuple(round(a, 9) for a in c) for c in remaining)))
            if here in failed:
                return False
            i = self.order[k]
            bundle = self.bundles[i]
            tried: set[tuple[float, ...]] = set()
            for j in prefer(counts):
                self._step()
                capacity = remaining[j]
                key = tuple(round(a, 9) for a in capacity)
                if key in tried or not self._fits(bundle, capacity):
                    continue
                tried.add(key)
                for r, amount in enumerate(bundle):
                    capacity[r] -= amount
                counts[j] += 1
                assignment[i] = j
                if place(k + 1):
                    return True
                counts[j] -= 1
                for r, amount in enumerate(bundle):
                    capacity[r] += amount
            failed.add(here)
            return False

        return tuple(assignment) if place(0) else None


def _headroom_order(capacities: list[Capacity]) -> list[int]:
    # Most free CPU first (as `decide_placement` prefers), then the given (node id) order.
    return sorted(range(len(capacities)), key=lambda j: (-capacities[j].get("CPU", 0.0), j))


def _solve(
    strategy: Strategy, bundles: Sequence[Mapping[str, float]], capacities: list[Capacity]
) -> Assignment | None:
    """An assignment of `bundles` to nodes of `capacities` under `strategy`, or None when
    there is none. Raises _SearchExhausted when the search runs out of steps."""
    order = _headroom_order(capacities)
    search = _Search(bundles, [capacities[j] for j in order])

    def back(assignment: Assignment | None) -> Assignment | None:
        return None if assignment is None else tuple(order[j] for j in assignment)

    if strategy is Strategy.STRICT_PACK:
        return back(search.one_node())
    if strategy is Strategy.STRICT_SPREAD:
        return back(search.distinct()[0])
    if strategy is Strategy.SPREAD:
        spread = search.distinct()[0] if len(bundles) <= len(capacities) else None
        if spread is not None:
            return back(spread)
        # Some must share: the least used nodes first.
        return back(
            search.any(lambda counts: sorted(range(len(counts)), key=lambda j: (counts[j], j)))
        )
    # PACK: one node if one holds it all, else nodes already used first.
    whole = search.one_node()
    if whole is not None:
        return back(whole)
    return back(
        search.any(lambda counts: sorted(range(len(counts)), key=lambda j: (not counts[j], j)))
    )


def _why_never(request: BundleRequest, totals: list[Capacity], where: str) -> tuple[str, str]:
    """The rule and reason for a group no assignment could ever fit into `totals`."""
    bundles = request.bundles
    count = len(totals)
    if request.strategy is Strategy.STRICT_PACK:
        return (
            RULE_PG_STRICT_PACK_INFEASIBLE,
            f"no node{where} has {_describe(_sum(bundles))} for all {len(bundles)} bundles "
            "on one node (STRICT_PACK)",
        )
    for i, bundle in enumerate(bundles):
        if not any(_fits(bundle, t) for t in totals):
            return (
                RULE_PG_INFEASIBLE,
                f"bundle {i} ({_describe(bundle)}) fits on no node{where}",
            )
    if request.strategy is Strategy.STRICT_SPREAD:
        _, matched = _Search(bundles, totals).distinct()
        return (
            RULE_PG_STRICT_SPREAD_INFEASIBLE,
            f"its {len(bundles)} bundles need a node each (STRICT_SPREAD); at most {matched} "
            f"fit on distinct nodes of the {count} node{'s' if count != 1 else ''}{where}",
        )
    return (
        RULE_PG_INFEASIBLE,
        f"its bundles ({_describe(_sum(bundles))} in all) fit on no combination of the "
        f"{count} node{'s' if count != 1 else ''}{where}",
    )


def decide_bundles(
    request: BundleRequest,
    nodes: Sequence[NodeView],
    policy: Policy = OPEN_POLICY,
    view_version: int = 0,
) -> tuple[Decision, tuple[str, ...]]:
    """Where each bundle of `request` is reserved: (decision, node id per bundle). The
    nodes are given only with PLACE; the same inputs always give the same answer."""
    digest = _digest(request, view_version, policy)

    def decide(
        outcome: Outcome, rule: str, reason: str, assignment: tuple[str, ...] = ()
    ) -> tuple[Decision, tuple[str, ...]]:
        one = assignment[0] if assignment and len(set(assignment)) == 1 else None
        return Decision(outcome, one, (rule,), (reason,), digest, policy.version), assignment

    regions, rule, reason = allowed_regions(
        PlacementRequest(
            tenant=request.tenant,
            task_id=request.group_id,
            resources={},
            local_node_id="",
            selector=request.selector,
        ),
        policy,
    )
    if rule is not None:
        return decide(Outcome.REFUSE, rule, reason)
    selector = request.selector

    def eligible(n: NodeView) -> bool:
        if not n.alive or (regions is not None and n.region not in regions):
            return False
        return not selector or selector.matches({**n.labels, "region": n.region})

    candidates = sorted((n for n in nodes if eligible(n)), key=lambda n: n.node_id)
    what = f" matching {selector}" if selector else ""
    if not candidates:
        return decide(
            Outcome.REFUSE,
            RULE_NO_MATCHING_NODE,
            f"no node in the cluster{what} is in a region it may run in "
            f"({describe_regions(regions)})",
        )
    where = "" if regions is None and not selector else f" it may use{what}"
    strategy = request.strategy
    if not 0 < len(request.bundles) <= MAX_BUNDLES:
        return decide(
            Outcome.REFUSE,
            RULE_PG_SEARCH_LIMIT,
            f"a group has 1 to {MAX_BUNDLES} bundles, not {len(request.bundles)}",
        )
    totals = [dict(n.total) for n in candidates]
    try:
        ever = _solve(strategy, request.bundles, totals)
    except _SearchExhausted:
        return decide(
            Outcome.REFUSE,
            RULE_PG_SEARCH_LIMIT,
            f"no assignment of its {len(request.bundles)} bundles to nodes was found within "
            f"{SEARCH_STEPS} steps; use fewer or more uniform bundles",
        )
    if ever is None:
        rule, reason = _why_never(request, totals, where)
        return decide(Outcome.REFUSE, rule, reason)
    try:
        now = _solve(strategy, request.bundles, [dict(n.available) for n in candidates])
    except _SearchExhausted:
        now = None
    if now is None:
        return decide(
            Outcome.QUEUE,
            RULE_PG_WAIT_CAPACITY,
            "waiting for capacity: the group fits the nodes' totals but not what is free now",
        )
    chosen = tuple(candidates[j].node_id for j in now)
    placed = ", ".join(f"{i}: {node}" for i, node in enumerate(chosen))
    return decide(Outcome.PLACE, RULE_PG_FITS, f"bundles reserved on nodes ({placed})", chosen)
