"""Check: a runaway task is stopped at its budget, and the stop is on the record."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import fabric
from fabric.compliance import _probes
from fabric.compliance._errors import CheckFailed
from fabric.compliance._expect import one_line, refused
from fabric.compliance.checks import Evidence, check, fail, skip
from fabric.compliance.requirements import (
    GDPR_ART_32_1_B,
    ISO_A_8_6,
    SOC2_A1_1,
    SOC2_CC7_2,
)
from fabric.exceptions import BudgetExceededError

if TYPE_CHECKING:
    from fabric.compliance.context import ComplianceContext

BUDGET = "task.cpu_seconds"
CPU_SECONDS = 1.0


@check(
    "budgets.runaway",
    "A runaway task is stopped at its CPU budget, and the stop is recorded",
    (SOC2_A1_1, ISO_A_8_6, GDPR_ART_32_1_B, SOC2_CC7_2),
)
def runaway_stopped(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Probe A runs a busy loop under an explicit budget of 1 CPU-second (less if its
    policy allows less). The fabric must stop it with ``BudgetExceededError`` naming
    ``task.cpu_seconds``, record the stop (an audit entry of kind ``budget.stop`` about the
    task), and still run A's next task.

    Evidence that one tenant's runaway work cannot take the capacity others depend on, and
    that the intervention is logged.
    """
    from fabric._proto import fabric_pb2 as pb

    probe = ctx.probes[0]
    home = ctx.home(probe)
    if home is None:
        skip(f"no live node where {probe.identity} may run and keep its data")
    limit = CPU_SECONDS
    ceiling = probe.policy.budgets.task.cpu_seconds
    if ceiling is not None:
        limit = min(limit, ceiling)
    evidence.set("budget", {"cpu_seconds": limit})
    with ctx.acting(probe, home):
        started = time.monotonic()
        ref = _probes.spin.options(budget={"cpu_seconds": limit}).remote()
        try:
            error = refused(
                lambda: fabric.get(ref, timeout=ctx.timeout),
                (BudgetExceededError,),
                f"{probe.identity}'s busy loop under {limit:g} CPU-seconds",
            )
        except CheckFailed:
            fabric.cancel(ref, force=True)
            raise
        stopped_after = time.monotonic() - started
        task = ref.task_id().hex()
        evidence.set(
            "error",
            {
                "type": type(error).__name__,
                "budget": error.budget,
                "limit": error.limit,
                "measured": error.measured,
                "message": one_line(error),
                "seconds_to_stop": round(stopped_after, 3),
            },
        )
        if error.budget != BUDGET:
            fail(f"the busy loop was stopped by {error.budget!r}, not {BUDGET!r}")
        after = _probes.where.remote()
        fabric.get(after, timeout=ctx.timeout)
        ctx.completed_tasks.append((probe.tenant, after.task_id().hex()))
    entries = ctx.wait_for_entries(
        pb.AuditQuery(task=task, kind="budget.stop", tenant=probe.tenant),
        f"budget.stop of task {task}",
    )
    evidence.set("audit", [{"seq": e.seq, "id": e.id, "rules": list(e.rules)} for e in entries])
    return (
        f"stopped after {stopped_after:.1f} s ({error.measured:.2f} of {limit:g} CPU-seconds), "
        f"recorded at seq {entries[0].seq}"
    )
