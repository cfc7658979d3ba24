"""``fabric compliance``: run the compliance suite against a live fabric, list its checks."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from fabric.cli._common import add_command

if TYPE_CHECKING:
    from fabric.compliance import Check, ComplianceContext

_DESCRIPTION = """\
Probe a running fabric from the outside and produce evidence a compliance officer can
file: one line per check (PASS, FAIL or SKIP, the requirements it evidences and why),
and with --json / --junit the same with every check's evidence (audit entry ids, error
messages, proofs). Exit status 1 if a check failed (with --strict: or was skipped).

The probes are tenants the policy declares for the purpose (at least two: the suite
plays them against each other); --operator reads the audit log (an operator or auditor
of the policy). Their certificates are read from --certs, laid out like a CA directory.
`fabric compliance list` shows the checks and what each is evidence for."""

_EXAMPLE = """\
example:
  fabric compliance run --address 10.0.0.1:16380 --certs ca \\
      --policy configs/policy-compliance.yaml \\
      --probe tenant/probe-eu --probe tenant/probe-us --operator operator/auditor \\
      --vkey audit.vkey --json evidence.json --junit compliance.xml"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compliance = add_command(
        subparsers,
        "compliance",
        help="run the compliance suite against a live fabric; list its checks",
        description=_DESCRIPTION,
    )
    sub = compliance.add_subparsers(dest="compliance_command", metavar="COMMAND", required=True)

    run = add_command(
        sub,
        "run",
        help="run the checks against a live fabric and report",
        description=f"{_DESCRIPTION}\n\n{_EXAMPLE}",
        handler=_run,
    )
    run.add_argument("--address", required=True, metavar="HEAD", help="the head, HOST:PORT")
    run.add_argument(
        "--certs",
        type=Path,
        required=True,
        metavar="DIR",
        help="certificate directory (DIR/ca.pem, DIR/crl.pem, DIR/issued/<kind>-<name>.*); "
        "with DIR/ca.key the checks of expired and revoked certificates run too",
    )
    run.add_argument(
        "--policy",
        type=Path,
        required=True,
        metavar="FILE",
        help="the policy that should be in force: what to probe, compared with the head's",
    )
    run.add_argument(
        "--probe",
        action="append",
        required=True,
        metavar="tenant/NAME",
        help="a probe tenant of the policy (give at least two)",
    )
    run.add_argument(
        "--operator",
        required=True,
        metavar="operator/NAME",
        help="an operator or auditor of the policy, to read the audit log",
    )
    run.add_argument(
        "--vkey",
        metavar="VKEY_OR_FILE",
        help="the audit log's verifier key, or a file holding it (your copy of the head's "
        "audit.vkey); without it the log's integrity checks are skipped",
    )
    run.add_argument(
        "--allow-revoke",
        action="store_true",
        help="let the revocation check revoke a fresh probe certificate in DIR/crl.pem",
    )
    run.add_argument("--json", type=Path, metavar="FILE", help="write the evidence as JSON")
    run.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML for CI")
    run.add_argument("--strict", action="store_true", help="a skipped check fails the run too")
    run.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="GLOB",
        help="run only the checks whose id matches (e.g. 'residency.*'); repeatable",
    )
    _add_checks_from(run)
    run.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for any one refusal or audit entry (default: %(default)s)",
    )

    listing = add_command(
        sub, "list", help="list the checks and the requirements each evidences", handler=_list
    )
    _add_checks_from(listing)


def _add_checks_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checks-from",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: its @fabric.compliance.check functions join the run",
    )


def _run(args: argparse.Namespace) -> int:
    # grpc core logs every refused handshake on stderr at INFO: the suite provokes many.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from fabric.compliance import (
        ComplianceConfig,
        ComplianceContext,
        load_checks_from,
        registered,
        run_checks,
    )
    from fabric.compliance.report import render_line

    for module in args.checks_from:
        load_checks_from(module)
    checks = registered(args.check)
    config = ComplianceConfig(
        address=args.address,
        certs=args.certs,
        policy=args.policy,
        probes=tuple(args.probe),
        operator=args.operator,
        vkey=args.vkey,
        allow_revoke=args.allow_revoke,
        timeout=args.timeout,
    )
    with ComplianceContext(config) as ctx:
        print(_header(ctx, len(checks)), file=sys.stderr, flush=True)
        report = run_checks(
            ctx,
            checks,
            on_start=lambda check: print(f"  {check.id} ...", file=sys.stderr, flush=True),
            on_result=lambda result: print(render_line(result), flush=True),
        )
    print(report.summary())
    if args.json is not None:
        report.write_json(args.json)
        print(f"wrote the evidence to {args.json}", file=sys.stderr)
    if args.junit is not None:
        report.write_junit(args.junit)
        print(f"wrote JUnit XML to {args.junit}", file=sys.stderr)
    return 0 if report.ok(strict=args.strict) else 1


def _header(ctx: ComplianceContext, count: int) -> str:
    nodes = ", ".join(f"{n.node_id} ({n.region})" for n in ctx.nodes())
    probes = ", ".join(p.identity for p in ctx.probes)
    return (
        f"fabric compliance: {count} checks against the head at {ctx.config.address}, "
        f"policy {ctx.policy.version} ({ctx.config.policy})\n"
        f"  nodes: {nodes}\n  probes: {probes}; audit log read as {ctx.config.operator}"
    )


def _list(args: argparse.Namespace) -> int:
    from fabric.compliance import load_checks_from, registered

    for module in args.checks_from:
        load_checks_from(module)
    for check in registered():
        print(_describe(check))
    return 0


def _describe(check: Check) -> str:
    lines = [f"{check.id}: {check.title}"]
    lines += [f"    {requirement}" for requirement in check.requirements]
    for paragraph in check.description.split("\n\n"):
        lines.append(textwrap.indent(textwrap.fill(" ".join(paragraph.split()), 84), "    "))
    return "\n".join(lines) + "\n"
