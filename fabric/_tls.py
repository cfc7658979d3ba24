"""Mutual-TLS plumbing for gRPC: credentials, channels, peer identity and revocation.

The TLS handshake (BoringSSL inside grpc core) proves that the peer holds a key whose
certificate chains to the fabric CA and is inside its validity window. gRPC's Python
credentials cannot consult a CRL, and a long-lived HTTP/2 connection outlives both a
revocation and a certificate's expiry, so the application layer re-checks on every
call: :class:`PeerAuthenticator` turns the peer certificate into an
:class:`~fabric._pki.Identity` and refuses revoked, expired or foreign ones, and the
interceptors apply it (plus a per-method allow-list of identity kinds) to every RPC
before any handler code runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fabric._pki import (
    KINDS,
    SERVER_NAME,
    Credentials,
    Identity,
    PKIError,
    _identity_of_cert,
    _issued_by,
    _load_cert,
    _load_crl,
)
from fabric.exceptions import FabricError

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "SERVER_OPTIONS",
    "PeerAuthenticationError",
    "PeerAuthenticator",
    "RevocationList",
    "auth_aio_server_interceptor",
    "auth_server_interceptor",
    "channel_credentials",
    "secure_aio_channel",
    "secure_channel",
    "server_credentials",
]

_log = logging.getLogger("fabric.tls")

MAX_MESSAGE_BYTES = 512 * 1024 * 1024

# Keepalive: while calls are open, ping every 30 s and drop the connection if no ack
# arrives within 10 s, so a peer that vanished (host crash, partition) fails its calls
# in well under a minute instead of after the kernel's TCP timeout (many minutes).
# gRPC's default max_pings_without_data (2) is kept on purpose: a server with default
# settings answers a third ping on a quiet stream within 5 minutes with
# GOAWAY(too_many_pings), and these options must be safe against any Fabric server.
_KEEPALIVE_TIME_MS = 30_000
_KEEPALIVE_TIMEOUT_MS = 10_000
_RECONNECT_MIN_MS = 200
_RECONNECT_MAX_MS = 1_000

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Node certificates all carry this DNS SAN, so peers are verified by certificate,
    # not by whatever address or hostname was used to reach them.
    ("grpc.ssl_target_name_override", SERVER_NAME),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    # No pings on a connection without calls: idle channels cost nothing.
    ("grpc.keepalive_permit_without_calls", 0),
    # A lost connection is tried again within a second, however long it has been down
    # (gRPC's default backoff grows to two minutes): a head or a peer that is back is
    # reached before the head's node-loss deadline declares the caller lost.
    ("grpc.initial_reconnect_backoff_ms", _RECONNECT_MIN_MS),
    ("grpc.min_reconnect_backoff_ms", _RECONNECT_MIN_MS),
    ("grpc.max_reconnect_backoff_ms", _RECONNECT_MAX_MS),
]

# Options for servers that Fabric clients talk to. The message limits matter most: a
# gRPC server otherwise refuses any request over 4 MiB, whatever the client allows.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    # Accept our clients' 30 s keepalive pings (the default floor is 5 minutes).
    ("grpc.http2.min_ping_interval_without_data_ms", _KEEPALIVE_TIME_MS // 2),
]


# -- credentials and channels ----------------------------------------------------------


def server_credentials(creds: Credentials) -> grpc.ServerCredentials:
    """TLS server credentials that demand and verify a client certificate from our CA."""
    return grpc.ssl_server_credentials(
        [(creds.key_pem, creds.cert_pem)],
        root_certificates=creds.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    """TLS channel credentials: trust only our CA, present our own certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.key_pem,
        certificate_chain=creds.cert_pem,
    )


def _merge_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # gRPC does not define which of two duplicate channel args wins, so merge by key:
    # the caller's value replaces ours.
    merged = dict(CHANNEL_OPTIONS)
    merged.update(dict(options))
    return list(merged.items())


def secure_channel(
    address: str, creds: Credentials, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    return grpc.secure_channel(address, channel_credentials(creds), options=_merge_options(options))


def secure_aio_channel(
    address: str, creds: Credentials, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        address, channel_credentials(creds), options=_merge_options(options)
    )


# -- revocation ------------------------------------------------------------------------

_FileStamp = tuple[int, int, int, int]  # (device, inode, size, mtime_ns)


def _stamp(st: os.stat_result) -> _FileStamp:
    # The inode is part of the stamp because revoke() replaces the file by rename, and
    # a rename within the same mtime tick with an equal size must still be noticed.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class RevocationList:
    """The CA's CRL as seen by a server, verified and kept fresh.

    Fail closed: while the CRL cannot be read, does not verify against the CA, is past
    its nextUpdate or is older than one already seen, :meth:`is_revoked` answers True
    for every serial, and :attr:`error` says why.
    """

    def __init__(
        self,
        crl_path: Path,
        ca_pem: bytes,
        *,
        check_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(crl_path)
        self._ca = _load_cert(ca_pem, what="CA certificate")
        ca_key = self._ca.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise PKIError("CA certificate does not hold an EC public key")
        self._ca_key = ca_key
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: _FileStamp | None = None
        self._revoked: frozenset[int] = frozenset()
        self._next_update: _dt.datetime | None = None
        self._highest_number = -1
        self._error: str | None = "CRL not loaded yet"
        self._next_check = float("-inf")
        self._refresh()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def error(self) -> str | None:
        """Why every peer is currently refused, or None while the CRL is usable."""
        return self._error

    def is_revoked(self, serial: int) -> bool:
        return self.status(serial)[0]

    def status(self, serial: int) -> tuple[bool, str | None]:
        """(refuse, error): ``refuse`` is True when ``serial`` is revoked or when the
        CRL is unusable; ``error`` is the reason in the latter case. Both come from
        the same snapshot, so the reason always matches the answer."""
        self._refresh()
        with self._lock:
            error = self._error
            return (error is not None or serial in self._revoked), error

    def _refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return
            self._next_check = now + self._interval
            try:
                st = os.stat(self._path)
            except OSError as exc:
                self._fail(f"CRL {self._path} unreadable: {exc.strerror or exc}")
                self._stamp = None
                return
            if _stamp(st) != self._stamp:
                self._load()
            elif self._error is None:
                self._check_fresh()

    def _load(self) -> None:
        # Read through one descriptor and stamp from fstat of that same descriptor, so
        # the stamp always describes the bytes that were parsed.
        try:
            with open(self._path, "rb") as fh:
                stamp = _stamp(os.fstat(fh.fileno()))
                data = fh.read()
        except OSError as exc:
            self._fail(f"CRL {self._path} unreadable: {exc.strerror or exc}")
            self._stamp = None
            return
        self._stamp = stamp
        # (1) RFC 5280 §5: it must parse as an X.509 v2 CRL at all.
        try:
            crl = _load_crl(data, what=f"CRL {self._path}")
        except PKIError as exc:
            self._fail(str(exc))
            return
        # (2) RFC 5280 §6.3.3 (f): the CRL issuer must be our CA and its signature must
        #     verify with the CA's key; a CRL anyone could have written proves nothing.
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca_key):
            self._fail(f"CRL {self._path} is not signed by the fabric CA")
            return
        # (3) RFC 5280 §5.2 and §5.3: a critical (entry) extension we do not process
        #     (e.g. a delta-CRL indicator or an issuing distribution point narrowing the
        #     scope) means we cannot tell what the CRL covers, so we must not use it.
        critical = [e.oid.dotted_string for e in crl.extensions if e.critical]
        for entry in crl:
            critical.extend(e.oid.dotted_string for e in entry.extensions if e.critical)
        if critical:
            self._fail(f"CRL {self._path} has unsupported critical extensions {critical}")
            return
        # (4) RFC 5280 §5.2.3: CRL numbers only grow. A lower number than one already
        #     accepted is an old CRL put back, which would un-revoke certificates.
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            self._fail(f"CRL {self._path} has no CRL number")
            return
        if number < self._highest_number:
            self._fail(
                f"CRL {self._path} number {number} is older than the number "
                f"{self._highest_number} already seen (rollback?)"
            )
            return
        # (5) RFC 5280 §5.1.2.5 / §6.3.3 (a)(2): a CRL past its nextUpdate is stale.
        #     Checked before accepting, so a stale CRL cannot ratchet the number.
        next_update = crl.next_update_utc
        if next_update is None:
            self._fail(f"CRL {self._path} has no nextUpdate")
            return
        if _dt.datetime.now(_dt.UTC) > next_update:
            self._fail(f"CRL {self._path} expired at {next_update.isoformat()}")
            return
        self._highest_number = number
        self._next_update = next_update
        self._revoked = frozenset(r.serial_number for r in crl)
        self._set_ok()

    def _check_fresh(self) -> None:
        # (5) again for an unchanged file: once nextUpdate has passed the CRL may be
        #     missing newer revocations; without a fresher one, fail closed.
        next_update = self._next_update
        if next_update is None or _dt.datetime.now(_dt.UTC) > next_update:
            when = next_update.isoformat() if next_update is not None else "an unknown time"
            self._fail(f"CRL {self._path} expired at {when}")

    def _fail(self, error: str) -> None:
        if error != self._error:
            _log.error("refusing every peer: %s", error)
        self._error = error

    def _set_ok(self) -> None:
        if self._error is not None and self._stamp is not None:
            _log.info("CRL %s loaded (%d revoked)", self._path, len(self._revoked))
        self._error = None


# -- peer authentication ---------------------------------------------------------------

MSG_NO_CERT = "no client certificate"
MSG_CRL_UNAVAILABLE = "certificate revocation list unavailable; refusing all peers"


class PeerAuthenticationError(FabricError):
    """A peer failed authentication; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _PeerCert:
    """What is known about one peer certificate once parsed (cached by its bytes)."""

    identity: Identity | None
    serial: int
    not_before: _dt.datetime
    not_after: _dt.datetime
    problem: str | None  # set when the certificate can never be accepted


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class PeerAuthenticator:
    """Turns the TLS peer certificate of an RPC into an :class:`Identity`, or refuses."""

    def __init__(
        self,
        creds: Credentials,
        revocations: RevocationList | None,
        *,
        cache_size: int = 1024,
        now: Callable[[], _dt.datetime] = _utcnow,
    ) -> None:
        self._ca = _load_cert(creds.ca_pem, what="CA certificate")
        self._trust_domain = creds.identity.trust_domain
        self._revocations = revocations
        self._cache: OrderedDict[bytes, _PeerCert] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._cache_lock = threading.Lock()
        self._now = now
        # Told of every refusal (its reason), so that the server can record it.
        self.on_refusal: Callable[[str], object] | None = None

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    def refused(self, reason: str) -> None:
        if self.on_refusal is not None:
            try:
                self.on_refusal(reason)
            except Exception:
                _log.exception("recording a refusal failed")

    def authenticate(self, auth_context: Mapping[str, Any]) -> Identity:
        """Check a gRPC auth context (``context.auth_context()``); raise
        :class:`PeerAuthenticationError` if the peer must be refused."""
        try:
            return self._authenticate(auth_context)
        except PeerAuthenticationError as e:
            self.refused(e.message)
            raise

    def _authenticate(self, auth_context: Mapping[str, Any]) -> Identity:
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        # (1) RFC 8446 §4.4.2: with mutual TLS the client's certificate is what the
        #     handshake proved possession of; gRPC exposes the verified leaf here.
        pem = _first(auth_context.get("x509_pem_cert"))
        if pem is None:
            raise PeerAuthenticationError(unauthenticated, MSG_NO_CERT)
        # (2) Parse once per distinct certificate; a bounded LRU keeps the per-call cost
        #     to a dict lookup plus the checks below.
        peer = self._parse(pem)
        if peer.problem is not None or peer.identity is None:
            raise PeerAuthenticationError(unauthenticated, peer.problem or "no identity")
        identity = peer.identity
        # (3) SPIFFE ID §2.1: identities are only meaningful inside one trust domain.
        if identity.trust_domain != self._trust_domain:
            raise PeerAuthenticationError(
                unauthenticated, f"certificate from foreign trust domain: {identity.uri}"
            )
        # (4) RFC 5280 §6.3: the serial must not be on the CA's CRL (and an unusable
        #     CRL refuses everyone rather than no one).
        if self._revocations is not None:
            refused, error = self._revocations.status(peer.serial)
            if error is not None:
                raise PeerAuthenticationError(unauthenticated, MSG_CRL_UNAVAILABLE)
            if refused:
                raise PeerAuthenticationError(
                    unauthenticated, f"certificate revoked: {identity.uri}"
                )
        # (5) RFC 5280 §6.1.3 (a)(2): the current time must be inside the validity
        #     window. The handshake checked it once, but a connection (and a stream on
        #     it) can live on after the certificate expires.
        now = self._now()
        if now < peer.not_before:
            raise PeerAuthenticationError(
                unauthenticated, f"certificate not yet valid: {identity.uri}"
            )
        if now > peer.not_after:
            raise PeerAuthenticationError(unauthenticated, f"certificate expired: {identity.uri}")
        return identity

    def identity(self, context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Identity:
        """The authenticated caller of the RPC; aborts the RPC if it must be refused.

        Works with sync contexts and, on success, with aio contexts too. On failure in
        an aio context, where ``abort`` is a coroutine that cannot be awaited from
        here, the status code and details are set and PeerAuthenticationError raised,
        which grpc.aio turns into that status; prefer :meth:`identity_async` there.
        """
        try:
            return self.authenticate(context.auth_context())
        except PeerAuthenticationError as exc:
            self._log_refusal(context, exc)
            if inspect.iscoroutinefunction(context.abort):
                context.set_code(exc.code)
                context.set_details(exc.message)
                raise
            # Only sync contexts get here, where abort() raises to end the RPC.
            sync_context: Any = context
            sync_context.abort(exc.code, exc.message)
            raise

    async def identity_async(
        self, context: grpc.aio.ServicerContext | grpc.ServicerContext
    ) -> Identity:
        """Like :meth:`identity`, awaiting ``abort`` when it is a coroutine."""
        try:
            return self.authenticate(context.auth_context())
        except PeerAuthenticationError as exc:
            self._log_refusal(context, exc)
            result = context.abort(exc.code, exc.message)
            if inspect.isawaitable(result):
                await result
            raise

    def _parse(self, pem: bytes) -> _PeerCert:
        with self._cache_lock:
            hit = self._cache.get(pem)
            if hit is not None:
                self._cache.move_to_end(pem)
                return hit
        peer = self._parse_uncached(pem)
        with self._cache_lock:
            self._cache[pem] = peer
            self._cache.move_to_end(pem)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return peer

    def _parse_uncached(self, pem: bytes) -> _PeerCert:
        epoch = _dt.datetime.min.replace(tzinfo=_dt.UTC)
        try:
            cert = _load_cert(pem, what="client certificate")
        except PKIError as exc:
            return _PeerCert(None, -1, epoch, epoch, str(exc))
        serial = cert.serial_number
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        # RFC 5280 §6.3.3 (b): a CRL only covers certificates its issuer signed. The
        # handshake already chained the leaf to our CA; requiring it to be *directly*
        # issued by that CA also makes the serial lookup in our CRL meaningful.
        if not _issued_by(cert, self._ca):
            return _PeerCert(
                None, serial, not_before, not_after, "client certificate not issued by fabric CA"
            )
        try:
            identity = _identity_of_cert(cert)
        except PKIError as exc:
            return _PeerCert(
                None, serial, not_before, not_after, f"client certificate has no identity: {exc}"
            )
        return _PeerCert(identity, serial, not_before, not_after, None)

    @staticmethod
    def _log_refusal(context: Any, exc: PeerAuthenticationError) -> None:
        peer = "?"
        with contextlib.suppress(Exception):
            peer = context.peer()
        _log.warning("refused peer %s: %s", peer, exc.message)


def _first(values: Any) -> bytes | None:
    # grpc returns each auth property as a list of bytes values.
    if values is None:
        return None
    if isinstance(values, (bytes, bytearray)):
        return bytes(values) or None
    for value in values:
        if value:
            return bytes(value)
    return None


# -- interceptors ----------------------------------------------------------------------


def _compile_rules(
    allowed_kinds: Mapping[str, frozenset[str]],
) -> tuple[tuple[str, frozenset[str]], ...]:
    rules: list[tuple[str, frozenset[str]]] = []
    for prefix, kinds in allowed_kinds.items():
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"method prefix must start with '/': {prefix!r}")
        kinds = frozenset(kinds)
        unknown = kinds - KINDS
        if unknown:
            # A typo such as "nodes" would otherwise silently lock everyone out (or,
            # worse, make someone think a rule exists that never matches).
            raise ValueError(f"unknown identity kinds {sorted(unknown)} for {prefix!r}")
        rules.append((prefix, kinds))
    # Longest prefix first, so "/fabric.v1.Head/Admin" can be narrower than
    # "/fabric.v1.Head/".
    rules.sort(key=lambda rule: len(rule[0]), reverse=True)
    return tuple(rules)


def _allowed(rules: tuple[tuple[str, frozenset[str]], ...], method: str) -> frozenset[str]:
    for prefix, kinds in rules:
        if method.startswith(prefix):
            return kinds
    return frozenset()  # default deny


def _denied(identity: Identity, method: str) -> str:
    return f"{identity.uri} is not allowed to call {method}"


class _AuthInterceptor(grpc.ServerInterceptor):
    def __init__(
        self, authenticator: PeerAuthenticator, allowed_kinds: Mapping[str, frozenset[str]]
    ) -> None:
        self._auth = authenticator
        self._rules = _compile_rules(allowed_kinds)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        allowed = _allowed(self._rules, method)
        auth = self._auth

        def guard(context: Any) -> None:
            identity = auth.identity(context)
            if identity.kind not in allowed:
                message = _denied(identity, method)
                _log.warning("denied %s", message)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

        return _wrap_sync(handler, guard)


def _wrap_sync(handler: Any, guard: Callable[[Any], None]) -> grpc.RpcMethodHandler:
    # Guard eagerly (not inside a generator) so that the sync server's own exception
    # handling around the behaviour call turns an abort into the RPC's status before
    # any response iteration starts.
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: Any) -> Iterator[Any]:
            guard(context)
            return ss(requests, context)  # type: ignore[no-any-return]

        return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
    if handler.request_streaming:
        su = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: Any) -> Any:
            guard(context)
            return su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
    if handler.response_streaming:
        us = handler.unary_stream

        def unary_stream(request: Any, context: Any) -> Iterator[Any]:
            guard(context)
            return us(request, context)  # type: ignore[no-any-return]

        return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
    uu = handler.unary_unary

    def unary_unary(request: Any, context: Any) -> Any:
        guard(context)
        return uu(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)


def auth_server_interceptor(
    authenticator: PeerAuthenticator, allowed_kinds: Mapping[str, frozenset[str]]
) -> grpc.ServerInterceptor:
    """A sync-server interceptor that authenticates and authorizes every RPC."""
    return _AuthInterceptor(authenticator, allowed_kinds)


class _AioAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, authenticator: PeerAuthenticator, allowed_kinds: Mapping[str, frozenset[str]]
    ) -> None:
        self._auth = authenticator
        self._rules = _compile_rules(allowed_kinds)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[unreachable]
        method = handler_call_details.method
        allowed = _allowed(self._rules, method)
        auth = self._auth

        async def guard_async(context: Any) -> None:
            identity = await auth.identity_async(context)
            if identity.kind not in allowed:
                message = _denied(identity, method)
                _log.warning("denied %s", message)
                auth.refused(message)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

        def guard_sync(context: Any) -> None:
            # Sync handlers on an aio server get a context whose abort() blocks on the
            # event loop; this only ever runs on the server's thread pool (see below).
            identity = auth.identity(context)
            if identity.kind not in allowed:
                message = _denied(identity, method)
                _log.warning("denied %s", message)
                auth.refused(message)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

        return _wrap_aio(handler, guard_async, guard_sync)


def _wrap_aio(
    handler: Any,
    guard_async: Callable[[Any], Awaitable[None]],
    guard_sync: Callable[[Any], None],
) -> grpc.RpcMethodHandler:
    # grpc.aio picks how to run a behaviour from its function type (coroutine
    # function, async generator function, or plain callable run on the thread pool),
    # so each wrapper must be of the same type as the behaviour it wraps.
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_aio_streaming(handler.stream_stream, guard_async, guard_sync), des, ser
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_aio_streaming(handler.unary_stream, guard_async, guard_sync), des, ser
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_aio_unary(handler.stream_unary, guard_async, guard_sync), des, ser
        )
    return grpc.unary_unary_rpc_method_handler(
        _wrap_aio_unary(handler.unary_unary, guard_async, guard_sync), des, ser
    )


def _wrap_aio_unary(
    inner: Callable[..., Any],
    guard_async: Callable[[Any], Awaitable[None]],
    guard_sync: Callable[[Any], None],
) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(inner):

        async def unary_async(request: Any, context: Any) -> Any:
            await guard_async(context)
            return await inner(request, context)

        return unary_async

    # A plain function: grpc.aio runs it on its thread pool, where a blocking guard is
    # fine (and awaiting is impossible).
    def unary_sync(request: Any, context: Any) -> Any:
        guard_sync(context)
        return inner(request, context)

    return unary_sync


def _wrap_aio_streaming(
    inner: Callable[..., Any],
    guard_async: Callable[[Any], Awaitable[None]],
    guard_sync: Callable[[Any], None],
) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(inner):
        # Reader/writer style: the behaviour writes with context.write() itself.
        async def writer(request: Any, context: Any) -> None:
            await guard_async(context)
            await inner(request, context)

        return writer

    if inspect.isasyncgenfunction(inner):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            await guard_async(context)
            async with contextlib.aclosing(inner(request, context)) as responses:
                async for response in responses:
                    yield response

        return agen

    # A sync generator: grpc.aio *calls* it on the event loop thread and only iterates
    # it on the thread pool, so the blocking guard must run lazily, on first next().
    def gen(request: Any, context: Any) -> Iterator[Any]:
        guard_sync(context)
        yield from inner(request, context)

    return gen


def auth_aio_server_interceptor(
    authenticator: PeerAuthenticator, allowed_kinds: Mapping[str, frozenset[str]]
) -> grpc.aio.ServerInterceptor:
    """A grpc.aio interceptor that authenticates and authorizes every RPC."""
    return _AioAuthInterceptor(authenticator, allowed_kinds)
