"""A driver's session with its node agent.

The session starts as a mutual-TLS gRPC stream. When the agent says it also serves a Unix
socket on this host and we can reach it, the session moves there: the same messages, the
same certificate checks, over TLS on the socket rather than HTTP/2, which costs much less
per message. Either way, outgoing messages are queued and leave in batches (everything
queued while the previous batch was being written goes in the next one).
"""

from __future__ import annotations

import asyncio
import os
import queue
import ssl
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc

from fabric._client import CoreClient
from fabric._pki import SERVER_NAME, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from fabric.exceptions import ConnectionLostError, PermissionDeniedError

MAX_BATCH = 4096
FRAME = struct.Struct("<I")
LOCAL_ENV = "FABRIC_LOCAL_CHANNEL"  # "0" keeps drivers on gRPC (to compare, or debug)


class _Transport:
    """What both carriers share: the outgoing queue and batching, the hello handshake and
    delivering what arrives to the client."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._queue: queue.SimpleQueue[pb.ClientMessage | None] = queue.SimpleQueue()
        self._client: CoreClient | None = None
        self._welcome: pb.Welcome | None = None
        self._welcomed = threading.Event()
        self._attached = threading.Event()
        self._error: str | None = None
        self._refused: str | None = None

    def send(self, message: pb.ClientMessage) -> None:
        self._queue.put(message)

    def _batches(self) -> Iterator[pb.ClientBatch]:
        q = self._queue
        while True:
            first = q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    message = q.get_nowait()
                except queue.Empty:
                    break
                if message is None:
                    yield pb.ClientBatch(messages=batch)
                    return
                batch.append(message)
            yield pb.ClientBatch(messages=batch)

    def _deliver(self, batch: pb.ServerBatch) -> None:
        for message in batch.messages:
            if not message.request_id and message.reply.HasField("error"):
                self._error = message.reply.error.message  # the agent ends the session
                continue
            client = self._client
            if client is None:
                if message.reply.HasField("error"):
                    # The agent refused the session (e.g. not a tenant of its policy).
                    self._refused = message.reply.error.message
                    self._welcomed.set()
                elif message.reply.HasField("welcome"):
                    self._welcome = message.reply.welcome
                    self._welcomed.set()
                    # The agent sends nothing before the welcome, and nothing the client
                    # could miss after it until the client is attached.
                    self._attached.wait()
                continue
            client.deliver(message)

    def _lost(self, reason: str) -> None:
        self._error = reason
        self._welcomed.set()
        if self._client is not None:
            self._client.connection_lost(reason)

    def handshake(self, namespace: str, timeout: float) -> pb.Welcome:
        self.send(pb.ClientMessage(request_id=1, hello=pb.Hello(namespace=namespace)))
        if not self._welcomed.wait(timeout) or self._welcome is None:
            self.close()
            if self._refused is not None:
                raise PermissionDeniedError(self._refused)
            raise ConnectionLostError(
                self._error or f"no answer from the node agent at {self.where} within {timeout:g} s"
            )
        return self._welcome

    def attach(self, client: CoreClient) -> None:
        self._client = client
        self._attached.set()

    def close(self) -> None:
        self._queue.put(None)
        self._attached.set()


class GrpcTransport(_Transport):
    def __init__(self, address: str, creds: Credentials) -> None:
        super().__init__(address)
        self.channel = secure_channel(address, creds)
        self._call = rpc.AgentStub(self.channel).Session(self._batches())
        threading.Thread(target=self._receive, name="fabric-receiver", daemon=True).start()

    def _receive(self) -> None:
        try:
            for batch in self._call:
                self._deliver(batch)
            reason = "the node agent closed the session"
        except grpc.RpcError as e:
            reason = _describe(e, self.where)
        self._lost(reason)

    def close(self) -> None:
        super().close()
        self._call.cancel()
        self.channel.close()


class LocalTransport(_Transport):
    """The session over mutual TLS on the agent's Unix socket.

    An SSL connection must not be read and written from two threads at once, so one
    event-loop thread does all its I/O; the sender thread only hands it finished frames.
    """

    def __init__(self, path: str, creds: Credentials) -> None:
        super().__init__(path)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="fabric-local", daemon=True).start()
        self._writer: asyncio.StreamWriter | None = None
        opened = asyncio.run_coroutine_threadsafe(self._open(path, creds), self._loop)
        try:
            opened.result(timeout=30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        threading.Thread(target=self._send_forever, name="fabric-sender", daemon=True).start()

    async def _open(self, path: str, creds: Credentials) -> None:
        reader, self._writer = await asyncio.open_unix_connection(
            path, ssl=_client_context(creds), server_hostname=SERVER_NAME, limit=1 << 20
        )
        self._loop.create_task(self._receive(reader))

    def _send_forever(self) -> None:
        writer = self._writer
        assert writer is not None
        for batch in self._batches():
            data = batch.SerializeToString()
            self._loop.call_soon_threadsafe(writer.write, FRAME.pack(len(data)) + data)
        self._loop.call_soon_threadsafe(writer.close)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (length,) = FRAME.unpack(await reader.readexactly(4))
                batch = pb.ServerBatch()
                batch.ParseFromString(await reader.readexactly(length))
                self._deliver(batch)
        except asyncio.IncompleteReadError:
            reason = self._error or "the node agent closed the session"
        except (OSError, ValueError) as e:
            reason = f"the local session failed: {e}"
        self._lost(reason)
        self._loop.stop()

    def close(self) -> None:
        super().close()


def _client_context(creds: Credentials) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=creds.ca_pem.decode())
    context.check_hostname = True  # only node certificates carry SERVER_NAME
    # The ssl module loads a key only from a file: a private one, removed at once.
    with tempfile.TemporaryDirectory(prefix="fabric-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(creds.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(creds.key_pem)
        context.load_cert_chain(cert, key)
    return context


def _describe(error: grpc.RpcError, address: str) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.CANCELLED:
        return "the session was closed"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the node agent at {address}: {details}"
    return f"{code.name if code else 'error'}: {details}"


def connect(
    address: str, creds: Credentials, namespace: str = "", timeout: float = 30.0
) -> CoreClient:
    """Open a session with the agent at `address` as the identity in `creds`."""
    transport: _Transport = GrpcTransport(address, creds)
    welcome = transport.handshake(namespace, timeout)
    if welcome.local_socket and os.environ.get(LOCAL_ENV, "1") != "0":
        try:
            local = LocalTransport(welcome.local_socket, creds)
            welcome = local.handshake(namespace, timeout)
        except (OSError, ssl.SSLError, ConnectionLostError):
            pass  # not on the agent's host, or not allowed there: stay on gRPC
        else:
            transport.close()
            transport = local
    client = CoreClient(transport, welcome, is_worker=False)
    transport.attach(client)
    return client
