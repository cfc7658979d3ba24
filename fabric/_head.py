"""The head: cluster directory (nodes and their load, named actors). Not on the task path.

`python -m fabric._head` runs it (normally started by `fabric start --head`). Agents
register over a mutual-TLS stream whose certificate names the node: a node's id is never a
field it sends, so one node cannot report for another.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from fabric import _reporting as reporting
from fabric._audit_service import ALLOWED_KINDS as AUDIT_KINDS
from fabric._audit_service import AuditRpcs, HeadAudit
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
        if (
            dict(node.available) == dict(report.available)
            and dict(node.total) == dict(report.total)
            and (node.running_tasks, node.queued_tasks, node.workers)
            == (report.running_tasks, report.queued_tasks, report.workers)
            and dict(node.tenant_load) == dict(report.tenant_load)
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


class HeadService(AuditRpcs, rpc.HeadServicer):
    def __init__(
        self,
        auth: PeerAuthenticator,
        creds: Credentials,
        policy: Policy = OPEN_POLICY,
        state_dir: Path | None = None,
    ) -> None:
        self.auth = auth
        self.creds = creds
        self.directory = ClusterDirectory()
        self.changed = asyncio.Event()
        self.state_dir = state_dir
        self.policy = policy
        self.signed = sign_policy(policy, creds)
        self.audit = HeadAudit.open(state_dir, origin=f"{creds.identity.trust_domain}/audit")
        self.leases = BudgetLeases()

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
            sent_policy = ""
            while not reader.done():
                if self.directory.version != sent:
                    sent = self.directory.version
                    view = self.directory.view()
                    if self.signed.version != sent_policy:
                        sent_policy = self.signed.version
                        view.policy.CopyFrom(self.signed)
                    yield view
                self.changed.clear()
                wait = asyncio.get_running_loop().create_task(self.changed.wait())
                await asyncio.wait({wait, reader}, return_when=asyncio.FIRST_COMPLETED)
                wait.cancel()
                await asyncio.sleep(BROADCAST_INTERVAL)
        finally:
            reader.cancel()
            self.audit.record_nowait(
                "node.loss",
                outcome="lost",
                rules=("node.stream-closed",),
                reasons=(f"the stream of node {node_id} to the head closed",),
                identity=identity.uri,
                policy=self.policy.version,
            )
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
    service = HeadService(auth, creds, policy, args.state_dir)
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
    write_ready_file(args.ready_file, address=address, node_id=creds.identity.name)
    log.info("head serving on %s under policy %s", address, policy.version)
    await until_terminated()
    await server.stop(grace=0.5)
    service.audit.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fabric._head", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:6380", help="HOST:PORT to serve on")
    add_credential_args(parser)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--state-dir", type=Path, help="where the head keeps its state")
    parser.add_argument("--policy", type=Path, help="a policy YAML file to start under")
    reporting.add_args(parser)
    args = parser.parse_args(argv)
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
