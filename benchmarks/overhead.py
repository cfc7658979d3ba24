"""What a feature costs on the hot path: the same workloads on the same one-node, two-CPU
cluster with and without it, rounds interleaved, medians printed side by side with the
overhead.

    python -m benchmarks.overhead policy|audit|budget [--rounds N] [--only a,b] [--quick]

`policy`: the open default policy against the two-tenant, three-region policy
(`configs/policy-two-tenants.yaml`, the driver connected as tenant alice, whose data must
stay in the EU). `audit`: agents that record no decisions against the default, where every
decision is journaled (fsync'd) before it is acted on and forwarded to the head's log.
`budget`: the two-tenant policy against the same policy with budgets for alice (every task
armed and watched by the budget monitor, CPU seconds and tasks leased from the head).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import workloads
from benchmarks.run import ChildRun, _median_figures, run_child

DEFAULT_BENCHMARKS = "task_sync,task_batch,actor_batch,put_get_small"
# comparison -> (baseline variant, its title), (variant with the feature, its title)
COMPARISONS = {
    "policy": (("fabric", "default policy"), ("fabric-policy", "2 tenants, 3 regions")),
    "audit": (("fabric-noaudit", "audit off"), ("fabric", "audit on")),
    "budget": (("fabric-policy", "no budgets"), ("fabric-budget", "budgets")),
}


def overhead(default: float, governed: float, lower_is_better: bool) -> float:
    """How much worse the governed figure is, in percent (negative: better)."""
    if not default or not governed:
        return float("nan")
    if lower_is_better:
        return (governed / default - 1.0) * 100.0
    return (default / governed - 1.0) * 100.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", choices=sorted(COMPARISONS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=DEFAULT_BENCHMARKS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    names = workloads.parse_names(args.only)
    (base, base_title), (variant, variant_title) = COMPARISONS[args.comparison]
    titles = {base: base_title, variant: variant_title}
    runs: dict[str, list[ChildRun]] = {s: [] for s in titles}
    for round_no in range(1, args.rounds + 1):
        for system in titles:
            print(f"round {round_no}/{args.rounds}: {titles[system]} ...", file=sys.stderr)
            run = run_child(system, sys.executable, round_no, names, args.quick, args.timeout)
            if not run.ok:
                print(f"  failed: {run.fatal or run.errors}", file=sys.stderr)
            runs[system].append(run)
    medians = {s: _median_figures(rs) for s, rs in runs.items()}
    print(f"\nmedian of {args.rounds} round(s){'; quick counts' if args.quick else ''}")
    print(f"{'figure':<46}{base_title:>16}{variant_title:>22}{'overhead':>10}")
    missing = False
    for fig in workloads.FIGURES:
        if fig.benchmark not in names:
            continue
        a = medians[base].get(fig.key)
        b = medians[variant].get(fig.key)
        if a is None or b is None:
            missing = True
            print(
                f"{fig.label:<34}{'error' if a is None else f'{a:,.0f}':>16}"
                f"{'error' if b is None else f'{b:,.0f}':>22}"
            )
            continue
        cost = overhead(a, b, fig.lower_is_better)
        print(f"{fig.label:<46}{a:>16,.0f}{b:>22,.0f}{cost:>9.1f}%")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
