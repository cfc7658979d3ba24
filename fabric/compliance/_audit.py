"""Checks: the audit log records the probes' decisions, only grows, and proves its entries.

The integrity checks trust one thing: the log's verifier key the operator gives with
``--vkey`` (their own copy of the head's ``audit.vkey``). Without it they are skipped, since
a key the head sends along with its checkpoints proves nothing about the head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import fabric
from fabric.compliance import _probes
from fabric.compliance.checks import Evidence, check, fail, skip
from fabric.compliance.requirements import (
    GDPR_ART_5_2,
    ISO_A_5_33,
    ISO_A_8_15,
    SOC2_CC7_2,
    SOC2_CC7_3,
)

if TYPE_CHECKING:
    from fabric.audit import Checkpoint
    from fabric.compliance.context import ComplianceContext

# What every task that ran leaves in the log: its admission, its placement, its end.
TASK_KINDS = frozenset({"admit", "place", "task.finish"})


def _vkey(ctx: ComplianceContext) -> str:
    vkey = ctx.vkey()
    if vkey is None:
        skip("needs the log's verifier key (--vkey): a key the head sends proves nothing")
    return vkey


@check(
    "audit.decisions",
    "Every decision about the probes' work is in the audit log",
    (SOC2_CC7_2, ISO_A_8_15, GDPR_ART_5_2),
)
def decisions_recorded(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Each probe runs a task; for it and for every task the other checks ran to
    completion, the log (read as the operator) must hold its admission, its placement and
    its end, each naming the probe's tenant. (The checks that provoke refusals look for
    each refusal themselves.)

    Evidence that the fabric's decisions about a tenant's work are recorded, so that what
    happened can be reconstructed and attributed.
    """
    from fabric._proto import fabric_pb2 as pb

    for probe in ctx.probes:
        home = ctx.home(probe)
        if home is None:
            continue
        with ctx.acting(probe, home):
            ref = _probes.where.remote()
            fabric.get(ref, timeout=ctx.timeout)
        ctx.completed_tasks.append((probe.tenant, ref.task_id().hex()))
    if not ctx.completed_tasks:
        skip("no probe may run anywhere on the live nodes")
    for tenant, task in dict.fromkeys(ctx.completed_tasks):

        def complete(task: str = task) -> bool:
            kinds = {e.kind for e in ctx.audit(pb.AuditQuery(task=task))}
            return TASK_KINDS <= kinds

        ctx.wait_until(complete, f"admission, placement and end of {tenant}'s task {task}")
        entries = ctx.audit(pb.AuditQuery(task=task))
        strangers = [e for e in entries if e.tenant != tenant]
        if strangers:
            fail(f"entry {strangers[0].seq} about {tenant}'s task names {strangers[0].tenant!r}")
        evidence.add(
            "tasks",
            {"tenant": tenant, "task": task, "entries": {e.kind: e.seq for e in entries}},
        )
    count = len(evidence.details["tasks"])
    return f"{count} probe tasks each admitted, placed and finished on the record"


@check(
    "audit.consistency",
    "The audit log only grew while the suite ran (signed checkpoints, consistency proof)",
    (ISO_A_8_15, ISO_A_5_33, SOC2_CC7_2),
)
def log_consistent(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Verify the checkpoint the head signed when the suite started and its newest one with
    the operator's verifier key, and the head's consistency proof between them: the tree
    at the start must be a prefix of the tree now (RFC 9162 section 2.1.4), as
    ``fabric audit verify --address`` checks.

    Evidence that the log is append-only: nothing recorded before the run was changed,
    removed or reordered while it ran.
    """
    from fabric._proto import fabric_pb2 as pb
    from fabric.audit import CheckpointError, parse_vkey, verify_checkpoint, verify_consistency

    vkey = _vkey(ctx)
    name, key = parse_vkey(vkey)
    if ctx.start_checkpoint is None:
        fail("no checkpoint was taken when the suite started")

    def verified(text: str, when: str) -> Checkpoint:
        try:
            return verify_checkpoint(text, name, key)
        except CheckpointError as error:
            fail(f"the head's checkpoint {when} does not verify with {name}: {error}")

    # (1) Both checkpoints are signed by the key the operator holds.
    old = verified(ctx.start_checkpoint, "at the start")
    reply = ctx.head().AuditCheckpoint(
        pb.AuditCheckpointRequest(old_size=old.size), timeout=ctx.timeout
    )
    new = verified(reply.checkpoint, "now")
    evidence.set("key", name)
    evidence.set("origin", new.origin)
    evidence.set("start", {"size": old.size, "root": old.root_hash.hex()})
    evidence.set("now", {"size": new.size, "root": new.root_hash.hex()})
    # (2) Of the same log.
    if new.origin != old.origin:
        fail(f"the checkpoints are of two logs: {old.origin!r} then {new.origin!r}")
    # (3) A log only grows.
    if new.size < old.size:
        fail(f"rollback: the log shrank from {old.size} to {new.size} entries")
    # (4) RFC 9162 section 2.1.4.2: the old tree is a prefix of the new one.
    proof = list(reply.consistency)
    evidence.set("consistency_proof", [node.hex() for node in proof])
    if old.size and not verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof):
        fail(f"forked: the log of {new.size} entries does not extend the one of {old.size}")
    return f"the log grew from {old.size} to {new.size} entries, consistently, signed by {name}"


@check(
    "audit.inclusion-proof",
    "A probe's audit entry is proved to be in the log, checked offline",
    (ISO_A_8_15, GDPR_ART_5_2, SOC2_CC7_3),
)
def entry_proved(ctx: ComplianceContext, evidence: Evidence) -> str:
    """As probe A, fetch the proof bundle of A's newest entry (``ProveAudit``, as
    ``fabric audit prove`` does) and check it with nothing but the operator's verifier key
    (``fabric.audit.check_proof``, as ``fabric audit check-proof``): the checkpoint's
    signature, then the inclusion path from the entry to the checkpoint's root. The bundle
    is in the details, for anyone to check again.

    Evidence that a recorded decision can be shown, to a third party, to be part of the
    one log the fabric keeps, without trusting the fabric.
    """
    from fabric._proto import fabric_pb2 as pb
    from fabric.audit import ProofBundle, ProofError, check_proof

    vkey = _vkey(ctx)
    probe = ctx.probes[0]
    position = ctx.audit_position()
    home = ctx.home(probe)
    if home is None:
        skip(f"no live node where {probe.identity} may run")
    with ctx.acting(probe, home):
        ref = _probes.where.remote()
        fabric.get(ref, timeout=ctx.timeout)
    task = ref.task_id().hex()
    ctx.completed_tasks.append((probe.tenant, task))
    entries = ctx.wait_for_entries(
        pb.AuditQuery(task=task, after_seq=position),
        f"{probe.identity}'s task {task}",
        identity=probe.identity,
    )
    entry = entries[-1]
    reply = ctx.head(probe.identity).ProveAudit(
        pb.AuditProveRequest(seq=entry.seq), timeout=ctx.timeout
    )
    evidence.set("bundle", reply.bundle)
    try:
        proved = check_proof(ProofBundle.from_json(reply.bundle), vkey)
    except ProofError as error:
        fail(f"the proof of entry {entry.seq} does not verify: {error}")
    if (proved.id, proved.tenant) != (entry.id, probe.tenant):
        fail(f"the proof is of entry {proved.id} of {proved.tenant!r}, not {entry.id}")
    evidence.set("entry", {"seq": proved.seq, "id": proved.id, "kind": proved.kind})
    return f"entry {proved.seq} ({proved.kind} of task {task}) verified offline"
