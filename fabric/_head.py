"""The head: cluster directory (nodes and their load, named actors). Not on the task path.

`python -m fabric._head` runs it (normally started by `fabric start --head`). Agents
register over a mutual-TLS stream whose certificate names the node: a node's id is never a
field it sends, so one node cannot report for another.

The head writes its nodes, named actors, budget leases and applied policies through its
store (`fabric._head_store`, ``<state dir>/head.db``) before it answers, so a restart loses
none of them. A node is declared lost when its stream closes, or when it has not reported
within the node-loss deadline (``--node-timeout``): agents report at least every second, so
a node behind a cut link is noticed in seconds, not after TCP's timeouts. A restarted head
shows the nodes of its previous run as alive until that deadline, so that agents do not
fail over work to nodes that are merely slow to reconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fabric import _reporting as reporting
from fabric._audit_service import ALLOWED_KINDS as AUDIT_KINDS
from fabric._audit_service import AuditRpcs, HeadAudit
from fabric._head_store import HeadStore, PolicyVersion, SavedNode, SqliteHeadStore
from fabric._launch import (
    add_credential_args,
    fail,
    load_credentials,
    secure_server,
    setup_logging,
    until_terminated,
    write_ready_file,
)
from fabric._leases import BudgetLeases, UnknownBudgetError
from fabric._pki import Credentials
from fabric._policy_bundle import sign_policy
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import (
    PeerAuthenticator,
)
from fabric._views import only_own
from fabric.exceptions import FabricError
from fabric.policy import PolicyError, load_policy, load_policy_text
from fabric.policy._model import OPEN_POLICY, Policy, canonical_json

log = logging.getLogger("fabric.head")

ALLOWED_KINDS = {
    "/fabric.v1.Head/NodeStream": frozenset({"node"}),
    "/fabric.v1.Head/RegisterActor": frozenset({"node"}),
    "/fabric.v1.Head/RemoveActor": frozenset({"node"}),
    "/fabric.v1.Head/LookupActorByName": frozenset({"node"}),
    "/fabric.v1.Head/Status": frozenset({"node", "tenant", "operator"}),
    "/fabric.v1.Head/ApplyPolicy": frozenset({"operator"}),
    "/fabric.v1.Head/GetPolicy": frozenset({"node", "tenant", "operator"}),
    "/fabric.v1.Head/LeaseBudget": frozenset({"node"}),
    **AUDIT_KINDS,
}

BROADCAST_INTERVAL = 0.05
# How long a node may go without reporting before it is declared lost (--node-timeout).
# Agents report at least every second (HEARTBEAT_INTERVAL in fabric._agent.service).
NODE_TIMEOUT = 5.0
# The stream number of a node restored from the store: it has not reconnected yet.
RESTORED = 0


class ClusterDirectory:
    """Nodes and named actors. Joins, losses and actors are written through `store` before
    they change the directory (load reports are not kept); the service below is its I/O
    shell and passes the clock (monotonic seconds)."""

    def __init__(self, store: HeadStore, now: float) -> None:
        self.store = store
        self.nodes: dict[str, pb.NodeInfo] = {}
        self.version = 0
        self.actors: dict[bytes, pb.ActorInfo] = {}
        self.names: dict[tuple[str, str, str], bytes] = {}
        # Invariant: the keys of `streams` and `last_seen` are the keys of `nodes`.
        # node id -> the number of the stream it reports on (RESTORED: none yet).
        self.streams: dict[str, int] = {}
        # node id -> when it last reported (or joined, or was restored).
        self.last_seen: dict[str, float] = {}
        self._opened = RESTORED
        # The nodes of the previous run are alive until they miss the deadline: their
        # agents reconnect once they notice the head is back.
        for saved in store.nodes():
            self.nodes[saved.node_id] = pb.NodeInfo(
                node_id=saved.node_id,
                address=saved.address,
                region=saved.region,
                total=saved.resources,
                available=saved.resources,
                alive=True,
                labels=saved.labels,
                identity=saved.identity,
            )
            self.streams[saved.node_id] = RESTORED
            self.last_seen[saved.node_id] = now
        for info in store.actors():
            self.actors[info.actor_id] = info
            self.names[(info.tenant, info.namespace, info.name)] = info.actor_id

    def join(self, node_id: str, register: pb.RegisterNode, identity: str, now: float) -> int:
        """Add the node, or replace it; returns the number of the stream it now reports on."""
        self.store.save_node(
            SavedNode(
                node_id=node_id,
                address=register.address,
                region=register.region,
                labels=dict(register.labels),
                resources=dict(register.resources),
                identity=identity,
            )
        )
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
        self._opened += 1
        self.streams[node_id] = self._opened
        self.last_seen[node_id] = now
        self.version += 1
        return self._opened

    def report(self, node_id: str, stream: int, report: pb.NodeReport, now: float) -> None:
        node = self.nodes.get(node_id)
        if node is None or self.streams[node_id] != stream:
            return  # a node declared lost, or a stream it has since replaced
        self.last_seen[node_id] = now
        if (
            dict(node.available) == dict(report.available)
            and dict(node.total) == dict(report.total)
            and (node.running_tasks, node.queued_tasks, node.workers)
            == (report.running_tasks, report.queued_tasks, report.workers)
            and dict(node.tenant_load) == dict(report.tenant_load)
            and dict(node.accepted) == dict(report.accepted)
        ):
            return  # a heartbeat: nothing to broadcast
        node.available.clear()
        node.available.update(report.available)
        node.total.clear()
        node.total.update(report.total)
        node.running_tasks = report.running_tasks
        node.queued_tasks = report.queued_tasks
        node.workers = report.workers
        node.tenant_load.clear()
        for tenant, load in report.tenant_load.items():
            node.tenant_load[tenant].CopyFrom(load)
        node.accepted.clear()
        node.accepted.update(report.accepted)
        self.version += 1

    def leave(self, node_id: str, stream: int | None = None) -> bool:
        """Remove the node and the named actors it hosted. False, and nothing changes, if it
        is gone already or reports on another stream than `stream` (None: on any)."""
        if node_id not in self.nodes or stream not in (None, self.streams[node_id]):
            return False
        hosted = [actor_id for actor_id, info in self.actors.items() if info.node_id == node_id]
        self.store.remove_node(node_id, hosted)
        del self.nodes[node_id], self.streams[node_id], self.last_seen[node_id]
        for actor_id in hosted:
            self._forget_actor(actor_id)
        self.version += 1
        return True

    def overdue(self, now: float, deadline: float) -> list[tuple[str, float, int]]:
        """(node id, seconds since it last reported, its stream) of every node silent for
        longer than `deadline`."""
        return [
            (node_id, now - seen, self.streams[node_id])
            for node_id, seen in self.last_seen.items()
            if now - seen > deadline
        ]

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
        self.store.save_actor(info)
        self.actors[info.actor_id] = info
        self.names[key] = info.actor_id
        return None

    def remove_actor(self, tenant: str, actor_id: bytes) -> None:
        info = self.actors.get(actor_id)
        if info is None or info.tenant != tenant:
            return
        self.store.remove_actor(actor_id)
        self._forget_actor(actor_id)

    def _forget_actor(self, actor_id: bytes) -> None:
        info = self.actors.pop(actor_id)
        self.names.pop((info.tenant, info.namespace, info.name), None)

    def lookup(self, tenant: str, namespace: str, name: str) -> pb.ActorInfo | None:
        actor_id = self.names.get((tenant, namespace, name))
        return self.actors.get(actor_id) if actor_id is not None else None


@dataclass
class NodeStreamState:
    """An open NodeStream. The head ends it by setting `ended`: its handler then aborts the
    call with `reason`. A handler stuck writing to a peer that stopped reading never sees
    the event; the watchdog aborts such a call itself once it has had a tick to end."""

    node_id: str
    context: grpc.aio.ServicerContext
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float = 0.0
    reason: str = ""
    aborted: bool = False


class HeadService(AuditRpcs, rpc.HeadServicer):
    def __init__(
        self,
        auth: PeerAuthenticator,
        creds: Credentials,
        policy: Policy = OPEN_POLICY,
        state_dir: Path | None = None,
        node_timeout: float = NODE_TIMEOUT,
    ) -> None:
        self.auth = auth
        self.creds = creds
        self.changed = asyncio.Event()
        self.state_dir = state_dir
        self.node_timeout = node_timeout
        self.policy = policy
        self.signed = sign_policy(policy, creds)
        self.audit = HeadAudit.open(state_dir, origin=f"{creds.identity.trust_domain}/audit")
        self.store: HeadStore = SqliteHeadStore.open(state_dir)
        self.directory = ClusterDirectory(self.store, time.monotonic())
        self.leases = BudgetLeases(self.store)
        # Open NodeStreams by stream number (see ClusterDirectory.streams).
        self.streams: dict[int, NodeStreamState] = {}
        # Set when the head stops: the streams that ends lose no node, whose next head
        # awaits its reconnect.
        self.closing = False
        self._aborts: set[asyncio.Task[None]] = set()

    def _claim_problem(self, policy: Policy, node_id: str, region: str) -> str | None:
        allowed = policy.claimable_regions(f"node/{node_id}")
        if allowed is None or region in allowed:
            return None
        may = ", ".join(sorted(allowed)) or "no region"
        return (
            f"node {node_id} may not claim region {region!r} under policy {policy.version} "
            f"(it may claim: {may}) [rule node.region-claim]"
        )

    async def NodeStream(
        self, request_iterator: AsyncIterator[pb.NodeReport], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClusterInfo]:
        identity = await self.auth.identity_async(context)
        node_id = identity.name
        first = await request_iterator.__anext__()  # type: ignore[attr-defined]
        if not first.HasField("register"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first report must register")
        problem = self._claim_problem(self.policy, node_id, first.register.region)
        await self.audit.record(
            "node.join",
            outcome="refuse" if problem else "admit",
            rules=("node.region-claim",),
            reasons=(problem or f"{node_id} may claim region {first.register.region!r}",),
            identity=identity.uri,
            inputs=_digest(first.register.SerializeToString(deterministic=True)),
            policy=self.policy.version,
        )
        if problem is not None:
            log.warning("refusing node %s: %s", node_id, problem)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        stream = self.directory.join(node_id, first.register, identity.uri, time.monotonic())
        log.info(
            "node %s joined from %s (region %s)",
            node_id,
            first.register.address,
            first.register.region,
        )
        # A stream of the node still open (its link was cut, and it reconnected before the
        # deadline) is replaced: its reports no longer count, and it ends.
        for old in self.streams.values():
            if old.node_id == node_id:
                self._end(old, f"node {node_id} registered again")
        this = self.streams[stream] = NodeStreamState(node_id, context)
        self.changed.set()

        async def reports() -> None:
            async for report in request_iterator:
                self.directory.report(node_id, stream, report, time.monotonic())
                self.changed.set()

        loop = asyncio.get_running_loop()
        reader = loop.create_task(reports())
        ended = loop.create_task(this.ended.wait())
        try:
            sent = -1
            sent_policy = ""
            while not reader.done() and not this.ended.is_set():
                if self.directory.version != sent:
                    sent = self.directory.version
                    view = self.directory.view()
                    if self.signed.version != sent_policy:
                        sent_policy = self.signed.version
                        view.policy.CopyFrom(self.signed)
                    yield view
                self.changed.clear()
                wait = loop.create_task(self.changed.wait())
                await asyncio.wait({wait, reader, ended}, return_when=asyncio.FIRST_COMPLETED)
                wait.cancel()
                await asyncio.sleep(BROADCAST_INTERVAL)
            if this.ended.is_set():
                # The agent reconnects and registers again when it can.
                await context.abort(grpc.StatusCode.UNAVAILABLE, this.reason)
        finally:
            reader.cancel()
            ended.cancel()
            del self.streams[stream]
            # Declared lost once: not if the watchdog did already, nor for a stream the
            # node replaced, nor when the head itself stops.
            if not self.closing and self.directory.leave(node_id, stream):
                self.audit.record_nowait(
                    "node.loss",
                    outcome="lost",
                    rules=("node.stream-closed",),
                    reasons=(f"the stream of node {node_id} to the head closed",),
                    identity=identity.uri,
                    policy=self.policy.version,
                )
                log.info("node %s left", node_id)
                self.changed.set()

    def _end(self, stream: NodeStreamState, reason: str) -> None:
        if not stream.ended.is_set():
            stream.reason = reason
            stream.ended_at = time.monotonic()
            stream.ended.set()

    async def _abort(self, stream: NodeStreamState) -> None:
        stream.aborted = True
        log.warning("the stream of node %s did not end by itself: aborting it", stream.node_id)
        with contextlib.suppress(Exception):  # AbortError, once the status is sent
            await stream.context.abort(grpc.StatusCode.UNAVAILABLE, stream.reason)

    def declare_lost(self, now: float) -> list[str]:
        """Remove every node silent for longer than the deadline, record its loss and end
        its stream; returns their ids."""
        lost = []
        for node_id, silent, stream in self.directory.overdue(now, self.node_timeout):
            identity = self.directory.nodes[node_id].identity
            self.directory.leave(node_id, stream)
            reason = (
                f"no report from node {node_id} for {silent:.1f} s "
                f"(deadline {self.node_timeout:g} s)"
            )
            if stream == RESTORED:
                reason += " since the head started: it did not reconnect"
            self.audit.record_nowait(
                "node.loss",
                outcome="lost",
                rules=("node.heartbeat-deadline",),
                reasons=(reason,),
                identity=identity,
                policy=self.policy.version,
            )
            log.warning("node %s lost: %s", node_id, reason)
            if (open_stream := self.streams.get(stream)) is not None:
                self._end(open_stream, f"declared lost: {reason}")
            lost.append(node_id)
        if lost:
            self.changed.set()
        return lost

    async def watch_nodes(self) -> None:
        """The node-loss watchdog: declares lost the nodes that miss the deadline, for ever."""
        tick = min(1.0, self.node_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for stream in list(self.streams.values()):
                if stream.ended.is_set() and not stream.aborted and now - stream.ended_at >= tick:
                    task = asyncio.get_running_loop().create_task(self._abort(stream))
                    self._aborts.add(task)
                    task.add_done_callback(self._aborts.discard)
            self.declare_lost(now)

    def record_policy(self, text: str, version: str, applied_by: str) -> None:
        """Add an applied policy to the history in the store."""
        self.store.add_policy(PolicyVersion(version, text, time.time(), applied_by))

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

    async def LeaseBudget(
        self, request: pb.BudgetLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.BudgetLease:
        """A slice of a tenant's cluster-wide budget for the window; recorded before the
        agent gets it (a grant short of what was asked means the window's budget is out)."""
        identity = await self.auth.identity_async(context)
        policy = self.policy
        try:
            grant = self.leases.grant(
                policy, request.tenant, request.budget, request.want, time.time()
            )
        except UnknownBudgetError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if grant.limit:
            short = grant.granted < request.want
            await self.audit.record(
                "budget.lease",
                outcome="refuse" if short and not grant.granted else "allow",
                rules=("budget.exhausted" if short else "budget.lease",),
                reasons=(
                    f"node {identity.name} asked for {request.want:g} more {request.budget} of "
                    f"tenant {request.tenant!r} (it used {request.used:g} of its share): granted "
                    f"{grant.granted:g}; {grant.leased:g} of {grant.limit:g} leased in window "
                    f"{grant.window}",
                ),
                tenant=request.tenant,
                identity=identity.uri,
                policy=policy.version,
            )
        return pb.BudgetLease(
            granted=grant.granted,
            window=grant.window,
            window_seconds=grant.window_seconds,
            seconds_left=grant.seconds_left,
            limit=grant.limit,
            leased=grant.leased,
        )

    async def Status(self, request: pb.Empty, context: grpc.aio.ServicerContext) -> pb.ClusterInfo:
        identity = await self.auth.identity_async(context)
        view = self.directory.view()
        if identity.kind == "tenant":
            tenant = self.policy.tenant_of(f"tenant/{identity.name}")
            for node in view.nodes:
                only_own(node, tenant.name if tenant is not None else "")
        return view

    async def ApplyPolicy(
        self, request: pb.PolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignedPolicy:
        identity = await self.auth.identity_async(context)
        who = f"{identity.kind}/{identity.name}"
        if self.policy.role(who) != "operator":
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} is not an operator under policy {self.policy.version}",
            )
        inputs = _digest(request.text.encode())

        async def refuse(code: grpc.StatusCode, rule: str, details: str) -> pb.SignedPolicy:
            await self.audit.record(
                "policy.apply",
                outcome="refuse",
                rules=(rule,),
                reasons=tuple(details.splitlines()[:20]),
                identity=identity.uri,
                inputs=inputs,
                policy=self.policy.version,
            )
            context.set_code(code)
            context.set_details(details)
            return pb.SignedPolicy()

        try:
            policy = load_policy_text(request.text, request.filename or "<policy>")
        except PolicyError as e:
            log.warning("refused a policy from %s:\n%s", who, e.diagnostics())
            return await refuse(grpc.StatusCode.INVALID_ARGUMENT, "policy.invalid", e.diagnostics())
        # Never half-applied: a policy that disowns a live node's region is refused whole.
        problems = [
            problem
            for node in self.directory.nodes.values()
            if (problem := self._claim_problem(policy, node.node_id, node.region)) is not None
        ]
        if problems:
            return await refuse(
                grpc.StatusCode.FAILED_PRECONDITION, "policy.disowns-node", "\n".join(problems)
            )
        signed = sign_policy(policy, self.creds)
        if request.dry_run:
            return signed
        await self.audit.record(
            "policy.apply",
            outcome="apply",
            rules=("policy.valid",),
            reasons=(f"version {policy.version} applied by {who}",),
            identity=identity.uri,
            inputs=inputs,
            policy=policy.version,
        )
        self.record_policy(request.text, policy.version, who)
        self.policy, self.signed = policy, signed
        if self.state_dir is not None:
            save_policy(self.state_dir, request.text)
        log.info("policy version %s applied by %s", policy.version, who)
        self.directory.version += 1
        self.changed.set()
        return signed

    async def GetPolicy(
        self, request: pb.Empty, context: grpc.aio.ServicerContext
    ) -> pb.SignedPolicy:
        identity = await self.auth.identity_async(context)
        who = f"{identity.kind}/{identity.name}"
        if identity.kind != "tenant" or self.policy.open:
            return self.signed
        # A tenant sees the regions and its own part, not who else shares the cluster.
        tenant = self.policy.tenant_of(who)
        document = dict(self.policy.document)
        document["tenants"] = {tenant.name: document["tenants"][tenant.name]} if tenant else {}
        for key in ("nodes", "roles", "invariants"):  # invariants may name other tenants
            document.pop(key, None)
        return pb.SignedPolicy(version=self.policy.version, document=canonical_json(document))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


POLICY_FILE = "policy.yaml"


def save_policy(state_dir: Path, text: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{POLICY_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, state_dir / POLICY_FILE)


def initial_policy(path: Path | None, state_dir: Path | None) -> Policy:
    """The policy the head starts under: --policy, else the last one applied, else open."""
    if path is not None:
        return load_policy(path)
    if state_dir is not None and (state_dir / POLICY_FILE).exists():
        return load_policy(state_dir / POLICY_FILE)
    return OPEN_POLICY


async def serve(args: argparse.Namespace) -> None:
    creds = load_credentials(args.certs, args.identity)
    policy = initial_policy(args.policy, args.state_dir)
    if args.policy is not None and args.state_dir is not None:
        save_policy(args.state_dir, args.policy.read_text())
    server, auth, address = secure_server(args.listen, creds, ALLOWED_KINDS)
    service = HeadService(auth, creds, policy, args.state_dir, args.node_timeout)
    if args.policy is not None:
        history = service.store.policies()
        text = args.policy.read_text()
        if not history or history[-1].text != text:
            service.record_policy(text, policy.version, f"--policy {args.policy}")
    metrics = reporting.start_metrics(args, "head", creds.identity.name)
    if metrics is not None:
        directory = service.directory
        metrics.gauge(
            "fabric_nodes", "Nodes registered with the head.", lambda: len(directory.nodes)
        )
    auth.on_refusal = lambda reason: service.audit.record_nowait(
        "cert.refuse", outcome="refuse", rules=("tls.peer",), reasons=(reason,)
    )
    rpc.add_HeadServicer_to_server(service, server)
    await server.start()
    watchdog = asyncio.get_running_loop().create_task(service.watch_nodes())
    write_ready_file(args.ready_file, address=address, node_id=creds.identity.name)
    log.info(
        "head serving on %s under policy %s (%d nodes of the last run awaited, node-loss "
        "deadline %g s)",
        address,
        policy.version,
        len(service.directory.nodes),
        service.node_timeout,
    )
    await until_terminated()
    service.closing = True
    watchdog.cancel()
    await server.stop(grace=0.5)
    service.audit.close()
    service.store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fabric._head", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:6380", help="HOST:PORT to serve on")
    add_credential_args(parser)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--state-dir", type=Path, help="where the head keeps its state")
    parser.add_argument("--policy", type=Path, help="a policy YAML file to start under")
    parser.add_argument(
        "--node-timeout",
        type=float,
        default=NODE_TIMEOUT,
        metavar="SECONDS",
        help="declare a node lost when it has not reported for this long (agents report "
        "every second); after a restart, how long the nodes of the last run have to "
        "reconnect (default: %(default)s)",
    )
    reporting.add_args(parser)
    args = parser.parse_args(argv)
    if not args.node_timeout > 0:
        fail(f"--node-timeout must be a positive number of seconds, not {args.node_timeout}")
    setup_logging(f"head[{args.identity}]")
    try:
        reporting.start_tracing(args, "head", args.identity.partition("/")[2])
        asyncio.run(serve(args))
    except FabricError as e:
        fail(e.diagnostics())
    except OSError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
