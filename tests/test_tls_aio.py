# grpc-stubs declare the (optional) serializer arguments of Channel.unary_unary & co.
# as required; these tests use raw bytes and pass none.
# mypy: disable-error-code="call-arg"
"""The mutual-TLS interceptor on grpc.aio servers, as the head and agents run it.

Every test runs a real aio gRPC server on 127.0.0.1:0 with a generic bytes echo service
guarded by the interceptor, and attacks it from the client side first.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from fabric._tls import (
    SERVER_OPTIONS,
    PeerAuthenticator,
    RevocationList,
    auth_aio_server_interceptor,
    secure_aio_channel,
    server_credentials,
)
from tests.test_tls import (
    ALLOWED,
    CRL_UNAVAILABLE,
    TIMEOUT,
    CountingAuthenticator,
    FakeClock,
    Pki,
    _ca_key,
    _ca_name,
    _crl_signed_by,
)
from tests.test_tls import pki as pki

# -- aio server ----------------------------------------------------------------------------


def _aio_handlers(auth: PeerAuthenticator, seen: list[str]) -> list[grpc.GenericRpcHandler]:
    def who(context: Any) -> bytes:
        # The sync accessor works from async handlers once the guard let the call in.
        uri = auth.identity(context).uri
        seen.append(uri)
        return uri.encode()

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return who(context) + b"|" + request

    async def server_stream(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        prefix = (await auth.identity_async(context)).uri.encode()
        seen.append(prefix.decode())
        for i in range(2):
            yield prefix + b"|" + request + str(i).encode()

    async def writer_stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
        prefix = who(context)
        await context.write(prefix + b"|" + request)

    async def client_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        return who(context) + b"|" + b"".join([r async for r in requests])

    async def bidi(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        prefix = who(context)
        async for r in requests:
            yield prefix + b"|" + r

    def sync_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return who(context) + b"|sync|" + request

    def sync_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield who(context) + b"|sync|" + request

    def echo_service(name: str) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            name,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "WriterStream": grpc.unary_stream_rpc_method_handler(writer_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
                "SyncUnary": grpc.unary_unary_rpc_method_handler(sync_unary),
                "SyncStream": grpc.unary_stream_rpc_method_handler(sync_stream),
            },
        )

    return [echo_service("test.Echo"), echo_service("test.Node")]


async def _aio_errors(calls: list[Callable[[], Any]]) -> list[tuple[grpc.StatusCode, str]]:
    out = []
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        out.append((err.value.code(), err.value.details() or ""))
    return out


def _all_shapes(
    channel: grpc.aio.Channel, service: str, *, send: bool = True
) -> list[Callable[[], Any]]:
    """One call of every shape and handler style. With ``send=False`` the
    request-streaming calls write nothing: grpc.aio *clients* may report a call the
    server ended while they were still writing as INTERNAL "Internal error from Core"
    instead of the server's status, which would hide the status under test."""

    async def collect(call: Any) -> list[bytes]:
        return [r async for r in call]

    def requests(*items: bytes) -> Any:
        return iter(items) if send else None

    return [
        lambda: channel.unary_unary(f"/{service}/Unary")(b"a", timeout=TIMEOUT),
        lambda: collect(channel.unary_stream(f"/{service}/ServerStream")(b"s", timeout=TIMEOUT)),
        lambda: collect(channel.unary_stream(f"/{service}/WriterStream")(b"w", timeout=TIMEOUT)),
        lambda: channel.stream_unary(f"/{service}/ClientStream")(
            requests(b"x", b"y"), timeout=TIMEOUT
        ),
        lambda: collect(
            channel.stream_stream(f"/{service}/Bidi")(requests(b"1", b"2"), timeout=TIMEOUT)
        ),
        lambda: channel.unary_unary(f"/{service}/SyncUnary")(b"u", timeout=TIMEOUT),
        lambda: collect(channel.unary_stream(f"/{service}/SyncStream")(b"v", timeout=TIMEOUT)),
    ]


def test_aio_server(pki: Pki) -> None:
    """One event loop for every aio scenario keeps the suite fast."""

    async def main() -> None:
        clock = FakeClock()
        assert pki.node.crl_path is not None
        revocations = RevocationList(pki.node.crl_path, pki.node.ca_pem, clock=clock)
        auth = CountingAuthenticator(pki.node, revocations)
        seen: list[str] = []
        server = grpc.aio.server(
            handlers=_aio_handlers(auth, seen),
            interceptors=[auth_aio_server_interceptor(auth, ALLOWED)],
            options=SERVER_OPTIONS,
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(pki.node))
        address = f"127.0.0.1:{port}"
        await server.start()
        try:
            # Attack: plaintext.
            async with grpc.aio.insecure_channel(address) as channel:
                [(code, _)] = await _aio_errors(
                    [lambda: channel.unary_unary("/test.Echo/Unary")(b"", timeout=TIMEOUT)]
                )
                assert code == grpc.StatusCode.UNAVAILABLE
            # Attack: a client certificate from an unknown CA.
            attacker = dataclasses.replace(
                pki.creds("node", "n1", ca=pki.other), ca_pem=pki.ca.ca_pem
            )
            async with secure_aio_channel(address, attacker) as channel:
                [(code, _)] = await _aio_errors(
                    [lambda: channel.unary_unary("/test.Echo/Unary")(b"", timeout=TIMEOUT)]
                )
                assert code == grpc.StatusCode.UNAVAILABLE
            assert auth.calls == 0 and seen == []

            async with secure_aio_channel(address, pki.alice) as channel:
                # Attack: a tenant calling node-only methods, of every shape and style.
                denied = await _aio_errors(_all_shapes(channel, "test.Node", send=False))
                prefix = "spiffe://fabric.local/tenant/alice is not allowed to call /test.Node/"
                methods = ["Unary", "ServerStream", "WriterStream", "ClientStream", "Bidi"]
                methods += ["SyncUnary", "SyncStream"]
                assert denied == [(grpc.StatusCode.PERMISSION_DENIED, prefix + m) for m in methods]
                assert seen == []

                # The valid path: every shape runs and sees the right identity.
                alice = b"spiffe://fabric.local/tenant/alice"
                results = [await call() for call in _all_shapes(channel, "test.Echo")]
                assert results == [
                    alice + b"|a",
                    [alice + b"|s0", alice + b"|s1"],
                    [alice + b"|w"],
                    alice + b"|xy",
                    [alice + b"|1", alice + b"|2"],
                    alice + b"|sync|u",
                    [alice + b"|sync|v"],
                ]

                # Attack: the certificate is revoked after the server started.
                pki.ca.revoke(pki.alice.cert_pem)
                clock.advance()
                refused = await _aio_errors(_all_shapes(channel, "test.Echo", send=False))
                assert (
                    refused
                    == [
                        (
                            grpc.StatusCode.UNAUTHENTICATED,
                            "certificate revoked: spiffe://fabric.local/tenant/alice",
                        )
                    ]
                    * 7
                )

            # Fail closed on a forged CRL, for everyone.
            good = pki.ca.crl_path.read_bytes()
            pki.ca.crl_path.write_bytes(
                _crl_signed_by(_ca_key(pki.other), _ca_name(pki.ca), number=50)
            )
            clock.advance()
            async with secure_aio_channel(address, pki.node) as channel:
                refused = await _aio_errors(_all_shapes(channel, "test.Node", send=False))
                assert refused == [(grpc.StatusCode.UNAUTHENTICATED, CRL_UNAVAILABLE)] * 7
                pki.ca.crl_path.write_bytes(good)
                clock.advance()
                assert await channel.unary_unary("/test.Node/Unary")(b"ok", timeout=TIMEOUT) == (
                    b"spiffe://fabric.local/node/n1|ok"
                )
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_aio_handler_without_interceptor_can_still_refuse(pki: Pki) -> None:
    """identity() / identity_async() called directly from aio handlers refuse properly."""

    async def main() -> None:
        assert pki.node.crl_path is not None
        revocations = RevocationList(pki.node.crl_path, pki.node.ca_pem, check_interval=0)
        auth = PeerAuthenticator(pki.node, revocations)

        async def via_sync(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return auth.identity(context).uri.encode()

        async def via_async(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return (await auth.identity_async(context)).uri.encode()

        server = grpc.aio.server(
            handlers=[
                grpc.method_handlers_generic_handler(
                    "test.Raw",
                    {
                        "Sync": grpc.unary_unary_rpc_method_handler(via_sync),
                        "Async": grpc.unary_unary_rpc_method_handler(via_async),
                    },
                )
            ]
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(pki.node))
        await server.start()
        try:
            pki.ca.revoke(pki.alice.cert_pem)
            async with secure_aio_channel(f"127.0.0.1:{port}", pki.alice) as channel:
                errors = await _aio_errors(
                    [
                        lambda: channel.unary_unary("/test.Raw/Sync")(b"", timeout=TIMEOUT),
                        lambda: channel.unary_unary("/test.Raw/Async")(b"", timeout=TIMEOUT),
                    ]
                )
            revoked = "certificate revoked: spiffe://fabric.local/tenant/alice"
            assert errors[0][0] == grpc.StatusCode.UNAUTHENTICATED and revoked in errors[0][1]
            assert errors[1] == (grpc.StatusCode.UNAUTHENTICATED, revoked)
            async with secure_aio_channel(f"127.0.0.1:{port}", pki.op) as channel:
                assert await channel.unary_unary("/test.Raw/Async")(b"", timeout=TIMEOUT) == (
                    b"spiffe://fabric.local/operator/op"
                )
        finally:
            await server.stop(None)

    asyncio.run(main())
