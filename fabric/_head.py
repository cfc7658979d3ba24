"""The head: cluster directory (nodes and their load, named actors). Not on the task path.

`python -m fabric._head` runs it (normally started by `fabric start --head`). Agents
register over a mutual-TLS stream whose certificate names the node: a node's id is never a
field it sends, so one node cannot report for another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from fabric._launch import (
    add_credential_args,
    fail,
    load_credentials,
    secure_server,
    setup_logging,
    until_terminated,
    write_ready_file,
)
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import (
    PeerAuthenticator,
)
from fabric.exceptions import FabricError

log = logging.getLogger("fabric.head")

ALLOWED_KINDS = {
    "/fabric.v1.Head/NodeStream": frozenset({"node"}),
    "/fabric.v1.Head/RegisterActor": frozenset({"node"}),
    "/fabric.v1.Head/RemoveActor": frozenset({"node"}),
    "/fabric.v1.Head/LookupActorByName": frozenset({"node"}),
    "/fabric.v1.Head/Status": frozenset({"node", "tenant", "operator"}),
}

BROADCAST_INTERVAL = 0.05


class ClusterDirectory:
    """Nodes and named actors. Pure state; the service below is its I/O shell."""

    def __init__(self) -> None:
        self.nodes: dict[str, pb.NodeInfo] = {}
        self.version = 0
        self.actors: dict[bytes, pb.ActorInfo] = {}
        self.names: dict[tuple[str, str, str], bytes] = {}

    def join(self, node_id: str, register: pb.RegisterNode, identity: str) -> None:
        self.nodes[node_id] = pb.NodeInfo(
            node_id=node_id,
            address=register.address,
            region=register.region,
            total=register.resources,
            available=register.resources,
            alive=True,
            labels=register.labels,
            identity=identity,
        )
        self.version += 1

    def report(self, node_id: str, report: pb.NodeReport) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        if dict(node.available) == dict(report.available) and (
            node.running_tasks,
            node.queued_tasks,
            node.workers,
        ) == (report.running_tasks, report.queued_tasks, report.workers):
            return  # a heartbeat: nothing to broadcast
        node.available.clear()
        node.available.update(report.available)
        node.running_tasks = report.running_tasks
        node.queued_tasks = report.queued_tasks
        node.workers = report.workers
        self.version += 1

    def leave(self, node_id: str) -> None:
        if self.nodes.pop(node_id, None) is not None:
            self.version += 1
        for actor_id, info in list(self.actors.items()):
            if info.node_id == node_id:
                self.remove_actor(info.tenant, actor_id)

    def view(self) -> pb.ClusterInfo:
        return pb.ClusterInfo(nodes=list(self.nodes.values()), version=self.version)

    def register_actor(self, info: pb.ActorInfo) -> str | None:
        """Record or update an actor; a message when its name is taken in the namespace."""
        existing = self.actors.get(info.actor_id)
        if existing is not None and existing.tenant != info.tenant:
            return "actor id already in use"
        key = (info.tenant, info.namespace, info.name)
        owner = self.names.get(key)
        if owner is not None and owner != info.actor_id:
            return f"an actor named {info.name!r} already exists in namespace {info.namespace!r}"
        self.actors[info.actor_id] = info
        self.names[key] = info.actor_id
        return None

    def remove_actor(self, tenant: str, actor_id: bytes) -> None:
        info = self.actors.get(actor_id)
        if info is None or info.tenant != tenant:
            return
        del self.actors[actor_id]
        self.names.pop((info.tenant, info.namespace, info.name), None)

    def lookup(self, tenant: str, namespace: str, name: str) -> pb.ActorInfo | None:
        actor_id = self.names.get((tenant, namespace, name))
        return self.actors.get(actor_id) if actor_id is not None else None


class HeadService(rpc.HeadServicer):
    def __init__(self, auth: PeerAuthenticator) -> None:
        self.auth = auth
        self.directory = ClusterDirectory()
        self.changed = asyncio.Event()

    async def NodeStream(
        self, request_iterator: AsyncIterator[pb.NodeReport], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClusterInfo]:
        identity = await self.auth.identity_async(context)
        node_id = identity.name
        first = await request_iterator.__anext__()  # type: ignore[attr-defined]
        if not first.HasField("register"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first report must register")
        self.directory.join(node_id, first.register, identity.uri)
        log.info(
            "node %s joined from %s (region %s)",
            node_id,
            first.register.address,
            first.register.region,
        )
        self.changed.set()

        async def reports() -> None:
            async for report in request_iterator:
                self.directory.report(node_id, report)
                self.changed.set()

        reader = asyncio.get_running_loop().create_task(reports())
        try:
            sent = -1
            while not reader.done():
                if self.directory.version != sent:
                    sent = self.directory.version
                    yield self.directory.view()
                self.changed.clear()
                wait = asyncio.get_running_loop().create_task(self.changed.wait())
                await asyncio.wait({wait, reader}, return_when=asyncio.FIRST_COMPLETED)
                wait.cancel()
                await asyncio.sleep(BROADCAST_INTERVAL)
        finally:
            reader.cancel()
            self.directory.leave(node_id)
            log.info("node %s left", node_id)
            self.changed.set()

    async def RegisterActor(
        self, request: pb.ActorRecord, context: grpc.aio.ServicerContext
    ) -> pb.ActorRecord:
        await self.auth.identity_async(context)
        problem = self.directory.register_actor(request.info)
        if problem is not None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, problem)
        return request

    async def RemoveActor(
        self, request: pb.LookupActor, context: grpc.aio.ServicerContext
    ) -> pb.Empty:
        await self.auth.identity_async(context)
        self.directory.remove_actor(request.tenant, request.actor_id)
        return pb.Empty()

    async def LookupActorByName(
        self, request: pb.LookupActor, context: grpc.aio.ServicerContext
    ) -> pb.ActorRecord:
        await self.auth.identity_async(context)
        info = self.directory.lookup(request.tenant, request.namespace, request.name)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no actor named {request.name!r}")
        return pb.ActorRecord(info=info)

    async def Status(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.ClusterInfo:
        await self.auth.identity_async(context)
        return self.directory.view()


async def serve(args: argparse.Namespace) -> None:
    creds = load_credentials(args.certs, args.identity)
    server, auth, address = secure_server(args.listen, creds, ALLOWED_KINDS)
    rpc.add_HeadServicer_to_server(HeadService(auth), server)
    await server.start()
    write_ready_file(args.ready_file, address=address, node_id=creds.identity.name)
    log.info("head serving on %s", address)
    await until_terminated()
    await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fabric._head", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:6380", help="HOST:PORT to serve on")
    add_credential_args(parser)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--state-dir", type=Path, help="reserved for the durable control store")
    args = parser.parse_args(argv)
    setup_logging(f"head[{args.identity}]")
    try:
        asyncio.run(serve(args))
    except FabricError as e:
        fail(e.diagnostics())
    except OSError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
