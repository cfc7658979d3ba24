"""``fabric policy verify`` and ``fabric policy diff``: proofs about policy files, with Z3.

Both load their files exactly as ``fabric policy check`` does (a file with problems is
reported the same way, exit status 1) and talk to no fabric.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.cli._common import add_command

if TYPE_CHECKING:
    from fabric.cli._policy import Subparsers
    from fabric.policy import Counterexample, Policy, PolicyProof


# ----------------------------------------------------------------------------- verify


def add_verify(subparsers: Subparsers) -> None:
    verify = add_command(
        subparsers,
        "verify",
        help="prove a policy file's invariants from its rules, or show a counterexample",
        description=(
            "Prove that every invariant of FILE holds for every dispatch its placement, "
            "residency and quota rules allow, or print a dispatch they allow that breaks "
            "it (checked against the runtime's own evaluator). Also report tenants that can "
            "never run, data classes that can never be placed, invariants that never apply "
            "or together deny a tenant everything, and node claims that add nothing. Exit "
            "status 1 when an invariant is not proved (or, with --strict, when anything is "
            "reported), 0 otherwise."
        ),
        handler=_verify,
    )
    verify.add_argument("file", type=Path, metavar="FILE", help="the policy, a YAML file")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--strict", action="store_true", help="fail on reported observations too")


def _verify(args: argparse.Namespace) -> int:
    from fabric.policy import prove_policy

    policy = _load(args.file, args.json)
    if policy is None:
        return 1
    proof = prove_policy(policy)
    failed = not proof.proved or (args.strict and bool(proof.observations))
    if args.json:
        _print_json(
            {
                "file": str(args.file),
                "version": proof.version,
                "proved": proof.proved,
                "invariants": [
                    {
                        "name": result.invariant,
                        "proved": result.proved,
                        "counterexample": _facts(result.counterexample),
                        "violation": result.violation.message if result.violation else None,
                    }
                    for result in proof.invariants
                ],
                "observations": [dataclasses.asdict(o) for o in proof.observations],
            }
        )
        return 1 if failed else 0
    _print_proof(args.file, policy, proof)
    return 1 if failed else 0


def _print_proof(file: Path, policy: Policy, proof: PolicyProof) -> None:
    descriptions = {i.name: i.description for i in policy.invariants}
    for result in proof.invariants:
        about = f" ({descriptions[result.invariant]})" if descriptions[result.invariant] else ""
        if result.proved:
            print(f"proved: {result.invariant}{about}")
            continue
        assert result.counterexample is not None and result.violation is not None
        print(f"NOT PROVED: {result.invariant}{about}: the rules allow this dispatch:")
        for line in result.counterexample.lines():
            print(f"    {line}")
        print(f"  and the dispatch check denies it: {result.violation.message}")
    for observation in proof.observations:
        print(f"warning: {observation.message}")
    failed = sum(not r.proved for r in proof.invariants)
    total = len(proof.invariants)
    if failed:
        print(f"{file}: {failed} of {total} invariant{'' if total == 1 else 's'} not proved")
    else:
        print(
            f"{file}: ok (policy version {proof.version}: "
            f"{total} invariant{'' if total == 1 else 's'} proved)"
        )


# ----------------------------------------------------------------------------- diff


def add_diff(subparsers: Subparsers) -> None:
    diff = add_command(
        subparsers,
        "diff",
        help="compare two policy files; --prove-narrower proves NEW allows nothing more",
        description=(
            "List what changed from OLD to NEW: regions, node claims, tenants, roles and "
            "invariants. With --prove-narrower, also prove that NEW allows no dispatch that "
            "OLD refused (by their rules and invariants together), or print one that it "
            "does, with OLD's reason for refusing it (exit status 1)."
        ),
        handler=_diff,
    )
    diff.add_argument("old", type=Path, metavar="OLD", help="the policy in force, a YAML file")
    diff.add_argument("new", type=Path, metavar="NEW", help="the proposed policy, a YAML file")
    diff.add_argument(
        "--prove-narrower",
        action="store_true",
        help="prove NEW allows nothing OLD refused, or show a dispatch it does",
    )
    diff.add_argument("--json", action="store_true", help="print the result as JSON")


def _diff(args: argparse.Namespace) -> int:
    from fabric.policy import prove_narrower

    old, new = _load(args.old, args.json), _load(args.new, args.json)
    if old is None or new is None:
        return 1
    changes = policy_changes(old.document, new.document)
    result: dict[str, Any] = {"old": old.version, "new": new.version, "changes": changes}
    proof = prove_narrower(old, new) if args.prove_narrower else None
    if proof is not None:
        result["narrower"] = proof.proved
        result["witness"] = _facts(proof.witness)
        result["old_refusal"] = proof.old_refusal or None
    if args.json:
        _print_json(result)
    else:
        print(f"{args.old} (version {old.version}) -> {args.new} (version {new.version})")
        for change in changes or ["no change"]:
            print(f"  {change}")
        if proof is not None and proof.proved:
            print(f"proved: {args.new} allows nothing {args.old} refused")
        elif proof is not None:
            assert proof.witness is not None
            print(f"NOT NARROWER: {args.new} allows this dispatch, which {args.old} refused:")
            for line in proof.witness.lines():
                print(f"    {line}")
            print(f"  {args.old} refused it: {proof.old_refusal}")
    return 1 if proof is not None and not proof.proved else 0


def policy_changes(old: Any, new: Any) -> list[str]:
    """What changed between two policy documents, one line per added, removed or changed
    region, node claim, tenant, role list and invariant."""
    changes: list[str] = []

    def compare(what: str, before: dict[str, Any], after: dict[str, Any]) -> None:
        for name in sorted(before.keys() | after.keys()):
            if name not in after:
                changes.append(f"{what} {name} removed")
            elif name not in before:
                changes.append(f"{what} {name} added")
            elif before[name] != after[name]:
                keys = sorted(
                    k
                    for k in before[name].keys() | after[name].keys()
                    if before[name].get(k) != after[name].get(k)
                )
                changes.append(f"{what} {name} changed: {', '.join(keys)}")

    compare("region", old.get("regions", {}), new.get("regions", {}))
    claims = (
        {c["identity"]: c for c in old.get("nodes", [])},
        {c["identity"]: c for c in new.get("nodes", [])},
    )
    compare("node claim", *claims)
    compare("tenant", old.get("tenants", {}), new.get("tenants", {}))
    roles = old.get("roles", {}), new.get("roles", {})
    for role in sorted(roles[0].keys() | roles[1].keys()):
        if roles[0].get(role, []) != roles[1].get(role, []):
            changes.append(f"roles.{role} changed")
    invariants = (
        {i["name"]: i for i in old.get("invariants", [])},
        {i["name"]: i for i in new.get("invariants", [])},
    )
    compare("invariant", *invariants)
    known = {"apiVersion", "kind", "regions", "nodes", "tenants", "roles", "invariants"}
    for key in sorted((old.keys() | new.keys()) - known):
        if old.get(key) != new.get(key):
            changes.append(f"{key} changed")
    return changes


# ----------------------------------------------------------------------------- helpers


def _load(path: Path, as_json: bool) -> Policy | None:
    """The policy at `path`, or None after reporting its problems as `check` does."""
    from fabric.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        if as_json:
            problems = [dataclasses.asdict(problem) for problem in exc.problems]
            _print_json({"file": str(path), "ok": False, "problems": problems})
        else:
            print(exc.diagnostics(), file=sys.stderr)
        return None


def _facts(counterexample: Counterexample | None) -> dict[str, Any] | None:
    if counterexample is None:
        return None
    facts = dataclasses.asdict(counterexample.facts)
    for key, value in facts.items():
        if isinstance(value, frozenset):
            facts[key] = sorted(value)
    facts["node_identity"] = counterexample.node
    return facts


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
