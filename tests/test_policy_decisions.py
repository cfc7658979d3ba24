"""Unit tests of the pure policy modules: the compiled policy model, label selectors, and the
placement, residency (transfer) and admission decisions.

Everything here is a pure function of its arguments, so the tests build `Policy` values
directly from the dataclasses (no loader, no YAML) and compare whole decisions. The policy:

- regions ``eu-west`` and ``eu-central`` (jurisdiction ``EU``) and ``us-east`` (``US``);
- ``alice`` may run anywhere, her data lives in the EU by default, and her ``health`` data
  only in ``eu-west``; she may export nothing;
- ``bob`` is unrestricted within the declared regions and has data classes of his own
  (``ledger`` and ``payroll``) that alice must not be able to name;
- ``carol`` may run only in the EU and may export data to drivers in ``us-east``.

Hypothesis properties check the central placement invariant: a decision that names a node
names one in (tenant run regions ∩ selector regions ∩ input residency), and a refusal is
final (a policy rule) exactly when that intersection is empty.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from fabric.policy import _decision as decision_module
from fabric.policy._admission import QUOTA_RULES, Usage, decide_admission, quota_allows
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
    Constraint,
    LabelSelector,
    LabelSelectorError,
    parse_selector,
)
from fabric.policy._model import (
    OPEN_POLICY,
    NodeClaim,
    Policy,
    Quotas,
    Regions,
    ResidencyLabelError,
    TenantPolicy,
    canonical_json,
    decode_regions,
    describe_regions,
    encode_regions,
    intersect,
    open_tenant,
    policy_version,
)
from fabric.policy._residency import Destination, decide_transfer
from hypothesis import given, settings
from hypothesis import strategies as st

# ----------------------------------------------------------------------------- the policy

EU = frozenset({"eu-west", "eu-central"})
ALL = frozenset({"eu-west", "eu-central", "us-east"})
REGIONS = {"eu-west": "EU", "eu-central": "EU", "us-east": "US"}

ALICE = TenantPolicy(
    name="alice",
    identities=frozenset({"tenant/alice", "tenant/alice-ci"}),
    run_regions=ALL,
    default_residency=EU,
    data_classes={"health": frozenset({"eu-west"})},
    export_regions=frozenset(),
)
BOB = TenantPolicy(
    name="bob",
    identities=frozenset({"tenant/bob"}),
    run_regions=ALL,
    default_residency=ALL,
    data_classes={"ledger": frozenset({"us-east"}), "payroll": frozenset({"eu-central"})},
)
CAROL = TenantPolicy(
    name="carol",
    identities=frozenset({"tenant/carol"}),
    run_regions=EU,
    default_residency=EU,
    export_regions=frozenset({"us-east"}),
)
CLAIMS = (
    NodeClaim("node/eu-*", frozenset({"eu-west", "eu-central"})),
    NodeClaim("node/us-1", frozenset({"us-east"})),
    NodeClaim("node/edge-?", frozenset({"us-east"})),
    NodeClaim("node/edge-1", frozenset({"eu-west"})),
)
POLICY = Policy(
    regions=REGIONS,
    nodes=CLAIMS,
    tenants={"alice": ALICE, "bob": BOB, "carol": CAROL},
    operators=frozenset({"operator/ops"}),
    auditors=frozenset({"operator/audit"}),
    document={"name": "test"},
)


def with_tenant(tenant: TenantPolicy) -> Policy:
    """POLICY with `tenant` replacing (or joining) the tenant of its name."""
    return dataclasses.replace(POLICY, tenants={**POLICY.tenants, tenant.name: tenant})


def node(
    node_id: str,
    region: str,
    cpu: float = 4.0,
    free: float | None = None,
    *,
    alive: bool = True,
    labels: Mapping[str, str] | None = None,
) -> NodeView:
    """A node with `cpu` CPUs in total and `free` (default: all of them) available."""
    return NodeView(
        node_id=node_id,
        region=region,
        total={"CPU": cpu},
        available={"CPU": cpu if free is None else free},
        alive=alive,
        labels=dict(labels or {}),
    )


def request(
    tenant: str = "alice",
    cpu: float = 1.0,
    local: str = "n-local",
    **fields: Any,
) -> PlacementRequest:
    return PlacementRequest(
        tenant=tenant,
        task_id=b"task-1",
        resources={"CPU": cpu},
        local_node_id=local,
        **fields,
    )


# ============================================================================= _model


def test_policy_version_is_the_first_16_hex_digits_of_the_sha256_of_canonical_json() -> None:
    expected = hashlib.sha256(b'{"name":"test"}').hexdigest()[:16]
    assert policy_version({"name": "test"}) == expected
    assert POLICY.version == expected
    assert re.fullmatch(r"[0-9a-f]{16}", POLICY.version)


def test_canonical_json_sorts_keys_is_compact_and_keeps_unicode() -> None:
    document = {"b": [1, {"z": 1, "a": 2}], "a": "é"}
    assert canonical_json(document) == '{"a":"é","b":[1,{"a":2,"z":1}]}'.encode()
    # Key order in the source document does not change the version; content does.
    assert policy_version({"x": 1, "y": 2}) == policy_version({"y": 2, "x": 1})
    assert policy_version({"x": 1}) != policy_version({"x": 2})
    assert json.loads(canonical_json(document)) == document


def test_the_open_policy_is_versioned_default_whatever_its_document() -> None:
    assert OPEN_POLICY.version == "default"
    assert dataclasses.replace(OPEN_POLICY, document={"name": "x"}).version == "default"
    assert POLICY.version != "default"


def test_quotas_default_to_no_quota() -> None:
    assert dataclasses.astuple(Quotas()) == (None, None, None, None, None, None)


def test_tenant_of_maps_each_certificate_identity_to_its_tenant() -> None:
    assert POLICY.tenant_of("tenant/alice") is ALICE
    assert POLICY.tenant_of("tenant/alice-ci") is ALICE
    assert POLICY.tenant_of("tenant/bob") is BOB
    # Names are not identities: only the declared "kind/name" strings count.
    assert POLICY.tenant_of("alice") is None
    assert POLICY.tenant_of("tenant/mallory") is None
    assert POLICY.tenant_of("operator/ops") is None
    assert POLICY.tenant_of("TENANT/alice") is None


def test_tenant_by_name() -> None:
    assert POLICY.tenant("alice") is ALICE
    assert POLICY.tenant("tenant/alice") is None
    assert POLICY.tenant("mallory") is None


def test_under_the_open_policy_every_tenant_identity_is_its_own_unrestricted_tenant() -> None:
    tenant = OPEN_POLICY.tenant_of("tenant/zoe")
    assert tenant == open_tenant("zoe")
    assert tenant is not None
    assert tenant.run_regions is None and tenant.default_residency is None
    assert tenant.identities == frozenset({"tenant/zoe"})
    assert OPEN_POLICY.tenant("zoe") == open_tenant("zoe")
    # Only tenant identities act for a tenant, even under the open policy.
    assert OPEN_POLICY.tenant_of("node/zoe") is None
    assert OPEN_POLICY.tenant_of("operator/zoe") is None


def test_role_of_operators_auditors_and_everyone_else() -> None:
    assert POLICY.role("operator/ops") == "operator"
    assert POLICY.role("operator/audit") == "auditor"
    assert POLICY.role("operator/other") is None
    assert POLICY.role("tenant/alice") is None
    assert OPEN_POLICY.role("operator/anyone") == "operator"
    assert OPEN_POLICY.role("tenant/anyone") is None


def test_both_operator_and_auditor_is_an_operator() -> None:
    policy = dataclasses.replace(
        POLICY, operators=frozenset({"operator/x"}), auditors=frozenset({"operator/x"})
    )
    assert policy.role("operator/x") == "operator"


@pytest.mark.parametrize(
    ("identity", "regions"),
    [
        ("node/eu-1", EU),
        ("node/eu-", EU),
        ("node/us-1", frozenset({"us-east"})),
        ("node/us-2", frozenset()),
        # Matching claims add up.
        ("node/edge-1", frozenset({"us-east", "eu-west"})),
        ("node/edge-2", frozenset({"us-east"})),
        ("node/edge-10", frozenset()),
        # Globs are case-sensitive and anchored at both ends.
        ("node/EU-1", frozenset()),
        ("xnode/eu-1", frozenset()),
        ("tenant/eu-1", frozenset()),
        ("node/us-1x", frozenset()),
    ],
)
def test_claimable_regions(identity: str, regions: frozenset[str]) -> None:
    assert POLICY.claimable_regions(identity) == regions


def test_the_open_policy_lets_every_node_claim_any_region() -> None:
    assert OPEN_POLICY.claimable_regions("node/anything") is None


def test_jurisdiction_of_a_region() -> None:
    assert POLICY.jurisdiction("eu-west") == "EU"
    assert POLICY.jurisdiction("us-east") == "US"
    assert POLICY.jurisdiction("mars") == ""


@pytest.mark.parametrize(
    ("names", "regions"),
    [
        ("eu-west", {"eu-west"}),
        ("EU", {"eu-west", "eu-central"}),
        ("US", {"us-east"}),
        ("any", ALL),
        (["eu-west", "US"], {"eu-west", "us-east"}),
        (("EU", "eu-west"), EU),
        ([], set()),
    ],
)
def test_resolve_regions(names: str | list[str], regions: set[str]) -> None:
    assert POLICY.resolve_regions(names) == frozenset(regions)


@pytest.mark.parametrize("name", ["mars", "eu", "Eu-West", "", "ANY", "eu-west,us-east"])
def test_resolve_regions_rejects_unknown_names(name: str) -> None:
    with pytest.raises(
        ResidencyLabelError,
        match=rf"^{re.escape(repr(name))} is neither a region nor a jurisdiction of the policy$",
    ):
        POLICY.resolve_regions(["eu-west", name])


def test_resolve_regions_under_the_open_policy_is_unrestricted() -> None:
    assert OPEN_POLICY.resolve_regions("anything") is None


@pytest.mark.parametrize(
    ("tenant", "label", "regions"),
    [
        (ALICE, None, EU),
        (ALICE, "", EU),
        (ALICE, "health", {"eu-west"}),
        (ALICE, "EU", EU),
        (ALICE, "US", {"us-east"}),
        (ALICE, "us-east", {"us-east"}),
        (ALICE, "any", ALL),
        (BOB, None, ALL),
        (BOB, "ledger", {"us-east"}),
    ],
)
def test_residency(tenant: TenantPolicy, label: str | None, regions: set[str]) -> None:
    assert POLICY.residency(tenant, label) == frozenset(regions)


def test_a_data_class_shadows_a_region_of_the_same_name() -> None:
    tenant = dataclasses.replace(ALICE, data_classes={"us-east": frozenset({"eu-west"})})
    assert POLICY.residency(tenant, "us-east") == frozenset({"eu-west"})


def test_unknown_residency_names_what_the_tenant_could_have_said() -> None:
    with pytest.raises(
        ResidencyLabelError,
        match=(
            r"^unknown residency 'mars': expected a data class of tenant 'alice', a "
            r"jurisdiction, a region or 'any' \(one of: EU, US, eu-central, eu-west, health, "
            r"us-east\)$"
        ),
    ):
        POLICY.residency(ALICE, "mars")


@pytest.mark.parametrize("label", ["ledger", "payroll"])
def test_a_residency_label_naming_another_tenants_data_class_is_refused(label: str) -> None:
    """Alice cannot borrow (or even discover) bob's data classes."""
    with pytest.raises(ResidencyLabelError) as caught:
        POLICY.residency(ALICE, label)
    message = str(caught.value)
    assert message.startswith(f"unknown residency {label!r}: ")
    other = ({"ledger", "payroll"} - {label}).pop()
    assert other not in message  # the list of valid names does not leak bob's classes


def test_residency_under_the_open_policy() -> None:
    tenant = open_tenant("zoe")
    assert OPEN_POLICY.residency(tenant, None) is None
    assert OPEN_POLICY.residency(tenant, "any") is None
    with pytest.raises(
        ResidencyLabelError,
        match=(
            r"^residency 'EU' means nothing under the default policy, which declares no "
            r"regions or data classes$"
        ),
    ):
        OPEN_POLICY.residency(tenant, "EU")


@pytest.mark.parametrize(
    ("a", "b", "result"),
    [
        (None, None, None),
        (None, EU, EU),
        (EU, None, EU),
        (EU, ALL, EU),
        (EU, frozenset({"us-east"}), frozenset()),
        (frozenset(), None, frozenset()),
    ],
)
def test_intersect_treats_none_as_unrestricted(a: Regions, b: Regions, result: Regions) -> None:
    assert intersect(a, b) == result


@pytest.mark.parametrize(
    ("regions", "wire", "description"),
    [
        (None, "", "anywhere"),
        (frozenset(), "!", "nowhere"),
        (frozenset({"eu-west"}), "eu-west", "eu-west"),
        (ALL, "eu-central,eu-west,us-east", "eu-central, eu-west, us-east"),
    ],
)
def test_region_set_wire_form_and_description(
    regions: Regions, wire: str, description: str
) -> None:
    assert encode_regions(regions) == wire
    assert decode_regions(wire) == regions
    assert describe_regions(regions) == description


REGION_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,62}", fullmatch=True)


@given(st.none() | st.frozensets(REGION_NAME, max_size=6))
def test_region_sets_round_trip_through_the_wire_form(regions: Regions) -> None:
    """The empty set ("nowhere") must never come back as None ("anywhere")."""
    assert decode_regions(encode_regions(regions)) == regions


# ============================================================================= _labels


def test_no_selector_is_falsy_and_matches_everything() -> None:
    assert parse_selector(None) is NO_SELECTOR
    assert parse_selector({}) is NO_SELECTOR
    assert not NO_SELECTOR
    assert NO_SELECTOR.matches({})
    assert NO_SELECTOR.regions(ALL) is None
    assert str(NO_SELECTOR) == ""


@pytest.mark.parametrize(
    ("text", "values", "negated"),
    [
        ("eu-west", {"eu-west"}, False),
        ("!eu-west", {"eu-west"}, True),
        ("in(eu-west,us-east)", {"eu-west", "us-east"}, False),
        ("in( eu-west , us-east )", {"eu-west", "us-east"}, False),
        ("!in(eu-west,us-east)", {"eu-west", "us-east"}, True),
        ("in(eu-west)", {"eu-west"}, False),
        ("in", {"in"}, False),
        ("a.b_c-9", {"a.b_c-9"}, False),
        ("x" * 63, {"x" * 63}, False),
    ],
)
def test_parse_selector_values(text: str, values: set[str], negated: bool) -> None:
    assert parse_selector({"region": text}) == LabelSelector(
        (Constraint("region", frozenset(values), negated),)
    )


def test_parse_selector_orders_constraints_by_key() -> None:
    selector = parse_selector({"zone": "a", "region": "eu-west", "gpu": "!in(k80,t4)"})
    assert [c.key for c in selector.constraints] == ["gpu", "region", "zone"]
    assert str(selector) == "gpu=!in(k80,t4), region=eu-west, zone=a"
    assert bool(selector)


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("a", {"k": "a"}, True),
        ("a", {"k": "b"}, False),
        ("a", {}, False),
        ("!a", {"k": "a"}, False),
        ("!a", {"k": "b"}, True),
        ("!a", {}, True),  # "differs or is absent"
        ("in(a,b)", {"k": "b"}, True),
        ("in(a,b)", {"k": "c"}, False),
        ("in(a,b)", {}, False),
        ("!in(a,b)", {"k": "b"}, False),
        ("!in(a,b)", {"k": "c"}, True),
        ("!in(a,b)", {}, True),
        ("a", {"K": "a"}, False),  # keys are case-sensitive
        ("a", {"k": "A"}, False),  # and so are values
    ],
)
def test_constraint_matching(text: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector({"k": text}).matches(labels) is matches


def test_all_constraints_must_match() -> None:
    selector = parse_selector({"region": "eu-west", "gpu": "a100"})
    assert selector.matches({"region": "eu-west", "gpu": "a100", "extra": "x"})
    assert not selector.matches({"region": "eu-west", "gpu": "t4"})
    assert not selector.matches({"region": "us-east", "gpu": "a100"})


@pytest.mark.parametrize(
    ("selector", "declared", "regions"),
    [
        ({"region": "eu-west"}, ALL, {"eu-west"}),
        ({"region": "!eu-west"}, ALL, {"eu-central", "us-east"}),
        ({"region": "in(eu-west,us-east)"}, ALL, {"eu-west", "us-east"}),
        ({"region": "!in(eu-west,us-east)"}, ALL, {"eu-central"}),
        # Undeclared regions are nowhere, not a wildcard.
        ({"region": "mars"}, ALL, set()),
        ({"region": "in(mars,eu-west)"}, ALL, {"eu-west"}),
        ({"region": "!mars"}, ALL, ALL),
        # Under the open policy nothing is declared: a positive selector names its regions,
        # a negative one cannot be turned into a set and leaves regions unconstrained.
        ({"region": "in(a,b)"}, None, {"a", "b"}),
        ({"region": "!a"}, None, None),
        # Other labels do not constrain regions.
        ({"gpu": "a100"}, ALL, None),
        ({"gpu": "a100", "region": "us-east"}, ALL, {"us-east"}),
    ],
)
def test_selector_regions(
    selector: dict[str, str], declared: Regions, regions: set[str] | None
) -> None:
    expected = None if regions is None else frozenset(regions)
    assert parse_selector(selector).regions(declared) == expected


def _value_error(key: str, value: str, text: str) -> str:
    return (
        rf"^label_selector\[{re.escape(repr(key))}\]: invalid value {re.escape(repr(value))} "
        rf"in {re.escape(repr(text))} \(expected v, !v, in\(a,b\) or !in\(a,b\) over letters, "
        r"digits, '\.', '_', '-'\)$"
    )


@pytest.mark.parametrize(
    ("text", "bad_value"),
    [
        ("in(eu-west),x", "in(eu-west),x"),
        ("in(eu-west),in(us-east)", "eu-west)"),
        ("!", ""),
        ("", ""),
        ("!!eu-west", "!eu-west"),
        ("in()", ""),
        ("in(eu-west,,us-east)", ""),
        ("in(eu-west,)", ""),
        ("!in(eu-west", "in(eu-west"),
        ("eu-west,us-east", "eu-west,us-east"),
        ("eu west", "eu west"),
        ("eu-west;rm", "eu-west;rm"),
        ("eu-west\x00", "eu-west\x00"),
        ("eu-west\nregion=us-east", "eu-west\nregion=us-east"),
        ("-eu-west", "-eu-west"),
        ("eu-west-", "eu-west-"),
        ("*", "*"),
        ("é", "é"),
        ("x" * 64, "x" * 64),
    ],
)
def test_selector_values_outside_the_grammar_are_rejected(text: str, bad_value: str) -> None:
    with pytest.raises(LabelSelectorError, match=_value_error("region", bad_value, text)):
        parse_selector({"region": text})


@pytest.mark.parametrize("value", [1, 1.5, None, True, ["eu-west"], b"eu-west", {"in": "x"}])
def test_non_string_selector_values_are_rejected(value: object) -> None:
    with pytest.raises(
        LabelSelectorError,
        match=rf"^label_selector\['region'\] must be a string, got {re.escape(repr(value))}$",
    ):
        parse_selector({"region": value})


@pytest.mark.parametrize(
    "key", ["", "-region", "region-", "re gion", "région", "a=b", 7, None, "k" * 129]
)
def test_invalid_selector_keys_are_rejected(key: object) -> None:
    with pytest.raises(LabelSelectorError, match=rf"^invalid label key {re.escape(repr(key))}$"):
        parse_selector({key: "x"})


def test_selector_keys_may_be_long_and_namespaced() -> None:
    key = "example.com/" + "k" * 116
    assert len(key) == 128
    assert parse_selector({key: "x"}).constraints[0].key == key


@pytest.mark.parametrize("selector", [[("region", "eu-west")], "region=eu-west", 5])
def test_a_selector_that_is_not_a_mapping_is_rejected(selector: object) -> None:
    with pytest.raises(
        LabelSelectorError,
        match=rf"^label_selector must be a dict, got {type(selector).__name__}$",
    ):
        parse_selector(selector)


# Patterns are matched whole: "$" alone would let a trailing newline through, and a
# negated value with one ("!eu-west\n") would exclude nothing.


@pytest.mark.parametrize(
    "selector",
    [
        {"region": "eu-west\n"},
        {"region": "!eu-west\n"},
        {"region": "in(eu-west)\n"},
        {"region\n": "eu-west"},
    ],
)
def test_a_trailing_newline_is_outside_the_selector_grammar(selector: dict[str, str]) -> None:
    with pytest.raises(LabelSelectorError):
        parse_selector(selector)


def test_a_negated_selector_with_a_trailing_newline_does_not_run_work_where_it_excludes() -> None:
    try:
        selector = parse_selector({"region": "!eu-west\n"})
    except LabelSelectorError:
        return  # rejected: the safe outcome
    decision = decide_placement(
        request("bob", local="n-eu", selector=selector), [node("n-eu", "eu-west")], POLICY
    )
    assert decision.node_id != "n-eu"


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


# ============================================================================= _residency


def transfer(
    destination: Destination,
    target_region: str,
    residency: Regions = EU,
    tenant: str = "alice",
    policy: Policy = POLICY,
) -> Decision:
    return decide_transfer(
        policy, tenant, b"obj-1", residency, destination, "n-target", target_region
    )


@pytest.mark.parametrize(
    ("destination", "rule"),
    [
        (Destination.NODE, "residency.transfer-inside"),
        (Destination.STORE, "residency.store-inside"),
        (Destination.DRIVER, "residency.driver-inside"),
    ],
)
def test_transfers_inside_the_residency_are_allowed(destination: Destination, rule: str) -> None:
    decision = transfer(destination, "eu-west")
    assert decision == Decision(
        Outcome.ALLOW,
        "n-target",
        (rule,),
        ("eu-west is in eu-central, eu-west",),
        decision.input_digest,
        POLICY.version,
    )


def test_a_node_outside_the_residency_may_not_pull_a_copy() -> None:
    decision = transfer(Destination.NODE, "us-east")
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("residency.transfer-outside",),
        ("node n-target is in us-east; the object may live only in eu-central, eu-west",),
    )


def test_a_node_outside_the_residency_may_not_store_the_object() -> None:
    decision = transfer(Destination.STORE, "us-east", frozenset({"eu-west"}))
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("residency.store-outside",),
        ("this node is in us-east; an object of this residency may live only in eu-west",),
    )


def test_a_driver_outside_the_residency_may_not_read_the_object() -> None:
    decision = transfer(Destination.DRIVER, "us-east")
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        ("residency.driver-outside",),
        (
            "the driver is connected to n-target in us-east; the object may go only to "
            "eu-central, eu-west (connect to an agent there, or have the policy allow export)",
        ),
    )


def test_export_regions_let_drivers_there_read_the_tenants_data() -> None:
    decision = transfer(Destination.DRIVER, "us-east", tenant="carol")
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.ALLOW,
        "n-target",
        ("residency.driver-export",),
        ("the policy lets tenant 'carol' export data to us-east",),
    )
    # "whatever its residency": even data that may live nowhere.
    nowhere = transfer(Destination.DRIVER, "us-east", frozenset(), tenant="carol")
    assert nowhere.rule_ids == ("residency.driver-export",)


@pytest.mark.parametrize("destination", [Destination.NODE, Destination.STORE])
def test_export_regions_never_let_the_data_live_there(destination: Destination) -> None:
    decision = transfer(destination, "us-east", tenant="carol")
    assert decision.outcome is Outcome.REFUSE


def test_export_is_per_tenant() -> None:
    # carol's export region does not help alice (whose export regions are empty)...
    assert transfer(Destination.DRIVER, "us-east", tenant="alice").outcome is Outcome.REFUSE
    # ...nor an unknown tenant, nor carol under a policy that drops her export.
    assert transfer(Destination.DRIVER, "us-east", tenant="mallory").outcome is Outcome.REFUSE
    policy = with_tenant(dataclasses.replace(CAROL, export_regions=frozenset()))
    refused = transfer(Destination.DRIVER, "us-east", tenant="carol", policy=policy)
    assert refused.rule_ids == ("residency.driver-outside",)


@pytest.mark.parametrize("destination", list(Destination))
def test_unrestricted_residency_goes_anywhere(destination: Destination) -> None:
    decision = transfer(destination, "us-east", residency=None)
    assert decision.outcome is Outcome.ALLOW
    assert decision.reasons == ("us-east is in anywhere",)


@pytest.mark.parametrize("destination", list(Destination))
def test_residency_nowhere_goes_nowhere(destination: Destination) -> None:
    decision = transfer(destination, "eu-west", residency=frozenset())
    assert decision.outcome is Outcome.REFUSE


def test_a_target_without_a_region_is_outside_any_restricted_residency() -> None:
    node_decision = transfer(Destination.NODE, "")
    assert node_decision.outcome is Outcome.REFUSE
    assert node_decision.reasons == (
        "node n-target is in no region; the object may live only in eu-central, eu-west",
    )
    assert transfer(Destination.STORE, "").reasons == (
        "this node is in no region; an object of this residency may live only in "
        "eu-central, eu-west",
    )
    driver = transfer(Destination.DRIVER, "")
    assert driver.outcome is Outcome.REFUSE
    assert "connected to n-target in no region;" in driver.reasons[0]


def test_transfer_refusals_are_not_placement_policy_finals() -> None:
    for destination in Destination:
        decision = transfer(destination, "us-east")
        assert decision.outcome is Outcome.REFUSE
        assert not decision.final


def test_transfer_digests_change_with_every_input() -> None:
    base = (POLICY, "alice", b"obj-1", EU, Destination.NODE, "n-target", "eu-west")
    variants = [
        (POLICY, "bob", b"obj-1", EU, Destination.NODE, "n-target", "eu-west"),
        (POLICY, "alice", b"obj-2", EU, Destination.NODE, "n-target", "eu-west"),
        (POLICY, "alice", b"obj-1", ALL, Destination.NODE, "n-target", "eu-west"),
        (POLICY, "alice", b"obj-1", EU, Destination.STORE, "n-target", "eu-west"),
        (POLICY, "alice", b"obj-1", EU, Destination.NODE, "n-other", "eu-west"),
        (POLICY, "alice", b"obj-1", EU, Destination.NODE, "n-target", "eu-central"),
        (OPEN_POLICY, "alice", b"obj-1", EU, Destination.NODE, "n-target", "eu-west"),
    ]
    digest = decide_transfer(*base).input_digest
    assert decide_transfer(*base).input_digest == digest
    digests = {decide_transfer(*v).input_digest for v in variants}
    assert digest not in digests
    assert len(digests) == len(variants)


# ============================================================================= _admission


QUOTAS = Quotas(tasks=2, actors=1, cpus=4.0, gpus=1.0, memory=1000, object_store=5000)
LIMITED = with_tenant(dataclasses.replace(ALICE, quotas=QUOTAS))


def test_within_quotas_is_admitted() -> None:
    usage = Usage(tasks=1, actors=0, cpus=3.0, gpus=0.0, memory=500, object_store=4000)
    decision = decide_admission(
        LIMITED,
        "alice",
        usage,
        tasks=1,
        actors=1,
        resources={"CPU": 1.0, "GPU": 1.0, "memory": 500},
        object_bytes=1000,
    )
    assert decision == Decision(
        Outcome.ADMIT,
        None,
        ("admit.within-quotas",),
        ("within the tenant's quotas",),
        decision.input_digest,
        LIMITED.version,
    )


@pytest.mark.parametrize(
    ("usage", "ask", "rule", "reason"),
    [
        (
            Usage(tasks=2),
            {"tasks": 1},
            "quota.tasks",
            "tasks quota on this node: 2 held + 1 asked > 2",
        ),
        (
            Usage(actors=1),
            {"actors": 1},
            "quota.actors",
            "actors quota on this node: 1 held + 1 asked > 1",
        ),
        (
            Usage(cpus=3.5),  # held by running work: the scheduler's business, not admission's
            {"resources": {"CPU": 5.0}},
            "quota.cpus",
            "cpus quota on this node: 0 held + 5 asked > 4",
        ),
        (
            Usage(),
            {"resources": {"GPU": 2.0}},
            "quota.gpus",
            "gpus quota on this node: 0 held + 2 asked > 1",
        ),
        (
            Usage(memory=999),
            {"resources": {"memory": 1001}},
            "quota.memory",
            "memory quota on this node: 0 held + 1001 asked > 1000",
        ),
        (
            Usage(object_store=5000),
            {"object_bytes": 1},
            "quota.object-store",
            "object-store quota on this node: 5000 held + 1 asked > 5000",
        ),
    ],
)
def test_each_quota_refuses_what_would_exceed_it(
    usage: Usage, ask: dict[str, Any], rule: str, reason: str
) -> None:
    decision = decide_admission(LIMITED, "alice", usage, **ask)
    assert (decision.outcome, decision.node_id, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        None,
        (rule,),
        (f"tenant 'alice' would exceed its {reason}",),
    )
    assert rule == QUOTA_RULES[rule.removeprefix("quota.").replace("-", "_")]
    assert not decision.final  # usage goes down as work finishes


@pytest.mark.parametrize(
    ("usage", "ask"),
    [
        (Usage(tasks=1), {"tasks": 1}),
        (Usage(), {"actors": 1}),
        (Usage(cpus=3.0), {"resources": {"CPU": 1.0}}),
        (Usage(cpus=3.9), {"resources": {"CPU": 0.1}}),  # float sums are compared with slack
        (Usage(), {"resources": {"GPU": 1.0}}),
        (Usage(memory=999), {"resources": {"memory": 1}}),
        (Usage(object_store=4999), {"object_bytes": 1}),
    ],
)
def test_each_quota_admits_up_to_its_limit(usage: Usage, ask: dict[str, Any]) -> None:
    assert decide_admission(LIMITED, "alice", usage, **ask).outcome is Outcome.ADMIT


def test_asking_for_nothing_more_is_admitted_even_over_quota() -> None:
    """A quota lowered under what is held refuses more, not what is already running."""
    over = Usage(tasks=9, actors=9, cpus=9, gpus=9, memory=9999, object_store=99999)
    assert decide_admission(LIMITED, "alice", over).outcome is Outcome.ADMIT
    assert decide_admission(LIMITED, "alice", over, tasks=1).rule_ids == ("quota.tasks",)


def test_quotas_are_checked_in_a_fixed_order() -> None:
    decision = decide_admission(
        LIMITED,
        "alice",
        Usage(tasks=2, cpus=4),
        tasks=1,
        resources={"CPU": 1.0},
        object_bytes=10**9,
    )
    assert decision.rule_ids == ("quota.tasks",)
    decision = decide_admission(
        LIMITED, "alice", Usage(cpus=4), resources={"CPU": 5.0, "memory": 10**9}
    )
    assert decision.rule_ids == ("quota.cpus",)


def test_resource_quotas_cap_what_running_work_holds() -> None:
    """Admission refuses only a request larger than the quota; the scheduler asks
    `quota_allows` before it starts work, so queued work waits for room."""
    assert decide_admission(LIMITED, "alice", Usage(cpus=4), resources={"CPU": 4.0}).outcome is (
        Outcome.ADMIT
    )
    assert quota_allows(LIMITED, "alice", {"CPU": 3.0}, (("CPU", 1.0),))
    assert not quota_allows(LIMITED, "alice", {"CPU": 3.5}, (("CPU", 1.0),))
    assert not quota_allows(LIMITED, "alice", {}, (("GPU", 2.0),))
    assert quota_allows(LIMITED, "alice", {"CPU": 4.0}, (("custom", 9.0),))
    assert quota_allows(POLICY, "bob", {"CPU": 1e9}, (("CPU", 1e9),))
    assert not quota_allows(LIMITED, "mallory", {}, ())


def test_no_quota_means_unlimited() -> None:
    huge = Usage(tasks=10**6, actors=10**6, cpus=1e6, gpus=1e6, memory=1e12, object_store=10**15)
    decision = decide_admission(
        POLICY,
        "bob",
        huge,
        tasks=10**6,
        actors=10**6,
        resources={"CPU": 1e6, "GPU": 1e6, "memory": 1e12},
        object_bytes=10**15,
    )
    assert decision.rule_ids == ("admit.within-quotas",)


def test_a_zero_quota_refuses_everything_of_its_kind() -> None:
    policy = with_tenant(dataclasses.replace(BOB, quotas=Quotas(gpus=0)))
    assert decide_admission(policy, "bob", Usage(), resources={"GPU": 0.5}).rule_ids == (
        "quota.gpus",
    )
    assert decide_admission(policy, "bob", Usage(), resources={"CPU": 64}).outcome is (
        Outcome.ADMIT
    )


def test_an_unknown_tenant_is_not_admitted() -> None:
    decision = decide_admission(LIMITED, "mallory", Usage(), tasks=1)
    assert (decision.outcome, decision.rule_ids, decision.reasons) == (
        Outcome.REFUSE,
        ("tenant.unknown",),
        ("'mallory' is not a tenant",),
    )
    assert decision.final


def test_the_open_policy_admits_any_tenant_without_quota() -> None:
    decision = decide_admission(OPEN_POLICY, "zoe", Usage(), tasks=10**6)
    assert (decision.outcome, decision.policy_version) == (Outcome.ADMIT, "default")


def test_admission_digests_change_with_every_input() -> None:
    def digest(policy: Policy = LIMITED, usage: Usage | None = None, **ask: Any) -> str:
        return decide_admission(policy, "alice", usage or Usage(), **ask).input_digest

    base = digest(tasks=1)
    assert digest(tasks=1) == base
    variants = {
        digest(tasks=2),
        digest(tasks=1, actors=1),
        digest(tasks=1, resources={"CPU": 1.0}),
        digest(tasks=1, object_bytes=1),
        digest(usage=Usage(tasks=1), tasks=1),
        digest(policy=dataclasses.replace(LIMITED, document={"name": "other"}), tasks=1),
        decide_admission(LIMITED, "bob", Usage(), tasks=1).input_digest,
    }
    assert base not in variants
    assert len(variants) == 7


def test_usage_add_and_release_resources() -> None:
    usage = Usage(tasks=1, actors=2, object_store=3)
    usage.add({"CPU": 2.0, "GPU": 1.0, "memory": 100.0, "custom": 5.0})
    usage.add({"CPU": 0.5})
    assert (usage.cpus, usage.gpus, usage.memory) == (2.5, 1.0, 100.0)
    usage.add({"CPU": 2.0, "GPU": 1.0, "memory": 100.0}, sign=-1)
    assert (usage.cpus, usage.gpus, usage.memory) == (0.5, 0.0, 0.0)
    # Counts and stored bytes are not resources: add leaves them alone.
    assert (usage.tasks, usage.actors, usage.object_store) == (1, 2, 3)
