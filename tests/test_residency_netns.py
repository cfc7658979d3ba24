"""Residency and tenancy on three hosts in three regions, attacker side first.

One network namespace per node agent (eu-west-1, eu-central-1, us-east-1), the head in the
root namespace, all under `configs/policy-two-tenants.yaml`: alice's data stays in the EU
by default (her `health` class in eu-west only); bob's may live anywhere. Drivers of both
tenants connect to agents in the EU and in the US. Skipped, with the reason, where
namespaces are unavailable.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fabric.audit import decode

import fabric
from fabric._client import CoreClient
from fabric._cluster import Launch, agent_command, head_command, spawn, terminate, wait_ready
from fabric._driver import connect
from fabric._pki import CertificateAuthority, CredentialPaths, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._refs import ObjectRef
from fabric._tls import secure_channel
from fabric.exceptions import (
    ActorDiedError,
    PermissionDeniedError,
    PlacementRefusedError,
    ResidencyError,
    UnknownObjectError,
)
from tests.netns import Topology, netns_topology, wait_until
from tests.sessions import acting_as

POLICY = Path(__file__).parent.parent / "configs" / "policy-two-tenants.yaml"
NODES = {"eu-west-1": "eu-west", "eu-central-1": "eu-central", "us-east-1": "us-east"}
TENANTS = ("alice", "bob", "mallory")  # mallory has a certificate but is no tenant
START_TIMEOUT = 60.0
TIMEOUT = 30.0

hosts3 = netns_topology(3, scope="module")


@dataclass
class Fabric:
    topology: Topology
    base: Path
    certs: Path
    head_address: str
    agents: dict[str, str]  # node id -> address

    def credentials(self, kind: str, name: str) -> Credentials:
        issued = self.certs / "issued"
        return Credentials.load(
            CredentialPaths(
                cert=issued / f"{kind}-{name}.pem",
                key=issued / f"{kind}-{name}.key",
                ca=self.certs / "ca.pem",
                crl=self.certs / "crl.pem",
            )
        )


@pytest.fixture(scope="module")
def regions(hosts3: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    base = tmp_path_factory.mktemp("regions")
    (base / "logs").mkdir()
    (base / "run").mkdir()
    certs = base / "certs"
    ca = CertificateAuthority.create(certs)
    ca.issue("node", "head")
    for node_id in (*NODES, "us-east-2"):
        ca.issue("node", node_id)
    for tenant in TENANTS:
        ca.issue("tenant", tenant)
    ca.issue("operator", "admin")
    launches: list[Launch] = []
    try:
        head_ready = base / "run" / "head.json"
        head = spawn(
            "head",
            head_command(f"{hosts3.bridge_address}:0", certs, head_ready, policy=POLICY),
            head_ready,
            base / "logs" / "head.log",
        )
        launches.append(head)
        head_address = wait_ready([head], START_TIMEOUT)["head"].address
        agents = []
        for (node_id, region), host in zip(NODES.items(), hosts3.hosts, strict=True):
            launch = _start_agent(hosts3, base, certs, head_address, host, node_id, region)
            agents.append(launch)
        launches.extend(agents)
        ready = wait_ready(agents, START_TIMEOUT)
        fab = Fabric(hosts3, base, certs, head_address, {n: ready[n].address for n in NODES})
        with session(fab, "bob", "eu-west-1") as client:
            wait_until(
                lambda: {n.node_id for n in _view(client).nodes if n.alive} == set(NODES),
                timeout=TIMEOUT,
                what="eu-west-1 to see all three nodes",
            )
        yield fab
    finally:
        terminate([launch.process for launch in reversed(launches)])


def _start_agent(
    topology: Topology,
    base: Path,
    certs: Path,
    head_address: str,
    host: Any,
    node_id: str,
    region: str,
) -> Launch:
    ready_file = base / "run" / f"{node_id}.json"
    log_path = base / "logs" / f"{node_id}.log"
    cmd = agent_command(
        head_address,
        f"{host.address}:0",
        certs,
        node_id,
        region,
        {"CPU": 2, f"node:{node_id}": 1000},
        {"zone": f"{region}-a"},
        ready_file,
    )
    with open(log_path, "ab") as log:
        process = topology.popen(
            host,
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Launch(node_id, process, ready_file, log_path)


def _view(client: CoreClient) -> pb.ClusterInfo:
    return client.request(pb.ClientMessage(cluster_info=pb.ClusterInfoRequest()), TIMEOUT).cluster


@contextlib.contextmanager
def session(fab: Fabric, tenant: str, node_id: str) -> Iterator[CoreClient]:
    client = connect(fab.agents[node_id], fab.credentials("tenant", tenant), timeout=TIMEOUT)
    try:
        with acting_as(client):
            yield client
    finally:
        client.closed_reason = "closed by the test"
        client.transport.close()


# ----------------------------------------------------------------------------- remote code


@fabric.remote
def here() -> str:
    return fabric.get_runtime_context().region


@fabric.remote
def total(values: list[int]) -> tuple[str, int]:
    return fabric.get_runtime_context().region, sum(values)


@fabric.remote
def escape(how: str) -> str:
    """Runs in the EU and tries to get its data into us-east."""
    if how == "child":
        ref = here.options(region="us-east").remote()
    else:
        laundered = fabric.put([1, 2, 3], residency="any")  # still derived from EU data
        ref = total.options(region="us-east").remote(laundered)
    try:
        fabric.get(ref, timeout=TIMEOUT)
    except PlacementRefusedError as e:
        return f"refused: {e}"
    return "escaped"


class _Vault:
    def __init__(self) -> None:
        self.secret = "alice's EU secret"

    def read(self) -> str:
        return self.secret

    def region(self) -> str:
        return fabric.get_runtime_context().region


Vault: fabric.ActorClass = fabric.remote(_Vault)


# ----------------------------------------------------------------------------- attacks


def test_a_node_cannot_claim_a_region_its_identity_may_not(regions: Fabric) -> None:
    host = regions.topology.hosts[2]
    launch = _start_agent(
        regions.topology,
        regions.base,
        regions.certs,
        regions.head_address,
        host,
        "us-east-2",
        "eu-west",  # node/us-east-* may claim only us-east
    )
    try:
        assert launch.process.wait(timeout=START_TIMEOUT) != 0
        log = launch.log_path.read_text()
        assert "may not claim region 'eu-west'" in log
        assert "node.region-claim" in log
    finally:
        terminate([launch.process])
    with session(regions, "bob", "eu-west-1") as client:
        assert "us-east-2" not in {n.node_id for n in _view(client).nodes}


def test_an_identity_that_is_no_tenant_gets_no_session(regions: Fabric) -> None:
    with pytest.raises(PermissionDeniedError, match="not a tenant of the policy"):
        connect(regions.agents["eu-west-1"], regions.credentials("tenant", "mallory"), timeout=10)
    # The refusal is in the audit log.
    operator = regions.credentials("operator", "admin")

    def refusals() -> list[str]:
        request = pb.AuditQuery(kind="cert.refuse", node="eu-west-1")
        with secure_channel(regions.head_address, operator) as channel:
            entries = [decode(e.data) for e in rpc.HeadStub(channel).QueryAudit(request)]
        return [" ".join(e.reasons) for e in entries]

    wait_until(
        lambda: any("tenant/mallory" in r for r in refusals()),
        timeout=TIMEOUT,
        what="mallory's refusal in the audit log",
    )


def test_an_eu_object_passed_to_a_task_pinned_to_us_east_is_refused(regions: Fabric) -> None:
    with session(regions, "alice", "eu-west-1"):
        data = fabric.put([1, 2, 3])  # alice's default residency: EU
        with pytest.raises(PlacementRefusedError, match=r"residency\.inputs") as refused:
            fabric.get(total.options(region="us-east").remote(data), timeout=TIMEOUT)
        assert "eu-central, eu-west" in str(refused.value)
        # Inside its residency it runs, wherever the EU has room.
        region, value = fabric.get(total.remote(data), timeout=TIMEOUT)
        assert (region in ("eu-west", "eu-central"), value) == (True, 6)


def test_a_data_class_narrows_where_work_on_it_may_run(regions: Fabric) -> None:
    with session(regions, "alice", "eu-west-1"):
        record = fabric.put([5, 5], residency="health")  # eu-west only
        with pytest.raises(PlacementRefusedError, match=r"residency\.inputs"):
            fabric.get(total.options(region="eu-central").remote(record), timeout=TIMEOUT)
        assert fabric.get(total.remote(record), timeout=TIMEOUT) == ("eu-west", 10)
        with pytest.raises(ValueError, match="unknown residency 'helth'"):
            fabric.put(1, residency="helth")


def test_a_nested_task_cannot_escape_its_region(regions: Fabric) -> None:
    with session(regions, "alice", "eu-west-1"):
        for how in ("child", "laundered put"):
            outcome = fabric.get(escape.remote(how), timeout=TIMEOUT)
            assert outcome.startswith("refused:"), (how, outcome)
            assert "residency.inputs" in outcome


def test_an_eu_put_is_never_fetched_by_a_us_connected_driver(regions: Fabric) -> None:
    with session(regions, "alice", "eu-west-1"):
        data = fabric.put(list(range(1000)))
        leaked = pickle.dumps(data)
        object_id = data.binary()
        with session(regions, "alice", "us-east-1"):
            stolen = pickle.loads(leaked)
            # Its own agent does not hold it, and will not fetch it...
            with pytest.raises(UnknownObjectError):
                fabric.get(stolen, timeout=TIMEOUT)
            # ...nor will a task in us-east: alice's work is placed where its inputs may go.
            forged = ObjectRef(object_id, owner_node="eu-west-1")
            with pytest.raises(PlacementRefusedError, match=r"residency\.inputs"):
                fabric.get(total.options(region="us-east").remote(forged), timeout=TIMEOUT)
            # Labelled "any", so that its agent places it in us-east, it still gets nothing:
            # eu-west refuses to send an EU object there.
            anywhere = total.options(region="us-east", residency="any")
            with pytest.raises(ResidencyError, match=r"residency\.transfer-outside"):
                fabric.get(anywhere.remote(forged), timeout=TIMEOUT)
        assert len(fabric.get(data, timeout=TIMEOUT)) == 1000


def test_an_eu_result_stays_in_the_eu_when_a_us_driver_asks(regions: Fabric) -> None:
    with session(regions, "alice", "us-east-1"):
        ref = here.remote()  # alice's default residency places it in the EU
        with pytest.raises(ResidencyError, match=r"residency\.driver-outside") as refused:
            fabric.get(ref, timeout=TIMEOUT)
        assert "us-east" in str(refused.value)
        # A put from a US-connected driver may not be stored under an EU residency either.
        with pytest.raises(ResidencyError, match=r"residency\.store-outside"):
            fabric.put("x")
        with pytest.raises(ResidencyError, match=r"residency\.store-outside"):
            fabric.put("x", residency="eu-central")
        assert fabric.get(fabric.put("x", residency="any"), timeout=TIMEOUT) == "x"
        # With a residency that allows the US, the same work comes back.
        assert fabric.get(here.options(residency="any").remote(), timeout=TIMEOUT) in (
            "eu-west",
            "eu-central",
            "us-east",
        )


def test_an_eu_actor_called_by_a_us_connected_driver_keeps_its_data(regions: Fabric) -> None:
    with session(regions, "alice", "eu-west-1"):
        vault = Vault.options(name="vault", region="eu-west").remote()
        assert fabric.get(vault.region.remote(), timeout=TIMEOUT) == "eu-west"
        with session(regions, "alice", "us-east-1"):
            remote_vault = fabric.get_actor("vault")
            with pytest.raises(ResidencyError, match=r"residency\.driver-outside"):
                fabric.get(remote_vault.read.remote(), timeout=TIMEOUT)
        assert fabric.get(vault.read.remote(), timeout=TIMEOUT) == "alice's EU secret"
        # Another tenant holding the handle reaches nothing.
        with session(regions, "bob", "eu-west-1"):
            stolen = pickle.loads(pickle.dumps(vault))
            with pytest.raises(ActorDiedError):
                fabric.get(stolen.read.remote(), timeout=TIMEOUT)


def test_another_tenants_object_id_and_a_forged_tenant_field_reach_nothing(
    regions: Fabric,
) -> None:
    with session(regions, "alice", "eu-west-1"):
        secret = fabric.put("alice only")
        secret_id = secret.binary()
        with session(regions, "bob", "eu-west-1") as bob:
            with pytest.raises(UnknownObjectError):
                fabric.get(ObjectRef(secret_id, owner_node="eu-west-1"), timeout=TIMEOUT)
            # A submit that names alice as its tenant runs as bob all the same.
            spec = pb.TaskSpec(
                task_id=b"\x07" * 16,
                kind=pb.NORMAL_TASK,
                tenant="alice",
                num_returns=1,
                args=[pb.Arg(object_id=secret_id, owner_node="eu-west-1", residency="")],
            )
            spec.function_digest = total._pickled.digest()
            bob.submit(spec, total._pickled.blob)
            with pytest.raises(UnknownObjectError):
                fabric.get(
                    ObjectRef(spec.task_id + b"\0\0\0\1", owner_node="eu-west-1"), timeout=10
                )
        assert fabric.get(secret, timeout=TIMEOUT) == "alice only"


# ----------------------------------------------------------------------------- placement


def test_region_options_and_label_selectors_place_work(regions: Fabric) -> None:
    with session(regions, "bob", "eu-west-1"):
        assert fabric.get(here.options(region="us-east").remote(), timeout=TIMEOUT) == "us-east"
        eu = here.options(label_selector={"region": "in(eu-central,us-east)", "zone": "!us-east-a"})
        assert fabric.get(eu.remote(), timeout=TIMEOUT) == "eu-central"
        with pytest.raises(PlacementRefusedError, match=r"place\.no-matching-node"):
            fabric.get(here.options(label_selector={"zone": "mars-1"}).remote(), timeout=TIMEOUT)
        # bob's data may live anywhere: his US result reaches his EU-connected driver.
        assert fabric.get(total.options(region="us-east").remote([1, 2]), timeout=TIMEOUT) == (
            "us-east",
            3,
        )


def test_a_tenant_sees_only_its_own_load(regions: Fabric) -> None:
    with session(regions, "alice", "eu-west-1"):
        vault = Vault.options(name="counted", region="eu-west").remote()
        fabric.get(vault.region.remote(), timeout=TIMEOUT)
        with session(regions, "bob", "eu-west-1") as bob:
            wait_until(
                lambda: all(
                    set(n.tenant_load) <= {"bob"} and n.tenant_load["bob"].actors == 0
                    for n in _view(bob).nodes
                ),
                timeout=TIMEOUT,
                what="bob's view to show only bob",
            )
        fabric.kill(vault)
