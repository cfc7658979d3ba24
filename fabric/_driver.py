"""A driver's session with its node agent: one mutual-TLS gRPC stream in each direction.

Outgoing messages are queued and leave in batches (everything queued while the previous
batch was being written goes in the next one), so a burst of submits costs a few frames.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc

from fabric._client import CoreClient
from fabric._pki import Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from fabric.exceptions import ConnectionLostError

MAX_BATCH = 4096
_CLOSE = None


class GrpcTransport:
    def __init__(self, address: str, creds: Credentials) -> None:
        self.address = address
        self.channel = secure_channel(address, creds)
        self._queue: queue.SimpleQueue[pb.ClientMessage | None] = queue.SimpleQueue()
        self._client: CoreClient | None = None
        self._welcome: pb.Welcome | None = None
        self._welcomed = threading.Event()
        self._error: str | None = None
        self._call = rpc.AgentStub(self.channel).Session(self._batches())
        self._receiver = threading.Thread(target=self._receive, name="fabric-receiver", daemon=True)
        self._receiver.start()

    def send(self, message: pb.ClientMessage) -> None:
        self._queue.put(message)

    def _batches(self) -> Iterator[pb.ClientBatch]:
        q = self._queue
        while True:
            first = q.get()
            if first is _CLOSE:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    message = q.get_nowait()
                except queue.Empty:
                    break
                if message is _CLOSE:
                    yield pb.ClientBatch(messages=batch)
                    return
                batch.append(message)
            yield pb.ClientBatch(messages=batch)

    def _receive(self) -> None:
        try:
            for batch in self._call:
                client = self._client
                for message in batch.messages:
                    if client is None:
                        if message.reply.HasField("welcome"):
                            self._welcome = message.reply.welcome
                            self._welcomed.set()
                            # The client is attached before anything else can arrive,
                            # because the agent sends nothing before the welcome.
                            self._welcomed_attached.wait()
                            client = self._client
                        continue
                    client.deliver(message)
            reason = "the node agent closed the session"
        except grpc.RpcError as e:
            reason = _describe(e, self.address)
        self._error = reason
        self._welcomed.set()
        if self._client is not None:
            self._client.connection_lost(reason)

    _welcomed_attached = threading.Event()

    def handshake(self, namespace: str, timeout: float) -> pb.Welcome:
        self._welcomed_attached = threading.Event()
        self.send(pb.ClientMessage(request_id=1, hello=pb.Hello(namespace=namespace)))
        if not self._welcomed.wait(timeout) or self._welcome is None:
            self.close()
            raise ConnectionLostError(
                self._error
                or f"no answer from the node agent at {self.address} within {timeout:g} s"
            )
        return self._welcome

    def attach(self, client: CoreClient) -> None:
        self._client = client
        self._welcomed_attached.set()

    def close(self) -> None:
        self._queue.put(_CLOSE)
        self._welcomed_attached.set()
        self._call.cancel()
        self.channel.close()


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
    transport = GrpcTransport(address, creds)
    welcome = transport.handshake(namespace, timeout)
    client = CoreClient(transport, welcome, is_worker=False)
    transport.attach(client)
    return client
