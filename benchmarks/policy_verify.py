"""How long `fabric policy verify` takes on a large policy, and what checking the declared
invariants costs per dispatch.

    python -m benchmarks.policy_verify                  # 50 tenants, 20 regions, 30 invariants
    python -m benchmarks.policy_verify --tenants 10 --regions 5 --invariants 8

The policy is generated: regions in jurisdictions of four regions each, one node claim per
region, tenants that each run in two jurisdictions with two data classes pinned to one
region, and invariants of five kinds (data classes stay in their region, tenants compute
in their jurisdictions, admission keeps a tenant within its task quota, a class stays out
of a jurisdiction, and one on node labels that the rules cannot imply, so that
counterexamples are found and checked too). The per-dispatch figure times
`check_invariants` with the first `--check-invariants` invariants on a dispatch that
satisfies them all, which is the case where every one is evaluated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from typing import Any

from fabric.policy import DispatchFacts, check_invariants, compile_policy, prove_policy


def generate(tenants: int, regions: int, invariants: int) -> dict[str, Any]:
    """A policy document of the given size."""
    names = [f"r{i:02d}" for i in range(regions)]
    jurisdiction = {name: f"J{i // 4}" for i, name in enumerate(names)}
    jurisdictions = sorted(set(jurisdiction.values()))
    document: dict[str, Any] = {
        "apiVersion": "fabric/v1",
        "kind": "Policy",
        "regions": {name: {"jurisdiction": jurisdiction[name]} for name in names},
        "nodes": [{"identity": f"node/{name}-*", "regions": [name]} for name in names],
        "tenants": {},
        "invariants": [],
    }
    placements: dict[str, list[str]] = {}
    for t in range(tenants):
        allowed = sorted(
            {jurisdictions[t % len(jurisdictions)], jurisdictions[(t + 1) % len(jurisdictions)]}
        )
        inside = [r for r in names if jurisdiction[r] in allowed]
        placements[f"t{t:02d}"] = allowed
        document["tenants"][f"t{t:02d}"] = {
            "identities": [f"tenant/t{t:02d}"],
            "placement": {"allow": allowed},
            "residency": {
                "default": allowed,
                "classes": {f"c{t:02d}-{k}": [inside[(t + k) % len(inside)]] for k in range(2)},
            },
            "quotas": {"tasks": 100 + t, "cpus": 8},
        }
    kinds = ["class-region", "tenant-jurisdictions", "task-quota", "class-not-in", "labels"]
    if len(jurisdictions) < 3:  # every tenant runs everywhere: no jurisdiction to keep out of
        kinds.remove("class-not-in")
    for i in range(invariants):
        kind = kinds[i % len(kinds)]
        t = (i * 7) % tenants
        tenant = f"t{t:02d}"
        spec = document["tenants"][tenant]
        label, regions_of = next(iter(spec["residency"]["classes"].items()))
        if kind == "class-region":
            rule = f'"{label}" in inputs.classes implies node.region == "{regions_of[0]}"'
            when = None
        elif kind == "tenant-jurisdictions":
            quoted = ", ".join(f'"{j}"' for j in placements[tenant])
            rule, when = (
                f"node.jurisdiction in {{{quoted}}}",
                (f'tenant == "{tenant}" and action != "transfer"'),
            )
        elif kind == "task-quota":
            rule, when = "usage.tasks + 1 <= quota.tasks + 1", 'action == "task"'
        elif kind == "class-not-in":
            outside = [j for j in jurisdictions if j not in placements[tenant]]
            rule = f'"{label}" in inputs.classes implies node.jurisdiction != "{outside[0]}"'
            when = None
        else:
            rule = f'"{label}" in inputs.classes implies node.labels["confidential"] == "true"'
            when = None
        invariant = {"name": f"inv-{i:02d}", "description": kind, "rule": rule}
        if when is not None:
            invariant["when"] = when
        document["invariants"].append(invariant)
    return document


def passing_dispatch(document: dict[str, Any]) -> DispatchFacts:
    """A task of the first tenant, with its first data class, that breaks no invariant."""
    spec = document["tenants"]["t00"]
    label, (region,) = next(iter(spec["residency"]["classes"].items()))
    return DispatchFacts(
        tenant="t00",
        action="task",
        node_region=region,
        input_regions=frozenset({region}),
        node_labels={"confidential": "true"},
        input_classes=frozenset({label}),
        cpus=1.0,
        usage_tasks=3,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_verify")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--regions", type=int, default=20)
    parser.add_argument("--invariants", type=int, default=30)
    parser.add_argument("--check-invariants", type=int, default=20, metavar="N")
    parser.add_argument("--dispatches", type=int, default=200_000, metavar="N")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    document = generate(args.tenants, args.regions, args.invariants)
    started = time.perf_counter()
    policy = compile_policy(document)
    compiled = time.perf_counter() - started
    verify_times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        proof = prove_policy(policy)
        verify_times.append(time.perf_counter() - started)
    proved = sum(r.proved for r in proof.invariants)
    print(
        f"policy: {args.tenants} tenants, {args.regions} regions, "
        f"{len(policy.invariants)} invariants (load and compile {compiled * 1e3:.1f} ms)"
    )
    print(
        f"verify: {statistics.median(verify_times):.2f} s median of {args.rounds} "
        f"(min {min(verify_times):.2f} s); {proved} proved, "
        f"{len(proof.invariants) - proved} with counterexamples, "
        f"{len(proof.observations)} observations"
    )

    invariants = policy.invariants[: args.check_invariants]
    facts = passing_dispatch(document)
    if check_invariants(invariants, facts, hooks=None) is not None:
        print("the timed dispatch violates an invariant", file=sys.stderr)
        return 1
    per_call = [
        timeit.timeit(
            lambda: check_invariants(invariants, facts, hooks=None), number=args.dispatches
        )
        / args.dispatches
        for _ in range(args.rounds)
    ]
    print(
        f"check_invariants: {statistics.median(per_call) * 1e6:.2f} us per dispatch with "
        f"{len(invariants)} invariants, median of {args.rounds} x {args.dispatches} "
        f"(min {min(per_call) * 1e6:.2f} us)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
