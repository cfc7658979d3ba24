"""Node loss on loopback: work running there moves on, objects held only there come back
from their lineage, and what cannot come back fails saying why.

Three agents. The driver's (``us-1``, us-east) owns everything the driver submits, but
under this policy alice's data may live only in the EU: results made on ``eu-1`` and
``eu-2`` never pass through the driver's node, so they exist only where they were made,
and a chain of tasks lives only on the nodes that ran it. ``us-1`` could run the tasks (it
has the ``work`` resource they ask for and is idle), so every placement on an EU node is the
policy's doing. Killing a node with SIGKILL loses what only it held; the owner runs the
tasks that made it again, link by link, inside the EU. The data may not reach the driver,
so the tasks report where they ran and what they found in files the test reads.
"""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fabric
from fabric import _api, _state
from fabric._cluster import LocalCluster, NodeSpec
from fabric.exceptions import ActorDiedError, ObjectLostError, PlacementRefusedError
from tests.conftest import wait_for

TIMEOUT = 60.0
WORK: dict[str, float] = {"work": 1}
ELEMENTS = 64 * 1024  # float64: 512 KiB, stored rather than inline
CHAIN = 10
EU = ("eu-1", "eu-2")

POLICY = Path(__file__).parent.parent / "configs" / "policy-eu-only.yaml"


@contextlib.contextmanager
def session_as(address: str, certs: Path, identity: str) -> Iterator[None]:
    """This process connected to the agent at `address` as `identity`, the session of
    another module set aside meanwhile (as `tests.test_multinode.driver_session` does)."""
    gc.collect()
    saved = (_state.client, _api._cluster)
    _state.client, _api._cluster = None, None
    try:
        fabric.init(address=address, certs=certs, identity=identity)
        yield
    finally:
        gc.collect()
        fabric.shutdown()
        _state.client, _api._cluster = saved


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    nodes = [
        NodeSpec("us-1", "us-east", {"CPU": 2, "work": 100}),
        NodeSpec("eu-1", "eu-central", {"CPU": 2, "work": 100}),
        NodeSpec("eu-2", "eu-central", {"CPU": 2, "work": 100}),
    ]
    with (
        LocalCluster(nodes, policy=POLICY, tenants=("alice",)) as cluster,
        session_as(cluster.agent_addresses["us-1"], cluster.certs_dir, "tenant/alice"),
    ):
        wait_for(lambda: len(fabric.nodes()) == 3, TIMEOUT, "us-1 to see all three nodes")
        yield cluster


# ----------------------------------------------------------------------------- remote code


def _log(log: str, k: int) -> None:
    with open(log, "a") as f:
        f.write(f"{k} {fabric.get_runtime_context().get_node_id()}\n")


@fabric.remote
def zeros(elements: int, log: str) -> np.ndarray:
    _log(log, 0)
    return np.zeros(elements)


@fabric.remote
def step(array: np.ndarray, k: int, log: str) -> np.ndarray:
    _log(log, k)
    return array + 1


@fabric.remote
def held(array: np.ndarray, k: int, log: str, release: str) -> np.ndarray:
    """A step that waits for the test's go (at most TIMEOUT) before it finishes."""
    _log(log, k)
    deadline = time.monotonic() + TIMEOUT
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return array + 1


@fabric.remote
def check(array: np.ndarray, expected: float, report: str) -> None:
    with open(report, "w") as f:
        f.write("ok" if array.shape == (ELEMENTS,) and np.all(array == expected) else "wrong")


class _Maker:
    def make(self, log: str) -> np.ndarray:
        _log(log, 0)
        return np.full(ELEMENTS, 7.0)


Maker: fabric.ActorClass = fabric.remote(_Maker)


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self, log: str) -> int:
        self.n += 1
        _log(log, self.n)
        return self.n


Counter: fabric.ActorClass = fabric.remote(_Counter)


class _SlowStart:
    """An actor whose constructor waits for the test's go (at most TIMEOUT)."""

    def __init__(self, log: str, release: str) -> None:
        _log(log, 0)
        deadline = time.monotonic() + TIMEOUT
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def where(self, log: str) -> None:
        _log(log, 1)


SlowStart: fabric.ActorClass = fabric.remote(_SlowStart)


# ----------------------------------------------------------------------------- helpers


def audit(cluster: LocalCluster) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            "fabric", "audit", "query", "--address", cluster.head_address,
            "--certs", str(cluster.certs_dir), "--identity", "operator/admin",
            "--format", "jsonl",
        ],
        capture_output=True, text=True, check=True, timeout=TIMEOUT,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def runs(log: Path) -> list[tuple[int, str]]:
    """(step, node) of every run so far, in the order they started."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(k), node) for k, node in (line.split() for line in lines)]


def chain(log: Path, length: int = CHAIN) -> list[Any]:
    arrays = [zeros.options(resources=WORK).remote(ELEMENTS, str(log))]
    for k in range(1, length):
        arrays.append(step.options(resources=WORK).remote(arrays[-1], k, str(log)))
    return arrays


def wait_finished(cluster: LocalCluster, refs: list[Any]) -> None:
    """Wait until the tasks of `refs` finished, by the audit log (their results may not
    come to the driver, so `fabric.wait` would say nothing)."""
    tasks = {ref.task_id().hex() for ref in refs}

    def done() -> bool:
        return tasks <= {e["task"] for e in audit(cluster) if e["kind"] == "task.finish"}

    wait_for(done, TIMEOUT, "the tasks to finish")


def verified(ref: Any, expected: float, report: Path) -> str:
    """What a check of `ref`, run where its data may be, found ("ok", "wrong"), or "no
    report" when the check could not run. (Its own result, derived from EU data, may not
    come to the driver either: waiting for it is enough.)"""
    done = check.options(resources=WORK).remote(ref, expected, str(report))
    ready, _ = fabric.wait([done], timeout=TIMEOUT)
    assert ready, "the check did not finish"
    return report.read_text() if report.exists() else "no report"


# ----------------------------------------------------------------------------- tests


def test_a_chain_lost_with_its_node_is_rebuilt_link_by_link_inside_its_region(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    arrays = chain(log)
    wait_finished(cluster, arrays)
    first = dict(runs(log))
    assert set(first.values()) <= set(EU)  # us-1 was free, but the data may not go there
    victim = first[CHAIN - 1]  # the node holding the end of the chain
    cluster.kill_agent(victim)
    # Made again on demand: the last link, the link before it if that was lost too, and so
    # on back to the first link the node left still holds. Nothing else is run again.
    needed = []
    for k in range(CHAIN - 1, -1, -1):
        if first[k] != victim:
            break
        needed.append(k)

    assert verified(arrays[-1], CHAIN - 1, tmp_path / "report") == "ok"
    survivor = ({*EU} - {victim}).pop()
    tasks = {arrays[k].task_id().hex(): k for k in needed}

    def remade() -> bool:
        reruns = runs(log)[CHAIN:]
        entries = audit(cluster)
        rebuilt = {e["task"] for e in entries if e["kind"] == "object.rebuild"}
        served = [tasks[e["task"]] for e in entries if e["rules"] == ["lineage.copy"]]
        return (
            rebuilt == set(tasks)
            # each needed link once: run again on the EU node left, or served from a copy
            and sorted([k for k, _ in reruns] + served) == sorted(needed)
            and {node for _, node in reruns} <= {survivor}
        )

    wait_for(remade, TIMEOUT, "the lost links the check needs to be made again, once")
    entries = audit(cluster)
    rebuilds = [e for e in entries if e["kind"] == "object.rebuild"]
    assert all(e["rules"] == ["lineage.rebuild"] and e["tenant"] == "alice" for e in rebuilds)
    assert any(e["kind"] == "node.loss" and victim in e["reasons"][0] for e in entries)


def test_work_running_on_a_lost_node_runs_again_elsewhere(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log, release = tmp_path / "runs.log", tmp_path / "release"
    base = zeros.options(resources=WORK).remote(ELEMENTS, str(log))
    running = [
        held.options(resources=WORK).remote(base, k, str(log), str(release)) for k in (1, 2, 3)
    ]
    wait_for(lambda: len(runs(log)) == 4, TIMEOUT, "the held steps to start")
    first = dict(runs(log))
    victim = first[1]
    cluster.kill_agent(victim)
    release.touch()
    for k, ref in enumerate(running, start=1):
        assert verified(ref, 1, tmp_path / f"report-{k}") == "ok"
    retries = [e for e in audit(cluster) if e["kind"] == "task.retry"]
    moved = {ref.task_id().hex() for k, ref in enumerate(running, 1) if first[k] == victim}
    assert moved and moved <= {e["task"] for e in retries}
    assert all(e["rules"] == ["node.lost"] for e in retries)
    assert {node for _, node in runs(log)[4:]} <= set(EU) - {victim}


def test_work_with_no_node_left_in_its_region_fails_rather_than_moves(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log, release = tmp_path / "runs.log", tmp_path / "release"
    base = zeros.options(resources=WORK).remote(ELEMENTS, str(log))
    running = [held.options(resources=WORK).remote(base, 1, str(log), str(release))]
    wait_for(lambda: len(runs(log)) == 2, TIMEOUT, "the held step to start")
    for node in EU:
        cluster.kill_agent(node)
    release.touch()
    # us-1 is alive, idle and has the resource, but alice's data may not live there.
    with pytest.raises(PlacementRefusedError, match=r"place\.no-matching-node.*|eu-central"):
        fabric.get(running[0], timeout=TIMEOUT)
    assert {node for _, node in runs(log)} <= set(EU)
    task = running[0].task_id().hex()
    entries = [e for e in audit(cluster) if e["task"] == task]
    assert any(e["kind"] == "task.retry" for e in entries)
    assert not any("fits on us-1" in r for e in entries for r in e["reasons"])


def test_an_actor_lost_with_its_node_is_dead_and_its_results_cannot_be_rebuilt(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    maker = Maker.options(resources=WORK).remote()
    made = maker.make.remote(str(log))
    wait_finished(cluster, [made])  # its bytes stay on the actor's node
    cluster.kill_agent(dict(runs(log))[0])

    def lost() -> list[dict[str, Any]]:
        return [
            e
            for e in audit(cluster)
            if e["kind"] == "object.lost" and made.hex() in e["reasons"][0]
        ]

    found = wait_for(lost, TIMEOUT, "the loss in the audit log")
    assert isinstance(found, list)
    assert found[0]["rules"] == ["lineage.lost"] and found[0]["tenant"] == "alice"
    # (The driver may not read it anyway; a task on the EU node left learns it is lost.)
    with pytest.raises(ObjectLostError, match="not made by a task that can run again"):
        fabric.get(check.options(resources=WORK).remote(made, 7.0, "unused"), timeout=TIMEOUT)
    # The actor was on that node: it is dead, and says where it died.
    with pytest.raises(ActorDiedError, match=r"the actor's node eu-\d was lost"):
        fabric.get(maker.make.remote(str(log)), timeout=TIMEOUT)


def test_an_actor_lost_with_its_node_starts_again_elsewhere_per_max_restarts(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    counter = Counter.options(resources=WORK, max_restarts=1, max_task_retries=1).remote()
    fabric.wait([counter.incr.remote(str(log)) for _ in range(3)], num_returns=3, timeout=TIMEOUT)
    (victim,) = {node for _, node in runs(log)}
    cluster.kill_agent(victim)
    # The next call reaches the actor started again on the EU node left, from its
    # constructor (its state lived on the lost node): it counts from 1 again.
    fabric.wait([counter.incr.remote(str(log))], timeout=TIMEOUT)
    survivor = ({*EU} - {victim}).pop()
    assert runs(log)[3:] == [(1, survivor)]

    def restarted() -> list[dict[str, Any]]:
        return [e for e in audit(cluster) if e["kind"] == "actor.restart"]

    found = wait_for(restarted, TIMEOUT, "the restart in the audit log")
    assert isinstance(found, list) and victim in found[0]["reasons"][0]
    assert found[0]["rules"] == ["actor.max-restarts"]
    # Its one restart is used: losing the node again ends it.
    cluster.kill_agent(survivor)
    with pytest.raises(ActorDiedError, match=f"the actor's node {survivor} was lost"):
        fabric.get(counter.incr.remote(str(log)), timeout=TIMEOUT)


def test_an_actor_being_created_on_a_lost_node_is_created_elsewhere(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log, release = tmp_path / "runs.log", tmp_path / "release"
    actor = SlowStart.options(resources=WORK, max_restarts=1, max_task_retries=1).remote(
        str(log), str(release)
    )
    wait_for(lambda: runs(log), TIMEOUT, "the constructor to start")
    victim = runs(log)[0][1]
    cluster.kill_agent(victim)
    release.touch()
    fabric.wait([actor.where.remote(str(log))], timeout=TIMEOUT)
    survivor = ({*EU} - {victim}).pop()
    assert runs(log)[1:] == [(0, survivor), (1, survivor)]  # constructed again, then called


@pytest.fixture
def eu_owner() -> Iterator[LocalCluster]:
    """The same policy, the driver's agent in the EU: it may keep alice's actor state."""
    nodes = [
        NodeSpec("eu-0", "eu-central", {"CPU": 2}),
        NodeSpec("eu-1", "eu-central", {"CPU": 2, "work": 100}),
        NodeSpec("eu-2", "eu-central", {"CPU": 2, "work": 100}),
    ]
    with (
        LocalCluster(nodes, policy=POLICY, tenants=("alice",)) as cluster,
        session_as(cluster.agent_addresses["eu-0"], cluster.certs_dir, "tenant/alice"),
    ):
        wait_for(lambda: len(fabric.nodes()) == 3, TIMEOUT, "eu-0 to see all three nodes")
        yield cluster


@fabric.remote(max_restarts=1, max_task_retries=1)
class Tally:
    """A counter that keeps checkpoints."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> tuple[int, str]:
        self.n += 1
        return self.n, fabric.get_runtime_context().get_node_id()

    def checkpoint(self) -> int:
        return self.n

    def restore(self, n: int) -> None:
        self.n = n


def test_an_actor_lost_with_its_node_starts_elsewhere_from_its_last_checkpoint(
    eu_owner: LocalCluster,
) -> None:
    tally = Tally.options(resources=WORK).remote()
    counts = fabric.get([tally.incr.remote() for _ in range(3)], timeout=TIMEOUT)
    assert [n for n, _ in counts] == [1, 2, 3]
    victim = counts[0][1]
    eu_owner.kill_agent(victim)
    # The node that created it kept the checkpoint that came with each call's result.
    n, node = fabric.get(tally.incr.remote(), timeout=TIMEOUT)
    assert (n, node) == (4, ({*EU} - {victim}).pop())

    def restarted() -> list[dict[str, Any]]:
        return [e for e in audit(eu_owner) if e["kind"] == "actor.restart"]

    found = wait_for(restarted, TIMEOUT, "the restart in the audit log")
    assert isinstance(found, list)
    assert "from the checkpoint taken after call 3" in found[0]["reasons"][0]
