"""``fabric policy``: work with the tenancy policy file.

Each subcommand is one ``_add_<name>(subparsers)`` function that adds its parser and
handler; a new subcommand is one more such function and one more entry in
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from fabric.cli._common import add_command
from fabric.cli._head import add_head_args, head_stub, timeout
from fabric.cli._policy_proofs import add_diff, add_verify

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

_DESCRIPTION = """\
Work with the tenancy policy: a YAML file naming the regions and their jurisdictions,
the node identities that may claim each region, the tenants with their certificate
identities, where each may run, where its data may live and its quotas, and the
operators and auditors.

Problems are printed one per line as FILE:LINE:COLUMN: MESSAGE."""


def register(subparsers: Subparsers) -> None:
    policy = add_command(
        subparsers,
        "policy",
        help="work with the tenancy policy: check, verify, diff, apply, show",
        description=_DESCRIPTION,
    )
    sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)


# ----------------------------------------------------------------------------- check


def _add_check(subparsers: Subparsers) -> None:
    check = add_command(
        subparsers,
        "check",
        help="check a policy file and report every problem in it",
        description=(
            "Load FILE as the head would and report every problem in it, one per line as "
            "FILE:LINE:COLUMN: MESSAGE on stderr (exit status 1); a good policy prints its "
            "version (exit status 0)."
        ),
        handler=_check,
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the policy, a YAML file")
    check.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout, problems included",
    )


def _check(args: argparse.Namespace) -> int:
    from fabric.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        if args.json:
            problems = [dataclasses.asdict(problem) for problem in exc.problems]
            _print_json({"file": str(args.file), "ok": False, "problems": problems})
        else:
            print(exc.diagnostics(), file=sys.stderr)
        return 1
    if args.json:
        _print_json(
            {
                "file": str(args.file),
                "ok": True,
                "version": policy.version,
                "tenants": sorted(policy.tenants),
                "regions": sorted(policy.regions),
            }
        )
    else:
        tenants, regions = len(policy.tenants), len(policy.regions)
        print(
            f"{args.file}: ok (policy version {policy.version}: "
            f"{_count(tenants, 'tenant')}, {_count(regions, 'region')})"
        )
    return 0


# ----------------------------------------------------------------------------- helpers


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# The subcommands of `fabric policy`, in the order its --help lists them.
# ----------------------------------------------------------------------------- apply, show


def _add_apply(subparsers: Subparsers) -> None:
    apply = add_command(
        subparsers,
        "apply",
        help="apply a policy file to a running fabric (operators only)",
        description=(
            "Send FILE to the head, which validates it, refuses it whole if any problem is "
            "found (or if a live node's region claim would become invalid), else versions "
            "it by digest, signs it and distributes it to every agent. Running work keeps "
            "the version it was admitted under."
        ),
        handler=_apply,
    )
    apply.add_argument("file", type=Path, metavar="FILE", help="the policy, a YAML file")
    apply.add_argument(
        "--dry-run", action="store_true", help="validate against the fabric, apply nothing"
    )
    add_head_args(apply)


def _add_show(subparsers: Subparsers) -> None:
    show = add_command(
        subparsers,
        "show",
        help="print the policy in force and its version",
        description=(
            "Print the policy the head has in force, with its version. Operators and "
            "auditors see all of it; a tenant sees the regions and its own part."
        ),
        handler=_show,
    )
    add_head_args(show)
    show.add_argument("--json", action="store_true", help="print the document as JSON")


def _call_head(args: argparse.Namespace, method: str, request: object) -> Any:
    import grpc
    from fabric.cli._common import CommandError

    with head_stub(args, f"policy {args.policy_command}") as stub:
        try:
            return getattr(stub, method)(request, timeout=timeout(args))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            print(exc.details(), file=sys.stderr)
            raise CommandError(
                "the head refused the policy for the problems above; nothing was applied"
            ) from exc


def _apply(args: argparse.Namespace) -> int:
    from fabric.cli._common import CommandError

    from fabric._proto import fabric_pb2

    try:
        text = args.file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read {args.file}: {e}") from e
    request = fabric_pb2.PolicyRequest(text=text, filename=str(args.file), dry_run=args.dry_run)
    signed = _call_head(args, "ApplyPolicy", request)
    verb = "would apply" if args.dry_run else "applied"
    print(f"{args.file}: {verb} policy version {signed.version}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    from fabric._proto import fabric_pb2

    signed = _call_head(args, "GetPolicy", fabric_pb2.Empty())
    document = json.loads(signed.document) if signed.document else {}
    if args.json:
        _print_json({"version": signed.version, "document": document})
        return 0
    print(f"# policy version {signed.version}")
    if document:
        print(yaml.safe_dump(document, sort_keys=False), end="")
    else:
        print("# the open default policy: every tenant certificate may run anywhere")
    return 0


SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    _add_check,
    add_verify,
    add_diff,
    _add_apply,
    _add_show,
]
