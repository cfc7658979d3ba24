"""Declared invariants and operators' hooks, checked by the agents before every dispatch.

Two nodes in the EU: eu-west-1 is labelled ``confidential=true``, eu-central-1 is not.
alice's ``health`` data may live anywhere in the EU by the residency rules, but the
invariant says it is only ever handled on confidential nodes: placement picks such a node
when there is one, and a task, an actor, a call or a transfer that could only happen
elsewhere is refused naming the invariant and the values that broke it. A hook module the
agents load refuses requests for more than one CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fabric
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric.exceptions import FabricError, InvariantViolationError
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session

POLICY = """\
apiVersion: fabric/v1
kind: Policy
regions:
  eu-west: {jurisdiction: EU}
  eu-central: {jurisdiction: EU}
nodes:
  - {identity: "node/eu-west-*", regions: [eu-west]}
  - {identity: "node/eu-central-*", regions: [eu-central]}
tenants:
  alice:
    identities: [tenant/alice]
    residency:
      default: EU
      classes: {health: EU}
roles:
  operators: [operator/admin]
  auditors: [operator/admin]
invariants:
  - name: health-on-confidential
    description: Health data is handled only on nodes labelled confidential.
    rule: '"health" in inputs.classes implies node.labels["confidential"] == "true"'
"""
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("invariants")
    (base / "policy.yaml").write_text(POLICY)
    nodes = [
        NodeSpec("eu-west-1", "eu-west", {"CPU": 2.0}, {"confidential": "true"}),
        NodeSpec("eu-central-1", "eu-central", {"CPU": 2.0}),
    ]
    previous = os.environ.get("FABRIC_INVARIANT_HOOKS")
    os.environ["FABRIC_INVARIANT_HOOKS"] = "tests.invariant_hooks"
    try:
        cluster = LocalCluster(nodes, tenants=("alice",), policy=base / "policy.yaml").start()
    finally:
        if previous is None:
            del os.environ["FABRIC_INVARIANT_HOOKS"]
        else:
            os.environ["FABRIC_INVARIANT_HOOKS"] = previous
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def west(cluster: LocalCluster) -> Iterator[CoreClient]:
    """alice, connected to the confidential node."""
    with tenant_session(cluster, "alice", node="eu-west-1") as client:
        yield client


@pytest.fixture(scope="module")
def central(cluster: LocalCluster) -> Iterator[CoreClient]:
    """alice, connected to the node that is not confidential."""
    with tenant_session(cluster, "alice", node="eu-central-1") as client:
        yield client


@fabric.remote
def where(x: Any) -> str:
    return fabric.get_runtime_context().get_node_id()


@fabric.remote
def mark(path: str) -> None:
    Path(path).write_text(fabric.get_runtime_context().get_node_id())


@fabric.remote
def make_record() -> str:
    return "blood type 0+"


@fabric.remote
def read_first(refs: list[Any]) -> Any:
    return fabric.get(refs[0])


@fabric.remote
class Record:
    def __init__(self, value: str) -> None:
        self.value = value

    def node(self) -> str:
        return fabric.get_runtime_context().get_node_id()


def test_health_work_is_placed_on_a_confidential_node(central: CoreClient, tmp_path: Path) -> None:
    with acting_as(central):
        done = mark.options(residency="health").remote(str(tmp_path / "where"))
        wait_for((tmp_path / "where").exists, TIMEOUT, "the task to run")
        assert (tmp_path / "where").read_text() == "eu-west-1"
        # Its result is health data too: it does not come back to this node.
        with pytest.raises(InvariantViolationError, match="health-on-confidential"):
            fabric.get(done, timeout=TIMEOUT)


def test_health_work_pinned_elsewhere_is_refused_naming_the_invariant(
    central: CoreClient,
) -> None:
    with acting_as(central):
        pinned = where.options(residency="health", region="eu-central")
        with pytest.raises(InvariantViolationError) as raised:
            fabric.get(pinned.remote(1), timeout=TIMEOUT)
    error = raised.value
    assert error.invariant == "health-on-confidential"
    message = str(error)
    assert message.startswith("invariant health-on-confidential: ")
    assert 'node.labels["confidential"] is absent, expected "true"' in message
    assert 'inputs.classes = {"health"}' in message
    assert "rule invariant.health-on-confidential" in message


def test_other_work_goes_anywhere(central: CoreClient) -> None:
    with acting_as(central):
        assert fabric.get(where.options(region="eu-central").remote(1), timeout=TIMEOUT) == (
            "eu-central-1"
        )


def test_an_actor_holding_health_data_elsewhere_is_refused_with_every_call(
    west: CoreClient,
) -> None:
    with acting_as(west):
        actor = Record.options(residency="health", region="eu-central").remote("x")
        for _ in range(2):
            with pytest.raises(InvariantViolationError, match="health-on-confidential"):
                fabric.get(actor.node.remote(), timeout=TIMEOUT)
        placed = Record.options(residency="health").remote("y")
        assert fabric.get(placed.node.remote(), timeout=TIMEOUT) == "eu-west-1"


def test_health_data_never_reaches_a_node_the_invariant_forbids(central: CoreClient) -> None:
    with acting_as(central):
        # A put on this node is refused at once...
        with pytest.raises(InvariantViolationError, match="health-on-confidential"):
            fabric.put("blood type AB-", residency="health")
        # ...a health result made elsewhere stays there...
        record = make_record.options(residency="health").remote()
        with pytest.raises(InvariantViolationError, match="health-on-confidential"):
            fabric.get(record, timeout=TIMEOUT)
        # ...and a task here that finds the ref nested in its argument cannot fetch it.
        nested = read_first.options(region="eu-central").remote([record])
        with pytest.raises(FabricError, match="invariant health-on-confidential"):
            fabric.get(nested, timeout=TIMEOUT)


def test_an_operators_hook_refuses_what_the_language_cannot_say(west: CoreClient) -> None:
    with acting_as(west):
        with pytest.raises(InvariantViolationError) as raised:
            fabric.get(where.options(num_cpus=2).remote(1), timeout=TIMEOUT)
        assert raised.value.invariant == "one-cpu-at-most"
        assert fabric.get(where.options(num_cpus=1).remote(1), timeout=TIMEOUT) == "eu-west-1"


def test_every_refusal_is_in_the_audit_log(cluster: LocalCluster) -> None:
    def refusals() -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                "fabric", "audit", "query", "--address", cluster.head_address,
                "--certs", str(cluster.certs_dir), "--identity", "operator/admin",
                "--kind", "invariant", "--format", "jsonl",
            ],
            capture_output=True, text=True, check=True, timeout=TIMEOUT,
        )  # fmt: skip
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def both() -> bool:
        rules = {rule for entry in refusals() for rule in entry["rules"]}
        return {"invariant.health-on-confidential", "invariant.one-cpu-at-most"} <= rules

    wait_for(both, TIMEOUT, "the invariant refusals in the audit log")
    entries = refusals()
    assert all(e["outcome"] == "refuse" and e["tenant"] == "alice" for e in entries)
    assert any(e["objects"] for e in entries), "the refused transfer names its object"
