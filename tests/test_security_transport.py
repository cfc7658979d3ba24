"""Attacks on the transport of a real cluster: who may reach the head's and agents' ports.

One :class:`LocalCluster` (a head and one agent, real processes, real mutual TLS) serves the
whole module. Every test attacks the agent's port, the head's port, or both, from the
client side, then checks that the servers are still healthy: their processes are alive,
the head answers ``Status`` and a legitimate driver still runs a task.

Drivers here are raw sessions (``fabric._driver.connect``); the public API is used on
them by making one the process's client for the duration of a block (``acting_as``),
so this module never starts or stops an embedded cluster and leaves ``fabric`` as it
found it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

import fabric
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric._driver import connect
from fabric._pki import CertificateAuthority, CredentialPaths, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from fabric.exceptions import ConnectionLostError
from tests.conftest import wait_for
from tests.sessions import acting_as

TIMEOUT = 10.0
SPIFFE = "spiffe://fabric.local"
TARGETS = ("agent", "head")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster([NodeSpec("node-1", "local", {"CPU": 2})], tenants=("default",))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ca(local_cluster: LocalCluster) -> CertificateAuthority:
    """The cluster's own CA, as an operator holding its key would use it."""
    return CertificateAuthority.load(local_cluster.certs_dir)


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """An unrelated CA, as an attacker would have: same trust domain, different key."""
    return CertificateAuthority.create(tmp_path_factory.mktemp("foreign") / "ca")


@pytest.fixture
def extra_certs(tmp_path: Path) -> Path:
    """Where certificates issued by a test go, so the cluster's issued/ is left alone."""
    return tmp_path / "issued"


# ----------------------------------------------------------------------------- helpers


@fabric.remote
def ping() -> str:
    return "pong"


@contextlib.contextmanager
def session(address: str, creds: Credentials) -> Iterator[CoreClient]:
    client = connect(address, creds, timeout=TIMEOUT)
    try:
        yield client
    finally:
        client.closed_reason = "closed by the test"
        client.transport.close()


def agent_address(cluster: LocalCluster) -> str:
    return cluster.agent_addresses["node-1"]


def address_of(cluster: LocalCluster, target: str) -> str:
    return agent_address(cluster) if target == "agent" else cluster.head_address


def creds_of(cluster: LocalCluster, kind: str, name: str) -> Credentials:
    return Credentials.load(cluster.credentials(kind, name))


def code_details(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    call: Any = err  # a raised RpcError is also a grpc.Call
    return call.code(), call.details()


def rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def status(channel: grpc.Channel) -> pb.ClusterInfo:
    info: pb.ClusterInfo = rpc.HeadStub(channel).Status(pb.Empty(), timeout=TIMEOUT)
    return info


@contextlib.contextmanager
def open_session_call(channel: grpc.Channel) -> Iterator[pb.Welcome]:
    """A raw Agent/Session on `channel`: say hello, yield the welcome, keep the call open
    until the block ends."""
    done = threading.Event()

    def requests() -> Iterator[pb.ClientBatch]:
        yield pb.ClientBatch(messages=[pb.ClientMessage(request_id=1, hello=pb.Hello())])
        done.wait(TIMEOUT * 6)

    call: Any = rpc.AgentStub(channel).Session(requests(), timeout=TIMEOUT * 6)
    try:
        batch = next(call)
        yield batch.messages[0].reply.welcome
    finally:
        done.set()
        call.cancel()


def first_call(target: str, channel: grpc.Channel) -> object:
    """The first thing a legitimate client of `target` does on a channel."""
    if target == "head":
        return status(channel)
    with open_session_call(channel) as welcome:
        return welcome


def assert_servers_healthy(cluster: LocalCluster) -> None:
    for name, process in cluster.processes.items():
        assert process.poll() is None, f"{name} exited with {process.returncode}"
    with secure_channel(cluster.head_address, creds_of(cluster, "operator", "admin")) as channel:
        (node,) = status(channel).nodes
    assert (node.node_id, node.alive) == ("node-1", True)
    with (
        session(agent_address(cluster), creds_of(cluster, "tenant", "default")) as client,
        acting_as(client),
    ):
        assert fabric.get(ping.remote(), timeout=60) == "pong"


def server_logs(cluster: LocalCluster) -> str:
    return cluster.log_path("head").read_text() + cluster.log_path("node-1").read_text()


# ----------------------------------------------------------------------------- handshake


def test_the_servers_are_healthy_to_begin_with(local_cluster: LocalCluster) -> None:
    assert_servers_healthy(local_cluster)


@pytest.mark.parametrize("target", TARGETS)
def test_plaintext_client_is_refused(local_cluster: LocalCluster, target: str) -> None:
    with grpc.insecure_channel(address_of(local_cluster, target)) as channel:
        err = rpc_error(lambda: first_call(target, channel))
    assert code_details(err)[0] == grpc.StatusCode.UNAVAILABLE
    assert_servers_healthy(local_cluster)


@pytest.mark.parametrize("target", TARGETS)
def test_client_cert_from_unknown_ca_is_refused_at_handshake(
    local_cluster: LocalCluster, foreign_ca: CertificateAuthority, extra_certs: Path, target: str
) -> None:
    name = f"intruder-{target}"
    forged = Credentials.load(foreign_ca.issue("tenant", name, extra_certs))
    # The intruder trusts the cluster's CA, so its side of the handshake is satisfied; only
    # the server's check of the client certificate can stop it.
    intruder = dataclasses.replace(forged, ca_pem=(local_cluster.certs_dir / "ca.pem").read_bytes())
    with secure_channel(address_of(local_cluster, target), intruder) as channel:
        err = rpc_error(lambda: first_call(target, channel))
    assert code_details(err)[0] == grpc.StatusCode.UNAVAILABLE
    # Refused by TLS itself: the application layer never saw (or logged) the identity.
    assert name not in server_logs(local_cluster)
    assert_servers_healthy(local_cluster)


def test_node_cert_from_unknown_ca_cannot_pose_as_a_node(
    local_cluster: LocalCluster, foreign_ca: CertificateAuthority, extra_certs: Path
) -> None:
    forged = Credentials.load(foreign_ca.issue("node", "node-1", extra_certs))
    impostor = dataclasses.replace(forged, ca_pem=(local_cluster.certs_dir / "ca.pem").read_bytes())
    with secure_channel(agent_address(local_cluster), impostor) as channel:
        err = rpc_error(
            lambda: rpc.AgentStub(channel).Peer(iter([pb.PeerBatch()]), timeout=TIMEOUT)
        )
        assert code_details(err)[0] == grpc.StatusCode.UNAVAILABLE
    with secure_channel(local_cluster.head_address, impostor) as channel:
        err = rpc_error(
            lambda: rpc.HeadStub(channel).RegisterActor(pb.ActorRecord(), timeout=TIMEOUT)
        )
        assert code_details(err)[0] == grpc.StatusCode.UNAVAILABLE
    assert_servers_healthy(local_cluster)


@pytest.mark.parametrize("target", TARGETS)
def test_expired_tenant_cert_is_refused(
    local_cluster: LocalCluster, ca: CertificateAuthority, extra_certs: Path, target: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = Credentials.load(
        ca.issue(
            "tenant",
            f"expired-{target}",
            extra_certs,
            not_before=now - dt.timedelta(days=2),
            not_after=now - dt.timedelta(days=1),
        )
    )
    with secure_channel(address_of(local_cluster, target), expired) as channel:
        err = rpc_error(lambda: first_call(target, channel))
    assert code_details(err)[0] == grpc.StatusCode.UNAVAILABLE
    if target == "agent":
        with pytest.raises(ConnectionLostError, match=r"^cannot reach the node agent at "):
            connect(agent_address(local_cluster), expired, timeout=TIMEOUT)
    assert_servers_healthy(local_cluster)


# ----------------------------------------------------------------------------- revocation


def _refusal(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str] | None:
    """The status `fn` is refused with, or None while it still succeeds."""
    try:
        fn()
    except grpc.RpcError as err:
        return code_details(err)
    return None


@pytest.mark.parametrize("target", TARGETS)
def test_cert_revoked_after_start_is_refused_at_the_first_call(
    local_cluster: LocalCluster, ca: CertificateAuthority, extra_certs: Path, target: str
) -> None:
    name = f"revoked-{target}"
    paths = ca.issue("tenant", name, extra_certs)
    creds = Credentials.load(paths)
    address = address_of(local_cluster, target)
    revoked = (grpc.StatusCode.UNAUTHENTICATED, f"certificate revoked: {SPIFFE}/tenant/{name}")
    with secure_channel(address, creds) as existing:
        first_call(target, existing)  # accepted before the revocation
        ca.revoke(paths.cert)
        # Servers re-read crl.pem at most every 0.5 s.
        refusal = wait_for(
            lambda: _refusal(lambda: first_call(target, existing)),
            timeout=TIMEOUT,
            what="a new call on the existing channel to be refused",
        )
        assert refusal == revoked
    with secure_channel(address, creds) as fresh:
        assert _refusal(lambda: first_call(target, fresh)) == revoked
    if target == "agent":
        with pytest.raises(ConnectionLostError) as info:
            connect(address, creds, timeout=TIMEOUT)
        assert str(info.value) == f"UNAUTHENTICATED: certificate revoked: {SPIFFE}/tenant/{name}"
    assert_servers_healthy(local_cluster)


def test_revoked_tenants_open_session_is_cut_off(
    local_cluster: LocalCluster, ca: CertificateAuthority, extra_certs: Path
) -> None:
    """A driver's session is one long-lived RPC: revoking its certificate must end it, not
    only refuse the sessions it might open later."""
    paths = ca.issue("tenant", "revoked-live", extra_certs)
    creds = Credentials.load(paths)
    address = agent_address(local_cluster)
    with session(address, creds) as client:
        with acting_as(client):
            assert fabric.get(ping.remote(), timeout=60) == "pong"
        ca.revoke(paths.cert)
        with secure_channel(address, creds) as channel:
            wait_for(
                lambda: _refusal(lambda: first_call("agent", channel)),
                timeout=TIMEOUT,
                what="new sessions of the revoked tenant to be refused",
            )
        wait_for(
            lambda: client.closed_reason is not None,
            timeout=TIMEOUT,
            what="the agent to end the revoked tenant's open session",
        )
        assert f"certificate revoked: {SPIFFE}/tenant/revoked-live" in str(client.closed_reason)
        with acting_as(client), pytest.raises(ConnectionLostError):
            ping.remote()
    assert_servers_healthy(local_cluster)


# ----------------------------------------------------------------------------- authorization


def _peer(channel: grpc.Channel) -> object:
    forward = pb.TaskSpec(task_id=b"\1" * 16, function_digest=b"\2" * 32, num_returns=1)
    batch = pb.PeerBatch(messages=[pb.PeerMessage(forward=forward)])
    return rpc.AgentStub(channel).Peer(iter([batch]), timeout=TIMEOUT)


def _fetch_object(channel: grpc.Channel) -> object:
    request = pb.FetchRequest(object_id=b"\3" * 20, tenant="default")
    return list(rpc.AgentStub(channel).FetchObject(request, timeout=TIMEOUT))


def _node_stream(channel: grpc.Channel) -> object:
    register = pb.RegisterNode(address="127.0.0.1:1", region="evil", resources={"CPU": 1e6})
    reports = iter([pb.NodeReport(register=register)])
    return list(rpc.HeadStub(channel).NodeStream(reports, timeout=TIMEOUT))


def _register_actor(channel: grpc.Channel) -> object:
    info = pb.ActorInfo(actor_id=b"\4" * 16, name="squatted", namespace="default", tenant="default")
    return rpc.HeadStub(channel).RegisterActor(pb.ActorRecord(info=info), timeout=TIMEOUT)


def _remove_actor(channel: grpc.Channel) -> object:
    lookup = pb.LookupActor(tenant="default", actor_id=b"\4" * 16)
    return rpc.HeadStub(channel).RemoveActor(lookup, timeout=TIMEOUT)


def _lookup_actor(channel: grpc.Channel) -> object:
    lookup = pb.LookupActor(tenant="default", namespace="default", name="squatted")
    return rpc.HeadStub(channel).LookupActorByName(lookup, timeout=TIMEOUT)


NODE_ONLY: dict[str, tuple[str, Callable[[grpc.Channel], object]]] = {
    "/fabric.v1.Agent/Peer": ("agent", _peer),
    "/fabric.v1.Agent/FetchObject": ("agent", _fetch_object),
    "/fabric.v1.Head/NodeStream": ("head", _node_stream),
    "/fabric.v1.Head/RegisterActor": ("head", _register_actor),
    "/fabric.v1.Head/RemoveActor": ("head", _remove_actor),
    "/fabric.v1.Head/LookupActorByName": ("head", _lookup_actor),
}


@pytest.mark.parametrize("who", ["tenant/default", "operator/admin"])
@pytest.mark.parametrize("method", sorted(NODE_ONLY))
def test_non_node_cert_calling_node_only_rpc_is_denied(
    local_cluster: LocalCluster, method: str, who: str
) -> None:
    target, call = NODE_ONLY[method]
    kind, _, name = who.partition("/")
    with secure_channel(
        address_of(local_cluster, target), creds_of(local_cluster, kind, name)
    ) as ch:
        err = rpc_error(lambda: call(ch))
    assert code_details(err) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"{SPIFFE}/{who} is not allowed to call {method}",
    )
    # Nothing the call carried took effect: no node joined, no actor was registered.
    with secure_channel(
        local_cluster.head_address, creds_of(local_cluster, "node", "node-1")
    ) as ch:
        assert [n.node_id for n in status(ch).nodes] == ["node-1"]
        err = rpc_error(lambda: _lookup_actor(ch))
        assert code_details(err) == (grpc.StatusCode.NOT_FOUND, "no actor named 'squatted'")
    assert_servers_healthy(local_cluster)


@pytest.mark.parametrize("who", ["node/node-1", "node/head", "operator/admin"])
def test_non_tenant_cert_cannot_open_a_driver_session(
    local_cluster: LocalCluster, who: str
) -> None:
    kind, _, name = who.partition("/")
    with pytest.raises(ConnectionLostError) as info:
        connect(agent_address(local_cluster), creds_of(local_cluster, kind, name), timeout=TIMEOUT)
    assert str(info.value) == (
        f"PERMISSION_DENIED: {SPIFFE}/{who} is not allowed to call /fabric.v1.Agent/Session"
    )
    assert_servers_healthy(local_cluster)


# ----------------------------------------------------------------------------- server identity


class _ImpostorAgent(rpc.AgentServicer):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def Session(self, request_iterator: Any, context: Any) -> Iterator[pb.ServerBatch]:
        self.seen.append("Session")
        welcome = pb.Welcome(node_id="impostor", tenant="default")
        yield pb.ServerBatch(
            messages=[pb.ServerMessage(request_id=1, reply=pb.Reply(welcome=welcome))]
        )
        for _ in request_iterator:
            pass


class _ImpostorHead(rpc.HeadServicer):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def Status(self, request: Any, context: Any) -> pb.ClusterInfo:
        self.seen.append("Status")
        return pb.ClusterInfo(nodes=[pb.NodeInfo(node_id="impostor")])


@contextlib.contextmanager
def impostor_server(
    paths: CredentialPaths, trusted_ca_pem: bytes
) -> Iterator[tuple[str, list[str]]]:
    """An agent-and-head look-alike serving with the certificate in `paths`. It trusts the
    cluster's CA, so the client side is all that can stop a client talking to it."""
    creds = Credentials.load(paths)
    seen: list[str] = []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_AgentServicer_to_server(_ImpostorAgent(seen), server)
    rpc.add_HeadServicer_to_server(_ImpostorHead(seen), server)
    tls = grpc.ssl_server_credentials(
        [(creds.key_pem, creds.cert_pem)],
        root_certificates=trusted_ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", tls)
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(None)


@pytest.mark.parametrize("target", TARGETS)
def test_client_refuses_server_with_cert_from_another_ca(
    local_cluster: LocalCluster,
    ca: CertificateAuthority,
    foreign_ca: CertificateAuthority,
    extra_certs: Path,
    target: str,
) -> None:
    tenant = creds_of(local_cluster, "tenant", "default")
    cluster_ca = ca.ca_pem
    # Control: the same look-alike with a certificate of the cluster's CA is believed.
    with impostor_server(ca.issue("node", "look-alike", extra_certs / "own"), cluster_ca) as (
        address,
        seen,
    ):
        if target == "agent":
            with session(address, tenant) as client:
                assert client.node_id == "impostor"
        else:
            with secure_channel(address, tenant) as channel:
                assert [n.node_id for n in status(channel).nodes] == ["impostor"]
        assert seen == ["Session" if target == "agent" else "Status"]
    # The attack: a server presenting another CA's certificate for a plausible identity.
    forged = foreign_ca.issue("node", "node-1", extra_certs / "foreign")
    with impostor_server(forged, cluster_ca) as (address, seen):
        if target == "agent":
            with pytest.raises(ConnectionLostError) as info:
                connect(address, tenant, timeout=TIMEOUT)
            assert str(info.value).startswith(f"cannot reach the node agent at {address}: ")
        else:
            with secure_channel(address, tenant) as channel:
                err = rpc_error(lambda: status(channel))
            assert code_details(err)[0] == grpc.StatusCode.UNAVAILABLE
        assert seen == []
    assert_servers_healthy(local_cluster)
