"""Cluster-wide budgets: the head leases slices of a tenant's window budget to agents, and
the agents together never use more than the budget, however the work is spread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fabric.policy import load_policy_text

import fabric
from fabric._agent.leases import Ledger, Supply
from fabric._cluster import LocalCluster, NodeSpec
from fabric._leases import BudgetLeases, UnknownBudgetError
from fabric.exceptions import BudgetExceededError
from tests.sessions import acting_as, tenant_session

POLICY = """\
apiVersion: fabric/v1
kind: Policy
regions:
  local: {jurisdiction: XX}
nodes:
  - {identity: "node/*", regions: [local]}
tenants:
  carol:
    identities: [tenant/carol]
    budgets: {total_tasks: 30, cpu_seconds: 100, window: 1h}
  dave:
    identities: [tenant/dave]
roles:
  operators: [operator/admin]
"""
TIMEOUT = 60.0


# --- the head's share-out, pure ------------------------------------------------------------


def test_the_head_never_leases_more_than_the_budget_in_a_window() -> None:
    policy = load_policy_text(POLICY, "policy.yaml")
    leases = BudgetLeases()
    granted = [leases.grant(policy, "carol", "total_tasks", 7, now=10.0).granted for _ in range(6)]
    assert granted == [7, 7, 7, 7, 2, 0]
    last = leases.grant(policy, "carol", "total_tasks", 7, now=10.0)
    assert (last.leased, last.limit, last.window) == (30, 30, 0)
    assert last.seconds_left == pytest.approx(3590.0)
    # The next window starts afresh.
    assert leases.grant(policy, "carol", "total_tasks", 7, now=3600.0).granted == 7


def test_a_tenant_without_the_budget_gets_nothing_to_count() -> None:
    policy = load_policy_text(POLICY, "policy.yaml")
    grant = BudgetLeases().grant(policy, "dave", "cpu_seconds", 5, now=0.0)
    assert (grant.granted, grant.limit) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("tenant", "budget", "want"),
    [("mallory", "total_tasks", 1), ("carol", "memory", 1), ("carol", "cpu_seconds", -1)],
)
def test_a_bad_lease_request_is_refused(tenant: str, budget: str, want: float) -> None:
    policy = load_policy_text(POLICY, "policy.yaml")
    with pytest.raises(UnknownBudgetError):
        BudgetLeases().grant(policy, tenant, budget, want, now=0.0)


# --- an agent's holding, pure ------------------------------------------------------------


def test_an_agent_asks_again_before_it_runs_out_and_stops_when_the_head_has_none() -> None:
    ledger = Ledger()
    assert ledger.supply("carol", "total_tasks", 1, now=0.0) is Supply.WAIT
    want = ledger.want("carol", "total_tasks", 30, now=0.0)
    assert want == 2  # a twentieth of the budget, rounded up
    assert ledger.want("carol", "total_tasks", 30, now=0.0) is None  # one request at a time
    ledger.granted("carol", "total_tasks", 2, 2, window=0, seconds_left=60, limit=30, now=0.0)
    assert ledger.supply("carol", "total_tasks", 1, now=1.0) is Supply.AVAILABLE
    ledger.use("carol", "total_tasks", 2, now=1.0)
    assert ledger.supply("carol", "total_tasks", 1, now=1.0) is Supply.WAIT
    want = ledger.want("carol", "total_tasks", 30, now=1.0)
    assert want is not None
    ledger.granted("carol", "total_tasks", 0, want, window=0, seconds_left=59, limit=30, now=1.0)
    assert ledger.supply("carol", "total_tasks", 1, now=2.0) is Supply.EXHAUSTED
    # The window ends: the holding starts again, empty.
    assert ledger.supply("carol", "total_tasks", 1, now=61.0) is Supply.WAIT


# --- two agents, one budget ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("leases")
    (base / "policy.yaml").write_text(POLICY)
    nodes = [NodeSpec("node-1", "local", {"CPU": 2.0}), NodeSpec("node-2", "local", {"CPU": 2.0})]
    cluster = LocalCluster(nodes, tenants=("carol", "dave"), policy=base / "policy.yaml").start()
    yield cluster
    cluster.stop()


@fabric.remote
def one() -> int:
    return 1


def test_two_agents_together_admit_no_more_than_the_budget(cluster: LocalCluster) -> None:
    admitted = refused = 0
    with (
        tenant_session(cluster, "carol", "node-1") as first,
        tenant_session(cluster, "carol", "node-2") as second,
    ):
        for _ in range(25):
            for client in (first, second):
                with acting_as(client):
                    try:
                        admitted += fabric.get(one.remote(), timeout=TIMEOUT)
                    except BudgetExceededError as error:
                        assert error.budget == "tenant.total_tasks"
                        refused += 1
    assert admitted + refused == 50
    # Never more than the budget; at most one slice per agent may lie unused.
    assert 26 <= admitted <= 30
