"""`fabric demo`: a demo workload on a local multi-region cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from fabric.cli._common import add_command


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = add_command(
        subparsers,
        "demo",
        help="run a demo workload on a local cluster of three agents in three regions",
        description=(
            "Without --policy: a demo workload on three agents in three regions. With "
            "--policy FILE: one agent per region of the policy, and every tenant's work "
            "placed and refused as the policy says."
        ),
        handler=_run,
    )
    demo.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="a policy YAML (e.g. configs/policy-three-tenants.yaml)",
    )


def _run(args: argparse.Namespace) -> int:
    if args.policy is not None:
        from fabric._demo_policy import run as run_policy

        run_policy(args.policy)
        return 0
    from fabric._demo import run

    run()
    return 0
