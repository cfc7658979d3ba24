"""The local channel (mutual TLS on the agent's Unix socket), from the attacker's side
first: it must refuse exactly what the gRPC port refuses."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric._cluster import LocalCluster
from fabric._driver import LocalTransport, connect
from fabric._pki import SERVER_NAME, CertificateAuthority, CredentialPaths, Credentials
from fabric._proto import fabric_pb2 as pb
from tests.conftest import wait_for

FRAME = struct.Struct("<I")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as running:
        yield running


@pytest.fixture(scope="module")
def socket_path(cluster: LocalCluster) -> str:
    creds = Credentials.load(cluster.tenant_credentials("default"))
    client = connect(next(iter(cluster.agent_addresses.values())), creds)
    try:
        assert isinstance(client.transport, LocalTransport)  # a co-located driver moves over
        path = client.transport.where
    finally:
        client.closed_reason = "closed by the test"
        client.transport.close()
    assert Path(path).is_socket()
    return path


def _context(paths: CredentialPaths | None, ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_pem.decode())
    if paths is not None:
        context.load_cert_chain(paths.cert, paths.key)
    return context


def _hello(path: str, context: ssl.SSLContext) -> pb.ServerBatch | None:
    """Say hello over the local channel; the agent's first batch, or None if it hung up."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(path)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        data = pb.ClientBatch(messages=[pb.ClientMessage(request_id=1, hello=pb.Hello())])
        body = data.SerializeToString()
        try:
            tls.sendall(FRAME.pack(len(body)) + body)
            header = tls.recv(4)
        except (ssl.SSLError, OSError):
            return None
        if len(header) < 4:
            return None
        (length,) = FRAME.unpack(header)
        payload = b""
        while len(payload) < length:
            payload += tls.recv(length - len(payload))
        batch = pb.ServerBatch()
        batch.ParseFromString(payload)
        return batch


def _refused(path: str, context: ssl.SSLContext) -> bool:
    """True if the agent refused the handshake or hung up instead of welcoming us."""
    try:
        return _hello(path, context) is None
    except (ssl.SSLError, OSError):
        return True


def _ca_pem(cluster: LocalCluster) -> bytes:
    return (cluster.certs_dir / "ca.pem").read_bytes()


def test_no_client_certificate_is_refused(cluster: LocalCluster, socket_path: str) -> None:
    assert _refused(socket_path, _context(None, _ca_pem(cluster)))


def test_certificate_from_another_ca_is_refused(
    cluster: LocalCluster, socket_path: str, tmp_path: Path
) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    paths = other.issue("tenant", "default")
    assert _refused(socket_path, _context(paths, _ca_pem(cluster)))


def test_a_node_certificate_gets_no_driver_session(cluster: LocalCluster, socket_path: str) -> None:
    node_paths = cluster.credentials("node", next(iter(cluster.agent_addresses)))
    assert _refused(socket_path, _context(node_paths, _ca_pem(cluster)))


def test_a_revoked_tenant_is_refused(cluster: LocalCluster, socket_path: str) -> None:
    ca = CertificateAuthority.load(cluster.certs_dir)
    paths = ca.issue("tenant", "revoked-local")
    assert _hello(socket_path, _context(paths, _ca_pem(cluster))) is not None
    ca.revoke(paths.cert)
    wait_for(
        lambda: _refused(socket_path, _context(paths, _ca_pem(cluster))),
        what="the revoked certificate to be refused on the local channel",
    )


def test_a_tenant_gets_its_welcome(cluster: LocalCluster, socket_path: str) -> None:
    paths = cluster.tenant_credentials("default")
    batch = _hello(socket_path, _context(paths, _ca_pem(cluster)))
    assert batch is not None
    welcome = batch.messages[0].reply.welcome
    assert welcome.tenant == "default" and welcome.local_socket == socket_path
