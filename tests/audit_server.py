"""The head's audit service as the head serves it, for tests: :class:`HeadAudit` behind a thin
Head servicer (the same one-line delegations ``HeadService`` has) and the head's mutual-TLS
interceptor, on an event loop in a thread of its own, so that tests and the CLI call it
synchronously over real mTLS.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from fabric.audit import Entry, encode, entry_time
from fabric.policy import load_policy
from fabric.policy._model import Policy

from fabric._audit_service import ALLOWED_KINDS, AuditRpcs, HeadAudit
from fabric._launch import load_credentials, secure_server
from fabric._pki import CertificateAuthority, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import PeerAuthenticator, secure_channel

CONFIGS = Path(__file__).parent.parent / "configs"
POLICY = CONFIGS / "policy-two-tenants.yaml"
IDENTITIES = (
    "node/head",
    "node/n1",
    "node/n2",
    "tenant/alice",
    "tenant/bob",
    "operator/admin",
    "operator/auditor",
    "tenant/mallory",  # a certificate from the CA, but no tenant of the policy
)
TIMEOUT = 30.0

_T = TypeVar("_T")


def make_ca(directory: Path) -> Path:
    """A CA in `directory` with a certificate for each of :data:`IDENTITIES`."""
    ca = CertificateAuthority.create(directory)
    for identity in IDENTITIES:
        kind, _, name = identity.partition("/")
        ca.issue(kind, name)
    return directory


class AuditHead(AuditRpcs, rpc.HeadServicer):
    """The audit RPCs of the Head service alone, as ``HeadService`` serves them."""

    def __init__(self, auth: PeerAuthenticator, audit: HeadAudit, policy: Policy) -> None:
        self.auth, self.audit, self.policy = auth, audit, policy


class AuditServer:
    """A running audit service on 127.0.0.1 (a context manager); ``stubs[identity]`` are
    synchronous Head stubs, each over its own mTLS channel as that identity."""

    def __init__(self, certs: Path, state_dir: Path | None, policy: Path = POLICY) -> None:
        self.certs = certs
        self.state_dir = state_dir
        self.policy = load_policy(policy)
        self.address = ""
        self._audit: HeadAudit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="audit-server", daemon=True)
        self._channels: list[grpc.Channel] = []
        self.stubs: dict[str, rpc.HeadStub] = {}

    @property
    def audit(self) -> HeadAudit:
        assert self._audit is not None
        return self._audit

    def __enter__(self) -> AuditServer:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError(f"the audit server did not start within {TIMEOUT} s")
        if self._error is not None:
            raise self._error
        for identity in IDENTITIES:
            channel = secure_channel(self.address, self.credentials(identity))
            self._channels.append(channel)
            self.stubs[identity] = rpc.HeadStub(channel)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for channel in self._channels:
            channel.close()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the audit server did not stop"

    def credentials(self, identity: str) -> Credentials:
        return load_credentials(self.certs, identity)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the server's event loop (where the HeadAudit lives)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(TIMEOUT)

    def append(self, node: str, entries: list[Entry]) -> int:
        """Append as node `node` over mTLS; the log's size."""
        request = pb.AuditRecords(entries=[encode(e) for e in entries])
        return int(self.stubs[f"node/{node}"].AppendAudit(request, timeout=TIMEOUT).size)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to the test thread
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        creds = load_credentials(self.certs, "node/head")
        server, auth, self.address = secure_server("127.0.0.1:0", creds, ALLOWED_KINDS)
        self._audit = HeadAudit.open(self.state_dir)
        try:
            rpc.add_HeadServicer_to_server(AuditHead(auth, self._audit, self.policy), server)
            await server.start()
            self._ready.set()
            await self._stop.wait()
            await server.stop(None)
        finally:
            self._audit.close()


def entry(node: str, i: int, **fields: Any) -> Entry:
    """Entry `i` as node `node` records it: id ``<node>/boot-1/<i>``, unsequenced."""
    values: dict[str, Any] = {
        "id": f"{node}/boot-1/{i}",
        "time": entry_time(),
        "kind": "admit",
        "tenant": "alice",
        "outcome": "place",
        "rules": ("tenant.run-regions",),
        "reasons": (f"reason {i}",),
        "node": node,
        "task": f"{i:032x}",
    }
    values.update(fields)
    return Entry(**values)


def entries_of(stream: Iterator[pb.AuditEntry]) -> list[tuple[int, str]]:
    """(seq, id) of each entry a QueryAudit stream sends."""
    from fabric.audit import decode

    return [(message.seq, decode(message.data).id) for message in stream]
