"""The agent's network edges: its gRPC services, its links to peers and to the head.

Who may call what is decided by the mTLS interceptor from the caller's certificate: drivers
(tenant identities) may open sessions; only nodes may use the peer and fetch services.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from fabric._agent.batching import Batcher
from fabric._agent.durability import durable
from fabric._agent.journal import Journal
from fabric._agent.node import NodeAgent
from fabric._agent.sessions import REAUTH_INTERVAL, DriverSession
from fabric._object_store import ObjectStore
from fabric._pki import Credentials
from fabric._policy_bundle import PolicyBundleError, verify_policy
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._serialization import INLINE_THRESHOLD
from fabric._tls import PeerAuthenticationError, PeerAuthenticator, secure_aio_channel

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 << 20
AUDIT_BATCH = 2000  # records per forwarded batch
AUDIT_FORWARD_PAUSE = 0.05  # seconds between batches once the head has caught up
HEARTBEAT_INTERVAL = 1.0
RECONNECT_AT_MOST = 1.0  # seconds between attempts to reach the head

ALLOWED_KINDS = {
    "/fabric.v1.Agent/Session": frozenset({"tenant"}),
    "/fabric.v1.Agent/Peer": frozenset({"node"}),
    "/fabric.v1.Agent/FetchObject": frozenset({"node"}),
}


def _acts_on_decision(message: pb.PeerMessage) -> bool:
    """Failures may carry a refusal (a forwarded task names its placement's record)."""
    if message.WhichOneof("body") == "finished":
        return any(loc.HasField("error") for loc in message.finished.returns)
    return False


def certificate_fingerprint(auth_context: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the peer's DER certificate, as the audit log records it."""
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        return ""
    pem = pems[0].decode() if isinstance(pems[0], bytes) else pems[0]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


class AgentService(rpc.AgentServicer):
    def __init__(self, node: NodeAgent, auth: PeerAuthenticator) -> None:
        self.node = node
        self.auth = auth

    async def Session(
        self, request_iterator: AsyncIterator[pb.ClientBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerBatch]:
        identity = await self.auth.identity_async(context)
        out: asyncio.Queue[pb.ServerBatch | PeerAuthenticationError | None] = asyncio.Queue()
        session = DriverSession(
            self.node, identity, out.put_nowait, certificate_fingerprint(context.auth_context())
        )

        async def read() -> None:
            try:
                async for batch in request_iterator:
                    if not session.receive(batch):
                        return
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            finally:
                out.put_nowait(None)

        async def recheck() -> None:
            # A session is one long-lived call: its certificate may be revoked or expire
            # while it is open, and then the session ends too.
            while True:
                await asyncio.sleep(REAUTH_INTERVAL)
                try:
                    self.auth.authenticate(context.auth_context())
                except PeerAuthenticationError as e:
                    log.warning("ending the session of %s: %s", identity.uri, e.message)
                    out.put_nowait(e)
                    return

        loop = asyncio.get_running_loop()
        reader = loop.create_task(read())
        watchdog = loop.create_task(recheck())
        try:
            while True:
                batch = await out.get()
                if batch is None:
                    break
                if isinstance(batch, PeerAuthenticationError):
                    await context.abort(batch.code, batch.message)
                yield batch
        finally:
            reader.cancel()
            watchdog.cancel()
            session.close()

    async def Peer(
        self, request_iterator: AsyncIterator[pb.PeerBatch], context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        identity = await self.auth.identity_async(context)
        async for batch in request_iterator:
            await self.auth.identity_async(context)  # still valid (revocation, expiry)?
            for message in batch.messages:
                try:
                    self.node.handle_peer(identity.name, message)
                except Exception:
                    log.exception("error handling a peer message from %s", identity.uri)
        return pb.PeerAck()

    async def FetchObject(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ObjectChunk]:
        identity = await self.auth.identity_async(context)
        location = await self.node.serve_fetch(request.tenant, request.object_id, identity.name)
        await durable()  # the transfer decision is recorded before a byte leaves
        which = location.WhichOneof("value")
        if location.moved_to:
            yield pb.ObjectChunk(moved_to=location.moved_to)
        elif which == "error":
            yield pb.ObjectChunk(error=location.error)
        elif which == "inline_blob":
            blob = location.inline_blob
            yield pb.ObjectChunk(total_size=len(blob), offset=0, data=blob)
        else:
            offset = 0
            total = location.stored_size
            for chunk in self.node.store.iter_chunks(request.tenant, request.object_id, CHUNK_SIZE):
                yield pb.ObjectChunk(total_size=total, offset=offset, data=bytes(chunk))
                offset += len(chunk)


class PeerLinks:
    """Outbound streams to other agents, opened on first use, and object pulls."""

    def __init__(
        self,
        node_id: str,
        creds: Credentials,
        store: ObjectStore,
        address_of: Callable[[str], str | None],
    ) -> None:
        self.node_id = node_id
        self.creds = creds
        self.store = store
        self.address_of = address_of
        self._links: dict[str, tuple[grpc.aio.Channel, Batcher]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, node_id: str) -> grpc.aio.Channel:
        channel = self._channels.get(node_id)
        if channel is None:
            address = self.address_of(node_id)
            if address is None:
                raise ConnectionError(f"node {node_id} is not in the cluster")
            channel = secure_aio_channel(address, self.creds)
            self._channels[node_id] = channel
        return channel

    def send(self, node_id: str, message: pb.PeerMessage, needs: int = 0) -> None:
        link = self._links.get(node_id)
        if link is None:
            try:
                channel = self._channel(node_id)
            except ConnectionError as e:
                log.error("dropping a message for node %s: %s", node_id, e)
                return
            queue: asyncio.Queue[pb.PeerBatch] = asyncio.Queue()
            batcher = Batcher(
                lambda ms: pb.PeerBatch(messages=ms), queue.put_nowait, _acts_on_decision
            )

            async def outbound() -> AsyncIterator[pb.PeerBatch]:
                while True:
                    yield await queue.get()

            async def run() -> None:
                try:
                    await rpc.AgentStub(channel).Peer(outbound())
                except grpc.aio.AioRpcError as e:
                    log.warning("link to node %s closed: %s", node_id, e.details())
                finally:
                    if self._links.get(node_id, (None, None))[1] is batcher:
                        del self._links[node_id]

            link = (channel, batcher)
            self._links[node_id] = link
            asyncio.get_running_loop().create_task(run())
        link[1].send(message, needs)

    async def fetch(self, node_id: str, tenant: str, object_id: bytes) -> pb.ObjectLocation:
        """Pull an object from `node_id` into this node (inline if small, else the store)."""
        stub = rpc.AgentStub(self._channel(node_id))
        location = pb.ObjectLocation(object_id=object_id, tenant=tenant)
        incoming = None
        parts: list[bytes] = []
        try:
            async for chunk in stub.FetchObject(
                pb.FetchRequest(object_id=object_id, tenant=tenant)
            ):
                if chunk.HasField("error"):
                    location.error.CopyFrom(chunk.error)
                    return location
                if chunk.moved_to:
                    location.moved_to = chunk.moved_to
                    return location
                if chunk.total_size <= INLINE_THRESHOLD:
                    parts.append(chunk.data)
                    continue
                if incoming is None:
                    incoming = self.store.begin_receive(tenant, object_id, chunk.total_size)
                incoming.write(chunk.offset, chunk.data)
            if incoming is not None:
                location.stored_size = incoming.commit()
                incoming = None
            else:
                location.inline_blob = b"".join(parts)
            return location
        finally:
            if incoming is not None:
                incoming.abort()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)


class HeadLink:
    """The agent's connection to the head: registration, load reports, the cluster view,
    and the actor directory."""

    node: NodeAgent  # set by attach(), before run()

    def __init__(self, address: str, creds: Credentials, listen_address: str) -> None:
        self.channel = secure_aio_channel(address, creds)
        self.stub = rpc.HeadStub(self.channel)
        self.ca_pem = creds.ca_pem
        self.listen_address = listen_address
        self.changed = asyncio.Event()
        self.first_view = asyncio.Event()
        self.refused = asyncio.Event()  # the head will not have us (e.g. a region claim)
        self.error: str | None = None
        self.journal: Journal | None = None  # this node's audit journal, when it records
        self.audit_ready = asyncio.Event()  # new durable records to forward

    def _register(self) -> pb.RegisterNode:
        node = self.node
        return pb.RegisterNode(
            address=self.listen_address,
            region=node.region,
            resources=node.total,
            labels=node.labels,
        )

    async def _reports(self) -> AsyncIterator[pb.NodeReport]:
        yield pb.NodeReport(register=self._register())
        last = b""
        quiet = 0.0
        while True:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=HEARTBEAT_INTERVAL)
            except TimeoutError:
                pass
            self.changed.clear()
            info = self.node.node_info()
            report = pb.NodeReport(
                available=info.available,
                running_tasks=info.running_tasks,
                queued_tasks=info.queued_tasks,
                workers=info.workers,
                # Placement-group bundles change the totals too; other agents route work
                # to a bundle's resources by them.
                total=info.total,
                tenant_load=info.tenant_load,
                accepted=info.accepted,
            )
            data = report.SerializeToString(deterministic=True)
            now = asyncio.get_running_loop().time()
            # Report changes, and an unchanged report now and then as a heartbeat.
            if data != last or now - quiet >= HEARTBEAT_INTERVAL:
                last, quiet = data, now
                yield report
            # Coalesce bursts of load changes into at most one report per 50 ms.
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        """Stay connected to the head, reconnecting with backoff when the link drops."""
        delay = 0.2
        while True:
            try:
                async for info in self.stub.NodeStream(self._reports()):
                    if info.HasField("policy"):
                        # Fail closed: a bundle that does not verify ends the stream, and
                        # the agent serves nobody until a good one arrives.
                        self.node.set_policy(verify_policy(info.policy, self.ca_pem))
                    self.node.update_cluster(info)
                    self.first_view.set()
                    delay = 0.2
                self.error = "the head closed the stream"
            except PolicyBundleError as e:
                self.error = f"rejected the head's policy bundle: {e}"
                log.error("%s", self.error)
            except grpc.aio.AioRpcError as e:
                self.error = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                    log.error("the head refused this node: %s", e.details())
                    self.refused.set()
                    return
                log.warning("lost the head: %s", self.error)
            await asyncio.sleep(delay)
            # Back within the head's node-loss deadline (5 s by default), even after a
            # long outage: a node that reconnects later is taken for lost.
            delay = min(delay * 2, RECONNECT_AT_MOST)

    async def forward_audit(self) -> None:
        """Forward the journal's durable records to the head's sequencer, in order, for
        ever; the head knows records by id, so a batch sent twice is stored once."""
        journal = self.journal
        assert journal is not None
        delay = 0.2
        while True:
            start, records = journal.pending(AUDIT_BATCH)
            if not records:
                self.audit_ready.clear()
                start, records = journal.pending(AUDIT_BATCH)
                if not records:
                    await self.audit_ready.wait()
                    continue
            try:
                await self.stub.AppendAudit(pb.AuditRecords(entries=records), timeout=30)
            except grpc.aio.AioRpcError as e:
                log.warning("could not forward %d audit records: %s", len(records), e.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            journal.acknowledge(start + len(records))
            delay = 0.2
            if len(records) < AUDIT_BATCH:
                # Caught up: let entries gather for a moment, so that the head stores and
                # signs them in few batches rather than many small ones.
                await asyncio.sleep(AUDIT_FORWARD_PAUSE)

    # -- the actor directory (the agent's `Directory`) -----------------------------------

    async def register_actor(self, info: pb.ActorInfo) -> pb.ErrorInfo | None:
        try:
            await self.stub.RegisterActor(pb.ActorRecord(info=info), timeout=10)
        except grpc.aio.AioRpcError as e:
            kind = (
                pb.ErrorInfo.INVALID_REQUEST
                if e.code() == grpc.StatusCode.ALREADY_EXISTS
                else pb.ErrorInfo.SYSTEM
            )
            return pb.ErrorInfo(kind=kind, message=e.details() or str(e.code()))
        return None

    async def lease_budget(
        self, tenant: str, budget: str, want: float, used: float
    ) -> pb.BudgetLease:
        request = pb.BudgetLeaseRequest(tenant=tenant, budget=budget, want=want, used=used)
        return await self.stub.LeaseBudget(request, timeout=10)

    async def remove_actor(self, tenant: str, actor_id: bytes) -> None:
        try:
            await self.stub.RemoveActor(
                pb.LookupActor(tenant=tenant, actor_id=actor_id), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            log.warning(
                "could not remove actor %s from the directory: %s", actor_id.hex(), e.details()
            )

    async def lookup_actor(self, tenant: str, namespace: str, name: str) -> pb.ActorInfo | None:
        try:
            record = await self.stub.LookupActorByName(
                pb.LookupActor(tenant=tenant, namespace=namespace, name=name), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return record.info
