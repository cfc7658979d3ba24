"""Checks: work and data stay where the policy says, and every refusal is on the record.

For each probe and each residency it has (its default, each of its data classes), the
checks derive from the policy and the live nodes every way out there is to try, and try
each once:

- placement: work asked to run in a region the tenant may not run in
  (``tenant.run-regions``), work on its data asked to run where the data may not live
  (``residency.inputs``);
- data movement: a put on a node outside the data's residency
  (``residency.store-outside``), a result fetched by a driver connected outside it
  (``residency.driver-outside``), an object pulled by work placed outside it
  (``residency.transfer-outside``, or an invariant that stops the work first).

Each attempt must fail with ``PlacementRefusedError``, ``ResidencyError`` or
``InvariantViolationError`` naming a rule, and the audit log must hold that refusal:
an entry of the probe's tenant, outcome ``refuse``, by that rule, about that task or
object, appended after the attempt began.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fabric
from fabric.compliance import _probes
from fabric.compliance._errors import CheckFailed
from fabric.compliance._expect import one_line, refused, rule_of
from fabric.compliance._probes import residency_options
from fabric.compliance.checks import Evidence, check, fail, skip
from fabric.compliance.requirements import (
    GDPR_ART_44,
    ISO_A_5_34,
    ISO_A_8_15,
    SOC2_CC6_7,
    SOC2_CC7_2,
)
from fabric.exceptions import InvariantViolationError, PlacementRefusedError, ResidencyError

if TYPE_CHECKING:
    from fabric.compliance.context import ComplianceContext, LiveNode, Probe

REFUSALS = (PlacementRefusedError, ResidencyError, InvariantViolationError)


@dataclass
class Attempt:
    """One way out to try: `run` makes the attempt (it must raise a refusal); `subjects`
    are the task and object ids (hex) its audit entry may be about, known once `run` has
    started; with none, an entry of `kind` by `node` will do."""

    probe: Probe
    what: str
    run: Callable[[Attempt], object]
    node: str = ""
    kind: str = ""
    subjects: set[str] = field(default_factory=set)


def labels(probe: Probe) -> list[str | None]:
    """The probe's residencies: its default (None) and each of its data classes."""
    return [None, *sorted(probe.policy.data_classes)]


def describe(label: str | None) -> str:
    return "default" if label is None else f"{label!r}"


def regions(nodes: list[LiveNode]) -> dict[str, LiveNode]:
    """One live node per region."""
    found: dict[str, LiveNode] = {}
    for node in nodes:
        found.setdefault(node.region, node)
    return found


# ----------------------------------------------------------------------------- attempts


def placement_attempts(ctx: ComplianceContext) -> Iterator[Attempt]:
    by_region = regions(ctx.nodes())
    for probe in ctx.probes:
        home = ctx.home(probe)
        for region in sorted(by_region):
            if home is not None and not ctx.may_run(probe, region):
                yield _run_in(ctx, probe, home, region)
        for label in labels(probe):
            allowed = ctx.residency(probe, label)
            source = next((n for n in ctx.nodes() if n.region in allowed), None)
            if source is None:
                continue
            for region in sorted(by_region):
                if ctx.may_run(probe, region) and region not in allowed:
                    yield _use_in(ctx, probe, label, source, region)


def movement_attempts(ctx: ComplianceContext) -> Iterator[Attempt]:
    by_region = regions(ctx.nodes())
    for probe in ctx.probes:
        for label in labels(probe):
            allowed = ctx.residency(probe, label)
            inside = next((n for n in ctx.nodes() if n.region in allowed), None)
            runs_inside = next(
                (n for n in ctx.nodes() if n.region in allowed and ctx.may_run(probe, n.region)),
                None,
            )
            for region, outside in sorted(by_region.items()):
                if region in allowed:
                    continue
                yield _store(ctx, probe, label, outside)
                if runs_inside is not None and region not in probe.policy.export_regions:
                    yield _deliver(ctx, probe, label, outside)
                if inside is not None and ctx.may_run(probe, region):
                    yield _transfer(ctx, probe, label, inside, outside)


def _run_in(ctx: ComplianceContext, probe: Probe, home: LiveNode, region: str) -> Attempt:
    def run(attempt: Attempt) -> object:
        with ctx.acting(probe, home):
            ref = _probes.where.options(region=region).remote()
            attempt.subjects.add(ref.task_id().hex())
            return fabric.get(ref, timeout=ctx.timeout)

    return Attempt(probe, f"{probe.identity} runs work in {region}", run)


def _use_in(
    ctx: ComplianceContext, probe: Probe, label: str | None, source: LiveNode, region: str
) -> Attempt:
    def run(attempt: Attempt) -> object:
        with ctx.acting(probe, source):
            data = fabric.put([1, 2, 3], **residency_options(label))
            attempt.subjects.add(data.hex())
            ref = _probes.total.options(region=region).remote(data)
            attempt.subjects.add(ref.task_id().hex())
            return fabric.get(ref, timeout=ctx.timeout)

    what = f"{probe.identity} uses its {describe(label)} data in {region}"
    return Attempt(probe, what, run)


def _store(ctx: ComplianceContext, probe: Probe, label: str | None, node: LiveNode) -> Attempt:
    def run(attempt: Attempt) -> object:
        with ctx.acting(probe, node):
            return fabric.put(secrets.token_hex(8), **residency_options(label))

    what = f"{probe.identity} stores {describe(label)} data on {node.node_id} ({node.region})"
    return Attempt(probe, what, run, node=node.node_id, kind="store")


def _deliver(ctx: ComplianceContext, probe: Probe, label: str | None, node: LiveNode) -> Attempt:
    def run(attempt: Attempt) -> object:
        with ctx.acting(probe, node):
            ref = _probes.where.options(**residency_options(label)).remote()
            attempt.subjects.update({ref.hex(), ref.task_id().hex()})
            return fabric.get(ref, timeout=ctx.timeout)

    what = (
        f"{probe.identity}'s driver on {node.node_id} ({node.region}) "
        f"fetches a {describe(label)} result"
    )
    return Attempt(probe, what, run)


def _transfer(
    ctx: ComplianceContext, probe: Probe, label: str | None, inside: LiveNode, outside: LiveNode
) -> Attempt:
    def run(attempt: Attempt) -> object:
        with ctx.acting(probe, inside):
            data = fabric.put([1, 2, 3], **residency_options(label))
            fabric.get(data, timeout=ctx.timeout)  # stored: the put was accepted
        attempt.subjects.add(data.hex())
        with ctx.acting(probe, outside):
            # The ref as another session of the tenant would hold it: its agent knows the
            # object only by the node that owns it, which must refuse to send it here.
            held = fabric.ObjectRef(data.binary(), inside.node_id)
            work = _probes.total.options(region=outside.region, residency="any")
            ref = work.remote(held)
            attempt.subjects.add(ref.task_id().hex())
            return fabric.get(ref, timeout=ctx.timeout)

    what = (
        f"{probe.identity}'s {describe(label)} data on {inside.node_id} ({inside.region}) "
        f"is pulled by work in {outside.region}"
    )
    return Attempt(probe, what, run)


# ----------------------------------------------------------------------------- running


def attempt_all(ctx: ComplianceContext, evidence: Evidence, attempts: list[Attempt]) -> str:
    """Make every attempt; each must be refused naming a rule, and recorded. One that is
    not fails the check, after the others have been made too: the report lists them all."""
    if not attempts:
        skip(
            "no probe has a region or residency that the live nodes can test "
            f"(regions: {', '.join(sorted(regions(ctx.nodes())))})"
        )
    failures = []
    for attempt in attempts:
        try:
            evidence.add("refusals", attempt_one(ctx, attempt))
        except CheckFailed as failure:
            evidence.add("failures", str(failure))
            failures.append(str(failure))
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        fail(f"{len(failures)} of {len(attempts)} attempts got through: {failures[0]}{more}")
    rules = sorted({r["rule"] for r in evidence.details["refusals"]})
    return f"{len(attempts)} attempts refused and recorded ({', '.join(rules)})"


def attempt_one(ctx: ComplianceContext, attempt: Attempt) -> dict[str, Any]:
    """Make `attempt`; the evidence of its refusal and of the audit entry recording it."""
    from fabric._proto import fabric_pb2 as pb

    position = ctx.audit_position()
    error = refused(lambda: attempt.run(attempt), REFUSALS, attempt.what)
    rule, version = rule_of(error)
    if not rule:
        fail(f"{attempt.what}: the refusal names no rule ({one_line(error)})")
    query = pb.AuditQuery(
        tenant=attempt.probe.tenant,
        rule=rule,
        outcome="refuse",
        node=attempt.node,
        kind=attempt.kind,
        after_seq=position,
    )
    subjects = set(attempt.subjects)

    def about(entry: Any) -> bool:
        return not subjects or entry.task in subjects or bool(subjects & set(entry.objects))

    entries = ctx.wait_for_entries(query, f"refusal of '{attempt.what}' by {rule}", about)
    return {
        "attempt": attempt.what,
        "error": type(error).__name__,
        "message": one_line(error),
        "rule": rule,
        "policy": version,
        "audit": [{"seq": e.seq, "id": e.id, "kind": e.kind, "node": e.node} for e in entries],
    }


@check(
    "residency.placement",
    "Work is refused outside the regions its tenant and its data allow, on the record",
    (GDPR_ART_44, SOC2_CC6_7, ISO_A_5_34, SOC2_CC7_2),
)
def placement_refused(ctx: ComplianceContext, evidence: Evidence) -> str:
    """For each probe: ask for work in each live region its policy does not let it run in,
    and, for each of its residencies, for work on such data in each live region it may run
    in but the data may not live in. Every request must be refused at once, naming the
    rule, and the refusal must be in the audit log.

    Evidence that processing happens only in the places the policy (the record of where
    each tenant's personal data may go) allows, and that each refusal is accountable.
    """
    return attempt_all(ctx, evidence, list(placement_attempts(ctx)))


@check(
    "residency.data-movement",
    "Data is never stored, delivered or transferred outside its residency, on the record",
    (GDPR_ART_44, SOC2_CC6_7, ISO_A_5_34, ISO_A_8_15),
)
def movement_refused(ctx: ComplianceContext, evidence: Evidence) -> str:
    """For each probe and each of its residencies, from each live region outside it: put
    such data there, fetch such a result to a driver connected there, and pull such data
    from where it lives to work placed there. Every attempt must be refused naming the
    rule, and the refusal must be in the audit log.

    Evidence that data does not leave its allowed regions (for EU residencies: no
    transfer to a third country) by any of the paths the fabric offers, and that each
    refusal is accountable.
    """
    return attempt_all(ctx, evidence, list(movement_attempts(ctx)))
