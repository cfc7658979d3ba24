"""A fabric across three simulated hosts: one network namespace per node agent.

The head runs in the root namespace on the topology's bridge address; each host runs one
agent listening on its own address, so agent-to-agent and agent-to-head traffic crosses
real interfaces (veth pairs and a bridge). The driver, in the root namespace, connects to
the agent of the first host. Skipped, with the reason, where namespaces are unavailable.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fabric
from fabric import _api, _state
from fabric._cluster import Launch, agent_command, head_command, spawn, terminate, wait_ready
from fabric._pki import CertificateAuthority
from tests.netns import Host, Topology, netns_topology, wait_until
from tests.test_multinode import big_array, digest

REGIONS = ("eu-west", "eu-central", "us-east")
NODE_IDS = ("host-1", "host-2", "host-3")
CPUS_PER_NODE = 2
NODE_RESOURCE_AMOUNT = 1000.0
START_TIMEOUT = 60.0
GET_TIMEOUT = 60.0

# Module-scoped: one topology (and one fabric on it) for every test here.
hosts3 = netns_topology(3, scope="module")


@dataclass
class MultiHost:
    topology: Topology
    certs: Path
    head_address: str
    hosts: dict[str, Host]  # node id -> host
    agent_addresses: dict[str, str]  # node id -> address from its ready file


def pinned(node_id: str) -> dict[str, float]:
    return {f"node:{node_id}": 1}


@contextlib.contextmanager
def driver_session(address: str, certs: Path) -> Iterator[fabric.RuntimeContext]:
    """Connect this process to the agent at `address` as tenant/default; disconnect after.

    A session opened elsewhere in this process (and the embedded cluster behind it) is
    kept aside meanwhile and restored afterwards, so other modules are not disturbed.
    """
    gc.collect()  # refs of the previous session release themselves to that session
    saved = (_state.client, _api._cluster)
    _state.client, _api._cluster = None, None
    try:
        yield fabric.init(address=address, certs=certs, identity="tenant/default")
    finally:
        gc.collect()
        fabric.shutdown()
        _state.client, _api._cluster = saved


@pytest.fixture(scope="module")
def multihost(hosts3: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHost]:
    """Head in the root namespace, one agent per host, a driver connected to host-1."""
    base = tmp_path_factory.mktemp("multihost")
    (base / "logs").mkdir()
    (base / "run").mkdir()
    certs = base / "certs"
    ca = CertificateAuthority.create(certs)
    for kind, name in [("node", "head"), *(("node", n) for n in NODE_IDS), ("tenant", "default")]:
        ca.issue(kind, name)

    launches: list[Launch] = []
    try:
        head_ready = base / "run" / "head.json"
        head = spawn(
            "head",
            head_command(f"{hosts3.bridge_address}:0", certs, head_ready),
            head_ready,
            base / "logs" / "head.log",
        )
        launches.append(head)
        head_address = wait_ready([head], START_TIMEOUT)["head"].address

        hosts = dict(zip(NODE_IDS, hosts3.hosts, strict=True))
        agents = []
        for (node_id, host), region in zip(hosts.items(), REGIONS, strict=True):
            ready_file = base / "run" / f"{node_id}.json"
            log_path = base / "logs" / f"{node_id}.log"
            cmd = agent_command(
                head_address,
                f"{host.address}:0",
                certs,
                node_id,
                region,
                {"CPU": CPUS_PER_NODE, f"node:{node_id}": NODE_RESOURCE_AMOUNT},
                {"host": host.name},
                ready_file,
            )
            with open(log_path, "ab") as log:
                process = hosts3.popen(
                    host,
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            agents.append(Launch(node_id, process, ready_file, log_path))
        launches.extend(agents)
        ready = wait_ready(agents, START_TIMEOUT)
        cluster = MultiHost(
            topology=hosts3,
            certs=certs,
            head_address=head_address,
            hosts=hosts,
            agent_addresses={node_id: ready[node_id].address for node_id in NODE_IDS},
        )
        with driver_session(cluster.agent_addresses["host-1"], certs):
            # An agent is ready once it has the head's first view, which need not list
            # the agents that joined after it.
            wait_until(
                lambda: {n["NodeID"] for n in fabric.nodes() if n["Alive"]} == set(NODE_IDS),
                timeout=30,
                what="host-1's agent to see all three hosts",
            )
            yield cluster
    finally:
        # Agents before the head, as LocalCluster stops them.
        terminate([launch.process for launch in reversed(launches)])


# ----------------------------------------------------------------------------- remote code


@fabric.remote
def where(candidates: list[str]) -> dict[str, Any]:
    """The node this ran on, and which of `candidates` are addresses of its host."""
    local = []
    for address in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError:
                continue
            local.append(address)
    return {"node": fabric.get_runtime_context().get_node_id(), "local": local}


@fabric.remote
def summarize(array: np.ndarray) -> dict[str, Any]:
    return {
        "node": fabric.get_runtime_context().get_node_id(),
        "shape": array.shape,
        "digest": digest(array),
    }


@fabric.remote
def make_big(seed: int) -> dict[str, Any]:
    return {"node": fabric.get_runtime_context().get_node_id(), "array": big_array(seed)}


class _Ledger:
    """Entries appended in call order."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def append(self, entry: str) -> int:
        self.entries.append(entry)
        return len(self.entries)

    def read(self) -> list[str]:
        return list(self.entries)

    def node(self) -> str:
        return fabric.get_runtime_context().get_node_id()


Ledger: fabric.ActorClass = fabric.remote(_Ledger)


@fabric.remote
def write_to_ledger(ledger: Any, entries: list[str]) -> dict[str, Any]:
    counts = [fabric.get(ledger.append.remote(e), timeout=GET_TIMEOUT) for e in entries]
    return {
        "node": fabric.get_runtime_context().get_node_id(),
        "counts": counts,
        "actor_node": fabric.get(ledger.node.remote(), timeout=GET_TIMEOUT),
    }


# ----------------------------------------------------------------------------- helpers


def rx_bytes(topology: Topology, host: Host) -> int:
    """Bytes received so far on the host's network interface."""
    result = topology.run(
        host,
        ["cat", "/sys/class/net/eth0/statistics/rx_bytes"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(result.stdout)


# ----------------------------------------------------------------------------- tests


def test_tasks_pinned_to_each_host_run_there(multihost: MultiHost) -> None:
    addresses = [host.address for host in multihost.hosts.values()]
    refs = {node: where.options(resources=pinned(node)).remote(addresses) for node in NODE_IDS}
    ran = {node: fabric.get(ref, timeout=GET_TIMEOUT) for node, ref in refs.items()}
    assert ran == {
        node: {"node": node, "local": [host.address]} for node, host in multihost.hosts.items()
    }


def test_a_large_object_crosses_hosts(multihost: MultiHost) -> None:
    topology, host3 = multihost.topology, multihost.hosts["host-3"]
    array = big_array(11)
    assert array.nbytes == 64 << 20
    ref = fabric.put(array)
    received_before = rx_bytes(topology, host3)
    result = fabric.get(summarize.options(resources=pinned("host-3")).remote(ref), timeout=60)
    assert result == {"node": "host-3", "shape": array.shape, "digest": digest(array)}
    # It came over host-3's network interface.
    assert rx_bytes(topology, host3) - received_before >= array.nbytes


def test_a_large_result_made_on_another_host_reaches_the_driver(multihost: MultiHost) -> None:
    topology, host1 = multihost.topology, multihost.hosts["host-1"]
    received_before = rx_bytes(topology, host1)
    made = fabric.get(make_big.options(resources=pinned("host-2")).remote(12), timeout=60)
    assert made["node"] == "host-2"
    assert made["array"].nbytes == 64 << 20
    assert digest(made["array"]) == digest(big_array(12))
    # The driver's agent (host-1) pulled it over its network interface.
    assert rx_bytes(topology, host1) - received_before >= made["array"].nbytes


def test_an_actor_on_host_3_is_used_from_a_task_on_host_2(multihost: MultiHost) -> None:
    ledger = Ledger.options(resources=pinned("host-3")).remote()
    assert fabric.get(ledger.append.remote("from the driver"), timeout=GET_TIMEOUT) == 1
    entries = [f"from host-2 #{i}" for i in range(10)]
    result = fabric.get(
        write_to_ledger.options(resources=pinned("host-2")).remote(ledger, entries),
        timeout=GET_TIMEOUT,
    )
    assert result == {"node": "host-2", "counts": list(range(2, 12)), "actor_node": "host-3"}
    assert fabric.get(ledger.read.remote(), timeout=GET_TIMEOUT) == ["from the driver", *entries]
    fabric.kill(ledger)


def test_nodes_report_their_namespace_addresses(multihost: MultiHost) -> None:
    nodes = {n["NodeID"]: n for n in fabric.nodes()}
    assert set(nodes) == set(NODE_IDS)
    assert all(n["Alive"] for n in nodes.values())
    assert {k: n["Region"] for k, n in nodes.items()} == dict(zip(NODE_IDS, REGIONS, strict=True))
    assert {k: n["Address"] for k, n in nodes.items()} == multihost.agent_addresses
    for node_id, node in nodes.items():
        host, _, port = node["Address"].rpartition(":")
        assert ipaddress.ip_address(host) in multihost.topology.subnet
        assert host == multihost.hosts[node_id].address
        assert int(port) > 0
    assert fabric.get_runtime_context().get_node_id() == "host-1"
    assert fabric.cluster_resources()["CPU"] == float(CPUS_PER_NODE * len(NODE_IDS))
