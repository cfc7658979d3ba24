"""Unit tests of `decide_placement` under a policy (see tests/policy_examples.py).

Hypothesis properties check the central placement invariant: a decision that names a node
names one in (tenant run regions ∩ selector regions ∩ input residency), and a refusal is
final (a policy rule) exactly when that intersection is empty.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from fabric.policy import _decision as decision_module
from fabric.policy._decision import (
    POLICY_RULES,
    Decision,
    NodeView,
    Outcome,
    PlacementRequest,
    decide_placement,
)
from fabric.policy._labels import (
    NO_SELECTOR,
    LabelSelector,
    parse_selector,
)
from fabric.policy._model import (
    OPEN_POLICY,
    Policy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.policy_examples import (
    ALICE,
    ALL,
    BOB,
    POLICY,
    REGIONS,
    node,
    request,
)

# ============================================================================= _decision


def test_prefers_the_local_node_when_it_fits() -> None:
    nodes = [node("n-local", "eu-west", free=1), node("n-big", "eu-central", cpu=64)]
    decision = decide_placement(request(), nodes, POLICY, view_version=3)
    assert decision == Decision(
        Outcome.PLACE,
        "n-local",
        ("place.local-fits",),
        ("fits on the local node",),
        decision.input_digest,
        POLICY.version,
    )
    assert not decision.final


def test_otherwise_the_remote_node_with_most_free_cpus() -> None:
    nodes = [
        node("n-local", "eu-west", free=0),
        node("n-a", "eu-west", free=2),
        node("n-b", "us-east", free=3),
        node("n-c", "eu-central", free=1),
    ]
    decision = decide_placement(request(), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.PLACE,
        "n-b",
        ("place.remote-fits",),
        ("fits on n-b",),
    )


def test_remote_ties_go_to_the_greatest_node_id_whatever_the_order_of_the_view() -> None:
    nodes = [node("n-a", "eu-west"), node("n-c", "eu-west"), node("n-b", "eu-west")]
    for view in (nodes, nodes[::-1]):
        assert decide_placement(request(), view, POLICY).node_id == "n-c"


def test_the_local_node_need_not_be_in_the_view() -> None:
    decision = decide_placement(request(), [node("n-a", "us-east")], POLICY)
    assert (decision.outcome, decision.node_id) == (Outcome.PLACE, "n-a")


def test_excluded_nodes_are_not_sent_the_request_back() -> None:
    nodes = [node("n-local", "eu-west", free=0), node("n-a", "eu-west"), node("n-b", "eu-west")]
    decision = decide_placement(request(excluded_node_ids=frozenset({"n-b"})), nodes, POLICY)
    assert decision.node_id == "n-a"


def test_dead_nodes_are_never_chosen() -> None:
    nodes = [node("n-local", "eu-west", alive=False), node("n-a", "eu-west")]
    decision = decide_placement(request(), nodes, POLICY)
    assert (decision.outcome, decision.node_id) == (Outcome.PLACE, "n-a")


def test_resources_a_node_lacks_count_as_zero_and_zero_requests_as_nothing() -> None:
    nodes = [node("n-local", "eu-west"), node("n-gpu", "eu-west")]
    nodes[1] = dataclasses.replace(
        nodes[1], total={"CPU": 4, "GPU": 1}, available={"CPU": 4, "GPU": 1}
    )
    gpu = dataclasses.replace(request(), resources={"CPU": 1, "GPU": 1, "TPU": 0})
    assert decide_placement(gpu, nodes, POLICY).node_id == "n-gpu"


def test_queues_on_the_local_node_when_it_could_fit_later() -> None:
    nodes = [node("n-local", "eu-west", cpu=2, free=0), node("n-a", "eu-west", cpu=8, free=1)]
    decision = decide_placement(request(cpu=2), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.QUEUE,
        "n-local",
        ("place.wait-local",),
        ("waiting for capacity on the local node",),
    )
    assert not decision.final


def test_queues_without_a_node_when_only_a_remote_node_could_fit_later() -> None:
    nodes = [node("n-local", "eu-west", cpu=1), node("n-a", "eu-west", cpu=8, free=1)]
    decision = decide_placement(request(cpu=4), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.QUEUE,
        None,
        ("place.wait-capacity",),
        ("waiting for capacity: no node has it free now",),
    )


def test_refuses_what_no_node_could_ever_hold_but_not_finally() -> None:
    nodes = [node("n-local", "eu-west", cpu=2), node("n-a", "us-east", cpu=4)]
    decision = decide_placement(request(cpu=8), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("place.infeasible",),
        ("no node it may run on in the cluster has CPU=8",),
    )
    assert not decision.final  # a bigger node may join


def test_infeasible_under_the_open_policy_names_the_whole_cluster() -> None:
    nodes = [node("n-local", "anywhere", cpu=2)]
    decision = decide_placement(request("zoe", cpu=8), nodes)
    assert decision.reasons == ("no node in the cluster has CPU=8",)
    assert decision.policy_version == "default"


def test_refuses_when_no_node_is_in_an_allowed_region_but_not_finally() -> None:
    nodes = [node("n-local", "us-east"), node("n-a", "eu-central")]
    decision = decide_placement(
        request(selector=parse_selector({"region": "eu-west"})), nodes, POLICY
    )
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("place.no-matching-node",),
        ("no node in the cluster matching region=eu-west is in a region it may run in (eu-west)",),
    )
    assert not decision.final  # a node in eu-west may join


def test_an_empty_cluster_refuses_but_not_finally() -> None:
    decision = decide_placement(request(), [], POLICY)
    assert decision.rule_ids == ("place.no-matching-node",)
    assert decision.reasons == (
        "no node in the cluster is in a region it may run in (eu-central, eu-west, us-east)",
    )
    assert not decision.final


def test_an_unknown_tenant_is_refused_finally() -> None:
    nodes = [node("n-local", "eu-west")]
    decision = decide_placement(request("mallory"), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("tenant.unknown",),
        ("'mallory' is not a tenant of the policy",),
    )
    assert decision.final


@pytest.mark.parametrize("tenant", ["tenant/alice", "Alice", ""])
def test_identities_and_near_names_are_not_tenants(tenant: str) -> None:
    decision = decide_placement(request(tenant), [node("n-local", "eu-west")], POLICY)
    assert decision.rule_ids == ("tenant.unknown",)


def test_a_tenant_runs_only_in_its_run_regions() -> None:
    nodes = [node("n-local", "us-east"), node("n-eu", "eu-central", free=1)]
    decision = decide_placement(request("carol"), nodes, POLICY)
    assert (decision.outcome, decision.node_id) == (Outcome.PLACE, "n-eu")
    # With capacity only outside its regions, carol waits rather than spilling over.
    nodes = [node("n-local", "us-east"), node("n-eu", "eu-central", free=0)]
    decision = decide_placement(request("carol"), nodes, POLICY)
    assert (decision.outcome, decision.node_id) == (Outcome.QUEUE, None)


def test_a_selector_outside_the_tenants_run_regions_is_refused_finally() -> None:
    selector = parse_selector({"region": "us-east"})
    decision = decide_placement(
        request("carol", selector=selector), [node("n-local", "us-east")], POLICY
    )
    assert (decision.outcome, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        ("tenant.run-regions",),
        ("tenant 'carol' may run only in eu-central, eu-west; the request asks for us-east",),
    )
    assert decision.final


def test_a_selector_naming_only_undeclared_regions_is_refused_finally() -> None:
    selector = parse_selector({"region": "in(mars,venus)"})
    decision = decide_placement(request(selector=selector), [node("n-local", "eu-west")], POLICY)
    assert decision.rule_ids == ("tenant.run-regions",)
    assert decision.reasons == (
        "tenant 'alice' may run only in eu-central, eu-west, us-east; the request asks for nowhere",
    )
    assert decision.final


def test_inputs_pull_the_work_to_where_they_may_live() -> None:
    nodes = [node("n-local", "us-east"), node("n-a", "eu-central", cpu=64), node("n-b", "eu-west")]
    decision = decide_placement(request(data_regions=ALICE.data_classes["health"]), nodes, POLICY)
    assert (decision.outcome, decision.node_id) == (Outcome.PLACE, "n-b")


def test_inputs_that_may_not_live_where_the_work_may_run_refuse_it_finally() -> None:
    decision = decide_placement(
        request(
            data_regions=frozenset({"eu-west"}),
            selector=parse_selector({"region": "eu-central"}),
        ),
        [node("n-local", "eu-west"), node("n-a", "eu-central")],
        POLICY,
    )
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("residency.inputs",),
        ("its inputs may live only in eu-west, and it may run only in eu-central",),
    )
    assert decision.final


def test_inputs_that_may_live_nowhere_refuse_finally() -> None:
    decision = decide_placement(
        request("bob", data_regions=frozenset()), [node("n-local", "eu-west")], POLICY
    )
    assert decision.rule_ids == ("residency.inputs",)
    assert decision.final


def test_a_node_cannot_claim_a_region_through_its_labels() -> None:
    """The region a selector sees is the node's (certified) region, never a label of it."""
    nodes = [node("n-local", "us-east", labels={"region": "eu-west"})]
    selector = parse_selector({"region": "eu-west"})
    decision = decide_placement(request(selector=selector), nodes, POLICY)
    assert decision.rule_ids == ("place.no-matching-node",)


def test_selectors_on_other_labels_pick_among_allowed_nodes() -> None:
    nodes = [
        node("n-local", "eu-west", labels={"gpu": "t4"}),
        node("n-a", "us-east", labels={"gpu": "a100"}),
        node("n-b", "eu-west", labels={"gpu": "a100"}),
    ]
    selector = parse_selector({"gpu": "a100"})
    assert decide_placement(request(selector=selector), nodes, POLICY).node_id == "n-b"
    # Residency still applies on top of the selector.
    decision = decide_placement(
        request(selector=selector, data_regions=frozenset({"us-east"})), nodes, POLICY
    )
    assert decision.node_id == "n-a"
    # No allowed node has the label: not final, such a node may join.
    decision = decide_placement(request(selector=parse_selector({"gpu": "h100"})), nodes, POLICY)
    assert decision.rule_ids == ("place.no-matching-node",)
    assert decision.reasons == (
        "no node in the cluster matching gpu=h100 is in a region it may run in "
        "(eu-central, eu-west, us-east)",
    )
    assert not decision.final


def test_negative_selectors_under_the_open_policy_still_filter_nodes() -> None:
    nodes = [node("n-local", "eu-west"), node("n-a", "us-east", free=1)]
    selector = parse_selector({"region": "!eu-west"})
    decision = decide_placement(request("zoe", selector=selector), nodes)
    assert (decision.outcome, decision.node_id) == (Outcome.PLACE, "n-a")


def test_a_pinned_request_goes_to_its_node_even_without_free_capacity() -> None:
    nodes = [node("n-local", "eu-west"), node("n-actor", "eu-central", cpu=1, free=0)]
    decision = decide_placement(request(cpu=8, pinned_node_id="n-actor"), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.PLACE,
        "n-actor",
        ("place.pinned-node",),
        ("pinned to its node",),
    )


@pytest.mark.parametrize("alive", [False, None])
def test_a_pinned_node_that_is_gone_refuses_but_not_finally(alive: bool | None) -> None:
    nodes = [node("n-local", "eu-west")]
    if alive is not None:
        nodes.append(node("n-actor", "eu-west", alive=alive))
    decision = decide_placement(request(pinned_node_id="n-actor"), nodes, POLICY)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("place.pinned-node-gone",),
        ("node n-actor is gone",),
    )
    assert not decision.final


def test_a_pinned_node_outside_the_allowed_regions_refuses_finally() -> None:
    nodes = [node("n-local", "eu-west"), node("n-actor", "us-east")]
    decision = decide_placement(
        request(pinned_node_id="n-actor", data_regions=frozenset({"eu-west"})), nodes, POLICY
    )
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("residency.pinned-node",),
        ("node n-actor is in us-east, outside eu-west",),
    )
    assert decision.final


def test_tenant_rules_come_before_pinning() -> None:
    nodes = [node("n-actor", "eu-west")]
    decision = decide_placement(request("mallory", pinned_node_id="n-actor"), nodes, POLICY)
    assert decision.rule_ids == ("tenant.unknown",)


def test_final_is_only_for_refusals_citing_a_policy_rule() -> None:
    assert POLICY_RULES == {
        "tenant.unknown",
        "tenant.run-regions",
        "residency.inputs",
        "residency.pinned-node",
    }
    for rule in POLICY_RULES:
        assert Decision(Outcome.REFUSE, None, (rule,), ("",), "", "").final
        assert not Decision(Outcome.QUEUE, None, (rule,), ("",), "", "").final
        assert not Decision(Outcome.PLACE, "n", (rule,), ("",), "", "").final
    assert Decision(Outcome.REFUSE, None, ("place.infeasible", "tenant.unknown"), (), "", "").final
    assert not Decision(Outcome.REFUSE, None, ("place.infeasible",), (), "", "").final


def test_decisions_cite_the_version_of_the_policy_they_were_taken_under() -> None:
    nodes = [node("n-local", "eu-west")]
    assert decide_placement(request(), nodes, POLICY).policy_version == POLICY.version
    other = dataclasses.replace(POLICY, document={"name": "other"})
    assert decide_placement(request(), nodes, other).policy_version == other.version
    assert other.version != POLICY.version
    assert decide_placement(request("zoe"), nodes).policy_version == "default"


def test_decide_placement_does_not_mutate_the_view() -> None:
    nodes = [node("n-local", "eu-west", free=1), node("n-a", "eu-west")]
    before = [
        dataclasses.replace(n, total=dict(n.total), available=dict(n.available)) for n in nodes
    ]
    decide_placement(request(), nodes, POLICY)
    assert nodes == before


BASE = request(local="n-local")
BASE_DIGEST = decision_module._digest(BASE, 7, POLICY)


@pytest.mark.parametrize(
    ("changed", "view_version", "policy"),
    [
        (dataclasses.replace(BASE, tenant="bob"), 7, POLICY),
        (dataclasses.replace(BASE, task_id=b"task-2"), 7, POLICY),
        (dataclasses.replace(BASE, resources={"CPU": 2.0}), 7, POLICY),
        (dataclasses.replace(BASE, resources={"CPU": 1.0, "GPU": 1.0}), 7, POLICY),
        (dataclasses.replace(BASE, local_node_id="n-other"), 7, POLICY),
        (dataclasses.replace(BASE, pinned_node_id="n-local"), 7, POLICY),
        (dataclasses.replace(BASE, data_regions=frozenset({"eu-west"})), 7, POLICY),
        (dataclasses.replace(BASE, data_regions=frozenset()), 7, POLICY),
        (dataclasses.replace(BASE, selector=parse_selector({"region": "eu-west"})), 7, POLICY),
        (dataclasses.replace(BASE, selector=parse_selector({"region": "!eu-west"})), 7, POLICY),
        (BASE, 8, POLICY),
        (BASE, 7, dataclasses.replace(POLICY, document={"name": "other"})),
        (BASE, 7, OPEN_POLICY),
    ],
)
def test_the_input_digest_changes_with_every_input(
    changed: PlacementRequest, view_version: int, policy: Policy
) -> None:
    nodes = [node("n-local", "eu-west")]
    digest = decide_placement(changed, nodes, policy, view_version).input_digest
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest != BASE_DIGEST


def test_the_input_digest_is_a_function_of_request_view_version_and_policy() -> None:
    first = decide_placement(BASE, [node("n-local", "eu-west")], POLICY, 7)
    again = decide_placement(request(local="n-local"), [node("n-local", "eu-west")], POLICY, 7)
    assert first.input_digest == again.input_digest == BASE_DIGEST
    # The view is identified by its version: the caller bumps it whenever the view changes.
    other_view = decide_placement(BASE, [node("n-x", "us-east")], POLICY, 7)
    assert other_view.input_digest == BASE_DIGEST


def test_requests_that_differ_only_in_excluded_nodes_have_different_digests() -> None:
    nodes = [node("n-local", "eu-west", free=0), node("n-a", "eu-west")]
    plain = decide_placement(BASE, nodes, POLICY, 7)
    excluded = decide_placement(
        dataclasses.replace(BASE, excluded_node_ids=frozenset({"n-a"})), nodes, POLICY, 7
    )
    assert (plain.outcome, excluded.outcome) == (Outcome.PLACE, Outcome.QUEUE)
    assert plain.input_digest != excluded.input_digest


def test_data_regions_nowhere_and_a_region_named_nowhere_have_different_digests() -> None:
    policy = dataclasses.replace(
        POLICY,
        regions={**REGIONS, "nowhere": "EU"},
        tenants={"bob": dataclasses.replace(BOB, run_regions=ALL | {"nowhere"})},
    )
    nodes = [node("n-local", "nowhere")]
    empty = decide_placement(request("bob", data_regions=frozenset()), nodes, policy)
    named = decide_placement(request("bob", data_regions=frozenset({"nowhere"})), nodes, policy)
    assert (empty.outcome, named.outcome) == (Outcome.REFUSE, Outcome.PLACE)
    assert empty.input_digest != named.input_digest


# ----------------------------------------------------------------------------- properties

REGION_NAMES = sorted(ALL)
SELECTOR_VALUES = [*REGION_NAMES, "mars"]  # "mars" is not declared


@st.composite
def node_views(draw: st.DrawFn) -> list[NodeView]:
    ids = draw(st.lists(st.sampled_from([f"n{i}" for i in range(8)]), unique=True, max_size=8))
    views = []
    for node_id in ids:
        total = draw(st.integers(0, 4))
        views.append(
            NodeView(
                node_id=node_id,
                region=draw(st.sampled_from(REGION_NAMES)),
                total={"CPU": float(total)},
                available={"CPU": float(draw(st.integers(0, total)))},
                alive=draw(st.booleans()),
            )
        )
    return views


@st.composite
def selectors(draw: st.DrawFn) -> tuple[LabelSelector, frozenset[str]]:
    """A random region selector and, computed independently, the declared regions it allows."""
    kind = draw(st.sampled_from(["none", "eq", "ne", "in", "not-in"]))
    if kind == "none":
        return NO_SELECTOR, ALL
    if kind in ("eq", "ne"):
        values = frozenset({draw(st.sampled_from(SELECTOR_VALUES))})
        text = next(iter(values))
    else:
        values = draw(st.frozensets(st.sampled_from(SELECTOR_VALUES), min_size=1))
        text = f"in({','.join(sorted(values))})"
    negated = kind in ("ne", "not-in")
    selector = parse_selector({"region": f"!{text}" if negated else text})
    return selector, (ALL - values if negated else ALL & values)


@st.composite
def requests(draw: st.DrawFn, nodes: list[NodeView]) -> tuple[PlacementRequest, frozenset[str]]:
    """A random request by a known tenant and the regions it may run in."""
    tenant = draw(st.sampled_from(sorted(POLICY.tenants)))
    selector, selected = draw(selectors())
    data = draw(st.none() | st.frozensets(st.sampled_from(REGION_NAMES)))
    ids = [n.node_id for n in nodes] + ["n-absent"]
    run_regions = POLICY.tenants[tenant].run_regions
    assert run_regions is not None
    allowed = run_regions & selected & (ALL if data is None else data)
    req = PlacementRequest(
        tenant=tenant,
        task_id=draw(st.binary(max_size=4)),
        resources={"CPU": float(draw(st.integers(0, 5)))},
        local_node_id=draw(st.sampled_from(ids)),
        excluded_node_ids=draw(st.frozensets(st.sampled_from(ids))),
        data_regions=data,
        selector=selector,
    )
    return req, allowed


@st.composite
def placements(draw: st.DrawFn) -> tuple[PlacementRequest, list[NodeView], frozenset[str]]:
    nodes = draw(node_views())
    req, allowed = draw(requests(nodes))
    return req, nodes, allowed


@settings(max_examples=400, deadline=None)
@given(placements())
def test_property_a_chosen_node_is_always_in_an_allowed_region(
    case: tuple[PlacementRequest, list[NodeView], frozenset[str]],
) -> None:
    req, nodes, allowed = case
    decision = decide_placement(req, nodes, POLICY)
    by_id = {n.node_id: n for n in nodes}
    if decision.outcome is Outcome.REFUSE:
        assert decision.node_id is None
        return
    if decision.node_id is None:
        assert decision.outcome is Outcome.QUEUE
        return
    chosen = by_id[decision.node_id]
    assert chosen.alive
    assert chosen.region in allowed
    if decision.outcome is Outcome.PLACE and decision.node_id != req.local_node_id:
        assert decision.node_id not in req.excluded_node_ids


@settings(max_examples=400, deadline=None)
@given(placements())
def test_property_a_refusal_is_final_exactly_when_no_region_is_allowed(
    case: tuple[PlacementRequest, list[NodeView], frozenset[str]],
) -> None:
    req, nodes, allowed = case
    decision = decide_placement(req, nodes, POLICY)
    assert decision.final == (not allowed)
    if not allowed:
        assert decision.outcome is Outcome.REFUSE
        assert decision.rule_ids[0] in {"tenant.run-regions", "residency.inputs"}
        return
    candidates = [n for n in nodes if n.alive and n.region in allowed]
    if not candidates:
        assert decision.rule_ids == ("place.no-matching-node",)
    elif any(n.total["CPU"] >= req.resources["CPU"] for n in candidates):
        # Some allowed node could hold it (now or later): never refused.
        assert decision.outcome in (Outcome.PLACE, Outcome.QUEUE)
    else:
        assert decision.rule_ids == ("place.infeasible",)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_a_pinned_request_goes_only_to_its_node_and_only_where_allowed(
    data: st.DataObject,
) -> None:
    nodes = data.draw(node_views().filter(bool))
    req, allowed = data.draw(requests(nodes))
    pinned = data.draw(st.sampled_from(nodes))
    decision = decide_placement(
        dataclasses.replace(req, pinned_node_id=pinned.node_id), nodes, POLICY
    )
    if not allowed:
        assert decision.final
    elif not pinned.alive:
        assert decision.rule_ids == ("place.pinned-node-gone",)
        assert not decision.final
    elif pinned.region not in allowed:
        assert decision.rule_ids == ("residency.pinned-node",)
        assert decision.final
    else:
        assert (decision.outcome, decision.node_id) == (Outcome.PLACE, pinned.node_id)


@settings(max_examples=200, deadline=None)
@given(placements())
def test_property_an_unknown_tenant_is_always_refused_finally(
    case: tuple[PlacementRequest, list[NodeView], frozenset[str]],
) -> None:
    req, nodes, _ = case
    decision = decide_placement(dataclasses.replace(req, tenant="mallory"), nodes, POLICY)
    assert (decision.outcome, decision.rule_ids) == (Outcome.REFUSE, ("tenant.unknown",))
    assert decision.final
