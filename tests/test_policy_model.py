"""Unit tests of the compiled policy model and of label selectors (see tests/policy_examples.py
for the policy they use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest
from fabric.policy._decision import (
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
from hypothesis import given
from hypothesis import strategies as st

from tests.policy_examples import (
    ALICE,
    ALL,
    BOB,
    EU,
    POLICY,
    node,
    request,
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
