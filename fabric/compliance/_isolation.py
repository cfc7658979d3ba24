"""Checks: one probe tenant attacks another with everything it can name.

Probe A makes an object, an actor and audit entries; probe B, which is assumed to have
learnt their ids (ids travel inside values and handles and are not secrets), tries to
use them. Holding an id must give B nothing: no value, no effect, and not even the
knowledge that the thing exists (its errors must read exactly as for an id nobody uses).
"""

from __future__ import annotations

import itertools
import os
import pickle
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fabric
from fabric.compliance import _probes
from fabric.compliance._expect import one_line, refused, rpc_refusal
from fabric.compliance._probes import residency_options
from fabric.compliance.checks import Evidence, check, fail, skip
from fabric.compliance.requirements import (
    GDPR_ART_32_1_B,
    ISO_A_8_3,
    SOC2_CC6_1,
    SOC2_CC6_3,
)
from fabric.exceptions import (
    ActorDiedError,
    FabricError,
    InvariantViolationError,
    PlacementRefusedError,
    ResidencyError,
    UnknownObjectError,
)

if TYPE_CHECKING:
    from fabric.compliance.context import ComplianceContext, LiveNode, Probe


def players(ctx: ComplianceContext) -> tuple[Probe, LiveNode, Probe, LiveNode]:
    """Probes A and B, each with a node where it may run and keep its data."""
    a, b = ctx.probes[0], ctx.probes[1]
    homes = []
    for probe in (a, b):
        home = ctx.home(probe)
        if home is None:
            skip(f"no live node where {probe.identity} may run and keep its data")
        homes.append(home)
    return a, homes[0], b, homes[1]


def blanked(error: BaseException, *ids: bytes) -> str:
    """`error`'s type and message with `ids` blanked out, to compare two attempts that
    differ only in the id they name."""
    text = f"{type(error).__name__}: {error}"
    for value in ids:
        text = text.replace(value.hex(), "<id>")
    return text


@check(
    "isolation.objects",
    "A tenant cannot get another tenant's object by its id",
    (SOC2_CC6_1, SOC2_CC6_3, ISO_A_8_3, GDPR_ART_32_1_B),
)
def objects_isolated(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Probe A puts a secret; probe B names it by id three ways: ``fabric.get`` of a ref
    forged from the id, the protocol's inline fetch, and a task taking the forged ref as
    its argument. Each must fail with ``UnknownObjectError`` worded exactly as for an id
    that never existed, and A must still read its secret afterwards.

    Evidence that tenants' data is separated by the fabric itself, not by ids being hard
    to guess.
    """
    from fabric._proto import fabric_pb2 as pb

    a, home_a, b, home_b = players(ctx)
    secret = f"secret of {a.identity} {secrets.token_hex(8)}"
    with ctx.acting(a, home_a):
        ref = fabric.put(secret)
        if fabric.get(ref, timeout=ctx.timeout) != secret:
            fail(f"{a.identity} cannot read back its own object (the control)")
    stolen, never = ref.binary(), os.urandom(16) + b"\0\0\0\0"
    evidence.set("object", ref.hex())
    with ctx.acting(b, home_b) as client_b:
        ways: dict[str, Callable[[bytes], object]] = {
            "get": lambda oid: fabric.get(
                fabric.ObjectRef(oid, home_a.node_id), timeout=ctx.timeout
            ),
            "inline fetch": lambda oid: client_b.request(
                pb.ClientMessage(fetch=pb.FetchInline(object_id=oid)), ctx.timeout
            ),
            "task argument": lambda oid: fabric.get(
                _probes.total.remote(fabric.ObjectRef(oid, home_a.node_id)), timeout=ctx.timeout
            ),
        }
        for way, attempt in ways.items():
            what = f"{b.identity}'s {way} of {a.identity}'s object"
            error = refused(lambda: attempt(stolen), (UnknownObjectError,), what)  # noqa: B023
            control = refused(lambda: attempt(never), (UnknownObjectError,), f"{way} of no object")  # noqa: B023
            evidence.add("refusals", {"attempt": what, "error": one_line(error)})
            if blanked(error, stolen) != blanked(control, never):
                fail(f"{what} reveals that the object exists: {one_line(error)!r}")
    with ctx.acting(a, home_a):
        if fabric.get(ref, timeout=ctx.timeout) != secret:
            fail(f"{a.identity}'s object changed after {b.identity}'s attempts")
        del ref
    return f"{b.identity} got nothing of {a.identity}'s object in {len(ways)} ways"


@dataclass(frozen=True)
class Meeting:
    """Where `owner`'s actor lives (on `node`, created with residency `label`, its driver
    connected there) and where `caller` calls it from. `reachable`: the rules and the
    invariants let `caller`'s calls go to that node, so a refusal there is the tenant
    check's; otherwise placement refuses them first."""

    owner: Probe
    node: LiveNode
    label: str | None
    caller: Probe
    caller_home: LiveNode
    reachable: bool


def meeting(ctx: ComplianceContext) -> Meeting:
    """A node where one probe may keep an actor and the other may send calls, if there is
    one (judged with the runtime's own rules on the live nodes); else probe A's actor on
    A's home node, called by B from B's."""
    from fabric.policy import DispatchFacts, rules_refusal

    for owner, caller in itertools.permutations(ctx.probes[:2]):
        caller_home = ctx.home(caller)
        if caller_home is None:
            continue
        for node in ctx.nodes():
            if not ctx.may_run(caller, node.region) or node.region not in ctx.residency(caller):
                continue
            classes = owner.policy.data_classes
            for label in [None, *sorted(classes), "any"]:
                facts = DispatchFacts(
                    tenant=owner.tenant,
                    action="actor.create",
                    node_region=node.region,
                    node_labels=dict(node.labels),
                    input_regions=ctx.residency(owner, label),
                    task_region=node.region,
                    task_residency=label,
                    input_classes=frozenset({label}) if label in classes else frozenset(),
                )
                if rules_refusal(ctx.policy, facts) is None and not any(
                    i.violation(facts) for i in ctx.policy.invariants
                ):
                    return Meeting(owner, node, label, caller, caller_home, True)
    a, home_a, b, home_b = players(ctx)
    return Meeting(a, home_a, None, b, home_b, False)


ACTOR_REFUSALS = (ActorDiedError, PlacementRefusedError, ResidencyError, InvariantViolationError)


@check(
    "isolation.actors",
    "A tenant cannot call or kill another tenant's actor through a forged handle",
    (SOC2_CC6_1, SOC2_CC6_3, ISO_A_8_3, GDPR_ART_32_1_B),
)
def actors_isolated(ctx: ComplianceContext, evidence: Evidence) -> str:
    """One probe creates an actor holding a secret and a counter, on a node where the
    other probe's calls may go if the policy has one; the other calls it through the
    owner's handle (pickled, as it would travel inside a value) and through a handle
    forged from its id, and tries to kill it. Each call must be refused exactly as a call
    of an actor that never existed is, and the actor must keep its state: the owner's
    next increment of its counter gives 2.

    Evidence that a tenant's running computation cannot be read, driven or stopped by
    another tenant, nor found to exist.
    """
    from fabric._remote import ActorHandle

    m = meeting(ctx)
    owner, caller = m.owner.identity, m.caller.identity
    evidence.set("actor_node", m.node.node_id)
    evidence.set("calls_reach_the_node", m.reachable)
    secret = f"secret of {owner} {secrets.token_hex(8)}"
    with ctx.acting(m.owner, m.node):
        vault = _probes.Vault.options(region=m.node.region, **residency_options(m.label)).remote(
            secret
        )
        if fabric.get(vault.incr.remote(), timeout=ctx.timeout) != 1:
            fail(f"{owner}'s actor does not count (the control)")
        pickled = pickle.dumps(vault)
    evidence.set("actor", vault._actor_id.hex())
    try:
        with ctx.acting(m.caller, m.caller_home):
            stolen: Any = pickle.loads(pickled)
            node = vault._owner_node
            forged = ActorHandle(vault._actor_id, node, "Vault", stolen._methods, 0)
            nobody = ActorHandle(os.urandom(16), node, "Vault", stolen._methods, 0)
            control = refused(
                lambda: fabric.get(nobody.read.remote(), timeout=ctx.timeout),
                ACTOR_REFUSALS,
                "a call of an actor that never existed",
            )
            for how, handle in (("the owner's handle", stolen), ("a forged handle", forged)):
                for method in ("read", "incr"):
                    what = f"{caller} calls {owner}'s actor.{method} through {how}"
                    call = getattr(handle, method)
                    error = refused(
                        lambda: fabric.get(call.remote(), timeout=ctx.timeout),  # noqa: B023
                        ACTOR_REFUSALS,
                        what,
                    )
                    evidence.add("refusals", {"attempt": what, "error": one_line(error)})
                    if blanked(error, vault._actor_id) != blanked(control, nobody._actor_id):
                        fail(f"{what}: refused unlike a call of no actor: {one_line(error)!r}")
                try:
                    fabric.kill(handle)
                except FabricError as error:
                    evidence.add("kills", {"handle": how, "error": one_line(error)})
                else:
                    evidence.add("kills", {"handle": how, "error": None})
        with ctx.acting(m.owner, m.node):
            count = fabric.get(vault.incr.remote(), timeout=ctx.timeout)
            if count != 2 or fabric.get(vault.read.remote(), timeout=ctx.timeout) != secret:
                fail(f"{owner}'s actor lost its state (count {count}, expected 2)")
    finally:
        with ctx.acting(m.owner, m.node):
            fabric.kill(vault)
    where = "on a node it may call" if m.reachable else "out of its reach by placement"
    return f"{caller} could neither call nor kill {owner}'s actor ({where}), nor tell it exists"


@check(
    "isolation.audit",
    "A tenant reads only its own audit entries",
    (SOC2_CC6_3, ISO_A_8_3, GDPR_ART_32_1_B),
)
def audit_isolated(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Both probes run a task; probe A then queries the audit log for B's entries (by
    tenant and by B's task id) and asks for an inclusion proof of one of them. A must get
    only its own entries (and see them: the control), and the proof must be refused.

    Evidence that the log, which names every tenant's work, does not leak one tenant's
    activity to another.
    """
    import grpc

    from fabric._proto import fabric_pb2 as pb

    a, home_a, b, home_b = players(ctx)
    start = ctx.audit_position()
    tasks = {}
    for probe, home in ((a, home_a), (b, home_b)):
        with ctx.acting(probe, home):
            ref = _probes.where.remote()
            fabric.get(ref, timeout=ctx.timeout)
        tasks[probe.tenant] = ref.task_id().hex()
        ctx.completed_tasks.append((probe.tenant, tasks[probe.tenant]))
    ctx.wait_for_entries(
        pb.AuditQuery(task=tasks[a.tenant], after_seq=start),
        f"{a.identity}'s own task, as {a.identity} sees the log",
        identity=a.identity,
    )
    theirs = ctx.wait_for_entries(
        pb.AuditQuery(task=tasks[b.tenant], after_seq=start), f"{b.identity}'s task"
    )
    seen = ctx.audit(pb.AuditQuery(tenant=b.tenant, after_seq=start), identity=a.identity)
    seen += ctx.audit(pb.AuditQuery(task=tasks[b.tenant]), identity=a.identity)
    foreign = [e for e in seen if e.tenant != a.tenant]
    evidence.set("entries_seen_by_a", len(seen))
    if foreign:
        fail(f"{a.identity} read entries of {foreign[0].tenant!r} (seq {foreign[0].seq})")
    stub = ctx.head(a.identity)
    request = pb.AuditProveRequest(seq=theirs[0].seq)
    refusal = rpc_refusal(lambda: stub.ProveAudit(request, timeout=ctx.timeout))
    if refusal is None:
        fail(f"{a.identity} got an inclusion proof of {b.identity}'s entry {theirs[0].seq}")
    if refusal[0] != grpc.StatusCode.NOT_FOUND.name:
        fail(f"the proof of another tenant's entry failed with {refusal[0]}, not NOT_FOUND")
    evidence.set("proof_refusal", {"seq": theirs[0].seq, "code": refusal[0], "details": refusal[1]})
    return f"{a.identity} saw {len(seen)} entries, all its own, and no proof of {b.identity}'s"
