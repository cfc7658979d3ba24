"""What the tenancy policy costs on the hot path: the same workloads on the same one-node,
two-CPU cluster, under the open default policy and under the two-tenant, three-region policy
(`configs/policy-two-tenants.yaml`, driver connected as tenant alice, whose data must stay in
the EU), rounds interleaved, medians printed side by side with the overhead.

    python -m benchmarks.policy_overhead [--rounds N] [--only a,b] [--quick]
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
SYSTEMS = {"fabric": "default policy", "fabric-policy": "2 tenants, 3 regions"}


def overhead(default: float, governed: float, lower_is_better: bool) -> float:
    """How much worse the governed figure is, in percent (negative: better)."""
    if not default or not governed:
        return float("nan")
    if lower_is_better:
        return (governed / default - 1.0) * 100.0
    return (default / governed - 1.0) * 100.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=DEFAULT_BENCHMARKS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    names = workloads.parse_names(args.only)
    runs: dict[str, list[ChildRun]] = {s: [] for s in SYSTEMS}
    for round_no in range(1, args.rounds + 1):
        for system in SYSTEMS:
            print(f"round {round_no}/{args.rounds}: {SYSTEMS[system]} ...", file=sys.stderr)
            run = run_child(system, sys.executable, round_no, names, args.quick, args.timeout)
            if not run.ok:
                print(f"  failed: {run.fatal or run.errors}", file=sys.stderr)
            runs[system].append(run)
    medians = {s: _median_figures(rs) for s, rs in runs.items()}
    print(f"\nmedian of {args.rounds} round(s){'; quick counts' if args.quick else ''}")
    print(f"{'figure':<34}{'default policy':>16}{'2 tenants, 3 regions':>22}{'overhead':>10}")
    missing = False
    for fig in workloads.FIGURES:
        if fig.benchmark not in names:
            continue
        a = medians["fabric"].get(fig.key)
        b = medians["fabric-policy"].get(fig.key)
        if a is None or b is None:
            missing = True
            print(
                f"{fig.label:<34}{'error' if a is None else f'{a:,.0f}':>16}"
                f"{'error' if b is None else f'{b:,.0f}':>22}"
            )
            continue
        cost = overhead(a, b, fig.lower_is_better)
        print(f"{fig.label:<34}{a:>16,.0f}{b:>22,.0f}{cost:>9.1f}%")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
