"""Unit tests of `decide_bundles`, the pure placement-group decision, and of the bundle
resource names work is scheduled into a group with.

The policy: regions ``eu-west`` and ``eu-central`` (``EU``) and ``us-east`` (``US``);
``alice`` may run only in the EU, ``bob`` anywhere. Hypothesis checks the decision against
brute force on small clusters: it places exactly when some assignment fits what is free
now under the strategy, queues exactly when one would fit the totals only, and every
placement fits, keeps to the strategy and to the regions the tenant and its selector allow.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import pytest
from fabric.policy._bundles import (
    MAX_BUNDLES,
    RULE_PG_FITS,
    RULE_PG_INFEASIBLE,
    RULE_PG_SEARCH_LIMIT,
    RULE_PG_STRICT_PACK_INFEASIBLE,
    RULE_PG_STRICT_SPREAD_INFEASIBLE,
    RULE_PG_WAIT_CAPACITY,
    BundleRequest,
    Strategy,
    decide_bundles,
)
from fabric.policy._decision import RULE_NO_MATCHING_NODE, RULE_TENANT_REGIONS, NodeView, Outcome
from fabric.policy._labels import NO_SELECTOR, LabelSelector, parse_selector
from fabric.policy._model import OPEN_POLICY, Policy, TenantPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric._bundle_resources import (
    group_of,
    name_problem,
    parse,
    reserved_resources,
    task_resources,
)

EU = frozenset({"eu-west", "eu-central"})
ALL = frozenset({"eu-west", "eu-central", "us-east"})
POLICY = Policy(
    regions={"eu-west": "EU", "eu-central": "EU", "us-east": "US"},
    nodes=(),
    tenants={
        "alice": TenantPolicy("alice", frozenset({"tenant/alice"}), EU, EU),
        "bob": TenantPolicy("bob", frozenset({"tenant/bob"}), ALL, ALL),
    },
    document={"name": "pg-test"},
)
GROUP = bytes(range(16))


def node(
    node_id: str,
    region: str,
    cpu: float = 2.0,
    free: float | None = None,
    *,
    alive: bool = True,
    gpu: float = 0.0,
) -> NodeView:
    total = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    available = dict(total, CPU=cpu if free is None else free)
    return NodeView(node_id, region, total, available, alive)


THREE = [node("n-west", "eu-west"), node("n-central", "eu-central"), node("n-east", "us-east")]


def group(
    *bundles: Mapping[str, float],
    strategy: Strategy = Strategy.PACK,
    tenant: str = "bob",
    selector: LabelSelector = NO_SELECTOR,
) -> BundleRequest:
    return BundleRequest(tenant, GROUP, tuple(bundles), strategy, selector)


CPU1 = {"CPU": 1.0}
CPU2 = {"CPU": 2.0}


# ----------------------------------------------------------------------------- examples


def test_strict_pack_puts_every_bundle_on_one_node() -> None:
    decision, nodes = decide_bundles(group(CPU1, CPU1, strategy=Strategy.STRICT_PACK), THREE)
    assert decision.outcome is Outcome.PLACE
    assert decision.rule_ids == (RULE_PG_FITS,)
    assert len(set(nodes)) == 1 and decision.node_id == nodes[0]


def test_strict_spread_puts_every_bundle_on_a_node_of_its_own() -> None:
    decision, nodes = decide_bundles(
        group(CPU1, CPU1, CPU1, strategy=Strategy.STRICT_SPREAD), THREE
    )
    assert decision.outcome is Outcome.PLACE
    assert sorted(nodes) == sorted(n.node_id for n in THREE)
    assert decision.node_id is None  # several nodes: the assignment says which


def test_strict_spread_of_more_bundles_than_nodes_is_refused_naming_the_rule() -> None:
    decision, nodes = decide_bundles(
        group(CPU1, CPU1, CPU1, CPU1, strategy=Strategy.STRICT_SPREAD), THREE
    )
    assert (decision.outcome, nodes) == (Outcome.REFUSE, ())
    assert decision.rule_ids == (RULE_PG_STRICT_SPREAD_INFEASIBLE,)
    assert decision.reasons == (
        "its 4 bundles need a node each (STRICT_SPREAD); at most 3 fit on distinct nodes of "
        "the 3 nodes",
    )
    assert not decision.final  # a node joining later could change it


def test_strict_pack_bigger_than_any_node_is_refused() -> None:
    decision, _ = decide_bundles(group(CPU2, CPU1, strategy=Strategy.STRICT_PACK), THREE)
    assert decision.outcome is Outcome.REFUSE
    assert decision.rule_ids == (RULE_PG_STRICT_PACK_INFEASIBLE,)
    assert decision.reasons == ("no node has CPU=3 for all 2 bundles on one node (STRICT_PACK)",)


def test_pack_uses_one_node_when_one_holds_the_group_and_spreads_only_when_it_must() -> None:
    _, nodes = decide_bundles(group(CPU1, CPU1), THREE)
    assert len(set(nodes)) == 1
    _, nodes = decide_bundles(group(CPU2, CPU1, CPU1), THREE)
    assert len(set(nodes)) == 2


def test_spread_uses_distinct_nodes_when_it_can_and_shares_when_it_must() -> None:
    _, nodes = decide_bundles(group(CPU1, CPU1, CPU1, strategy=Strategy.SPREAD), THREE)
    assert len(set(nodes)) == 3
    decision, nodes = decide_bundles(group(CPU1, CPU1, CPU1, CPU1, strategy=Strategy.SPREAD), THREE)
    assert decision.outcome is Outcome.PLACE and len(set(nodes)) == 3


def test_a_group_that_fits_the_totals_but_not_what_is_free_waits() -> None:
    busy = [node("n-west", "eu-west", free=0.0), node("n-east", "us-east", free=1.0)]
    decision, nodes = decide_bundles(group(CPU2, strategy=Strategy.STRICT_PACK), busy)
    assert (decision.outcome, nodes) == (Outcome.QUEUE, ())
    assert decision.rule_ids == (RULE_PG_WAIT_CAPACITY,)


def test_a_bundle_no_node_could_hold_is_refused_naming_it() -> None:
    decision, _ = decide_bundles(group(CPU1, {"GPU": 1.0}), THREE)
    assert decision.rule_ids == (RULE_PG_INFEASIBLE,)
    assert decision.reasons == ("bundle 1 (GPU=1) fits on no node",)


def test_the_tenants_run_regions_bound_the_group() -> None:
    decision, nodes = decide_bundles(
        group(CPU1, CPU1, CPU1, strategy=Strategy.STRICT_SPREAD, tenant="alice"), THREE, POLICY
    )
    assert decision.rule_ids == (RULE_PG_STRICT_SPREAD_INFEASIBLE,)
    assert decision.reasons[0].endswith("of the 2 nodes it may use")
    decision, nodes = decide_bundles(
        group(CPU1, CPU1, strategy=Strategy.STRICT_SPREAD, tenant="alice"), THREE, POLICY
    )
    assert decision.outcome is Outcome.PLACE
    assert set(nodes) == {"n-west", "n-central"}


def test_a_region_the_policy_forbids_is_refused_for_good() -> None:
    selector = parse_selector({"region": "us-east"})
    decision, _ = decide_bundles(group(CPU1, tenant="alice", selector=selector), THREE, POLICY)
    assert decision.outcome is Outcome.REFUSE
    assert decision.rule_ids == (RULE_TENANT_REGIONS,)
    assert decision.final
    assert decision.policy_version == POLICY.version


def test_the_selector_narrows_the_nodes() -> None:
    selector = parse_selector({"region": "eu-central"})
    decision, nodes = decide_bundles(group(CPU1, CPU1, selector=selector), THREE, POLICY)
    assert decision.outcome is Outcome.PLACE and set(nodes) == {"n-central"}
    decision, _ = decide_bundles(
        group(CPU1, CPU1, strategy=Strategy.STRICT_SPREAD, selector=selector), THREE, POLICY
    )
    assert decision.rule_ids == (RULE_PG_STRICT_SPREAD_INFEASIBLE,)


def test_no_node_in_an_allowed_region_is_not_a_final_refusal() -> None:
    decision, _ = decide_bundles(group(CPU1, tenant="alice"), [THREE[2]], POLICY)
    assert decision.rule_ids == (RULE_NO_MATCHING_NODE,)
    assert not decision.final


def test_dead_nodes_hold_nothing() -> None:
    nodes = [node("n-west", "eu-west", alive=False), node("n-east", "us-east")]
    decision, chosen = decide_bundles(group(CPU1, CPU1, strategy=Strategy.SPREAD), nodes)
    assert decision.outcome is Outcome.PLACE and set(chosen) == {"n-east"}


def test_group_size_is_bounded() -> None:
    decision, _ = decide_bundles(group(*([CPU1] * (MAX_BUNDLES + 1))), THREE)
    assert decision.rule_ids == (RULE_PG_SEARCH_LIMIT,)
    decision, _ = decide_bundles(group(), THREE)
    assert decision.rule_ids == (RULE_PG_SEARCH_LIMIT,)


def test_many_alike_bundles_on_many_alike_nodes_are_decided_quickly() -> None:
    nodes = [node(f"n{i:02}", "eu-west", cpu=8.0) for i in range(32)]
    decision, chosen = decide_bundles(group(*([{"CPU": 3.0}] * 64)), nodes)
    assert decision.outcome is Outcome.PLACE
    assert all(chosen.count(n) <= 2 for n in set(chosen))
    # 2 bundles of 3 CPUs per 8-CPU node: 65 can never fit; the search proves it.
    decision, _ = decide_bundles(group(*([{"CPU": 3.0}] * 65)), nodes)
    assert decision.rule_ids == (RULE_PG_INFEASIBLE,)


def test_the_decision_digests_its_inputs() -> None:
    first, _ = decide_bundles(group(CPU1), THREE, POLICY, view_version=1)
    again, _ = decide_bundles(group(CPU1), THREE, POLICY, view_version=1)
    later, _ = decide_bundles(group(CPU1), THREE, POLICY, view_version=2)
    other, _ = decide_bundles(group(CPU2), THREE, POLICY, view_version=1)
    assert first == again
    assert len({first.input_digest, later.input_digest, other.input_digest}) == 3


# ----------------------------------------------------------------------------- properties

REGION = st.sampled_from(sorted(ALL))


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeView]:
    count = draw(st.integers(1, 4))
    views = []
    for i in range(count):
        cpu = float(draw(st.integers(0, 4)))
        gpu = float(draw(st.integers(0, 1)))
        free_cpu = float(draw(st.integers(0, int(cpu))))
        free_gpu = float(draw(st.integers(0, int(gpu))))
        views.append(
            NodeView(
                f"n{i}",
                draw(REGION),
                {"CPU": cpu, "GPU": gpu},
                {"CPU": free_cpu, "GPU": free_gpu},
                draw(st.booleans() | st.just(True)),
            )
        )
    return views


@st.composite
def requests(draw: st.DrawFn) -> BundleRequest:
    bundles = []
    for _ in range(draw(st.integers(1, 4))):
        cpu = draw(st.integers(0, 3))
        gpu = draw(st.integers(0, 1)) if cpu else 1
        bundles.append({"CPU": float(cpu), "GPU": float(gpu)})
    selector = draw(
        st.sampled_from(
            [
                NO_SELECTOR,
                parse_selector({"region": "eu-west"}),
                parse_selector({"region": "!eu-west"}),
            ]
        )
    )
    return group(
        *bundles,
        strategy=draw(st.sampled_from(list(Strategy))),
        tenant=draw(st.sampled_from(["alice", "bob"])),
        selector=selector,
    )


def allowed(request: BundleRequest, view: NodeView) -> bool:
    tenant = POLICY.tenants[request.tenant]
    assert tenant.run_regions is not None
    return (
        view.alive
        and view.region in tenant.run_regions
        and request.selector.matches({"region": view.region})
    )


def fits_all(
    bundles: Sequence[Mapping[str, float]],
    assignment: Sequence[int],
    capacities: Sequence[Mapping[str, float]],
) -> bool:
    used: dict[int, dict[str, float]] = {}
    for bundle, j in zip(bundles, assignment, strict=True):
        for name, amount in bundle.items():
            used.setdefault(j, {})[name] = used.get(j, {}).get(name, 0.0) + amount
    return all(
        capacities[j].get(name, 0.0) + 1e-9 >= amount
        for j, need in used.items()
        for name, amount in need.items()
    )


def keeps_strategy(strategy: Strategy, assignment: Sequence[object]) -> bool:
    if strategy is Strategy.STRICT_PACK:
        return len(set(assignment)) <= 1
    if strategy is Strategy.STRICT_SPREAD:
        return len(set(assignment)) == len(assignment)
    return True


def brute_force(request: BundleRequest, views: Sequence[NodeView], *, now: bool) -> bool:
    """Whether some assignment fits (what is free now, or the totals) under the strategy."""
    candidates = [v for v in views if allowed(request, v)]
    capacities = [v.available if now else v.total for v in candidates]
    return any(
        keeps_strategy(request.strategy, a) and fits_all(request.bundles, a, capacities)
        for a in itertools.product(range(len(candidates)), repeat=len(request.bundles))
    )


@settings(max_examples=500, deadline=None)
@given(requests(), clusters())
def test_the_decision_is_exact_on_small_clusters(
    request: BundleRequest, views: list[NodeView]
) -> None:
    decision, nodes = decide_bundles(request, views, POLICY, view_version=7)
    candidates = [v for v in views if allowed(request, v)]
    if not candidates:
        assert decision.outcome is Outcome.REFUSE and nodes == ()
        assert decision.rule_ids[0] in (RULE_NO_MATCHING_NODE, RULE_TENANT_REGIONS)
        return
    if brute_force(request, views, now=True):
        assert decision.outcome is Outcome.PLACE
    elif brute_force(request, views, now=False):
        assert decision.outcome is Outcome.QUEUE and nodes == ()
    else:
        assert decision.outcome is Outcome.REFUSE and nodes == ()
        assert not decision.final


@settings(max_examples=500, deadline=None)
@given(requests(), clusters())
def test_every_placement_fits_keeps_the_strategy_and_the_regions(
    request: BundleRequest, views: list[NodeView]
) -> None:
    decision, nodes = decide_bundles(request, views, POLICY)
    if decision.outcome is not Outcome.PLACE:
        return
    by_id = {v.node_id: v for v in views}
    assert len(nodes) == len(request.bundles)
    assert all(allowed(request, by_id[n]) for n in nodes)
    ids = sorted(by_id)
    assignment = [ids.index(n) for n in nodes]
    assert fits_all(request.bundles, assignment, [by_id[i].available for i in ids])
    assert keeps_strategy(request.strategy, nodes)
    if request.strategy is Strategy.SPREAD:
        spread = dataclasses.replace(request, strategy=Strategy.STRICT_SPREAD)
        if brute_force(spread, views, now=True):
            assert len(set(nodes)) == len(nodes)  # distinct whenever it can be
    if request.strategy is Strategy.PACK:
        packed = dataclasses.replace(request, strategy=Strategy.STRICT_PACK)
        if brute_force(packed, views, now=True):
            assert len(set(nodes)) == 1  # one node whenever one holds it all


@settings(max_examples=200, deadline=None)
@given(requests(), clusters(), st.randoms())
def test_the_decision_does_not_depend_on_the_order_of_the_nodes(
    request: BundleRequest, views: list[NodeView], rng: object
) -> None:
    shuffled = list(views)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert decide_bundles(request, views, POLICY, 3) == decide_bundles(request, shuffled, POLICY, 3)


def test_the_open_policy_allows_every_region() -> None:
    decision, nodes = decide_bundles(
        group(CPU1, CPU1, CPU1, strategy=Strategy.STRICT_SPREAD), THREE, OPEN_POLICY
    )
    assert decision.outcome is Outcome.PLACE and len(set(nodes)) == 3


# ----------------------------------------------------------------------------- names


def test_a_bundle_is_reserved_under_its_own_and_the_groups_names() -> None:
    names = reserved_resources("alice", GROUP, 1, {"CPU": 2.0, "node:n1": 1.0})
    prefix = f"pg:alice:{GROUP.hex()}:"
    assert names == {
        f"{prefix}1": 1000.0,
        f"{prefix}*": 1000.0,
        f"{prefix}1:CPU": 2.0,
        f"{prefix}*:CPU": 2.0,
        f"{prefix}1:node:n1": 1.0,
        f"{prefix}*:node:n1": 1.0,
    }
    assert all(parse(name) == ("alice", GROUP.hex(), name.split(":")[3]) for name in names)


def test_work_in_a_bundle_asks_for_its_names_and_work_in_any_bundle_for_the_groups() -> None:
    prefix = f"pg:bob:{GROUP.hex()}:"
    assert task_resources("bob", GROUP, 0, {"CPU": 1.0}) == {
        f"{prefix}0": 0.001,
        f"{prefix}0:CPU": 1.0,
        f"{prefix}*": 0.001,
        f"{prefix}*:CPU": 1.0,
    }
    assert task_resources("bob", GROUP, -1, {}) == {f"{prefix}*": 0.001}
    assert group_of(task_resources("bob", GROUP, -1, {"CPU": 1.0})) == ("bob", GROUP)
    assert group_of({"CPU": 1.0}) is None


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"CPU": 1.0, "pg:bob:" + GROUP.hex() + ":0:CPU": 1.0}, None),
        (
            {"pg:alice:" + GROUP.hex() + ":0:CPU": 1.0},
            f"resource 'pg:alice:{GROUP.hex()}:0:CPU' is not one of this tenant's placement groups",
        ),
        ({"pg:bob:nothex:0": 1.0}, "malformed placement group resource 'pg:bob:nothex:0'"),
        (
            {"pg:bob:" + GROUP.hex(): 1.0},
            f"malformed placement group resource 'pg:bob:{GROUP.hex()}'",
        ),
        (
            {"pg:bob:" + GROUP.hex() + ":x:CPU": 1.0},
            f"malformed placement group resource 'pg:bob:{GROUP.hex()}:x:CPU'",
        ),
        (
            {"pg:bob:" + GROUP.hex() + ":0": 1.0, "pg:bob:" + "ff" * 16 + ":0": 1.0},
            "a request may ask for the resources of one placement group only",
        ),
    ],
)
def test_a_request_may_name_bundles_of_its_own_tenant_only(
    resources: dict[str, float], problem: str | None
) -> None:
    assert name_problem("bob", resources) == problem
