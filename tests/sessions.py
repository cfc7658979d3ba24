"""Raw tenant sessions for tests that play several tenants (or an attacker) in one process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from fabric import _state
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric._driver import connect
from fabric._pki import Credentials
from fabric._proto import fabric_pb2 as pb
from tests.conftest import wait_for

TIMEOUT = 10.0


@contextlib.contextmanager
def acting_as(client: CoreClient) -> Iterator[CoreClient]:
    """Make `client` the process's client for the public API, then restore the previous one."""
    previous = _state.client
    _state.client = client
    try:
        yield client
    finally:
        _state.client = previous


@contextlib.contextmanager
def tenant_session(
    cluster: LocalCluster, tenant: str, node: str = "node-1"
) -> Iterator[CoreClient]:
    """A session of `tenant` with the agent of `node`, closed on exit."""
    creds = Credentials.load(cluster.tenant_credentials(tenant))
    client = connect(cluster.agent_addresses[node], creds, timeout=TIMEOUT)
    try:
        yield client
    finally:
        client.closed_reason = "closed by the test"
        client.transport.close()


def alive_nodes(client: CoreClient) -> set[str]:
    """The nodes alive in the view of `client`'s agent."""
    request = pb.ClientMessage(cluster_info=pb.ClusterInfoRequest())
    view = client.request(request, timeout=TIMEOUT).cluster
    return {info.node_id for info in view.nodes if info.alive}


def wait_until_every_agent_sees_every_node(cluster: LocalCluster, tenant: str) -> None:
    """An agent is ready once it has a first view of the cluster, which may predate the
    other agents joining; tasks meant for another node need that node in the view."""
    everyone = set(cluster.agent_addresses)
    for node in cluster.agent_addresses:
        with tenant_session(cluster, tenant, node) as client:
            wait_for(lambda: alive_nodes(client) == everyone, what=f"{node} to see every node")


@contextlib.contextmanager
def started_cluster(nodes: Sequence[NodeSpec], tenants: Sequence[str]) -> Iterator[LocalCluster]:
    """A running cluster for `tenants` whose agents all see every node."""
    cluster = LocalCluster(nodes, tenants=tenants)
    cluster.start()
    try:
        wait_until_every_agent_sees_every_node(cluster, tenants[-1])
        yield cluster
    finally:
        cluster.stop()
