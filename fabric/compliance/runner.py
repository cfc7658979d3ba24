"""Running checks: each one timed, its outcome turned into a :class:`CheckResult`.

A check's exception decides its status (see :mod:`fabric.compliance.checks`): an
unexpected one fails it ("could not run: ..."), because a check that cannot run has not
shown anything. One check failing never stops the others.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fabric.compliance._errors import CheckFailed, CheckSkipped
from fabric.compliance._expect import one_line, status_of
from fabric.compliance.checks import Check, Evidence, Status
from fabric.compliance.context import ComplianceContext
from fabric.compliance.report import CheckResult, Report

__all__ = ["run_check", "run_checks", "target_of"]


def run_check(ctx: ComplianceContext, check: Check) -> CheckResult:
    """Run one check against `ctx` and say how it went."""
    evidence = Evidence()
    started = time.monotonic()
    try:
        reason = check.run(ctx, evidence) or ""
        status = Status.PASS
    except CheckSkipped as skipped:
        status, reason = Status.SKIP, f"skipped: {skipped}"
    except CheckFailed as failed:
        status, reason = Status.FAIL, str(failed)
    except AssertionError as error:
        status, reason = Status.FAIL, str(error) or "an assertion failed"
        evidence.set("traceback", traceback.format_exc())
    except Exception as error:
        status, reason = Status.FAIL, f"could not run: {_describe(error)}"
        evidence.set("traceback", traceback.format_exc())
    return CheckResult(check, status, reason, time.monotonic() - started, evidence.details)


def run_checks(
    ctx: ComplianceContext,
    checks: Iterable[Check],
    on_start: Callable[[Check], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> Report:
    """Run `checks` in order; `on_start` and `on_result` report progress as they go."""
    report = Report(target=target_of(ctx), started=_dt.datetime.now(_dt.UTC))
    started = time.monotonic()
    for check in checks:
        if on_start is not None:
            on_start(check)
        result = run_check(ctx, check)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    report.duration = time.monotonic() - started
    return report


def target_of(ctx: ComplianceContext) -> dict[str, Any]:
    """What the run was against and as whom: the report's header."""
    config = ctx.config
    return {
        "head": config.address,
        "policy_file": str(Path(config.policy).resolve()),
        "policy_version": ctx.policy.version,
        "probes": [p.identity for p in ctx.probes],
        "operator": config.operator,
        "nodes": [
            {"node_id": n.node_id, "region": n.region, "address": n.address} for n in ctx.nodes()
        ],
        "verifier_key": ctx.vkey() or "",
    }


def _describe(error: Exception) -> str:
    grpc = sys.modules.get("grpc")  # only loaded, and only raisable, once a check used it
    if grpc is not None and isinstance(error, grpc.RpcError):
        code, details = status_of(error)
        return f"the fabric answered {code}: {details}"
    return f"{type(error).__name__}: {one_line(error)}"
