"""Hard budgets on a live cluster, each runaway next to steady work of its own tenant and of
another: the runaway is stopped with an error naming the budget, its limit and what was
measured; the steady work goes on with correct results; nothing of anyone else is lost.

alice has per-task and per-actor ceilings, per-node memory and processes, and quotas; bob
has no budget at all; carol and dave have cluster-wide budgets per window (total tasks, CPU
seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fabric.policy import Limits

import fabric
from fabric._budget_wire import to_wire
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric.exceptions import (
    ActorBudgetExceededError,
    ActorDiedError,
    BudgetExceededError,
    FabricError,
    QuotaExceededError,
)
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session

POLICY = """\
apiVersion: fabric/v1
kind: Policy
regions:
  local: {jurisdiction: XX}
nodes:
  - {identity: "node/*", regions: [local]}
tenants:
  alice:
    identities: [tenant/alice]
    quotas: {actors: 6, object_store: 64MiB}
    budgets:
      memory: 3GiB
      processes: 400
      task: {cpu_seconds: 30, memory: 1GiB, wall_seconds: 120, processes: 64}
      actor: {memory: 1GiB}
  bob:
    identities: [tenant/bob]
  carol:
    identities: [tenant/carol]
    budgets: {total_tasks: 40, window: 1h}
  dave:
    identities: [tenant/dave]
    budgets: {cpu_seconds: 2, window: 1h}
roles:
  operators: [operator/admin]
  auditors: [operator/admin]
"""
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("budgets")
    (base / "policy.yaml").write_text(POLICY)
    nodes = [NodeSpec("node-1", "local", {"CPU": 4.0})]
    cluster = LocalCluster(
        nodes, tenants=("alice", "bob", "carol", "dave"), policy=base / "policy.yaml"
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alice(cluster: LocalCluster) -> Iterator[CoreClient]:
    with tenant_session(cluster, "alice") as client:
        yield client


@pytest.fixture(scope="module")
def bob(cluster: LocalCluster) -> Iterator[CoreClient]:
    with tenant_session(cluster, "bob") as client:
        yield client


# --- the steady work beside each runaway ------------------------------------------------


@fabric.remote
class Steady:
    """Hashes a chain on a thread of its own, all the time, so its progress shows whether a
    runaway next to it slowed it to a stop; `check` recomputes the chain."""

    def __init__(self) -> None:
        import threading

        self.rounds, self.digest = 0, b"seed"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            digest = self.digest
            for _ in range(1000):
                digest = hashlib.sha256(digest).digest()
            self.digest, self.rounds = digest, self.rounds + 1

    def progress(self) -> tuple[int, bytes]:
        return self.rounds, self.digest


@fabric.remote
def add(x: int, y: int) -> int:
    return x + y


def chain(rounds: int) -> bytes:
    digest = b"seed"
    for _ in range(rounds * 1000):
        digest = hashlib.sha256(digest).digest()
    return digest


class Beside:
    """Steady work of `client`'s tenant: an actor hashing, an object it holds, tasks."""

    def __init__(self, client: CoreClient, marker: int) -> None:
        self.client = client
        with acting_as(client):
            self.actor = Steady.remote()
            self.held = fabric.put({"marker": marker, "payload": bytes(range(256)) * 64})
            self.start = fabric.get(self.actor.progress.remote(), timeout=TIMEOUT)[0]
        self.marker = marker

    def check(self) -> None:
        with acting_as(self.client):
            rounds, digest = fabric.get(self.actor.progress.remote(), timeout=TIMEOUT)
            assert rounds > self.start, "the steady actor made no progress"
            assert digest == chain(rounds)
            value = fabric.get(self.held, timeout=TIMEOUT)
            assert value == {"marker": self.marker, "payload": bytes(range(256)) * 64}
            assert fabric.get([add.remote(i, i) for i in range(20)], timeout=TIMEOUT) == [
                2 * i for i in range(20)
            ]
            # The agent and the head are well: the agent's view, fresh from the head, has
            # its node alive.
            assert [n["Alive"] for n in fabric.nodes()] == [True]

    def close(self) -> None:
        with acting_as(self.client):
            fabric.kill(self.actor)


@contextlib.contextmanager
def beside(*clients: CoreClient) -> Iterator[None]:
    """Steady work of each client's tenant around the block, checked after it."""
    steady = [Beside(client, marker) for marker, client in enumerate(clients)]
    try:
        yield
        for work in steady:
            work.check()
    finally:
        for work in steady:
            work.close()


def stopped(ref: Any, error: type[BudgetExceededError] = BudgetExceededError) -> Any:
    with pytest.raises(error) as raised:
        fabric.get(ref, timeout=TIMEOUT)
    return raised.value


# --- runaway tasks ----------------------------------------------------------------------


@fabric.remote
def busy() -> None:
    while True:
        pass


@fabric.remote
def balloon(chunk_mb: int) -> None:
    held = []
    for _ in range(100):  # bounded: 2 GB at the most, should the budget not hold
        held.append(bytearray(chunk_mb << 20))
        time.sleep(0.01)


@fabric.remote
def fork_bomb(pids_file: str) -> None:
    deadline = time.monotonic() + 30  # bounded, should the budget not hold
    while time.monotonic() < deadline:
        try:
            pid = os.fork()
        except OSError:  # the kernel refused: try again, as a fork bomb does
            continue
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        with open(pids_file, "a") as out:
            out.write(f"{pid}\n")


@fabric.remote
def sleeper() -> None:
    time.sleep(3600)


def test_a_busy_loop_is_stopped_at_its_cpu_budget(alice: CoreClient, bob: CoreClient) -> None:
    with beside(alice, bob), acting_as(alice):
        error = stopped(busy.options(budget={"cpu_seconds": 1}).remote())
    assert error.budget == "task.cpu_seconds"
    assert error.limit == 1.0
    assert 1.0 - 1e-6 <= error.measured < 3.0  # a difference of two floats
    assert "task busy" in str(error) and "rule budget.stopped" in str(error)


def test_a_memory_balloon_is_stopped_at_its_memory_budget(
    alice: CoreClient, bob: CoreClient
) -> None:
    with beside(alice, bob), acting_as(alice):
        error = stopped(balloon.options(budget={"memory": "200MiB"}).remote(20))
    assert error.budget == "task.memory"
    assert error.limit == 200 << 20
    assert error.measured >= 150 << 20


def test_a_fork_bomb_is_stopped_with_all_its_processes(
    alice: CoreClient, bob: CoreClient, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    with beside(alice, bob), acting_as(alice):
        error = stopped(fork_bomb.options(budget={"processes": 16}).remote(str(pids_file)))
    assert error.budget == "task.processes"
    assert error.limit == 16
    forked = [int(line) for line in pids_file.read_text().split()]
    assert forked, "the bomb forked nothing"

    def all_gone() -> bool:
        return not any(_alive(pid) for pid in forked)

    wait_for(all_gone, TIMEOUT, "every process of the fork bomb to be gone")


def test_a_sleeper_is_stopped_at_its_wall_time(alice: CoreClient, bob: CoreClient) -> None:
    started = time.monotonic()
    with beside(alice, bob), acting_as(alice):
        error = stopped(sleeper.options(budget={"wall_seconds": 1}).remote())
    assert error.budget == "task.wall_seconds"
    assert error.limit == 1.0 and error.measured >= 1.0 - 1e-6
    assert time.monotonic() - started < TIMEOUT


def test_the_tenants_ceiling_is_the_default_budget(alice: CoreClient) -> None:
    @fabric.remote
    def ceiling() -> None:
        pass

    with acting_as(alice):
        assert alice.task_budget_limit == Limits(
            cpu_seconds=30.0, memory=1 << 30, wall_seconds=120.0, processes=64
        )
        assert fabric.get(ceiling.remote(), timeout=TIMEOUT) is None


# --- refusals -----------------------------------------------------------------------------


def test_asking_for_more_than_the_policy_allows_is_refused_at_submit(alice: CoreClient) -> None:
    with acting_as(alice), pytest.raises(BudgetExceededError) as raised:
        busy.options(budget={"cpu_seconds": 31}).remote()
    assert raised.value.budget == "task.cpu_seconds"
    assert (raised.value.limit, raised.value.measured) == (30.0, 31.0)
    assert "rule budget.ceiling" in str(raised.value)


def test_the_agent_refuses_an_over_ceiling_budget_a_client_forged(alice: CoreClient) -> None:
    with acting_as(alice):
        honest = alice.task_budget_limit
        alice.task_budget_limit = Limits()  # a client that skips the check
        try:
            ref = busy.options(budget={"memory": "8GiB"}).remote()
        finally:
            alice.task_budget_limit = honest
        error = stopped(ref)
    assert error.budget == "task.memory"
    assert error.limit == 1 << 30 and error.measured == 8 << 30
    assert "rule budget.ceiling" in str(error)


@pytest.mark.parametrize(
    "budget",
    [
        {"cpu_secs": 1},
        {"memory": "lots"},
        {"processes": 0},
        {"wall_seconds": -1},
        "1s",
        {"retry": 1},
    ],
)
def test_a_malformed_budget_is_refused_naming_what_is_wrong(budget: Any) -> None:
    with pytest.raises(ValueError, match="budget"):
        busy.options(budget=budget)


# --- actors -----------------------------------------------------------------------------


@fabric.remote
class Hoarder:
    def __init__(self) -> None:
        self.held: list[bytearray] = []

    def grow(self, mb: int) -> int:
        self.held.append(bytearray(mb << 20))
        return sum(len(b) for b in self.held) >> 20


def test_an_actor_past_its_memory_budget_dies_for_every_later_call(
    alice: CoreClient, bob: CoreClient
) -> None:
    with beside(alice, bob), acting_as(alice):
        hoarder = Hoarder.options(budget={"memory": "300MiB"}, max_restarts=2).remote()
        refs = [hoarder.grow.remote(40) for _ in range(15)]
        errors = []
        for ref in refs:
            with contextlib.suppress(ActorBudgetExceededError):
                fabric.get(ref, timeout=TIMEOUT)
                continue
            errors.append(ref)
        assert errors, "the hoarder was never stopped"
        later = stopped(hoarder.grow.remote(1), ActorBudgetExceededError)
    assert isinstance(later, ActorDiedError)
    assert later.budget == "actor.memory" and later.limit == 300 << 20
    assert "actor Hoarder" in str(later)


@fabric.remote
class Spawner:
    def spawn(self, depth: int) -> int:
        child = Spawner.remote()
        return 1 + fabric.get(child.spawn.remote(depth + 1))


def test_an_actor_that_spawns_actors_meets_the_actor_quota(
    alice: CoreClient, bob: CoreClient
) -> None:
    with beside(alice, bob), acting_as(alice):
        root = Spawner.remote()
        # Raised in the innermost spawn, it reaches here through every spawn above it.
        with pytest.raises(FabricError, match="would exceed its actors quota"):
            fabric.get(root.spawn.remote(0), timeout=TIMEOUT)
        fabric.kill(root)


# --- retries ------------------------------------------------------------------------------


@fabric.remote
def counted_busy(path: str) -> None:
    with open(path, "a") as out:
        out.write("x")
    while True:
        pass


def test_a_budget_stop_is_retried_only_when_the_budget_says_so(
    alice: CoreClient, tmp_path: Path
) -> None:
    once, again = tmp_path / "once", tmp_path / "again"
    with acting_as(alice):
        quiet = counted_busy.options(max_retries=3, budget={"cpu_seconds": 0.5})
        stopped(quiet.remote(str(once)))
        loud = counted_busy.options(max_retries=2, budget={"cpu_seconds": 0.5, "retry": True})
        stopped(loud.remote(str(again)))
    assert once.read_text() == "x"
    assert again.read_text() == "xxx"


# --- puts and submissions -----------------------------------------------------------------


def test_unbounded_puts_meet_the_object_store_quota(alice: CoreClient, bob: CoreClient) -> None:
    with beside(alice, bob), acting_as(alice):
        held = []
        with pytest.raises(QuotaExceededError, match="object-store quota"):
            for _ in range(64):
                held.append(fabric.put(bytes(8 << 20)))
        assert 1 <= len(held) < 64
        del held
        wait_for(lambda: _put_succeeds(), TIMEOUT, "room in the store once alice freed hers")


def _put_succeeds() -> bool:
    try:
        fabric.put(bytes(8 << 20))
    except QuotaExceededError:
        return False
    return True


def test_unbounded_submission_meets_the_total_tasks_budget(
    cluster: LocalCluster, bob: CoreClient
) -> None:
    with tenant_session(cluster, "carol") as carol, beside(bob), acting_as(carol):
        refs = [add.remote(i, 1) for i in range(60)]
        done, refused = [], []
        for i, ref in enumerate(refs):
            try:
                done.append((i, fabric.get(ref, timeout=TIMEOUT)))
            except BudgetExceededError as error:
                refused.append(error)
        assert all(value == i + 1 for i, value in done)
        assert len(done) <= 40 and len(done) + len(refused) == 60
        assert refused and all(e.budget == "tenant.total_tasks" for e in refused)
        assert "rule budget.exhausted" in str(refused[0])


# --- the audit log ------------------------------------------------------------------------


def test_every_stop_and_refusal_is_in_the_audit_log(cluster: LocalCluster) -> None:
    def entries() -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                "fabric", "audit", "query", "--address", cluster.head_address,
                "--certs", str(cluster.certs_dir), "--identity", "operator/admin",
                "--format", "jsonl",
            ],
            capture_output=True, text=True, check=True, timeout=TIMEOUT,
        )  # fmt: skip
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def has(predicate: Callable[[dict[str, Any]], bool]) -> bool:
        return any(predicate(e) for e in entries())

    wait_for(
        lambda: has(lambda e: e["kind"] == "budget.stop" and "task.cpu_seconds" in e["reasons"][0]),
        TIMEOUT,
        "the busy loop's stop in the log",
    )
    stops = [e for e in entries() if e["kind"] == "budget.stop"]
    assert all(e["rules"] == ["budget.stopped"] and e["outcome"] == "refuse" for e in stops)
    assert {e["tenant"] for e in stops} >= {"alice"}
    assert has(lambda e: e["kind"] == "admit" and "budget.ceiling" in e["rules"])
    assert has(lambda e: e["kind"] == "budget.lease" and e["tenant"] == "carol")


# --- cluster-wide CPU seconds -------------------------------------------------------------


def test_a_tenant_out_of_cpu_seconds_is_stopped_and_refused(
    cluster: LocalCluster, bob: CoreClient
) -> None:
    with tenant_session(cluster, "dave") as dave, beside(bob), acting_as(dave):
        error = stopped(busy.remote())
        assert error.budget == "tenant.cpu_seconds" and error.limit == 2.0
        after = stopped(add.remote(1, 2))
        assert after.budget == "tenant.cpu_seconds"
        assert "rule budget.exhausted" in str(after)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_budget_wire_round_trip() -> None:
    limits = Limits(cpu_seconds=1.5, memory=3, wall_seconds=2.0, processes=4)
    assert fabric._budget_wire.from_wire(to_wire(limits)) == limits


@fabric.remote
def rlimits() -> dict[str, tuple[int, int]]:
    import resource

    return {
        name: resource.getrlimit(getattr(resource, name))
        for name in ("RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA")
    }


@fabric.remote
class Limited:
    def rlimits(self) -> dict[str, tuple[int, int]]:
        return fabric.get(rlimits.remote())  # a task's, for comparison

    def own(self) -> dict[str, tuple[int, int]]:
        import resource

        return {"RLIMIT_CPU": resource.getrlimit(resource.RLIMIT_CPU)}


def test_workers_carry_rlimits_behind_the_monitor(alice: CoreClient) -> None:
    import resource

    with acting_as(alice):
        pooled = fabric.get(rlimits.remote(), timeout=TIMEOUT)
        actor = Limited.options(budget={"cpu_seconds": 20, "memory": "512MiB"}).remote()
        own = fabric.get(actor.own.remote(), timeout=TIMEOUT)
        fabric.kill(actor)
    assert pooled["RLIMIT_CORE"] == (0, 0)  # no tenant memory in core dumps
    # A pooled worker's memory backstop is the tenant's ceiling for one task (1 GiB), with
    # headroom; its CPU is counted per task by the monitor, not by the kernel.
    soft, _ = pooled["RLIMIT_DATA"]
    assert 1 << 30 < soft <= 3 << 30
    assert pooled["RLIMIT_CPU"][0] == resource.RLIM_INFINITY
    soft, hard = own["RLIMIT_CPU"]
    assert 20 < soft <= 25 and hard == soft + 1


@pytest.mark.parametrize(
    "forged",
    [
        {"cpu_seconds": float("nan")},
        {"cpu_seconds": float("inf")},
        {"wall_seconds": -1.0},
        {"memory": 0},
        {"processes": 0},
    ],
)
def test_a_forged_budget_the_client_would_never_send_is_refused(
    alice: CoreClient, forged: dict[str, float]
) -> None:
    """A NaN would compare as within any ceiling and never as breached: the agent refuses
    what the client's own checks keep out, whatever the client."""
    from fabric._proto import fabric_pb2 as pb

    with acting_as(alice):
        honest = alice.task_budget_limit
        alice.task_budget_limit = Limits()
        original = fabric._budget_wire.to_wire

        def forge(limits: Limits, retry: bool = False) -> pb.Budget:
            message = original(limits, retry)
            for key, value in forged.items():
                setattr(message, key, value)
            return message

        fabric._options.to_wire = forge  # type: ignore[attr-defined]
        try:
            ref = busy.options(budget={"cpu_seconds": 5}).remote()
        finally:
            fabric._options.to_wire = original  # type: ignore[attr-defined]
            alice.task_budget_limit = honest
        with pytest.raises(fabric.exceptions.InvalidRequestError, match="budget"):
            fabric.get(ref, timeout=TIMEOUT)
