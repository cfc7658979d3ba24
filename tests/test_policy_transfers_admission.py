"""Unit tests of the residency (transfer) and admission decisions (see tests/policy_examples.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fabric.policy._admission import QUOTA_RULES, Usage, decide_admission, quota_allows
from fabric.policy._decision import (
    Decision,
    Outcome,
)
from fabric.policy._model import (
    OPEN_POLICY,
    Policy,
    Quotas,
    Regions,
)
from fabric.policy._residency import Destination, decide_transfer

from tests.policy_examples import (
    ALICE,
    ALL,
    BOB,
    CAROL,
    EU,
    POLICY,
    with_tenant,
)

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
