"""Check: the policy's declared invariants hold, by proof or by refusal before dispatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import fabric
from fabric.compliance import _probes
from fabric.compliance._expect import one_line, refused
from fabric.compliance._probes import residency_options
from fabric.compliance.checks import Evidence, check, fail, skip
from fabric.compliance.requirements import GDPR_ART_25, ISO_A_8_27, SOC2_CC6_1
from fabric.exceptions import InvariantViolationError

if TYPE_CHECKING:
    from fabric.compliance.context import ComplianceContext, LiveNode, Probe


@dataclass(frozen=True)
class Breach:
    """A request a probe can make that the rules allow and an invariant forbids on every
    live node of `region`: the agents must refuse it before it runs."""

    probe: Probe
    region: str
    label: str | None
    invariants: frozenset[str]


def breaches(ctx: ComplianceContext) -> list[Breach]:
    """Every (probe, region, residency) whose plain task the policy's rules allow and an
    invariant forbids, judged with the runtime's own functions on the live nodes' facts.
    Invariants over what a tenant holds (``usage.*``) depend on the cluster's state, not
    the request, and are left out."""
    from fabric.policy import DispatchFacts, rules_refusal

    policy = ctx.policy
    stateless = [i for i in policy.invariants if not any(f.startswith("usage.") for f in i.fields)]
    found = []
    for probe in ctx.probes:
        classes = probe.policy.data_classes
        for label in [None, *sorted(classes), "any"]:
            inputs = ctx.residency(probe, label)
            for region in sorted({n.region for n in ctx.nodes()}):
                names: set[str] = set()
                allowed = 0
                for node in (n for n in ctx.nodes() if n.region == region):
                    facts = DispatchFacts(
                        tenant=probe.tenant,
                        action="task",
                        node_region=region,
                        node_labels=dict(node.labels),
                        input_regions=inputs,
                        task_region=region,
                        task_residency=label,
                        cpus=1.0,
                        input_classes=frozenset({label}) if label in classes else frozenset(),
                    )
                    if rules_refusal(policy, facts) is not None:
                        continue
                    allowed += 1
                    broken = {i.name for i in stateless if i.violation(facts) is not None}
                    if not broken:
                        break  # this node may take it: the request would run
                    names |= broken
                else:
                    if allowed:
                        found.append(Breach(probe, region, label, frozenset(names)))
    return found


def _home(ctx: ComplianceContext, probe: Probe, label: str | None) -> LiveNode | None:
    return ctx.home(probe, label) or ctx.home(probe)


@check(
    "invariants.enforced",
    "Declared invariants hold: proved from the rules, or refused before dispatch",
    (GDPR_ART_25, ISO_A_8_27, SOC2_CC6_1),
)
def invariants_enforced(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Prove each invariant of the policy from its rules with Z3 (``prove_policy``, as
    ``fabric policy verify`` does), then, for each invariant a probe can break with a
    request the rules allow (found with the runtime's own decision functions on the live
    nodes), make that request: it must fail with ``InvariantViolationError`` naming the
    invariant before it runs, and the refusal must be in the audit log (kind
    ``invariant``). Skipped when the policy declares none, or when no invariant applies
    to the probes and not every one is proved.

    Evidence that what the policy declares must never happen is either impossible by
    construction (a proof) or stopped by the fabric at run time (a refusal), by design.
    """
    from fabric._proto import fabric_pb2 as pb
    from fabric.policy import prove_policy

    if not ctx.policy.invariants:
        skip("the policy declares no invariants")
    proof = prove_policy(ctx.policy)
    unproved = []
    for result in proof.invariants:
        counterexample = result.counterexample
        if counterexample is not None:
            unproved.append(result.invariant)
        evidence.add(
            "proofs",
            {
                "invariant": result.invariant,
                "proved": result.proved,
                "counterexample": counterexample.lines() if counterexample else None,
            },
        )
    refused_names: list[str] = []
    for breach in breaches(ctx):
        if breach.invariants <= set(refused_names):
            continue
        home = _home(ctx, breach.probe, breach.label)
        if home is None:
            continue
        what = (
            f"{breach.probe.identity} runs {breach.label or 'default'}-residency work in "
            f"{breach.region}"
        )
        with ctx.acting(breach.probe, home):
            work = _probes.where.options(region=breach.region, **residency_options(breach.label))
            ref = work.remote()
            error = refused(
                lambda: fabric.get(ref, timeout=ctx.timeout),  # noqa: B023
                (InvariantViolationError,),
                what,
            )
        name = error.invariant
        if name not in breach.invariants:
            fail(f"{what}: refused by {name!r}, expected one of {sorted(breach.invariants)}")
        task = ref.task_id().hex()
        entries = ctx.wait_for_entries(
            pb.AuditQuery(task=task, kind="invariant", rule=f"invariant.{name}", outcome="refuse"),
            f"invariant refusal of task {task}",
        )
        refused_names.append(name)
        evidence.add(
            "refusals",
            {
                "attempt": what,
                "invariant": name,
                "message": one_line(error),
                "audit": [{"seq": e.seq, "id": e.id, "node": e.node} for e in entries],
            },
        )
    proved = [r.invariant for r in proof.invariants if r.proved]
    if not refused_names:
        if not unproved:
            return f"all {len(proved)} invariants are proved from the rules: none can be broken"
        skip(
            "no invariant applies to the probe tenants on the live nodes "
            f"(not proved from the rules: {', '.join(unproved)})"
        )
    evidence.set("not_exercised", sorted(set(unproved) - set(refused_names)))
    reason = f"refused before dispatch and recorded: {', '.join(refused_names)}"
    return reason + (f"; proved from the rules: {', '.join(proved)}" if proved else "")
