# grpc-stubs declare the (optional) serializer arguments of Channel.unary_unary & co.
# as required; these tests use raw bytes and pass none.
# mypy: disable-error-code="call-arg"
"""Mutual TLS, peer identity, revocation and per-method authorization (fabric._tls).

Every server test runs a real gRPC server on 127.0.0.1:0 with a generic bytes echo
service guarded by the auth interceptor, and attacks it from the client side first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fabric._pki import SERVER_NAME, CertificateAuthority, Credentials, Identity, PKIError
from fabric._tls import (
    CHANNEL_OPTIONS,
    SERVER_OPTIONS,
    PeerAuthenticationError,
    PeerAuthenticator,
    RevocationList,
    auth_aio_server_interceptor,
    auth_server_interceptor,
    secure_channel,
    server_credentials,
)

TIMEOUT = 5.0
CRL_UNAVAILABLE = "certificate revocation list unavailable; refusing all peers"

ALLOWED: dict[str, frozenset[str]] = {
    "/test.Echo/": frozenset({"node", "tenant"}),
    # Longer prefix wins: only operators may call Admin, although it is under Echo.
    "/test.Echo/Admin": frozenset({"operator"}),
    "/test.Node/": frozenset({"node"}),
    # "/test.Closed/" deliberately has no rule: default deny.
}


class FakeClock:
    """Monotonic clock for RevocationList that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 0.5) -> None:
        self.now += seconds


class CountingAuthenticator(PeerAuthenticator):
    """Counts authentication attempts, to prove a refusal happened at the handshake."""

    calls = 0

    def authenticate(self, auth_context: Any) -> Identity:
        self.calls += 1
        return super().authenticate(auth_context)


@dataclasses.dataclass
class Pki:
    ca: CertificateAuthority
    other: CertificateAuthority  # an unrelated CA, as an attacker would have
    node: Credentials
    alice: Credentials  # tenant
    op: Credentials  # operator

    def creds(
        self, kind: str, name: str, ca: CertificateAuthority | None = None, **kw: Any
    ) -> Credentials:
        issuer = ca or self.ca
        return Credentials.load(issuer.issue(kind, name, issuer.directory / "out", **kw))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create(tmp_path / "ca")
    other = CertificateAuthority.create(tmp_path / "other")
    load = lambda k, n: Credentials.load(ca.issue(k, n))  # noqa: E731
    return Pki(ca, other, load("node", "n1"), load("tenant", "alice"), load("operator", "op"))


def _ca_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((ca.directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _ca_name(ca: CertificateAuthority) -> x509.Name:
    return x509.load_pem_x509_certificate(ca.ca_pem).subject


def _serial(creds: Credentials) -> int:
    return x509.load_pem_x509_certificate(creds.cert_pem).serial_number


def _crl_signed_by(
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    *,
    number: int = 99,
    next_update: dt.datetime | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(now - dt.timedelta(days=2))
        .next_update(next_update or now + dt.timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# -- the echo service ----------------------------------------------------------------------


def _sync_handlers(auth: PeerAuthenticator, seen: list[str]) -> list[grpc.GenericRpcHandler]:
    def who(context: grpc.ServicerContext) -> bytes:
        # Handlers learn the caller from the authenticator (cached after the guard).
        uri = auth.identity(context).uri
        seen.append(uri)
        return uri.encode()

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return who(context) + b"|" + request

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        prefix = who(context)
        for i in range(3):
            yield prefix + b"|" + request + str(i).encode()

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return who(context) + b"|" + b"".join(requests)

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        prefix = who(context)
        for r in requests:
            yield prefix + b"|" + r

    def echo_service(name: str) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            name,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
                "Admin": grpc.unary_unary_rpc_method_handler(unary),
            },
        )

    return [echo_service("test.Echo"), echo_service("test.Node"), echo_service("test.Closed")]


@dataclasses.dataclass
class SyncServer:
    address: str
    auth: CountingAuthenticator
    revocations: RevocationList
    clock: FakeClock
    seen: list[str]


def _start_sync(
    creds: Credentials, tls_creds: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, SyncServer]:
    clock = FakeClock()
    assert creds.crl_path is not None
    revocations = RevocationList(creds.crl_path, creds.ca_pem, clock=clock)
    auth = CountingAuthenticator(creds, revocations)
    seen: list[str] = []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        handlers=_sync_handlers(auth, seen),
        interceptors=[auth_server_interceptor(auth, ALLOWED)],
        options=SERVER_OPTIONS,
    )
    port = server.add_secure_port("127.0.0.1:0", tls_creds or server_credentials(creds))
    server.start()
    return server, SyncServer(f"127.0.0.1:{port}", auth, revocations, clock, seen)


@pytest.fixture
def sync_server(pki: Pki) -> Iterator[SyncServer]:
    server, info = _start_sync(pki.node)
    try:
        yield info
    finally:
        server.stop(None)


def _unary(channel: grpc.Channel, method: str, request: bytes = b"hi") -> bytes:
    result: bytes = channel.unary_unary(method)(request, timeout=TIMEOUT)
    return result


def _rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def _code_details(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    call: Any = err  # a raised RpcError is also a grpc.Call
    return call.code(), call.details()


# -- sync server: attacks ------------------------------------------------------------------


def test_plaintext_client_is_refused(sync_server: SyncServer) -> None:
    with grpc.insecure_channel(sync_server.address) as channel:
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert sync_server.auth.calls == 0 and sync_server.seen == []


def test_client_cert_from_unknown_ca_is_refused_at_handshake(
    pki: Pki, sync_server: SyncServer
) -> None:
    foreign = pki.creds("tenant", "alice", ca=pki.other)
    # The attacker trusts our CA (so the client side of the handshake is happy) but
    # presents a certificate that our CA never issued, with a plausible identity.
    attacker = dataclasses.replace(foreign, ca_pem=pki.ca.ca_pem)
    with secure_channel(sync_server.address, attacker) as channel:
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert sync_server.auth.calls == 0 and sync_server.seen == []
    # Control: the same client set-up with a certificate of ours gets through.
    with secure_channel(sync_server.address, pki.alice) as channel:
        assert _unary(channel, "/test.Echo/Unary") == b"spiffe://fabric.local/tenant/alice|hi"


def test_expired_client_cert_is_refused(pki: Pki, sync_server: SyncServer) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = pki.creds(
        "tenant", "old", not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1)
    )
    with secure_channel(sync_server.address, expired) as channel:
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert sync_server.auth.calls == 0


def test_cert_revoked_after_start_is_cut_off_on_a_live_connection(
    pki: Pki, sync_server: SyncServer
) -> None:
    with secure_channel(sync_server.address, pki.alice) as channel:
        assert _unary(channel, "/test.Echo/Unary").startswith(b"spiffe://fabric.local/tenant/alice")
        pki.ca.revoke(pki.alice.cert_pem)
        # The next stat of crl.pem is due after check_interval; move the clock there.
        sync_server.clock.advance(0.5)
        for call in (
            lambda: _unary(channel, "/test.Echo/Unary"),
            lambda: list(channel.unary_stream("/test.Echo/ServerStream")(b"x", timeout=TIMEOUT)),
            lambda: channel.stream_unary("/test.Echo/ClientStream")(iter([b"x"]), timeout=TIMEOUT),
            lambda: list(channel.stream_stream("/test.Echo/Bidi")(iter([b"x"]), timeout=TIMEOUT)),
        ):
            assert _code_details(_rpc_error(call)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "certificate revoked: spiffe://fabric.local/tenant/alice",
            )
    assert sync_server.seen == ["spiffe://fabric.local/tenant/alice"]  # only the first call


def test_cert_revoked_after_start_is_refused_at_first_call(
    pki: Pki, sync_server: SyncServer
) -> None:
    mallory = pki.creds("tenant", "mallory")
    pki.ca.revoke(mallory.cert_pem)
    sync_server.clock.advance(0.5)
    with secure_channel(sync_server.address, mallory) as channel:
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
    assert _code_details(err) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "certificate revoked: spiffe://fabric.local/tenant/mallory",
    )
    assert sync_server.seen == []
    # Other identities are unaffected.
    with secure_channel(sync_server.address, pki.alice) as channel:
        assert _unary(channel, "/test.Echo/Unary").startswith(b"spiffe://fabric.local/tenant/alice")


def test_tenant_calling_node_only_method_is_denied(pki: Pki, sync_server: SyncServer) -> None:
    with secure_channel(sync_server.address, pki.alice) as channel:
        for call in (
            lambda: _unary(channel, "/test.Node/Unary"),
            lambda: list(channel.unary_stream("/test.Node/ServerStream")(b"x", timeout=TIMEOUT)),
            lambda: channel.stream_unary("/test.Node/ClientStream")(iter([b"x"]), timeout=TIMEOUT),
            lambda: list(channel.stream_stream("/test.Node/Bidi")(iter([b"x"]), timeout=TIMEOUT)),
        ):
            code, details = _code_details(_rpc_error(call))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert details.startswith(
                "spiffe://fabric.local/tenant/alice is not allowed to call /test.Node/"
            )
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Admin"))
        assert _code_details(err) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "spiffe://fabric.local/tenant/alice is not allowed to call /test.Echo/Admin",
        )
    assert sync_server.seen == []


def test_method_without_rule_is_denied_even_to_nodes(pki: Pki, sync_server: SyncServer) -> None:
    with secure_channel(sync_server.address, pki.node) as channel:
        err = _rpc_error(lambda: _unary(channel, "/test.Closed/Unary"))
        assert _code_details(err) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "spiffe://fabric.local/node/n1 is not allowed to call /test.Closed/Unary",
        )
        # An unknown method is not ours to authorize: gRPC answers it as usual.
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/NoSuchMethod"))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert sync_server.seen == []


def test_client_refuses_server_with_cert_from_another_ca(pki: Pki) -> None:
    impostor = pki.creds("node", "n1", ca=pki.other)
    # The impostor would accept our client (it trusts our CA); only the client's check
    # of the server certificate can stop this.
    tls = grpc.ssl_server_credentials(
        [(impostor.key_pem, impostor.cert_pem)],
        root_certificates=pki.ca.ca_pem,
        require_client_auth=True,
    )
    server, info = _start_sync(pki.node, tls)
    try:
        with secure_channel(info.address, pki.alice) as channel:
            err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert info.auth.calls == 0
    finally:
        server.stop(None)


def test_client_refuses_a_tenant_posing_as_a_server(pki: Pki) -> None:
    # A tenant holds a valid certificate from our CA; it must still not be able to serve
    # as a head or agent to other tenants (a man in the middle on the fabric's network).
    posing = pki.creds("tenant", "mallory")
    tls = grpc.ssl_server_credentials(
        [(posing.key_pem, posing.cert_pem)],
        root_certificates=pki.ca.ca_pem,
        require_client_auth=True,
    )
    server, info = _start_sync(pki.node, tls)
    try:
        with secure_channel(info.address, pki.alice) as channel:
            err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert info.auth.calls == 0
    finally:
        server.stop(None)


def test_garbled_crl_fails_closed_and_recovers(pki: Pki, sync_server: SyncServer) -> None:
    crl_path = pki.ca.crl_path
    good = crl_path.read_bytes()
    with secure_channel(sync_server.address, pki.node) as channel:
        assert _unary(channel, "/test.Echo/Unary").startswith(b"spiffe://fabric.local/node/n1")
        crl_path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
        sync_server.clock.advance(0.5)
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
        assert _code_details(err) == (grpc.StatusCode.UNAUTHENTICATED, CRL_UNAVAILABLE)
        # Putting the real CRL back restores service without a restart.
        crl_path.write_bytes(good)
        sync_server.clock.advance(0.5)
        assert _unary(channel, "/test.Echo/Unary").startswith(b"spiffe://fabric.local/node/n1")


def test_forged_crl_fails_closed(pki: Pki, sync_server: SyncServer) -> None:
    # A CRL naming our CA as issuer, but signed by another key, that "revokes" nothing.
    pki.ca.crl_path.write_bytes(_crl_signed_by(_ca_key(pki.other), _ca_name(pki.ca)))
    sync_server.clock.advance(0.5)
    with secure_channel(sync_server.address, pki.node) as channel:
        err = _rpc_error(lambda: _unary(channel, "/test.Echo/Unary"))
    assert _code_details(err) == (grpc.StatusCode.UNAUTHENTICATED, CRL_UNAVAILABLE)
    assert sync_server.revocations.error == (
        f"CRL {pki.ca.crl_path} is not signed by the fabric CA"
    )


def test_valid_peer_gets_its_identity_on_every_rpc_shape(pki: Pki, sync_server: SyncServer) -> None:
    with secure_channel(sync_server.address, pki.alice) as channel:
        alice = b"spiffe://fabric.local/tenant/alice"
        assert _unary(channel, "/test.Echo/Unary", b"a") == alice + b"|a"
        assert list(channel.unary_stream("/test.Echo/ServerStream")(b"s", timeout=TIMEOUT)) == [
            alice + b"|s0",
            alice + b"|s1",
            alice + b"|s2",
        ]
        assert (
            channel.stream_unary("/test.Echo/ClientStream")(iter([b"x", b"y"]), timeout=TIMEOUT)
            == alice + b"|xy"
        )
        assert list(
            channel.stream_stream("/test.Echo/Bidi")(iter([b"1", b"2"]), timeout=TIMEOUT)
        ) == [
            alice + b"|1",
            alice + b"|2",
        ]
    with secure_channel(sync_server.address, pki.op) as channel:
        assert _unary(channel, "/test.Echo/Admin") == b"spiffe://fabric.local/operator/op|hi"
    with secure_channel(sync_server.address, pki.node) as channel:
        assert _unary(channel, "/test.Node/Unary") == b"spiffe://fabric.local/node/n1|hi"
    # The peer certificate was parsed once per identity, not once per call.
    assert len(sync_server.auth._cache) == 3


# -- RevocationList ------------------------------------------------------------------------


def _revocations(pki: Pki) -> tuple[RevocationList, FakeClock]:
    clock = FakeClock()
    return RevocationList(pki.ca.crl_path, pki.ca.ca_pem, clock=clock), clock


def test_revocation_list_reloads_at_most_every_interval(pki: Pki) -> None:
    revocations, clock = _revocations(pki)
    serial = pki.ca.revoke(pki.alice.cert_pem)
    assert not revocations.is_revoked(serial)  # not re-stat'ed yet: within the interval
    clock.advance(0.49)
    assert not revocations.is_revoked(serial)
    clock.advance(0.01)
    assert revocations.is_revoked(serial)
    assert not revocations.is_revoked(_serial(pki.node))
    assert revocations.error is None


def test_revocation_list_unusable_crls_fail_closed(pki: Pki) -> None:
    revocations, clock = _revocations(pki)
    crl_path = pki.ca.crl_path
    node = _serial(pki.node)
    good = crl_path.read_bytes()
    now = dt.datetime.now(dt.UTC)
    cases: list[tuple[bytes | None, str]] = [
        (None, f"CRL {crl_path} unreadable: No such file or directory"),
        (b"", f"CRL {crl_path} is not a valid X.509 CRL (PEM or DER)"),
        (b"\x00garbage", f"CRL {crl_path} is not a valid X.509 CRL (PEM or DER)"),
        (
            _crl_signed_by(_ca_key(pki.other), _ca_name(pki.ca)),
            f"CRL {crl_path} is not signed by the fabric CA",
        ),
        (
            # Signed by our key but naming another issuer: also not ours.
            _crl_signed_by(
                _ca_key(pki.ca), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Evil CA")])
            ),
            f"CRL {crl_path} is not signed by the fabric CA",
        ),
        (
            _crl_signed_by(
                _ca_key(pki.ca),
                _ca_name(pki.ca),
                next_update=now - dt.timedelta(days=1),
            ),
            f"CRL {crl_path} expired at ",
        ),
        (
            _crl_signed_by(
                _ca_key(pki.ca),
                _ca_name(pki.ca),
                extensions=[(x509.DeltaCRLIndicator(1), True)],
            ),
            f"CRL {crl_path} has unsupported critical extensions ['2.5.29.27']",
        ),
    ]
    for content, error in cases:
        if content is None:
            crl_path.unlink()
        else:
            crl_path.write_bytes(content)
        clock.advance()
        assert revocations.is_revoked(node), error
        assert (revocations.error or "").startswith(error)
        # And it recovers as soon as a good CRL is back.
        crl_path.write_bytes(good)
        clock.advance()
        assert not revocations.is_revoked(node)
        assert revocations.error is None


def test_revocation_list_refuses_rollback_to_older_crl(pki: Pki) -> None:
    revocations, clock = _revocations(pki)
    old = pki.ca.crl_path.read_bytes()  # CRL number 1, nothing revoked
    serial = pki.ca.revoke(pki.alice.cert_pem)  # CRL number 2
    clock.advance()
    assert revocations.is_revoked(serial)
    pki.ca.crl_path.write_bytes(old)  # validly signed, but un-revokes alice
    clock.advance()
    assert revocations.is_revoked(serial)
    assert revocations.is_revoked(_serial(pki.node))
    assert revocations.error == (
        f"CRL {pki.ca.crl_path} number 1 is older than the number 2 already seen (rollback?)"
    )


def test_revocation_list_unusable_from_the_start(pki: Pki) -> None:
    pki.ca.crl_path.write_bytes(b"junk")
    revocations, _ = _revocations(pki)
    assert revocations.is_revoked(_serial(pki.node))


def test_revocation_list_real_default_interval_picks_up_change(pki: Pki) -> None:
    # With the real clock: wait on the condition (bounded), not on a fixed sleep.
    revocations = RevocationList(pki.ca.crl_path, pki.ca.ca_pem)
    serial = pki.ca.revoke(pki.alice.cert_pem)
    deadline = time.monotonic() + 3.0
    while not revocations.is_revoked(serial):
        assert time.monotonic() < deadline, "revocation never picked up"
        time.sleep(0.02)


# -- PeerAuthenticator without a network -----------------------------------------------------


class FakeContext:
    """Stands in for grpc.ServicerContext: an auth context and an abort that raises."""

    def __init__(self, pem: bytes | None) -> None:
        self._auth = {"transport_security_type": [b"ssl"]}
        if pem is not None:
            self._auth["x509_pem_cert"] = [pem]
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _refusal(auth: PeerAuthenticator, pem: bytes | None) -> tuple[grpc.StatusCode, str]:
    context = FakeContext(pem)
    with pytest.raises(RuntimeError, match="aborted"):
        auth.identity(context)  # type: ignore[arg-type]
    assert context.aborted is not None
    return context.aborted


def _handmade(pki: Pki, uri: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name) -> bytes:
    leaf = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(issuer)
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName(SERVER_NAME)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_authenticator_refusals(pki: Pki) -> None:
    revocations, clock = _revocations(pki)
    auth = PeerAuthenticator(pki.node, revocations)
    unauth = grpc.StatusCode.UNAUTHENTICATED
    assert _refusal(auth, None) == (unauth, "no client certificate")
    assert _refusal(auth, b"garbage") == (
        unauth,
        "client certificate is not a valid X.509 certificate (PEM or DER)",
    )
    foreign = pki.creds("tenant", "alice", ca=pki.other)
    assert _refusal(auth, foreign.cert_pem) == (
        unauth,
        "client certificate not issued by fabric CA",
    )
    # Signed with our CA key, but for another trust domain (never issued by issue()).
    evil = _handmade(pki, "spiffe://evil.test/node/x", _ca_key(pki.ca), _ca_name(pki.ca))
    assert _refusal(auth, evil) == (
        unauth,
        "certificate from foreign trust domain: spiffe://evil.test/node/x",
    )
    bad_uri = _handmade(pki, "spiffe://fabric.local/root/x", _ca_key(pki.ca), _ca_name(pki.ca))
    code, details = _refusal(auth, bad_uri)
    assert code == unauth and details.startswith(
        "client certificate has no identity: invalid SPIFFE ID"
    )
    now = dt.datetime.now(dt.UTC)
    expired = pki.creds(
        "tenant", "old", not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1)
    )
    assert _refusal(auth, expired.cert_pem) == (
        unauth,
        "certificate expired: spiffe://fabric.local/tenant/old",
    )
    future = pki.creds(
        "tenant", "new", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=2)
    )
    assert _refusal(auth, future.cert_pem) == (
        unauth,
        "certificate not yet valid: spiffe://fabric.local/tenant/new",
    )
    pki.ca.revoke(pki.alice.cert_pem)
    clock.advance()
    assert _refusal(auth, pki.alice.cert_pem) == (
        unauth,
        "certificate revoked: spiffe://fabric.local/tenant/alice",
    )
    assert auth.identity(FakeContext(pki.op.cert_pem)) == Identity("operator", "op")  # type: ignore[arg-type]


def test_authenticator_rechecks_validity_on_long_lived_connections(pki: Pki) -> None:
    now = [dt.datetime.now(dt.UTC)]
    auth = PeerAuthenticator(pki.node, None, now=lambda: now[0])
    short = pki.creds("tenant", "short", valid_days=1)
    assert auth.identity(FakeContext(short.cert_pem)) == Identity("tenant", "short")  # type: ignore[arg-type]
    now[0] += dt.timedelta(days=2)  # same connection, same (cached) certificate
    assert _refusal(auth, short.cert_pem) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "certificate expired: spiffe://fabric.local/tenant/short",
    )


def test_authenticator_cache_is_bounded(pki: Pki) -> None:
    auth = PeerAuthenticator(pki.node, None, cache_size=2)
    for creds in (pki.node, pki.alice, pki.op, pki.alice):
        auth.authenticate({"x509_pem_cert": [creds.cert_pem]})
    assert list(auth._cache) == [pki.op.cert_pem, pki.alice.cert_pem]


def test_authenticate_raises_typed_error(pki: Pki) -> None:
    auth = PeerAuthenticator(pki.node, None)
    with pytest.raises(PeerAuthenticationError) as err:
        auth.authenticate({})
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert str(err.value) == "no client certificate"


def test_interceptor_rejects_bad_rules(pki: Pki) -> None:
    auth = PeerAuthenticator(pki.node, None)
    with pytest.raises(ValueError, match="unknown identity kinds"):
        auth_server_interceptor(auth, {"/x.Y/": frozenset({"nodes"})})
    with pytest.raises(ValueError, match="must start with '/'"):
        auth_aio_server_interceptor(auth, {"x.Y/": frozenset({"node"})})


def test_channel_options() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.ssl_target_name_override"] == SERVER_NAME
    assert options["grpc.max_send_message_length"] == 512 * 1024 * 1024
    assert options["grpc.max_receive_message_length"] == 512 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] >= 10_000


def test_revocation_list_requires_a_real_ca() -> None:
    with pytest.raises(PKIError):
        RevocationList(Path("/nonexistent"), b"not a cert")
