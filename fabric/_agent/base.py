"""What every layer of the node agent shares: its state, its collaborators' interfaces,
the error values it answers with, and replies to sessions.

The agent is one object on one asyncio loop (no locks: a handler runs to completion before
the next message is looked at), built in layers by role: objects (`objects.py`), a task's
arguments and results (`results.py`), task placement and dispatch (`dispatch.py`), hosted
actors (`actors.py`), placement groups (`bundles.py`), and sessions and peers (`node.py`).
Network and process I/O sit behind `Peers`, `Directory` and the worker launcher; every
decision is journaled for the audit log (`recorder.py`, `journal.py`) and the messages that
act on it wait until it is durable (`durability.py`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from fabric import _metrics
from fabric._agent.recorder import Recorder
from fabric._agent.scheduler import LocalQueues, Shape
from fabric._agent.state import (
    ActorEntry,
    ObjEntry,
    Session,
    TaskEntry,
)
from fabric._agent.workers import Worker, WorkerLauncher
from fabric._object_store import ObjectStore
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import (
    KIND_ERROR,
    SerializationError,
    read_header,
)
from fabric.policy import Decision
from fabric.policy._admission import Usage, quota_allows
from fabric.policy._model import OPEN_POLICY, Policy

if TYPE_CHECKING:
    from fabric._agent.lineage import RemoteActor

log = logging.getLogger("fabric._agent.node")

E = pb.ErrorInfo
REFUSED_ACTORS_KEPT = 4096
Key = tuple[str, bytes]  # (tenant, id)
MAX_RETURNS = 10_000
MAX_HOPS = 2
MAX_ACTOR_HOPS = 3  # caller's node -> creator's node -> host
PIPELINE_DEPTH = 2
PLACING_RETRY = 0.1  # seconds
SENT_MEMORY = 0.5  # seconds a forward counts against a peer's reported free resources
JOIN_GRACE = 3.0  # seconds after the view last grew during which refusals wait
MAX_WORKERS_PER_TENANT = 256  # a hard ceiling per node, blocked workers included
POLICY_VERSIONS_KEPT = 16  # work admitted under an older policy keeps deciding under it


class Peers(Protocol):
    def send(self, node_id: str, message: pb.PeerMessage, needs: int = 0) -> None:
        """Queue `message`; with `needs`, it leaves once that many audit records are
        durable (it acts on the decision recorded there)."""

    async def fetch(self, node_id: str, tenant: str, object_id: bytes) -> pb.ObjectLocation: ...


class Directory(Protocol):
    """The head's actor directory, and its leases of tenants' cluster-wide budgets."""

    async def register_actor(self, info: pb.ActorInfo) -> pb.ErrorInfo | None: ...

    async def remove_actor(self, tenant: str, actor_id: bytes) -> None: ...

    async def lookup_actor(self, tenant: str, namespace: str, name: str) -> pb.ActorInfo | None: ...

    async def lease_budget(
        self, tenant: str, budget: str, want: float, used: float
    ) -> pb.BudgetLease: ...


def error_info(kind: pb.ErrorInfo.Kind, message: str) -> pb.ErrorInfo:
    return pb.ErrorInfo(kind=kind, message=message)


def actor_gone(actor_id: bytes) -> pb.ErrorInfo:
    # Same words whether it died, never existed or is another tenant's.
    return error_info(E.ACTOR_DIED, f"actor {actor_id.hex()} is not alive")


def unknown_object(object_id: bytes) -> pb.ErrorInfo:
    # The same words whether the object never existed, was freed or belongs to another
    # tenant: a caller must not learn which.
    return error_info(
        E.UNKNOWN_OBJECT, f"ObjectRef({object_id.hex()}) is unknown (freed, or never yours)"
    )


def refusal(kind: pb.ErrorInfo.Kind, decision: Decision) -> pb.ErrorInfo:
    """The error a refused request gets: why, and the rule and policy that decided it."""
    _metrics.residency_refused(decision.rule_ids)
    return error_info(
        kind,
        f"{'; '.join(decision.reasons)} [rule {', '.join(decision.rule_ids)}, "
        f"policy {decision.policy_version}]",
    )


def blob_error_summary(blob: bytes) -> str:
    """The readable summary an error blob carries, without unpickling anything."""
    try:
        header = read_header(blob)
        if header.kind != KIND_ERROR or not header.buffers:
            return "error"
        offset, length = header.buffers[0]
        summary = json.loads(bytes(blob[offset : offset + length]))
        return f"{summary.get('type')}: {summary.get('message')}"
    except (SerializationError, ValueError, KeyError, TypeError):
        return "error"


class AgentBase:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        labels: dict[str, str],
        resources: dict[str, float],
        store: ObjectStore,
        launcher: WorkerLauncher,
        peers: Peers,
        directory: Directory,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.labels = labels
        self.total = dict(resources)
        self.available = dict(resources)
        self.store = store
        self.launcher = launcher
        self.peers = peers
        self.directory = directory
        self.sessions: dict[int, Session] = {}
        self._next_session = 0
        # Every table is keyed by (tenant, id): an id another tenant knows, guesses or
        # forges names nothing of ours, so it can neither reach nor squat our entries.
        self.objects: dict[Key, ObjEntry] = {}
        self.fetches: dict[Key, asyncio.Task[None]] = {}  # pulls of objects under way
        self.tasks: dict[Key, TaskEntry] = {}
        self.queues = LocalQueues()  # placed here, not yet running
        self.placing: list[TaskEntry] = []  # feasible only elsewhere, no capacity there now
        self.idle: dict[str, list[Worker]] = {}  # tenant -> idle pool workers
        self.functions: dict[tuple[str, bytes], bytes] = {}
        self.workers: dict[str, list[Worker]] = {}  # tenant -> pool (not actors)
        self.starting: dict[str, int] = {}
        self.actors: dict[Key, ActorEntry] = {}  # hosted here
        self.actor_locations: dict[Key, str] = {}  # actors created through this node
        self.actor_pending: dict[Key, list[TaskEntry]] = {}  # calls before placement
        # Actors whose creation was refused: their calls fail with the refusal (the newest
        # REFUSED_ACTORS_KEPT are kept).
        self.refused_actors: collections.OrderedDict[Key, pb.ErrorInfo] = collections.OrderedDict()
        # Actors created through this node that live on another: their creations, to start
        # them again elsewhere if that node is lost (see lineage.py).
        self.remote_actors: dict[Key, RemoteActor] = {}
        # What we sent each peer lately, counted against its reported free resources:
        # (our forward's number, or 0 for a reservation; until when; what it holds).
        self.sent: dict[str, list[tuple[int, float, Shape]]] = {}
        self.forwarded: dict[str, int] = {}  # tasks sent to each peer so far
        self.accepted: dict[str, int] = {}  # tasks each peer has sent us so far
        self.nodes: dict[str, pb.NodeInfo] = {}
        self.view_version = 0
        self.max_workers_per_tenant = max(4, int(resources.get("CPU", 1)) * 4)
        # Every decision is handed here before it is acted on (the audit seam).
        self.on_decision: Callable[[Decision, pb.TaskSpec | None], None] | None = None
        # The policy bundle in force, and recent ones: work keeps the version it was
        # admitted under.
        self.policy: Policy = OPEN_POLICY
        self.policies: dict[str, Policy] = {OPEN_POLICY.version: OPEN_POLICY}
        # Journals every decision for the audit log (None: not recorded, e.g. in unit tests).
        self.recorder: Recorder | None = None
        self.usage: dict[str, Usage] = {}  # per tenant: admitted here and unfinished
        self.held: dict[str, dict[str, float]] = {}  # per tenant: held by running work
        self.on_load_change: Callable[[], None] = lambda: None
        self._dispatch_scheduled = False
        self._placing_timer = False
        self.local_socket = ""  # set when the local channel serves
        # Until then, a request no node in the view can run waits for nodes still joining
        # instead of being refused (see Dispatch._route); update_cluster extends it.
        self.joining_until = time.monotonic() + JOIN_GRACE

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.policies.pop(policy.version, None)
        self.policies[policy.version] = policy
        while len(self.policies) > POLICY_VERSIONS_KEPT:
            del self.policies[next(iter(self.policies))]
        log.info("policy version %s in force", policy.version)

    def _policy_of(self, spec: pb.TaskSpec) -> Policy:
        return self.policies.get(spec.policy_version) or self.policy

    def _record(
        self,
        decision: Decision,
        spec: pb.TaskSpec | None = None,
        *,
        kind: str = "place",
        tenant: str = "",
        objects: tuple[bytes, ...] = (),
        parent: str = "",
        session: Session | None = None,
    ) -> str:
        """Journal `decision` before anything acts on it; returns its audit entry id. The
        subject's certificate is named when the decision is about a driver's request."""
        if self.on_decision is not None:
            self.on_decision(decision, spec)
        if self.recorder is None:
            return ""
        driver = session is not None and session.worker is None
        identity = session.identity if driver and session is not None else ""
        fingerprint = session.fingerprint if driver and session is not None else ""
        if spec is None:
            # Its answer leaves behind the audit gate (an answer acts on what it says).
            return self.recorder.record(
                decision,
                kind=kind,
                tenant=tenant,
                identity=identity,
                fingerprint=fingerprint,
                objects=[o.hex() for o in objects],
            )
        return self.recorder.record(
            decision,
            kind=kind,
            tenant=spec.tenant,
            identity=identity,
            fingerprint=fingerprint,
            job=spec.job_id.hex(),
            task=spec.task_id.hex(),
            actor=spec.actor_id.hex(),
            function=spec.function_digest.hex(),
            parent=parent,
        )

    def _release_admission(self, task: TaskEntry) -> None:
        if task.admitted:
            task.admitted = False
            usage = self.usage.get(task.spec.tenant)
            if usage is not None:
                usage.tasks -= 1
                usage.add(task.spec.resources, -1)

    def _hold(self, tenant: str, shape: Shape, sign: int) -> None:
        held = self.held.setdefault(tenant, {})
        for name, amount in shape:
            held[name] = held.get(name, 0.0) + sign * amount

    def _quota_allows(self, tenant: str, shape: Shape) -> bool:
        policy = self.policy
        if policy.open:
            return True
        return quota_allows(policy, tenant, self.held.get(tenant, {}), shape)

    def _region_of(self, node_id: str) -> str:
        if node_id == self.node_id:
            return self.region
        info = self.nodes.get(node_id)
        return info.region if info is not None else ""

    def _reply(self, session: Session, request_id: int, reply: pb.Reply) -> None:
        if request_id:
            session.send(pb.ServerMessage(request_id=request_id, reply=reply))

    def _reply_error(
        self, session: Session, request_id: int, kind: pb.ErrorInfo.Kind, message: str
    ) -> None:
        if request_id:
            self._reply(session, request_id, pb.Reply(error=error_info(kind, message)))
        else:
            log.warning("session %d (%s): %s", session.session_id, session.tenant, message)
