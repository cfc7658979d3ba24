"""Proofs about policies: the Z3 encoding agrees with the runtime on generated dispatches,
`prove_policy` proves what holds and gives counterexamples the runtime confirms, finds
what the rules make dead, `prove_narrower` works both ways, and the two commands exit
as they say."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import z3
from fabric.cli.main import main
from fabric.policy import (
    DispatchFacts,
    Policy,
    ProofError,
    check_invariants,
    load_policy,
    load_policy_text,
    prove_narrower,
    prove_policy,
    rules_refusal,
)
from fabric.policy._encode import Point, PolicyEncoding, Universe
from fabric.policy._expr import ACTIONS, BOOL, Expr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.invariant_examples import BASE, NO_INVARIANTS, policy_with, with_invariants

ROOT = Path(__file__).resolve().parent.parent
THREE_TENANTS = ROOT / "configs" / "policy-three-tenants.yaml"

HEALTH_IN_EU = '"health" in inputs.classes implies node.jurisdiction == "EU"'

# ============================================================================= the encoding

# Four jurisdictions, a region no node may claim (us-west), quotas of every kind, data
# classes that overlap and one that can go nowhere the tenant runs; invariants that use
# every field and operator of the language.
RICH = """\
apiVersion: fabric/v1
kind: Policy
regions:
  eu-west: {jurisdiction: EU}
  eu-central: {jurisdiction: EU}
  us-east: {jurisdiction: US}
  us-west: {jurisdiction: US}
  ap-south: {jurisdiction: IN}
nodes:
  - {identity: "node/eu-*", regions: [EU]}
  - {identity: "node/us-east-?", regions: [us-east]}
  - {identity: "node/ap-*", regions: [ap-south]}
tenants:
  clinic:
    identities: [tenant/clinic]
    placement: {allow: [EU]}
    residency:
      default: EU
      classes: {health: [eu-west], lab: [EU, us-east], archive: [us-west]}
    quotas: {tasks: 3, actors: 1, cpus: 4, gpus: 0, memory: 1024}
  retail:
    identities: [tenant/retail]
    residency:
      classes: {payments: [US], lab: [ap-south]}
    quotas: {cpus: 2.5, object_store: 10}
  research:
    identities: [tenant/research]
    placement: {allow: [US, IN]}
invariants:
  - name: health-eu
    description: d
    rule: '"health" in inputs.classes implies node.jurisdiction == "EU"'
  - name: confidential
    description: d
    rule: '"health" in inputs.classes implies node.labels["confidential"] == "true"'
  - name: labels-differ
    description: d
    rule: 'node.labels["zone"] != node.labels["confidential"]'
  - name: zone-known
    description: d
    rule: 'node.labels["zone"] in {"a", "b"} or action == "transfer"'
  - name: cpu-room
    description: d
    when: 'action in {"task", "actor.create"}'
    rule: usage.cpus + task.cpus <= quota.cpus
  - {name: tasks-below, description: d, rule: usage.tasks < quota.tasks}
  - {name: actors, description: d, rule: 'usage.actors + 1 >= quota.actors or quota.actors > 100'}
  - {name: unlimited-equal, description: d, rule: quota.gpus == quota.memory}
  - {name: store, description: d, rule: usage.object_store + 1 <= quota.object_store}
  - name: gpus
    description: d
    rule: 'task.gpus + usage.gpus > 0.5 or task.memory >= usage.memory'
  - {name: asked-region, description: d, rule: task.region == node.region}
  - name: not-asked
    description: d
    rule: 'task.region != "us-west" and task.region not in {"ap-south"}'
  - name: residency
    description: d
    rule: 'task.residency == "lab" or task.residency in {"EU", "any"}'
  - {name: inputs-sub, description: d, rule: 'inputs.regions subset {"eu-west", "us-east"}'}
  - {name: inputs-eq, description: d, rule: 'inputs.regions == {"eu-west"} or inputs.classes == {}'}
  - {name: juris, description: d, rule: 'inputs.jurisdictions contains node.jurisdiction'}
  - {name: juris-set, description: d, rule: 'not (inputs.jurisdictions subset {"EU", "IN"})'}
  - name: guarded
    description: d
    when: 'tenant in {"retail", "research"} and not (action == "transfer")'
    rule: 'node.region in inputs.regions => (node.jurisdiction != "EU") == true'
  - {name: lab, description: d, rule: 'inputs.classes contains "lab" implies tenant != "retail"'}
"""


@dataclasses.dataclass
class Encoded:
    """A policy's formulas for each tenant: whether the rules allow a dispatch, then
    whether each invariant holds, packed as the bits of one integer term so that a
    single substitution evaluates them all at a concrete dispatch."""

    policy: Policy
    point: Point
    packed: dict[str, Any]

    def at(self, facts: DispatchFacts) -> tuple[bool, list[bool]]:
        """(the rules allow `facts`, [each invariant holds]) by the formulas."""
        value = z3.simplify(
            z3.substitute(self.packed[facts.tenant], *self.point.substitution(facts))
        )
        assert z3.is_int_value(value), value
        bits = value.as_long()
        return bool(bits & 1), [
            bool(bits >> (i + 1) & 1) for i in range(len(self.policy.invariants))
        ]


@cache
def encoded(text: str) -> Encoded:
    policy = load_policy_text(text)
    point = Point(Universe.of(policy))
    encoding = PolicyEncoding(policy, point)
    packed = {}
    for tenant in policy.tenants:
        formulas = [
            encoding.allowed(tenant),
            *(encoding.holds(i, tenant) for i in policy.invariants),
        ]
        packed[tenant] = z3.Sum([z3.If(f, 2**i, 0) for i, f in enumerate(formulas)])
    return Encoded(policy, point, packed)


def dispatches(policy: Policy) -> st.SearchStrategy[DispatchFacts]:
    """Dispatches over the policy's names, biased toward ones its rules might allow."""
    universe = Universe.of(policy)
    regions = st.sampled_from(universe.regions)
    amounts = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 2.5, 4.0, 1024.0, 2000.0])
    counts = st.sampled_from([0, 0, 1, 2, 3, 9, 10, 11])

    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(st.none(), strategy)

    return st.builds(
        DispatchFacts,
        tenant=st.sampled_from(universe.tenants),
        action=st.sampled_from(ACTIONS),
        node_region=regions,
        input_regions=st.frozensets(regions, min_size=1),
        node_labels=st.dictionaries(
            st.sampled_from(["confidential", "zone"]), st.sampled_from(["true", "a", "b"])
        ),
        task_region=maybe(regions),
        task_residency=maybe(st.sampled_from(universe.labels)),
        cpus=amounts,
        gpus=amounts,
        memory=amounts,
        input_classes=st.one_of(
            st.just(frozenset()), st.frozensets(st.sampled_from(universe.classes))
        ),
        usage_tasks=counts,
        usage_actors=counts,
        usage_cpus=amounts,
        usage_gpus=amounts,
        usage_memory=amounts,
        usage_object_store=counts,
    )


def agree(text: str, outcomes: list[bool]) -> Callable[[DispatchFacts], None]:
    """A check that the encoding of `text` and the runtime agree on a dispatch, rule by
    rule and invariant by invariant; records whether the rules allowed it."""
    enc = encoded(text)

    def check(facts: DispatchFacts) -> None:
        refusal = rules_refusal(enc.policy, facts)
        allowed, holds = enc.at(facts)
        assert allowed == (refusal is None), (facts, refusal)
        for invariant, formula_holds in zip(enc.policy.invariants, holds, strict=True):
            assert formula_holds == invariant.holds(facts), (invariant.name, facts)
        outcomes.append(refusal is None)

    return check


@pytest.mark.parametrize(
    ("text", "examples"),
    [(RICH, 2500), (THREE_TENANTS.read_text(), 500)],
    ids=["rich", "three-tenants"],
)
def test_the_encoding_agrees_with_the_runtime(text: str, examples: int) -> None:
    outcomes: list[bool] = []
    check = agree(text, outcomes)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(dispatches(encoded(text).policy))
    def run(facts: DispatchFacts) -> None:
        check(facts)

    run()
    # Both sides of every rule were exercised, not only refusals.
    assert 0.05 * len(outcomes) < sum(outcomes) < 0.95 * len(outcomes)


@pytest.mark.parametrize(
    "facts",
    [
        # At the quota, and just past the runtime's tolerance of 1e-9 above it.
        DispatchFacts("clinic", "task", "eu-west", frozenset({"eu-west"}), cpus=4.0),
        DispatchFacts("clinic", "task", "eu-west", frozenset({"eu-west"}), cpus=4.0 + 1e-6),
        DispatchFacts("clinic", "task", "eu-west", frozenset({"eu-west"}), usage_tasks=2),
        DispatchFacts("clinic", "task", "eu-west", frozenset({"eu-west"}), usage_tasks=3),
        DispatchFacts("clinic", "actor.create", "eu-west", frozenset({"eu-west"}), usage_actors=1),
        DispatchFacts("clinic", "actor.call", "eu-west", frozenset({"eu-west"}), usage_actors=1),
        DispatchFacts("clinic", "actor.call", "us-east", frozenset({"us-east"})),
        DispatchFacts("retail", "transfer", "us-west", frozenset({"us-west"})),  # unclaimed
        DispatchFacts(
            "retail", "transfer", "us-east", frozenset({"us-east"}), task_residency="lab"
        ),
        DispatchFacts("retail", "task", "ap-south", frozenset({"ap-south"}), task_residency="lab"),
        DispatchFacts(
            "retail", "task", "ap-south", frozenset({"ap-south"}), task_residency="health"
        ),
        DispatchFacts(
            "research", "task", "ap-south", frozenset({"ap-south"}), task_region="us-east"
        ),
    ],
)
def test_the_encoding_agrees_at_the_edges(facts: DispatchFacts) -> None:
    agree(RICH, [])(facts)


# ============================================================================= prove_policy


def test_a_correct_policy_is_proved() -> None:
    proof = prove_policy(policy_with(HEALTH_IN_EU))
    assert proof.proved
    assert [(r.invariant, r.proved, r.counterexample) for r in proof.invariants] == [
        ("i0", True, None)
    ]
    assert proof.observations == ()


def test_the_shipped_three_tenant_policy_is_proved() -> None:
    policy = load_policy(THREE_TENANTS)
    assert len(policy.invariants) == 4
    proof = prove_policy(policy)
    assert proof.proved and proof.observations == ()


def confirmed(policy: Policy, name: str) -> DispatchFacts:
    """The counterexample to invariant `name`, after checking that the runtime's rules
    allow it and its evaluator denies it."""
    (result,) = [r for r in prove_policy(policy).invariants if r.invariant == name]
    assert not result.proved and result.counterexample is not None
    facts = result.counterexample.facts
    assert rules_refusal(policy, facts) is None
    violation = check_invariants(policy.invariants, facts, hooks=None)
    assert violation is not None and violation.invariant == name
    assert violation == result.violation
    return facts


def test_a_broken_policy_gets_a_counterexample_the_runtime_confirms() -> None:
    # Health data may also live in us-east: the rules let it go there.
    broken = BASE.replace("classes: {health: [eu-west]}", "classes: {health: [eu-west, us-east]}")
    policy = load_policy_text(with_invariants(HEALTH_IN_EU, base=broken))
    facts = confirmed(policy, "i0")
    assert facts.tenant == "clinic" and "health" in facts.input_classes
    assert facts.node_region == "us-east"
    # Only a transfer can take it there: the clinic runs only in the EU.
    assert facts.action == "transfer"


def test_an_invariant_on_node_labels_is_enforced_but_not_implied_by_the_rules() -> None:
    rule = HEALTH_IN_EU + ' and node.labels["confidential"] == "true"'
    policy = policy_with(rule)
    facts = confirmed(policy, "i0")
    assert facts.node_labels.get("confidential") != "true"
    (result,) = prove_policy(policy).invariants
    assert result.counterexample is not None
    assert result.counterexample.node in ("node/eu-1",)
    lines = result.counterexample.lines()
    assert lines[0] == f"tenant clinic, action {facts.action}"
    assert lines[1].startswith("node in region eu-west (node/eu-1), labels {")


def test_a_quota_invariant_finds_the_runtime_tolerance() -> None:
    # The runtime admits up to 1e-9 above a quota; a proof does not round that away.
    when = 'tenant == "clinic" and action == "task" and task.cpus > 0'
    policy = policy_with(("usage.cpus + task.cpus <= quota.cpus", when))
    facts = confirmed(policy, "i0")
    assert 4 < facts.usage_cpus + facts.cpus <= 4 + 1e-9


def test_a_tenant_that_can_never_run() -> None:
    text = NO_INVARIANTS.replace(
        "tenants:\n",
        "tenants:\n  ghost:\n    identities: [tenant/ghost]\n    placement: {allow: [us-east]}\n"
        "    residency: {default: us-east}\n    quotas: {tasks: 0}\n"
        "  nowhere:\n    identities: [tenant/nowhere]\n    placement: {allow: [eu-west]}\n",
    ).replace(
        '  - {identity: "node/eu-*", regions: [EU]}\n',
        '  - {identity: "node/eu-*", regions: [eu-central]}\n',
    )
    observations = prove_policy(load_policy_text(text)).observations
    assert [(o.kind, o.subject, o.message) for o in observations] == [
        (
            "class-never-placed",
            "clinic.health",
            "data class health of tenant clinic can never "
            "be placed: it may live in eu-west, the tenant may run in eu-central, eu-west, and "
            "nodes may claim eu-central, us-east",
        ),
        ("tenant-never-runs", "ghost", "tenant ghost can never run: its tasks quota is 0"),
        (
            "tenant-never-runs",
            "nowhere",
            "tenant nowhere can never run: it may run only in "
            "eu-west, and no node may claim those (node claims cover eu-central, us-east)",
        ),
    ]


def test_invariants_that_never_apply_or_together_deny_a_tenant_everything() -> None:
    policy = policy_with(
        ("true", 'tenant == "clinic" and node.region == "us-east" and action == "task"'),
        '"payments" in inputs.classes implies tenant == "retail"',
        'tenant == "clinic" implies node.region == "eu-west"',
        'tenant == "clinic" implies node.region == "eu-central"',
        'tenant == "clinic" and "payments" in inputs.classes implies false',
    )
    observations = prove_policy(policy).observations
    assert [(o.kind, o.subject) for o in observations] == [
        ("invariants-conflict", "clinic"),
        ("invariant-never-applies", "i0"),
        ("invariant-never-applies", "i4"),
    ]
    assert observations[0].message == (
        "tenant clinic can never run: the rules let it, but invariants i2, i3 together deny "
        "every placement"
    )
    assert observations[1].message == (
        "invariant i0 never applies: no dispatch the rules allow meets its when guard "
        '(tenant == "clinic" and node.region == "us-east" and action == "task")'
    )
    assert observations[2].message == (
        "invariant i4 never applies: no dispatch the rules allow meets the condition of its "
        'rule (tenant == "clinic" and "payments" in inputs.classes)'
    )


def test_a_node_claim_an_earlier_one_already_grants() -> None:
    text = NO_INVARIANTS.replace(
        '  - {identity: "node/us-*", regions: [us-east]}\n',
        '  - {identity: "node/us-*", regions: [us-east]}\n'
        '  - {identity: "node/us-east-*", regions: [us-east]}\n'
        '  - {identity: "node/eu-?", regions: [eu-west]}\n',
    )
    observations = prove_policy(load_policy_text(text)).observations
    assert [(o.kind, o.message) for o in observations] == [
        (
            "claim-shadowed",
            "node claim nodes[2] (node/us-east-*: us-east) adds nothing: "
            "node/us-* already grants us-east",
        ),
        (
            "claim-shadowed",
            "node claim nodes[3] (node/eu-?: eu-west) adds nothing: "
            "node/eu-* already grants eu-central, eu-west",
        ),
    ]


def test_a_construct_the_encoder_cannot_express_is_refused_not_skipped() -> None:
    policy = policy_with("true")
    (invariant,) = policy.invariants
    unknown = dataclasses.replace(invariant, rule_expr=Expr("xor", BOOL, 0, 4))
    with pytest.raises(ProofError, match=r"^invariant i0: cannot be encoded for a proof: "):
        prove_policy(dataclasses.replace(policy, invariants=(unknown,)))


# ============================================================================= prove_narrower


def test_a_narrower_policy_is_proved_narrower_and_the_reverse_is_not() -> None:
    old = load_policy_text(NO_INVARIANTS)
    # Retail may no longer run in us-east, and every tenant gets a new invariant.
    new_text = with_invariants(HEALTH_IN_EU).replace(
        "  retail:\n    identities: [tenant/retail]\n",
        "  retail:\n    identities: [tenant/retail]\n    placement: {allow: [EU]}\n",
    )
    new = load_policy_text(new_text)
    assert prove_narrower(old, new).proved
    assert prove_narrower(old, old).proved

    wider = prove_narrower(new, old)
    assert not wider.proved and wider.witness is not None
    facts = wider.witness.facts
    assert rules_refusal(old, facts) is None and not old.invariants
    assert rules_refusal(new, facts) is not None or check_invariants(
        new.invariants, facts, hooks=None
    )
    assert wider.old_refusal.endswith("]")


def test_dropping_an_invariant_is_wider_and_the_old_refusal_names_it() -> None:
    rule = 'tenant == "retail" implies node.region != "us-east"'
    old, new = policy_with(rule), load_policy_text(NO_INVARIANTS)
    proof = prove_narrower(old, new)
    assert proof.witness is not None
    assert proof.witness.facts.tenant == "retail"
    assert proof.witness.facts.node_region == "us-east"
    assert proof.old_refusal == (
        'invariant i0: node.region is "us-east", expected anything but "us-east"; '
        'tenant = "retail" [rule invariant.i0]'
    )


def test_a_new_tenant_is_wider() -> None:
    old = load_policy_text(NO_INVARIANTS)
    new = load_policy_text(
        NO_INVARIANTS.replace("tenants:\n", "tenants:\n  zed:\n    identities: [tenant/zed]\n")
    )
    proof = prove_narrower(old, new)
    assert proof.witness is not None and proof.witness.facts.tenant == "zed"
    assert proof.old_refusal == "'zed' is not a tenant of the policy [rule tenant.unknown]"
    assert prove_narrower(new, old).proved


# ============================================================================= the commands


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_a_proved_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.yaml", with_invariants(HEALTH_IN_EU))
    version = load_policy(path).version
    assert cli(capsys, "policy", "verify", path) == (
        0,
        f"proved: i0 (i0)\n{path}: ok (policy version {version}: 1 invariant proved)\n",
        "",
    )


def test_verify_a_broken_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bad.yaml", with_invariants(HEALTH_IN_EU, "false"))
    code, out, err = cli(capsys, "policy", "verify", path)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == "proved: i0 (i0)"
    assert lines[1] == "NOT PROVED: i1 (i1): the rules allow this dispatch:"
    assert lines[2].startswith("    tenant ")
    assert lines[7] == "  and the dispatch check denies it: invariant i1: the rule is always false"
    assert lines[-1] == f"{path}: 1 of 2 invariants not proved"

    code, out, _ = cli(capsys, "policy", "verify", path, "--json")
    result = json.loads(out)
    assert code == 1 and result["proved"] is False
    assert [i["proved"] for i in result["invariants"]] == [True, False]
    counterexample = result["invariants"][1]["counterexample"]
    assert set(counterexample) >= {"tenant", "action", "node_region", "node_identity"}


def test_verify_warnings_fail_only_when_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = with_invariants(
        ("true", 'tenant == "clinic" and node.region == "us-east" and action == "task"')
    )
    path = write(tmp_path, "dead.yaml", text)
    code, out, _ = cli(capsys, "policy", "verify", path)
    assert code == 0
    assert "warning: invariant i0 never applies: " in out
    assert cli(capsys, "policy", "verify", path, "--strict")[0] == 1


def test_verify_a_file_with_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "typo.yaml", with_invariants("node.regoin == 1"))
    code, out, err = cli(capsys, "policy", "verify", path)
    assert (code, out) == (1, "")
    assert err == (
        f"{path}:25:12: invariants[0].rule: unknown field 'node.regoin'; "
        "did you mean 'node.region'?\n"
    )


def test_diff_lists_changes_and_proves_in_both_directions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path, "old.yaml", NO_INVARIANTS)
    new = write(
        tmp_path,
        "new.yaml",
        with_invariants(HEALTH_IN_EU).replace("{tasks: 10, cpus: 4}", "{tasks: 5, cpus: 4}"),
    )
    versions = load_policy(old).version, load_policy(new).version
    assert cli(capsys, "policy", "diff", old, new) == (
        0,
        f"{old} (version {versions[0]}) -> {new} (version {versions[1]})\n"
        "  tenant clinic changed: quotas\n"
        "  invariant i0 added\n",
        "",
    )
    code, out, _ = cli(capsys, "policy", "diff", old, new, "--prove-narrower")
    assert code == 0 and out.endswith(f"proved: {new} allows nothing {old} refused\n")

    code, out, _ = cli(capsys, "policy", "diff", new, old, "--prove-narrower")
    assert code == 1
    assert f"NOT NARROWER: {old} allows this dispatch, which {new} refused:" in out
    assert f"  {new} refused it: " in out

    code, out, _ = cli(capsys, "policy", "diff", new, old, "--prove-narrower", "--json")
    result = json.loads(out)
    assert code == 1 and result["narrower"] is False
    assert result["changes"] == ["tenant clinic changed: quotas", "invariant i0 removed"]
    assert result["witness"]["tenant"] == "clinic"


def test_the_installed_command_exits_with_the_proof(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", with_invariants(HEALTH_IN_EU))
    bad = write(tmp_path, "bad.yaml", with_invariants("false"))
    run = [sys.executable, "-m", "fabric.cli.main", "policy", "verify"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "NOT PROVED: i0" in failed.stdout


def test_the_benchmark_runs_small() -> None:
    from benchmarks import policy_verify

    assert (
        policy_verify.main(
            ["--tenants", "3", "--regions", "3", "--invariants", "4", "--dispatches", "2000"]
        )
        == 0
    )
