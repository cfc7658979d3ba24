"""`fabric demo`: a demo workload on a local multi-region cluster."""

from __future__ import annotations

import argparse

from fabric.cli._common import add_command


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        subparsers,
        "demo",
        help="run a demo workload on a local cluster of three agents in three regions",
        handler=_run,
    )


def _run(args: argparse.Namespace) -> int:
    from fabric._demo import run

    run()
    return 0
