"""Several nodes on loopback: a head and three agents as real processes over mutual TLS.

The driver connects to agent ``n1`` as ``tenant/default``. Every node carries a resource
named after it (``node:<id>``), so ``.options(resources={"node:n3": 1})`` pins work to
``n3``; tasks report where they ran through the runtime context.

This module opens its own driver sessions: a session that another module opened (the
session-scoped ``cluster`` fixture) is set aside while they are open and put back after.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fabric
from fabric import _api, _state
from fabric._cluster import LocalCluster, NodeSpec
from fabric.exceptions import PlacementRefusedError, WorkerCrashedError
from tests.conftest import wait_for

REGIONS = {"n1": "eu-west", "n2": "eu-central", "n3": "us-east"}
CPUS_PER_NODE = 2
# Plenty of each node's own resource: actors keep what they take for their lifetime.
NODE_RESOURCE_AMOUNT = 1000.0
BIG_ELEMENTS = 8 * 1024 * 1024  # float64: 64 MiB
GET_TIMEOUT = 60.0
# How long a blocking task waits for its release file before giving up on its own.
HOLD_TIMEOUT = 60.0
# CPUs of each task in the test of concurrency per node.
SMALL_TASK_CPUS = 0.5
# Fresh clusters started by the test of placement right after start-up.
FRESH_CLUSTERS = 5


def pinned(node_id: str) -> dict[str, float]:
    """The resource request that places work on `node_id`."""
    return {f"node:{node_id}": 1}


def node_specs() -> list[NodeSpec]:
    return [
        NodeSpec(
            node_id,
            region,
            {"CPU": CPUS_PER_NODE, f"node:{node_id}": NODE_RESOURCE_AMOUNT},
            {"zone": region},
        )
        for node_id, region in REGIONS.items()
    ]


@contextlib.contextmanager
def driver_session(
    address: str, certs: Path, *, collect: bool = True
) -> Iterator[fabric.RuntimeContext]:
    """Connect this process to the agent at `address` as tenant/default; disconnect after.

    A session opened elsewhere in this process (and the embedded cluster behind it) is
    kept aside meanwhile and restored afterwards, so other modules are not disturbed.
    `collect=False` skips the garbage collection before connecting, for a caller that
    collected already and must connect at once.
    """
    if collect:
        gc.collect()  # refs of the previous session release themselves to that session
    saved = (_state.client, _api._cluster)
    _state.client, _api._cluster = None, None
    try:
        yield fabric.init(address=address, certs=certs, identity="tenant/default")
    finally:
        gc.collect()
        fabric.shutdown()
        _state.client, _api._cluster = saved


def wait_for_full_view() -> None:
    """Wait until the driver's node sees every node: an agent is ready once it has the
    head's first view, which need not list the agents that joined after it."""
    wait_for(
        lambda: {n["NodeID"] for n in fabric.nodes() if n["Alive"]} == set(REGIONS),
        timeout=30,
        what="the driver's node to see all three nodes",
    )


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Head and agents n1, n2, n3 (2 CPUs each); the driver is connected to n1.

    Its directory (certificates, logs) is kept with pytest's temporary directories.
    """
    with (
        LocalCluster(node_specs(), base_dir=tmp_path_factory.mktemp("cluster3")) as cluster,
        driver_session(cluster.agent_addresses["n1"], cluster.certs_dir),
    ):
        wait_for_full_view()
        yield cluster


# ----------------------------------------------------------------------------- remote code


@fabric.remote
def where() -> str:
    return fabric.get_runtime_context().get_node_id()


@fabric.remote(num_cpus=1)
def hold(marker_dir: str, index: int, release: str) -> str:
    """Mark that this task started, then block until `release` exists."""
    node = fabric.get_runtime_context().get_node_id()
    Path(marker_dir, f"{index}-{node}").touch()
    deadline = time.monotonic() + HOLD_TIMEOUT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear within {HOLD_TIMEOUT} s")
        time.sleep(0.01)
    return node


def big_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(BIG_ELEMENTS)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@fabric.remote
def summarize(array: np.ndarray) -> dict[str, Any]:
    return {
        "node": fabric.get_runtime_context().get_node_id(),
        "shape": array.shape,
        "dtype": str(array.dtype),
        "digest": digest(array),
    }


@fabric.remote
def make_big(seed: int) -> dict[str, Any]:
    return {"node": fabric.get_runtime_context().get_node_id(), "array": big_array(seed)}


@fabric.remote
def transform(made: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": fabric.get_runtime_context().get_node_id(),
        "from": made["node"],
        "array": made["array"][::-1] * 2.0 + 1.0,
    }


class _Tally:
    """A running total that remembers the values it was given, in order."""

    def __init__(self, start: int) -> None:
        self.total = start
        self.seen: list[int] = []

    def add(self, value: int) -> int:
        self.seen.append(value)
        self.total += value
        return self.total

    def history(self) -> list[int]:
        return list(self.seen)

    def node(self) -> str:
        return fabric.get_runtime_context().get_node_id()


Tally: fabric.ActorClass = fabric.remote(_Tally)


@fabric.remote
def use_counter(counter: Any, value: int) -> dict[str, Any]:
    return {
        "node": fabric.get_runtime_context().get_node_id(),
        "total": fabric.get(counter.add.remote(value), timeout=GET_TIMEOUT),
        "actor_node": fabric.get(counter.node.remote(), timeout=GET_TIMEOUT),
    }


# ----------------------------------------------------------------------------- helpers


def markers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def wait_for_markers(directory: Path, count: int, what: str, timeout: float = 30.0) -> None:
    """Wait until `count` tasks have marked their start in `directory`."""
    try:
        wait_for(lambda: len(markers(directory)) == count, timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; started (index-node): {markers(directory)}") from None


def alive_nodes() -> dict[str, dict[str, Any]]:
    return {n["NodeID"]: n for n in fabric.nodes() if n["Alive"]}


# ----------------------------------------------------------------------------- placement


@pytest.mark.usefixtures("cluster3")
def test_pinned_tasks_run_on_their_node() -> None:
    refs = {
        node: [where.options(resources=pinned(node)).remote() for _ in range(3)] for node in REGIONS
    }
    ran = {node: fabric.get(r, timeout=GET_TIMEOUT) for node, r in refs.items()}
    assert ran == {node: [node] * 3 for node in REGIONS}


@pytest.mark.usefixtures("cluster3")
def test_tasks_spill_to_other_nodes_when_the_local_node_is_full(tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    release = tmp_path / "release"
    count = CPUS_PER_NODE * len(REGIONS)
    refs = [hold.remote(str(started), i, str(release)) for i in range(count)]
    try:
        wait_for_markers(
            started,
            count,
            what=f"{count} one-CPU tasks running at once on 3 nodes of {CPUS_PER_NODE} CPUs",
        )
    finally:
        release.touch()
    nodes = fabric.get(refs, timeout=GET_TIMEOUT)
    assert Counter(nodes) == {node: CPUS_PER_NODE for node in REGIONS}


@pytest.mark.usefixtures("cluster3")
def test_each_node_runs_as_many_tasks_at_once_as_its_cpus_allow(tmp_path: Path) -> None:
    """Tasks pinned to a node that fit its free CPUs all run at once: none of them waits
    behind a running task while the node still has a CPU free."""
    started = tmp_path / "started"
    started.mkdir()
    release = tmp_path / "release"
    per_node = int(CPUS_PER_NODE / SMALL_TASK_CPUS)
    small_hold = hold.options(num_cpus=SMALL_TASK_CPUS)
    refs = [
        small_hold.options(resources=pinned(node)).remote(str(started), i, str(release))
        for i, node in enumerate(list(REGIONS) * per_node)
    ]
    try:
        wait_for_markers(
            started,
            len(refs),
            what=f"{per_node} tasks of {SMALL_TASK_CPUS:g} CPU running at once on each node",
        )
    finally:
        release.touch()
    nodes = fabric.get(refs, timeout=GET_TIMEOUT)
    assert Counter(nodes) == {node: per_node for node in REGIONS}


@pytest.mark.usefixtures("cluster3")
def test_an_infeasible_request_is_refused_naming_the_resource() -> None:
    ref = where.options(resources={"nonexistent": 1}).remote()
    with pytest.raises(PlacementRefusedError, match="nonexistent"):
        fabric.get(ref, timeout=GET_TIMEOUT)


# ----------------------------------------------------------------------------- objects


@pytest.mark.usefixtures("cluster3")
def test_a_large_object_put_on_the_drivers_node_is_used_on_another_node() -> None:
    array = big_array(1)
    assert array.nbytes == 64 << 20
    ref = fabric.put(array)
    result = fabric.get(summarize.options(resources=pinned("n3")).remote(ref), timeout=GET_TIMEOUT)
    assert result == {
        "node": "n3",
        "shape": array.shape,
        "dtype": "float64",
        "digest": digest(array),
    }
    # Passed by value, it is put on n1 for the call and still crosses to n2.
    by_value = summarize.options(resources=pinned("n2")).remote(array)
    assert fabric.get(by_value, timeout=GET_TIMEOUT)["digest"] == digest(array)


@pytest.mark.usefixtures("cluster3")
def test_a_large_result_made_on_another_node_is_fetched_by_the_driver() -> None:
    made = fabric.get(make_big.options(resources=pinned("n3")).remote(2), timeout=GET_TIMEOUT)
    assert made["node"] == "n3"
    assert made["array"].nbytes == 64 << 20
    assert digest(made["array"]) == digest(big_array(2))


@pytest.mark.usefixtures("cluster3")
def test_a_large_object_flows_n2_to_n3_to_the_driver() -> None:
    made = make_big.options(resources=pinned("n2")).remote(3)
    out = fabric.get(transform.options(resources=pinned("n3")).remote(made), timeout=GET_TIMEOUT)
    assert (out["from"], out["node"]) == ("n2", "n3")
    expected = big_array(3)[::-1] * 2.0 + 1.0
    assert digest(out["array"]) == digest(expected)


# ----------------------------------------------------------------------------- actors


@pytest.mark.usefixtures("cluster3")
def test_an_actor_on_another_node_keeps_state_and_order_and_serves_a_third_node() -> None:
    counter = Tally.options(resources=pinned("n2")).remote(10)
    assert fabric.get(counter.node.remote(), timeout=GET_TIMEOUT) == "n2"
    values = list(range(1, 31))
    totals = fabric.get([counter.add.remote(v) for v in values], timeout=GET_TIMEOUT)
    expected = [10 + sum(values[: i + 1]) for i in range(len(values))]
    assert totals == expected
    assert fabric.get(counter.history.remote(), timeout=GET_TIMEOUT) == values

    remote_use = use_counter.options(resources=pinned("n3")).remote(counter, 1000)
    assert fabric.get(remote_use, timeout=GET_TIMEOUT) == {
        "node": "n3",
        "total": expected[-1] + 1000,
        "actor_node": "n2",
    }
    # The driver's handle sees the call made from n3, after its own.
    assert fabric.get(counter.history.remote(), timeout=GET_TIMEOUT) == [*values, 1000]
    fabric.kill(counter)


# ----------------------------------------------------------------------------- cluster view


def test_nodes_and_cluster_resources(cluster3: LocalCluster) -> None:
    nodes = alive_nodes()
    assert len(fabric.nodes()) == 3
    assert {k: n["Region"] for k, n in nodes.items()} == REGIONS
    assert {k: n["Address"] for k, n in nodes.items()} == cluster3.agent_addresses
    assert {k: n["Labels"] for k, n in nodes.items()} == {
        k: {"zone": r} for k, r in REGIONS.items()
    }
    for node_id, node in nodes.items():
        assert node["Resources"] == {
            "CPU": float(CPUS_PER_NODE),
            f"node:{node_id}": NODE_RESOURCE_AMOUNT,
        }
    assert fabric.get_runtime_context().get_node_id() == "n1"
    assert fabric.cluster_resources() == {
        "CPU": float(CPUS_PER_NODE * 3),
        **{f"node:{n}": NODE_RESOURCE_AMOUNT for n in REGIONS},
    }


def test_work_can_be_pinned_to_any_node_as_soon_as_the_cluster_is_ready(tmp_path: Path) -> None:
    """Once LocalCluster.start() returns, every node can place work on every other node.

    The driver connects to the agent that became ready first (the one whose view of the
    others is the oldest) and at once pins work to the others. The window in which a view
    may still miss a peer is short, so this is repeated on a few fresh clusters.
    """
    for attempt in range(1, FRESH_CLUSTERS + 1):
        gc.collect()
        with LocalCluster(node_specs(), base_dir=tmp_path / f"cluster-{attempt}") as cluster:
            first, *others = sorted(
                REGIONS, key=lambda n: (cluster.base_dir / "run" / f"{n}.json").stat().st_mtime_ns
            )
            with driver_session(cluster.agent_addresses[first], cluster.certs_dir, collect=False):
                refs = {n: where.options(resources=pinned(n)).remote() for n in reversed(others)}
                seen = sorted(n["NodeID"] for n in fabric.nodes())
                ran: dict[str, str] = {}
                for node, ref in refs.items():
                    try:
                        ran[node] = fabric.get(ref, timeout=GET_TIMEOUT)
                    except PlacementRefusedError as e:
                        ran[node] = f"refused: {e}"
            assert ran == {node: node for node in others}, (
                f"fresh cluster {attempt}/{FRESH_CLUSTERS}: the driver's node {first} "
                f"listed {seen} just after the submits"
            )


# ----------------------------------------------------------------------------- node loss


@pytest.fixture
def cluster_to_break(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own, for a test that kills one of its agents; driver on n1."""
    cluster = LocalCluster(node_specs(), base_dir=tmp_path / "cluster").start()
    stores: list[str] = []
    try:
        stores += [
            json.loads((cluster.base_dir / "run" / f"{node_id}.json").read_text())["store"]
            for node_id in REGIONS
        ]
        with driver_session(cluster.agent_addresses["n1"], cluster.certs_dir):
            wait_for_full_view()
            yield cluster
    finally:
        cluster.stop()
        # An agent killed outright leaves its object store behind.
        for store in stores:
            shutil.rmtree(store, ignore_errors=True)


def test_a_killed_agent_leaves_the_cluster_and_work_goes_on(
    cluster_to_break: LocalCluster, tmp_path: Path
) -> None:
    cluster = cluster_to_break
    assert set(alive_nodes()) == set(REGIONS)
    # A task running on n3 when it dies, with no retries left.
    started = tmp_path / "started"
    started.mkdir()
    release = tmp_path / "release"
    try:
        doomed = hold.options(resources=pinned("n3"), max_retries=0).remote(
            str(started), 0, str(release)
        )
        wait_for_markers(started, 1, what="the task on n3 to start")
        assert markers(started) == ["0-n3"]

        cluster.kill_agent("n3")
        assert cluster.processes["n3"].returncode == -signal.SIGKILL

        wait_for(lambda: len(fabric.nodes()) == 2, timeout=30, what="nodes() to drop n3")
        assert set(alive_nodes()) == {"n1", "n2"}
        assert fabric.cluster_resources()["CPU"] == float(CPUS_PER_NODE * 2)
        with pytest.raises(WorkerCrashedError, match="n3"):
            fabric.get(doomed, timeout=GET_TIMEOUT)
    finally:
        release.touch()

    # New work runs on the remaining nodes.
    for node in ("n1", "n2"):
        ref = where.options(resources=pinned(node)).remote()
        assert fabric.get(ref, timeout=GET_TIMEOUT) == node
    spread = fabric.get([where.remote() for _ in range(8)], timeout=GET_TIMEOUT)
    assert set(spread) <= {"n1", "n2"}
    made = fabric.get(make_big.options(resources=pinned("n2")).remote(4), timeout=GET_TIMEOUT)
    assert (made["node"], digest(made["array"])) == ("n2", digest(big_array(4)))
    # n3 is gone, and so is the only node that had its resource.
    with pytest.raises(PlacementRefusedError, match="node:n3"):
        fabric.get(where.options(resources=pinned("n3")).remote(), timeout=GET_TIMEOUT)
