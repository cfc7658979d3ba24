"""The workload `fabric demo` runs: a local cluster of three agents in three regions.

Everything is real: the head and the agents are separate processes, each with its own
certificate from a fresh CA, talking mutual-TLS gRPC; objects move agent to agent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

import fabric
from fabric._cluster import LocalCluster, NodeSpec

REGIONS = {"eu-west-1": "eu-west", "eu-central-1": "eu-central", "us-east-1": "us-east"}


def _node_resource(node_id: str) -> dict[str, float]:
    return {f"node:{node_id}": 1.0}


@fabric.remote
def where(i: int, seconds: float = 0.0) -> tuple[int, str, str]:
    time.sleep(seconds)  # long enough that the driver's node fills up and work spills
    ctx = fabric.get_runtime_context()
    return i, ctx.get_node_id(), ctx.region


@fabric.remote
def checksum(array: np.ndarray) -> tuple[str, float]:
    return fabric.get_runtime_context().get_node_id(), float(array.sum())


@fabric.remote
def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@fabric.remote
def runaway() -> None:
    while True:  # a bug: it never ends
        pass


class _Ledger:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def record(self, entry: str) -> tuple[str, int]:
        self.entries.append(entry)
        return fabric.get_runtime_context().get_node_id(), len(self.entries)


Ledger = fabric.remote(_Ledger)


def run(print_: Callable[[str], Any] = print) -> dict[str, Any]:
    """Start the cluster, run the workload, print what ran where; returns the facts."""
    started = time.perf_counter()
    nodes = [
        NodeSpec(node, region, {"CPU": 1.0, **_node_resource(node)}, {"region": region})
        for node, region in REGIONS.items()
    ]
    facts: dict[str, Any] = {}
    with LocalCluster(nodes) as cluster:
        driver_node = "eu-west-1"
        fabric.init(
            address=cluster.agent_addresses[driver_node],
            certs=cluster.certs_dir,
            identity="tenant/default",
        )
        try:
            print_(
                f"Fabric demo: head and {len(nodes)} agents as separate processes, "
                f"mutual TLS with a fresh CA ({time.perf_counter() - started:.1f} s to start)"
            )
            print_(f"  {'NODE':<14}{'REGION':<12}ADDRESS")
            for info in sorted(fabric.nodes(), key=lambda n: n["NodeID"]):
                print_(f"  {info['NodeID']:<14}{info['Region']:<12}{info['Address']}")

            print_(
                "\n12 tasks of 0.3 s, spread by free resources "
                "(the driver is connected to eu-west-1):"
            )
            results = fabric.get([where.remote(i, 0.3) for i in range(12)])
            counts = Counter((node, region) for _, node, region in results)
            for (node, region), n in sorted(counts.items()):
                print_(f"  {node:<14}{region:<12}{n} task(s)")
            facts["spread"] = {node: n for (node, _), n in counts.items()}

            print_("\nOne task pinned to each node:")
            pinned = fabric.get(
                [
                    where.options(resources=_node_resource(node)).remote(i)
                    for i, node in enumerate(REGIONS)
                ]
            )
            for _, node, region in pinned:
                print_(f"  ran on {node:<14}({region})")
            facts["pinned"] = [node for _, node, _ in pinned]

            big = fabric.put(np.ones(4 * 1024 * 1024))  # 32 MB, stored on eu-west-1
            node, total = fabric.get(
                checksum.options(resources=_node_resource("us-east-1")).remote(big)
            )
            print_(
                f"\nA 32 MB array put on {driver_node}, summed on {node} "
                f"(moved agent to agent in chunks over mTLS): {total:,.0f}"
            )
            made = make_array.options(resources=_node_resource("eu-central-1")).remote(1_000_000)
            node2, total2 = fabric.get(
                checksum.options(resources=_node_resource("us-east-1")).remote(made)
            )
            print_(f"An 8 MB array made on eu-central-1, summed on {node2}: {total2:,.0f}")
            facts["transfers"] = [(node, total), (node2, total2)]

            ledger = Ledger.options(resources=_node_resource("eu-central-1")).remote()
            records = fabric.get([ledger.record.remote(f"entry {i}") for i in range(5)])
            print_(
                f"\nActor Ledger lives on {records[-1][0]}; 5 calls ran in order: "
                f"{[n for _, n in records]}"
            )
            facts["actor"] = records

            stopped_at = time.perf_counter()
            try:
                fabric.get(runaway.options(budget={"cpu_seconds": 0.5}).remote())
            except fabric.exceptions.BudgetExceededError as error:
                print_(
                    f"\nA runaway task under budget={{'cpu_seconds': 0.5}} was stopped after "
                    f"{time.perf_counter() - stopped_at:.1f} s: {error.budget}, limit "
                    f"{error.limit:g} s, measured {error.measured:.2f} s"
                )
                facts["stopped"] = (error.budget, error.limit)
            print_(f"\nDone in {time.perf_counter() - started:.1f} s.")
        finally:
            fabric.shutdown()
    return facts
