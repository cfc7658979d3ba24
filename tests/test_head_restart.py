"""The head keeps its state across a restart, and declares nodes lost by a heartbeat deadline.

A real cluster (a head and two agents as processes over mutual TLS) whose head is killed with
SIGKILL and started again on the same address and state directory: named actors are found by
name, tasks keep completing, no node is declared lost by the restart, and budget leases are
not handed out twice. That cluster keeps the default node-loss deadline (5 s), which agents
reconnecting after a restart meet with room to spare; another, with a deadline of 2 s, shows
that a node that stops reporting (SIGSTOP: its stream stays open) is declared lost by the
deadline, and comes back as a fresh join when it reports again.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric.audit import Entry, decode
from fabric.policy import load_policy_text

import fabric
from fabric._cluster import LocalCluster, NodeSpec
from fabric._head import RESTORED, ClusterDirectory
from fabric._head_store import SqliteHeadStore
from fabric._leases import BudgetLeases
from fabric._pki import Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from fabric.exceptions import BudgetExceededError
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session, wait_until_every_agent_sees_every_node

NODES = ("node-1", "node-2")
HEARTBEAT_TIMEOUT = 2.0
BUDGET = 10
POLICY = f"""\
apiVersion: fabric/v1
kind: Policy
regions:
  local: {{jurisdiction: XX}}
nodes:
  - {{identity: "node/*", regions: [local]}}
tenants:
  default:
    identities: [tenant/default]
  carol:
    identities: [tenant/carol]
    budgets: {{total_tasks: {BUDGET}, window: 1d}}
roles:
  operators: [operator/admin]
"""
TIMEOUT = 60.0


@contextlib.contextmanager
def two_nodes(base: Path, node_timeout: float | None) -> Iterator[LocalCluster]:
    (base / "policy.yaml").write_text(POLICY)
    nodes = [
        NodeSpec(node_id, "local", {"CPU": 2.0, f"node:{node_id}": 1000.0}) for node_id in NODES
    ]
    with LocalCluster(
        nodes,
        base_dir=base / "cluster",
        tenants=("default", "carol"),
        policy=base / "policy.yaml",
        node_timeout=node_timeout,
    ) as cluster:
        wait_until_every_agent_sees_every_node(cluster, "default")
        yield cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes, the head's default node-loss deadline."""
    with two_nodes(tmp_path_factory.mktemp("head-restart"), None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def heartbeat_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes, a node-loss deadline of 2 s."""
    with two_nodes(tmp_path_factory.mktemp("heartbeat"), HEARTBEAT_TIMEOUT) as cluster:
        yield cluster


@contextlib.contextmanager
def driver_of(cluster: LocalCluster) -> Iterator[None]:
    """The public API connected to node-1 as tenant/default."""
    with tenant_session(cluster, "default", "node-1") as client, acting_as(client):
        yield


@pytest.fixture
def driver(cluster: LocalCluster) -> Iterator[None]:
    with driver_of(cluster):
        yield


# ----------------------------------------------------------------------------- helpers


def operator(cluster: LocalCluster) -> Credentials:
    return Credentials.load(cluster.operator_credentials())


def audit(cluster: LocalCluster, kind: str, after: int = -1) -> list[Entry]:
    """The head's entries of `kind` after seq `after`, read as the operator."""
    request = pb.AuditQuery(kind=kind, after_seq=after)
    with secure_channel(cluster.head_address, operator(cluster)) as channel:
        stream = rpc.HeadStub(channel).QueryAudit(request, timeout=TIMEOUT)
        return [decode(item.data) for item in stream]


def last_seq(cluster: LocalCluster) -> int:
    """The seq of the newest node.join or node.loss entry: what came before a step."""
    entries = audit(cluster, "node.join") + audit(cluster, "node.loss")
    return max(e.seq for e in entries)


def of_node(entries: list[Entry], node_id: str) -> list[Entry]:
    return [e for e in entries if e.identity.endswith(f"/node/{node_id}")]


def head_view(cluster: LocalCluster) -> dict[str, bool]:
    """The head's own view of the cluster: node id -> alive."""
    with secure_channel(cluster.head_address, operator(cluster)) as channel:
        view = rpc.HeadStub(channel).Status(pb.Empty(), timeout=TIMEOUT)
    return {node.node_id: node.alive for node in view.nodes}


def alive_nodes() -> set[str]:
    """The nodes alive in the view of the driver's agent."""
    return {n["NodeID"] for n in fabric.nodes() if n["Alive"]}


def wait_until_rejoined(cluster: LocalCluster, after: int, nodes: tuple[str, ...] = NODES) -> None:
    """Wait until each of `nodes` has registered with the head since seq `after`."""
    wait_for(
        lambda: all(of_node(audit(cluster, "node.join", after), n) for n in nodes),
        timeout=TIMEOUT,
        what=f"{', '.join(nodes)} to register with the restarted head",
    )


@contextlib.contextmanager
def stopped(cluster: LocalCluster, node_id: str) -> Iterator[None]:
    """The agent of `node_id` stopped (SIGSTOP to its process group: its connections stay
    open, it reports nothing) for the duration; continued however the block ends."""
    group = os.getpgid(cluster.processes[node_id].pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


@fabric.remote
class Counter:
    def __init__(self) -> None:
        self.total = 0

    def add(self, amount: int) -> int:
        self.total += amount
        return self.total


@fabric.remote
def square(x: int) -> int:
    time.sleep(0.01)
    return x * x


@fabric.remote
def one() -> int:
    return 1


# ----------------------------------------------------------------------------- the directory

REGISTER = pb.RegisterNode(address="127.0.0.1:7000", region="local", resources={"CPU": 2.0})
IDENTITY = "spiffe://fabric.local/node/n1"


def test_a_heartbeat_that_changes_nothing_still_counts_as_a_report(tmp_path: Path) -> None:
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        directory = ClusterDirectory(store, now=0.0)
        stream = directory.join("n1", REGISTER, IDENTITY, now=0.0)
        version = directory.version
        heartbeat = pb.NodeReport(available={"CPU": 2.0}, total={"CPU": 2.0})
        directory.report("n1", stream, heartbeat, now=4.0)
        assert directory.version == version  # nothing to broadcast
        assert directory.overdue(now=8.0, deadline=5.0) == []
        assert directory.overdue(now=9.5, deadline=5.0) == [("n1", 5.5, stream)]


def test_a_node_leaves_once_and_not_by_a_stream_it_replaced(tmp_path: Path) -> None:
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        directory = ClusterDirectory(store, now=0.0)
        first = directory.join("n1", REGISTER, IDENTITY, now=0.0)
        second = directory.join("n1", REGISTER, IDENTITY, now=1.0)
        directory.report("n1", first, pb.NodeReport(available={"CPU": 1.0}), now=3.0)
        assert directory.last_seen["n1"] == 1.0  # the replaced stream's report is ignored
        assert not directory.leave("n1", first)
        assert directory.leave("n1", second)
        assert not directory.leave("n1", second)
        assert ClusterDirectory(store, now=0.0).nodes == {}


def test_a_directory_opened_again_awaits_its_nodes_and_keeps_their_actors(
    tmp_path: Path,
) -> None:
    info = pb.ActorInfo(actor_id=b"a1", name="a", namespace="ns", node_id="n1", tenant="t")
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        directory = ClusterDirectory(store, now=0.0)
        directory.join("n1", REGISTER, IDENTITY, now=0.0)
        assert directory.register_actor(info) is None
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        directory = ClusterDirectory(store, now=100.0)
        [node] = directory.view().nodes
        assert (node.node_id, node.alive, node.address, node.identity) == (
            "n1",
            True,
            REGISTER.address,
            IDENTITY,
        )
        assert dict(node.total) == dict(node.available) == {"CPU": 2.0}
        assert directory.lookup("t", "ns", "a") == info
        assert directory.overdue(now=106.0, deadline=5.0) == [("n1", 6.0, RESTORED)]
        # Lost: the node goes, and the actors it hosted with it, for good.
        assert directory.leave("n1", RESTORED)
        assert directory.lookup("t", "ns", "a") is None
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        directory = ClusterDirectory(store, now=0.0)
        assert (directory.nodes, directory.actors) == ({}, {})


# ----------------------------------------------------------------------------- head restart


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "stopped"])
def test_a_named_actor_is_found_by_name_after_a_head_restart(
    cluster: LocalCluster, driver: None, sig: signal.Signals
) -> None:
    # A head that stops cleanly ends every stream itself, which loses no node either.
    name = f"survivor-{sig.name}"
    counter = Counter.options(name=name).remote()
    assert fabric.get(counter.add.remote(5), timeout=TIMEOUT) == 5
    mark = last_seq(cluster)
    cluster.restart_head(sig)
    wait_until_rejoined(cluster, mark)
    again = fabric.get_actor(name)
    assert fabric.get(again.add.remote(1), timeout=TIMEOUT) == 6  # the same actor, its state
    assert audit(cluster, "node.loss", mark) == []


def test_tasks_keep_completing_with_right_results_across_a_head_restart(
    cluster: LocalCluster, driver: None
) -> None:
    # Every tenth runs on node-2, forwarded there by node-1 through the head's view; the
    # rest where node-1 places them.
    def submit(numbers: range) -> list[fabric.ObjectRef]:
        return [
            square.options(resources={"node:node-2": 1}).remote(i)
            if i % 10 == 0
            else square.remote(i)
            for i in numbers
        ]

    refs = submit(range(300))
    cluster.restart_head()
    refs += submit(range(300, 400))
    assert fabric.get(refs, timeout=TIMEOUT) == [i * i for i in range(400)]


def test_a_restarted_head_shows_every_node_at_once_and_declares_none_lost(
    cluster: LocalCluster, driver: None
) -> None:
    mark = last_seq(cluster)
    cluster.restart_head()
    # The nodes of the last run are there before they reconnect: agents do not take them
    # for lost.
    assert head_view(cluster) == {"node-1": True, "node-2": True}
    wait_until_rejoined(cluster, mark)
    wait_for(lambda: alive_nodes() == set(NODES), what="the driver's node to see both nodes")
    assert audit(cluster, "node.loss", mark) == []
    # Once each: the join that brought it back, nothing else.
    joins = audit(cluster, "node.join", mark)
    assert sorted(e.identity.rpartition("/")[2] for e in joins) == sorted(NODES)


def test_a_restarted_head_does_not_lease_again_what_it_leased_in_the_window(
    cluster: LocalCluster,
) -> None:
    def run(node: str, attempts: int) -> int:
        admitted = 0
        with tenant_session(cluster, "carol", node) as client, acting_as(client):
            for _ in range(attempts):
                try:
                    admitted += fabric.get(one.remote(), timeout=TIMEOUT)
                except BudgetExceededError:
                    break
        return admitted

    # node-1 takes all of the window's budget from the head, slice by slice.
    assert run("node-1", BUDGET + 5) == BUDGET
    mark = last_seq(cluster)
    cluster.restart_head()
    wait_until_rejoined(cluster, mark)
    # node-2 holds nothing yet, and the restarted head has nothing left to lease it.
    assert run("node-2", 5) == 0


def test_leases_are_counted_from_the_store_a_head_reopens(tmp_path: Path) -> None:
    policy = load_policy_text(POLICY, "policy.yaml")
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        leases = BudgetLeases(store)
        granted = [leases.grant(policy, "carol", "total_tasks", 4, now=10.0) for _ in range(2)]
        assert [g.granted for g in granted] == [4, 4]
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        leases = BudgetLeases(store)
        granted = [leases.grant(policy, "carol", "total_tasks", 4, now=20.0) for _ in range(2)]
        assert [(g.granted, g.leased) for g in granted] == [(2, 10), (0, 10)]
        # The next window starts afresh, and a head reopened then knows it too.
        assert leases.grant(policy, "carol", "total_tasks", 4, now=86_400.0).granted == 4
    with contextlib.closing(SqliteHeadStore.open(tmp_path)) as store:
        grant = BudgetLeases(store).grant(policy, "carol", "total_tasks", 9, now=86_401.0)
        assert (grant.granted, grant.leased, grant.window) == (6, 10, 1)


# ----------------------------------------------------------------------------- node loss


def test_a_node_that_stops_reporting_is_declared_lost_by_the_deadline_and_rejoins(
    heartbeat_cluster: LocalCluster,
) -> None:
    cluster = heartbeat_cluster
    with driver_of(cluster):
        node_silent_then_back(cluster)


def node_silent_then_back(cluster: LocalCluster) -> None:
    mark = last_seq(cluster)
    with stopped(cluster, "node-2"):
        wait_for(
            lambda: alive_nodes() == {"node-1"},
            timeout=TIMEOUT,
            what="the head to declare the silent node-2 lost",
        )
        [loss] = audit(cluster, "node.loss", mark)
    assert loss.identity.endswith("/node/node-2")
    assert (loss.outcome, loss.rules) == ("lost", ("node.heartbeat-deadline",))
    [reason] = loss.reasons
    match = re.fullmatch(r"no report from node node-2 for (\d+\.\d) s \(deadline 2 s\)", reason)
    assert match is not None, reason
    assert float(match[1]) > HEARTBEAT_TIMEOUT
    # Continued, it finds its stream ended by the head and registers afresh.
    wait_until_rejoined(cluster, mark, ("node-2",))
    wait_for(lambda: alive_nodes() == set(NODES), what="node-2 back in the view")
    # Declared lost once: the stream the head ended is no second loss.
    assert audit(cluster, "node.loss", mark) == [loss]
    ref = square.options(resources={"node:node-2": 1}).remote(7)
    assert fabric.get(ref, timeout=TIMEOUT) == 49


def test_a_node_that_does_not_reconnect_after_a_restart_is_declared_lost(
    cluster: LocalCluster, driver: None
) -> None:
    mark = last_seq(cluster)
    with stopped(cluster, "node-2"):
        cluster.restart_head()
        assert head_view(cluster) == {"node-1": True, "node-2": True}
        wait_for(
            lambda: head_view(cluster) == {"node-1": True},
            timeout=TIMEOUT,
            what="the head to declare node-2, which cannot reconnect, lost",
        )
        [loss] = audit(cluster, "node.loss", mark)
        assert of_node([loss], "node-2") == [loss]
        assert loss.rules == ("node.heartbeat-deadline",)
        assert loss.reasons[0].endswith("since the head started: it did not reconnect")
        assert of_node(audit(cluster, "node.join", mark), "node-1")  # node-1 did reconnect
    wait_until_rejoined(cluster, mark, ("node-2",))
    wait_for(lambda: alive_nodes() == set(NODES), what="node-2 back in the view")
    assert audit(cluster, "node.loss", mark) == [loss]
