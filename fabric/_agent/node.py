"""The node agent's rules: sessions, tasks, objects and actors on one node.

Everything here runs on the agent's single asyncio loop, so no locks: a handler runs to
completion before the next message is looked at. Network and process I/O sit behind the
small `Peers` and `Directory` interfaces and the worker launcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from fabric._agent.scheduler import LocalQueues, Shape, fits, how_many_fit, shape_of
from fabric._agent.state import (
    ActorEntry,
    ActorState,
    ObjEntry,
    ObjState,
    Session,
    TaskEntry,
    TaskState,
    return_id,
)
from fabric._agent.workers import Worker, WorkerLauncher, WorkerState
from fabric._object_store import ObjectStore, ObjectStoreError
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import (
    INLINE_THRESHOLD,
    KIND_ERROR,
    SerializationError,
    blob_kind,
    read_header,
)
from fabric.policy import Decision, NodeView, Outcome, PlacementRequest, decide_placement

log = logging.getLogger(__name__)

E = pb.ErrorInfo
Key = tuple[str, bytes]  # (tenant, id)
MAX_RETURNS = 10_000
MAX_HOPS = 2
MAX_ACTOR_HOPS = 3  # caller's node -> creator's node -> host
PIPELINE_DEPTH = 2
PLACING_RETRY = 0.1  # seconds
SENT_MEMORY = 0.5  # seconds a forward counts against a peer's reported free resources
MAX_WORKERS_PER_TENANT = 256  # a hard ceiling per node, blocked workers included


class Peers(Protocol):
    def send(self, node_id: str, message: pb.PeerMessage) -> None: ...

    async def fetch(self, node_id: str, tenant: str, object_id: bytes) -> pb.ObjectLocation: ...


class Directory(Protocol):
    """The head's actor directory."""

    async def register_actor(self, info: pb.ActorInfo) -> pb.ErrorInfo | None: ...

    async def remove_actor(self, tenant: str, actor_id: bytes) -> None: ...

    async def lookup_actor(self, tenant: str, namespace: str, name: str) -> pb.ActorInfo | None: ...


def _err(kind: pb.ErrorInfo.Kind, message: str) -> pb.ErrorInfo:
    return pb.ErrorInfo(kind=kind, message=message)


def _actor_gone(actor_id: bytes) -> pb.ErrorInfo:
    # Same words whether it died, never existed or is another tenant's.
    return _err(E.ACTOR_DIED, f"actor {actor_id.hex()} is not alive")


def _unknown(object_id: bytes) -> pb.ErrorInfo:
    # The same words whether the object never existed, was freed or belongs to another
    # tenant: a caller must not learn which.
    return _err(
        E.UNKNOWN_OBJECT, f"ObjectRef({object_id.hex()}) is unknown (freed, or never yours)"
    )


def _blob_error_summary(blob: bytes) -> str:
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


class NodeAgent:
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
        self.sent: dict[str, list[tuple[float, Shape]]] = {}  # recent forwards per peer
        self.nodes: dict[str, pb.NodeInfo] = {}
        self.view_version = 0
        self.max_workers_per_tenant = max(4, int(resources.get("CPU", 1)) * 4)
        # Every placement decision is handed here before it is acted on (the audit seam).
        self.on_decision: Callable[[Decision, pb.TaskSpec], None] | None = None
        self.on_load_change: Callable[[], None] = lambda: None
        self._dispatch_scheduled = False
        self._placing_timer = False

    # ================================================================= sessions

    def open_session(
        self, tenant: str, namespace: str, identity: str, send: Callable[[pb.ServerMessage], None]
    ) -> Session:
        self._next_session += 1
        session = Session(
            session_id=self._next_session,
            tenant=tenant,
            namespace=namespace or "default",
            job_id=os.urandom(4),
            send=send,
            identity=identity,
        )
        self.sessions[session.session_id] = session
        if (
            not identity.startswith("worker:")
            and not self.workers.get(tenant)
            and not self.starting.get(tenant)
        ):
            self._spawn_pool_worker(tenant)  # warm: the first task should not wait for a fork
        return session

    def welcome(self, session: Session) -> pb.Welcome:
        directory = self.store.tenant_directory(session.tenant)
        return pb.Welcome(
            node_id=self.node_id,
            tenant=session.tenant,
            job_id=session.job_id,
            store_path=str(directory.directory),
            namespace=session.namespace,
            region=self.region,
        )

    def close_session(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.session_id, None)
        for object_id in list(session.held):
            entry = self.objects.get((session.tenant, object_id))
            if entry is not None:
                entry.holders.discard(session.session_id)
                entry.subscribers.discard(session.session_id)
                self._maybe_free(object_id, entry)
        session.held.clear()
        # Actors fate-share with the driver that created them unless detached.
        for actor_id, node in session.owned_actors.items():
            self._route_kill(
                pb.KillActor(
                    actor_id=actor_id, no_restart=True, actor_node=node, tenant=session.tenant
                ),
                "its owner exited",
            )
        session.owned_actors.clear()

    # ================================================================= client messages

    def handle_client(self, session: Session, message: pb.ClientMessage) -> None:
        which = message.WhichOneof("body")
        try:
            if which == "submit":
                self._submit(session, message.submit, message.request_id)
            elif which == "refs":
                self._ref_update(session, message.refs)
            elif which == "put":
                self._put(session, message.put)
            elif which == "subscribe":
                for object_id in message.subscribe.object_ids:
                    self._subscribe(session, object_id)
            elif which == "blocked":
                self._blocked(session, message.blocked)
            elif which == "kill":
                kill = message.kill
                kill.tenant = session.tenant
                self._route_kill(kill, "killed by fabric.kill")
            elif which == "cancel":
                cancel = message.cancel
                cancel.tenant = session.tenant
                self._cancel(cancel)
            elif which == "get_actor":
                asyncio.get_running_loop().create_task(
                    self._get_actor(session, message.request_id, message.get_actor)
                )
            elif which == "cluster_info":
                self._reply(session, message.request_id, pb.Reply(cluster=self.cluster_info()))
            elif which == "fetch":
                self._fetch_inline(session, message.request_id, message.fetch.object_id)
            else:
                self._reply_error(
                    session, message.request_id, E.INVALID_REQUEST, f"unexpected message {which!r}"
                )
        except (ObjectStoreError, SerializationError) as e:
            self._reply_error(session, message.request_id, E.INVALID_REQUEST, str(e))

    def _reply(self, session: Session, request_id: int, reply: pb.Reply) -> None:
        if request_id:
            session.send(pb.ServerMessage(request_id=request_id, reply=reply))

    def _reply_error(
        self, session: Session, request_id: int, kind: pb.ErrorInfo.Kind, message: str
    ) -> None:
        if request_id:
            self._reply(session, request_id, pb.Reply(error=_err(kind, message)))
        else:
            log.warning("session %d (%s): %s", session.session_id, session.tenant, message)

    # ---------------------------------------------------------------- objects

    def _owned_entry(self, session: Session, object_id: bytes) -> ObjEntry | None:
        return self.objects.get((session.tenant, object_id))

    def _ref_update(self, session: Session, update: pb.RefUpdate) -> None:
        sid = session.session_id
        for object_id in update.add:
            entry = self._owned_entry(session, object_id)
            if entry is not None:
                entry.holders.add(sid)
                session.held.add(object_id)
        for object_id in update.release:
            entry = self._owned_entry(session, object_id)
            session.held.discard(object_id)
            if entry is not None:
                entry.holders.discard(sid)
                entry.subscribers.discard(sid)
                self._maybe_free(object_id, entry)

    def _put(self, session: Session, put: pb.PutObject) -> None:
        object_id = put.object_id
        if len(object_id) != 20 or (session.tenant, object_id) in self.objects:
            raise ObjectStoreError(f"invalid or duplicate object id {object_id.hex()}")
        entry = ObjEntry(tenant=session.tenant, state=ObjState.READY)
        if put.WhichOneof("value") == "inline_blob":
            read_header(put.inline_blob)  # fail early on a malformed blob
            entry.inline = put.inline_blob
        else:
            entry.stored_size = self.store.adopt(session.tenant, object_id, put.sealed_size)
        entry.holders.add(session.session_id)
        session.held.add(object_id)
        self.objects[(session.tenant, object_id)] = entry
        self._contain(entry, put.contained_ids)
        self.on_load_change()

    def _contain(self, entry: ObjEntry, contained: Iterable[bytes]) -> None:
        for inner_id in contained:
            inner = self.objects.get((entry.tenant, inner_id))
            if inner is not None:
                inner.pins += 1
                entry.contained.append(inner_id)

    def _subscribe(self, session: Session, object_id: bytes) -> None:
        entry = self._owned_entry(session, object_id)
        if entry is None:
            session.send(
                pb.ServerMessage(
                    ready=pb.ObjectReady(object_id=object_id, error=_unknown(object_id))
                )
            )
            return
        entry.holders.add(session.session_id)
        session.held.add(object_id)
        if entry.local:
            self._push(session, object_id, entry)
        else:
            entry.subscribers.add(session.session_id)
            self._ensure_fetch(object_id, entry)

    def _push(self, session: Session, object_id: bytes, entry: ObjEntry) -> None:
        ready = pb.ObjectReady(object_id=object_id)
        if entry.error is not None:
            ready.error.CopyFrom(entry.error)
        elif entry.inline is not None:
            ready.inline_blob = entry.inline
        else:
            ready.stored_size = entry.stored_size
        session.send(pb.ServerMessage(ready=ready))

    def _fetch_inline(self, session: Session, request_id: int, object_id: bytes) -> None:
        entry = self._owned_entry(session, object_id)
        if entry is None or not entry.local:
            self._reply(session, request_id, pb.Reply(error=_unknown(object_id)))
            return
        if entry.error is not None:
            self._reply(session, request_id, pb.Reply(error=entry.error))
            return
        if entry.inline is not None:
            blob = entry.inline
        else:
            blob = b"".join(bytes(c) for c in self.store.iter_chunks(entry.tenant, object_id))
        self._reply(session, request_id, pb.Reply(inline_blob=blob))

    def _object_ready(self, object_id: bytes, entry: ObjEntry) -> None:
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            waiter()
        if entry.subscribers:
            subscribers, entry.subscribers = entry.subscribers, set()
            for sid in subscribers:
                session = self.sessions.get(sid)
                if session is not None:
                    self._push(session, object_id, entry)
        self._maybe_free(object_id, entry)

    def _ensure_fetch(self, object_id: bytes, entry: ObjEntry) -> None:
        """Pull an object that lives (or will live) on another node into this one."""
        if entry.local or entry.fetching or not entry.location or entry.location == self.node_id:
            return
        if entry.state is ObjState.PENDING and not entry.location:
            return
        entry.fetching = True
        asyncio.get_running_loop().create_task(self._fetch(object_id, entry))

    async def _fetch(self, object_id: bytes, entry: ObjEntry) -> None:
        try:
            location = await self.peers.fetch(entry.location, entry.tenant, object_id)
            self._fill(entry, object_id, location)
        except Exception as e:
            log.warning("fetching %s from %s failed: %s", object_id.hex(), entry.location, e)
            entry.error = _err(
                E.OBJECT_LOST,
                f"could not fetch ObjectRef({object_id.hex()}) from node {entry.location}: {e}",
            )
        entry.fetching = False
        entry.state = ObjState.READY
        self._object_ready(object_id, entry)

    def _fill(self, entry: ObjEntry, object_id: bytes, location: pb.ObjectLocation) -> None:
        which = location.WhichOneof("value")
        if which == "inline_blob":
            entry.inline = location.inline_blob
        elif which == "error":
            entry.error = location.error
        elif which == "stored_size":
            # Stored on this node by the peer fetch.
            entry.stored_size = location.stored_size

    def _maybe_free(self, object_id: bytes, entry: ObjEntry) -> None:
        if entry.holders or entry.pins or entry.subscribers or entry.state is ObjState.PENDING:
            return
        if entry.remote_owner:
            if entry.cache and not entry.fetching:
                self._drop_copy(object_id, entry)  # nothing here uses it any more
            return  # a copy of a result: its owner node decides when it goes
        self._delete(object_id, entry)
        for node in entry.copies | ({entry.location} if entry.location else set()):
            if node != self.node_id:
                self.peers.send(
                    node,
                    pb.PeerMessage(
                        free=pb.ObjectLocation(object_id=object_id, tenant=entry.tenant)
                    ),
                )

    def _drop_copy(self, object_id: bytes, entry: ObjEntry) -> None:
        self.objects.pop((entry.tenant, object_id), None)
        if entry.stored_size >= 0:
            self.store.delete(entry.tenant, object_id)

    def _delete(self, object_id: bytes, entry: ObjEntry) -> None:
        self.objects.pop((entry.tenant, object_id), None)
        if entry.stored_size >= 0:
            self.store.delete(entry.tenant, object_id)
        for inner_id in entry.contained:
            inner = self.objects.get((entry.tenant, inner_id))
            if inner is not None:
                inner.pins -= 1
                self._maybe_free(inner_id, inner)

    # ---------------------------------------------------------------- submit and placement

    def _submit(self, session: Session, spec: pb.TaskSpec, request_id: int) -> None:
        tenant = session.tenant
        spec.tenant = tenant
        spec.owner_node = self.node_id
        spec.job_id = session.job_id
        spec.caller_id = session.session_id.to_bytes(8, "big")
        spec.hops = 0
        if spec.function_blob:
            self.functions[(tenant, spec.function_digest)] = spec.function_blob
            spec.ClearField("function_blob")
        problem = _validate_spec(spec) or self._collision(tenant, spec)
        if (
            problem is None
            and spec.kind == pb.NORMAL_TASK
            and ((tenant, spec.function_digest) not in self.functions)
        ):
            problem = "unknown function digest: send the function body with its first task"
        if problem is not None:
            # Nothing is recorded: the refused ids may belong to entries that stand.
            error = _err(E.INVALID_REQUEST, problem)
            self._reply(session, request_id, pb.Reply(error=error))
            for index in range(min(spec.num_returns, MAX_RETURNS)):
                session.send(
                    pb.ServerMessage(
                        ready=pb.ObjectReady(object_id=return_id(spec.task_id, index), error=error)
                    )
                )
            return
        task = TaskEntry(spec, origin_session=session.session_id)
        task.retries_left = (
            spec.max_retries
            if spec.kind == pb.NORMAL_TASK
            else (spec.actor_options.max_task_retries if spec.kind == pb.ACTOR_TASK else 0)
        )
        for object_id in task.return_ids:
            entry = ObjEntry(tenant=tenant, producer=spec.task_id)
            entry.holders.add(session.session_id)
            entry.subscribers.add(session.session_id)
            session.held.add(object_id)
            self.objects[(tenant, object_id)] = entry
        self.tasks[(tenant, spec.task_id)] = task
        bad_arg = self._pin_args(task)
        if bad_arg is not None:
            self._reply(session, request_id, pb.Reply(error=bad_arg))
            self._fail(task, bad_arg)
            return
        if spec.kind == pb.ACTOR_CREATION:
            if not spec.actor_options.detached:
                session.owned_actors[spec.actor_id] = ""
            self.actor_pending[(tenant, spec.actor_id)] = []
            asyncio.get_running_loop().create_task(self._create_actor(session, task, request_id))
            return
        self._reply(session, request_id, pb.Reply())
        self._route(task)

    def _collision(self, tenant: str, spec: pb.TaskSpec) -> str | None:
        """A task or actor id already in use by this tenant (reuse would overwrite it)."""
        if (tenant, spec.task_id) in self.tasks or any(
            (tenant, return_id(spec.task_id, i)) in self.objects for i in range(spec.num_returns)
        ):
            return f"task id {spec.task_id.hex()} is already in use"
        key = (tenant, spec.actor_id)
        if spec.kind == pb.ACTOR_CREATION and (
            key in self.actors or key in self.actor_pending or key in self.actor_locations
        ):
            return f"actor id {spec.actor_id.hex()} is already in use"
        return None

    async def _create_actor(self, session: Session, task: TaskEntry, request_id: int) -> None:
        spec = task.spec
        options = spec.actor_options
        if options.name:
            options.namespace = options.namespace or session.namespace
            info = pb.ActorInfo(
                actor_id=spec.actor_id,
                name=options.name,
                namespace=options.namespace,
                node_id="",
                state="pending",
                class_name=options.class_name,
                handle_meta=options.handle_meta,
                tenant=session.tenant,
            )
            error = await self.directory.register_actor(info)
            if error is not None:
                self._reply(session, request_id, pb.Reply(error=error))
                session.owned_actors.pop(spec.actor_id, None)
                self._fail(task, error)
                self._actor_placed(spec.tenant, spec.actor_id, "")
                return
        self._reply(session, request_id, pb.Reply())
        self._route(task)

    def _pin_args(self, task: TaskEntry) -> pb.ErrorInfo | None:
        """Pin every object argument for the task's lifetime; on a bad ref, unpin what was
        pinned and return the error (the caller fails the task)."""
        tenant = task.spec.tenant
        for arg in task.spec.args:
            if arg.WhichOneof("value") != "object_id":
                continue
            object_id = arg.object_id
            key = (tenant, object_id)
            entry = self.objects.get(key)
            if (
                entry is None
                and arg.owner_node
                and arg.owner_node != self.node_id
                and (arg.owner_node in self.nodes)
            ):
                # A ref to an object on another node: a local copy, fetched when needed.
                entry = ObjEntry(
                    tenant=tenant,
                    state=ObjState.UNKNOWN,
                    location=arg.owner_node,
                    remote_owner=arg.owner_node,
                    cache=True,
                )
                self.objects[key] = entry
            if entry is None:
                self._unpin_args(task)
                return _unknown(object_id)
            entry.pins += 1
            task.pinned.append(object_id)
        return None

    def _unpin_args(self, task: TaskEntry) -> None:
        pinned, task.pinned = task.pinned, []
        for object_id in pinned:
            entry = self.objects.get((task.spec.tenant, object_id))
            if entry is not None:
                entry.pins -= 1
                self._maybe_free(object_id, entry)

    def _node_views(self) -> list[NodeView]:
        free = self.queues.free(self.available)
        views = [NodeView(self.node_id, self.region, self.total, free, True, self.labels)]
        for info in self.nodes.values():
            if info.node_id != self.node_id:
                views.append(
                    NodeView(
                        info.node_id,
                        info.region,
                        dict(info.total),
                        self._remote_free(info),
                        info.alive,
                        dict(info.labels),
                    )
                )
        return views

    def _remote_free(self, info: pb.NodeInfo) -> dict[str, float]:
        """A peer's free resources as its last report said, less what we sent it since:
        reports lag, and one burst must not all land on the node that looked free."""
        free = dict(info.available)
        sent = self.sent.get(info.node_id)
        if sent:
            now = time.monotonic()
            while sent and sent[0][0] < now:
                sent.pop(0)
            for _, resources in sent:
                for name, amount in resources:
                    free[name] = free.get(name, 0.0) - amount
        return free

    def _note_sent(self, node_id: str, resources: Shape) -> None:
        self.sent.setdefault(node_id, []).append((time.monotonic() + SENT_MEMORY, resources))

    def _route(self, task: TaskEntry) -> None:
        spec = task.spec
        if spec.kind == pb.ACTOR_TASK:
            self._route_actor_call(task)
            return
        request = PlacementRequest(
            tenant=spec.tenant,
            task_id=spec.task_id,
            resources=dict(spec.resources),
            local_node_id=self.node_id,
            # A forwarded task may spill on once more (the sender's view was stale),
            # never back and forth for ever.
            pinned_node_id=self.node_id if spec.hops >= MAX_HOPS else None,
            excluded_node_ids=frozenset((task.origin_node,)) if task.origin_node else frozenset(),
        )
        decision = decide_placement(request, self._node_views(), view_version=self.view_version)
        if self.on_decision is not None:
            self.on_decision(decision, spec)
        if decision.node_id == self.node_id and not (
            decision.outcome is Outcome.QUEUE and spec.kind == pb.ACTOR_CREATION
        ):
            self._place_here(task)  # runs here now, or waits here for local capacity
        elif decision.outcome is Outcome.PLACE and decision.node_id:
            self._forward(task, decision.node_id)
        elif decision.outcome is Outcome.QUEUE:
            task.state = TaskState.PLACING
            self.placing.append(task)
            self._retry_placing_later()
        else:
            self._fail(task, _err(E.PLACEMENT_REFUSED, "; ".join(decision.reasons)))
        if spec.kind == pb.ACTOR_CREATION and (
            decision.node_id or decision.outcome is Outcome.REFUSE
        ):
            # Calls made before placement follow the actor now that it has a place.
            self._actor_placed(spec.tenant, spec.actor_id, decision.node_id or "")

    def _route_actor_call(self, task: TaskEntry) -> None:
        actor_id = task.spec.actor_id
        key = (task.spec.tenant, actor_id)
        if key in self.actors:
            self._actor_call(task)
            return
        pending = self.actor_pending.get(key)
        if pending is not None:
            pending.append(task)  # the actor is not placed yet; keep submission order
            return
        node = self.actor_locations.get(key) or task.spec.actor_node
        if node and node != self.node_id and task.spec.hops < MAX_ACTOR_HOPS:
            self._forward(task, node)
            return
        self._fail(task, _actor_gone(actor_id))

    def _actor_placed(self, tenant: str, actor_id: bytes, node_id: str) -> None:
        if node_id:
            self.actor_locations[(tenant, actor_id)] = node_id
        for task in self.actor_pending.pop((tenant, actor_id), []):
            self._route_actor_call(task)

    def _place_here(self, task: TaskEntry) -> None:
        task.state = TaskState.WAITING
        if task.spec.kind == pb.ACTOR_CREATION:
            self._start_actor(task)
            return
        self.queues.commit(task)
        self._prepare_args(task, lambda: self._runnable(task))
        if task.missing_args == 0:
            self._runnable(task)

    def _runnable(self, task: TaskEntry) -> None:
        self.queues.push(task)
        self._schedule_dispatch()

    def _forward(self, task: TaskEntry, node_id: str) -> None:
        spec = task.spec
        task.state = TaskState.REMOTE
        task.remote_node = node_id
        forward = pb.TaskSpec()
        forward.CopyFrom(spec)
        forward.hops += 1
        if spec.kind != pb.ACTOR_TASK:
            self._note_sent(node_id, shape_of(spec.resources))
            forward.function_blob = self.functions.get((spec.tenant, spec.function_digest), b"")
        for arg in forward.args:
            if arg.WhichOneof("value") == "object_id":
                entry = self.objects.get((spec.tenant, arg.object_id))
                if entry is not None and not entry.remote_owner:
                    arg.owner_node = self.node_id  # ask us: we know where it is
        if spec.kind == pb.ACTOR_CREATION:
            session = self.sessions.get(task.origin_session)
            if session is not None and spec.actor_id in session.owned_actors:
                session.owned_actors[spec.actor_id] = node_id
        self.peers.send(node_id, pb.PeerMessage(forward=forward))

    def _prepare_args(self, task: TaskEntry, on_ready: Callable[[], None]) -> None:
        """Count the task's arguments not yet on this node and start pulling them."""
        missing = 0
        for arg in task.spec.args:
            if arg.WhichOneof("value") != "object_id":
                continue
            entry = self.objects.get((task.spec.tenant, arg.object_id))
            if entry is None or entry.local:
                continue
            missing += 1

            def arrived(task: TaskEntry = task) -> None:
                task.missing_args -= 1
                if task.missing_args == 0:
                    on_ready()

            entry.waiters.append(arrived)
            self._ensure_fetch(arg.object_id, entry)
        task.missing_args = missing

    # ---------------------------------------------------------------- dispatch

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self.placing:
            placing, self.placing = self.placing, []
            for task in placing:
                self._route(task)
        # Capacity left for tasks that wait for a worker to start: spawn only as many
        # workers as could run at once, not one per queued task.
        spare = dict(self.available)
        wanted: dict[str, int] = {}
        peer_free: list[dict[str, float]] | None = None

        def peers_free(shape: Shape) -> bool:
            # Never queue work behind a running task while another node could start it.
            nonlocal peer_free
            if peer_free is None:
                peer_free = [
                    self._remote_free(n)
                    for n in self.nodes.values()
                    if n.node_id != self.node_id and n.alive
                ]
            return any(fits(shape, free) for free in peer_free)

        worker: Worker | None
        for (tenant, shape), queue in self.queues.heads():
            idle = self.idle.get(tenant)
            while queue:
                task = queue[0]
                if task.state is not TaskState.WAITING or task.cancelled:
                    queue.popleft()
                    continue
                error = self._arg_error(task)
                if error is not None:
                    queue.popleft()
                    self._fail(task, error)
                    continue
                if fits(shape, spare):
                    if not idle:
                        # Free resources but no worker: start some rather than queue
                        # behind a running task that may take long.
                        wanted[tenant] = wanted.get(tenant, 0) + how_many_fit(
                            shape, spare, len(queue)
                        )
                        for name, amount in shape:
                            spare[name] = spare.get(name, 0.0) - amount * len(queue)
                        break
                    worker = idle.pop()
                    for name, amount in shape:
                        spare[name] = spare.get(name, 0.0) - amount
                    self._lease(worker, shape)
                else:
                    worker = None if peers_free(shape) else self._pipeline_target(tenant, shape)
                    if worker is None:
                        break
                queue.popleft()
                self.queues.uncommit(task)
                self._execute(task, worker)
        if self.placing or (
            (len(self.queues) or self._pipelined()) and self.nodes.keys() - {self.node_id}
        ):
            self._retry_placing_later()  # a backlog here: look for free peers again soon
        for tenant, count in wanted.items():
            pool = self.workers.get(tenant, [])
            starting = self.starting.get(tenant, 0) + sum(
                1 for w in pool if w.state is WorkerState.STARTING
            )
            # Workers blocked in get do not count: their tasks wait on queued ones, which
            # need workers of their own (a tree of nested tasks needs one per level).
            active = sum(1 for w in pool if not w.lent)
            room = min(self.max_workers_per_tenant - active, MAX_WORKERS_PER_TENANT - len(pool))
            room -= self.starting.get(tenant, 0)
            for _ in range(max(0, min(count - starting, room))):
                self._spawn_pool_worker(tenant)
        self.on_load_change()

    def _retry_placing_later(self) -> None:
        """Tasks waiting for capacity elsewhere are placed again on each new cluster view,
        and also after a short while: what we sent a peer stops counting against it."""
        if not self._placing_timer:
            self._placing_timer = True

            def retry() -> None:
                self._placing_timer = False
                self._spill_queued()
                self._schedule_dispatch()

            asyncio.get_running_loop().call_later(PLACING_RETRY, retry)

    def _spill_queued(self) -> None:
        """Move queued tasks this node cannot start now to nodes the fresh view shows free:
        a burst that queued here while they were busy should not wait behind itself."""
        others = [
            (n.node_id, self._remote_free(n))
            for n in self.nodes.values()
            if n.node_id != self.node_id and n.alive
        ]
        if not others:
            return
        # Tasks pipelined behind a running one that may take long: ask for them back if
        # a peer could start them now (they come back through `_blocked`).
        for pool in self.workers.values():
            for worker in pool:
                if (
                    len(worker.running) > 1
                    and worker.lease_shape is not None
                    and not worker.reclaiming
                    and any(fits(worker.lease_shape, free) for _, free in others)
                ):
                    worker.reclaiming = True
                    worker.send(pb.ToWorker(reclaim=pb.Reclaim()))
        for (_, shape), queue in list(self.queues.heads()):
            runnable_here = how_many_fit(shape, self.available, len(queue))
            while len(queue) > runnable_here:
                task = queue[-1]
                if task.spec.hops >= MAX_HOPS or task.state is not TaskState.WAITING:
                    break
                target = next(
                    (n for n in others if n[0] != task.origin_node and fits(shape, n[1])), None
                )
                if target is None:
                    break
                queue.pop()
                self.queues.uncommit(task)
                for name, amount in shape:
                    target[1][name] = target[1].get(name, 0.0) - amount
                self._forward(task, target[0])

    def _pipelined(self) -> bool:
        return any(len(w.running) > 1 for pool in self.workers.values() for w in pool)

    def _pipeline_target(self, tenant: str, shape: Shape) -> Worker | None:
        """A busy worker already holding resources of `shape` that may take one more task
        behind its current one: the next task is then on the worker when the current one
        ends, instead of a round trip later. Depth 2 bounds the wait behind a long task."""
        for worker in self.workers.get(tenant, ()):
            if (
                worker.lease_shape == shape
                and worker.state is WorkerState.BUSY
                and len(worker.running) < PIPELINE_DEPTH
                and not worker.lent
            ):
                return worker
        return None

    def _worker_idle(self, worker: Worker) -> None:
        worker.state = WorkerState.IDLE
        self.idle.setdefault(worker.tenant, []).append(worker)
        self._schedule_dispatch()

    def _lease(self, worker: Worker, shape: Shape) -> None:
        """`worker` holds `shape` of this node's resources until its queue of tasks drains."""
        for name, amount in shape:
            self.available[name] = self.available.get(name, 0.0) - amount
        worker.lease_shape = shape

    def _end_lease(self, worker: Worker) -> None:
        shape = worker.lease_shape
        if shape is None:
            return
        worker.lease_shape = None
        for name, amount in shape:
            if name == "CPU" and worker.lent:
                continue  # already lent back while it was blocked
            self.available[name] = self.available.get(name, 0.0) + amount
        worker.lent = False

    def _arg_error(self, task: TaskEntry) -> pb.ErrorInfo | bytes | None:
        """An argument that is itself an error (a fabric error, or a task's exception as an
        opaque blob) fails the task without running it: the error propagates, as in Ray."""
        for arg in task.spec.args:
            if arg.WhichOneof("value") != "object_id":
                continue
            entry = self.objects.get((task.spec.tenant, arg.object_id))
            if entry is None:
                return _unknown(arg.object_id)
            if entry.error is not None:
                return entry.error
            if entry.inline is not None and blob_kind(entry.inline) == KIND_ERROR:
                return entry.inline
        return None

    def _resolved_args(self, task: TaskEntry) -> list[pb.ResolvedArg]:
        resolved = []
        for arg in task.spec.args:
            r = pb.ResolvedArg(keyword=arg.keyword)
            if arg.WhichOneof("value") == "inline_blob":
                r.inline_blob = arg.inline_blob
            else:
                entry = self.objects[(task.spec.tenant, arg.object_id)]
                if entry.inline is not None:
                    r.inline_blob = entry.inline
                else:
                    r.stored_id = arg.object_id
            resolved.append(r)
        return resolved

    def _execute(self, task: TaskEntry, worker: Worker) -> None:
        spec = task.spec
        task.state = TaskState.RUNNING
        task.worker = worker
        worker.state = WorkerState.BUSY
        worker.running[spec.task_id] = task
        # The worker needs the spec without its arguments (resolved ones go alongside).
        execute = pb.ExecuteTask(
            spec=pb.TaskSpec(
                task_id=spec.task_id,
                kind=spec.kind,
                function_digest=spec.function_digest,
                function_name=spec.function_name,
                num_returns=spec.num_returns,
                actor_id=spec.actor_id,
                method_name=spec.method_name,
                actor_options=spec.actor_options,
                job_id=spec.job_id,
            ),
            args=self._resolved_args(task),
        )
        digest = spec.function_digest
        if spec.kind != pb.ACTOR_TASK and digest not in worker.seen_digests:
            execute.spec.function_blob = self.functions.get((spec.tenant, digest), b"")
            worker.seen_digests.add(digest)
        worker.send(pb.ToWorker(execute=execute))

    # ---------------------------------------------------------------- workers

    def _spawn_pool_worker(self, tenant: str) -> None:
        self.starting[tenant] = self.starting.get(tenant, 0) + 1

        async def spawn() -> None:
            try:
                worker = await self._spawn(tenant)
            except Exception:
                log.exception("could not start a worker for tenant %s", tenant)
                return
            finally:
                self.starting[tenant] -= 1
            self.workers.setdefault(tenant, []).append(worker)

        asyncio.get_running_loop().create_task(spawn())

    async def _spawn(self, tenant: str, actor_id: bytes = b"") -> Worker:
        directory = self.store.tenant_directory(tenant)
        worker = await self.launcher.spawn(
            tenant, directory.directory, self.handle_worker, self._worker_exited, actor_id
        )
        session = self.open_session(tenant, "", f"worker:{worker.pid}", _worker_sender(worker))
        session.worker = worker
        worker.session_id = session.session_id
        return worker

    def worker_count(self) -> int:
        return sum(len(p) for p in self.workers.values()) + sum(
            1 for a in self.actors.values() if a.worker is not None
        )

    def handle_worker(self, worker: Worker, message: pb.FromWorker) -> None:
        which = message.WhichOneof("body")
        if which == "result":
            self._task_done(worker, message.result)
        elif which == "client":
            session = self.sessions.get(worker.session_id)
            if session is not None:
                self.handle_client(session, message.client)
        elif which == "started":
            if worker.actor_id:
                actor = self.actors.get((worker.tenant, worker.actor_id))
                if actor is not None and actor.worker is worker:
                    self._execute(actor.creation, worker)
            else:
                self._worker_idle(worker)

    def _blocked(self, session: Session, message: pb.Blocked) -> None:
        worker = session.worker
        if worker is None:
            return
        worker.reclaiming = False
        for task_id in message.returned:
            task = worker.running.get(task_id)
            if isinstance(task, TaskEntry) and task.spec.kind == pb.NORMAL_TASK:
                del worker.running[task_id]
                task.worker = None
                task.state = TaskState.WAITING
                self.queues.commit(task)
                self.queues.push(task, front=True)
                self._schedule_dispatch()
        blocked = message.blocked
        if worker.lease_shape is None or worker.lent == blocked:
            return
        cpu = dict(worker.lease_shape).get("CPU", 0.0)
        if not cpu:
            return
        worker.lent = blocked
        self.available["CPU"] = self.available.get("CPU", 0.0) + (cpu if blocked else -cpu)
        if blocked:
            self._schedule_dispatch()

    def _worker_exited(self, worker: Worker) -> None:
        code = worker.process.returncode
        reason = worker.death_reason or (
            f"worker process {worker.pid} died (signal {-code})"
            if code is not None and code < 0
            else f"worker process {worker.pid} exited with code {code}"
        )
        session = self.sessions.get(worker.session_id)
        if session is not None:
            self.close_session(session)
        if worker.actor_id:
            self._actor_worker_died(worker, reason)
            return
        pool = self.workers.get(worker.tenant, [])
        if worker in pool:
            pool.remove(worker)
        idle = self.idle.get(worker.tenant, [])
        if worker in idle:
            idle.remove(worker)
        self._end_lease(worker)
        for task in list(worker.running.values()):
            assert isinstance(task, TaskEntry)
            task.worker = None
            if task.cancelled:
                self._fail(task, _err(E.TASK_CANCELLED, "the task was cancelled"))
            elif task.retries_left != 0:
                task.retries_left -= 1
                log.info("retrying task %s after: %s", task.task_id.hex(), reason)
                task.state = TaskState.WAITING
                self.queues.commit(task)
                self.queues.push(task)
            else:
                self._fail(
                    task,
                    _err(E.WORKER_CRASHED, f"{reason} while running {task.spec.function_name}"),
                )
        worker.running.clear()
        self._schedule_dispatch()

    # ---------------------------------------------------------------- results

    def _task_done(self, worker: Worker, result: pb.TaskResult) -> None:
        task = worker.running.pop(result.task_id, None)
        if not isinstance(task, TaskEntry):
            return
        task.worker = None
        spec = task.spec
        if spec.kind == pb.ACTOR_CREATION:
            self._actor_started(task, result)
            return
        if spec.kind == pb.NORMAL_TASK:
            if not worker.running:
                self._end_lease(worker)
                self._worker_idle(worker)
        else:
            actor = self.actors.get((spec.tenant, spec.actor_id))
            if actor is not None:
                actor.inflight.pop(spec.task_id, None)
        self._store_results(task, result)
        self._schedule_dispatch()

    def _store_results(self, task: TaskEntry, result: pb.TaskResult) -> None:
        tenant = task.spec.tenant
        expected = set(task.return_ids)
        locations = []
        for value in result.returns:
            object_id = value.object_id
            if object_id not in expected:
                continue  # a worker may only fill its task's own return slots
            entry = self.objects.get((tenant, object_id))
            if entry is None:
                entry = ObjEntry(tenant=tenant, remote_owner=task.origin_node)
                self.objects[(tenant, object_id)] = entry
            which = value.WhichOneof("value")
            try:
                if which == "inline_blob":
                    entry.inline = value.inline_blob
                else:
                    entry.stored_size = self.store.adopt(tenant, object_id, value.stored_size)
            except ObjectStoreError as e:
                entry.error = _err(E.OBJECT_LOST, f"the task's result could not be stored: {e}")
            self._contain(entry, value.contained_ids)
            entry.state = ObjState.READY
            location = pb.ObjectLocation(
                object_id=object_id, tenant=tenant, contained_ids=value.contained_ids
            )
            if entry.inline is not None:
                location.inline_blob = entry.inline
            elif entry.error is not None:
                location.error.CopyFrom(entry.error)
            else:
                location.stored_size = entry.stored_size
            locations.append(location)
        self._finish(task, locations)

    def _fail(self, task: TaskEntry, error: pb.ErrorInfo | bytes) -> None:
        """Finish `task` with `error` in every return slot: a fabric error, or an upstream
        task's exception blob passed on unopened."""
        tenant = task.spec.tenant
        locations = []
        for object_id in task.return_ids:
            entry = self.objects.get((tenant, object_id))
            if entry is None:
                entry = ObjEntry(tenant=tenant, remote_owner=task.origin_node)
                self.objects[(tenant, object_id)] = entry
            location = pb.ObjectLocation(object_id=object_id, tenant=tenant)
            if isinstance(error, bytes):
                entry.inline = error
                location.inline_blob = error
            else:
                entry.error = error
                location.error.CopyFrom(error)
            entry.state = ObjState.READY
            locations.append(location)
        self._finish(task, locations)

    def _finish(self, task: TaskEntry, locations: list[pb.ObjectLocation]) -> None:
        if task.state is TaskState.DONE:
            return
        task.state = TaskState.DONE
        self.queues.uncommit(task)
        tenant = task.spec.tenant
        self.tasks.pop((tenant, task.task_id), None)
        self._unpin_args(task)
        if task.origin_node:
            self.peers.send(
                task.origin_node,
                pb.PeerMessage(
                    finished=pb.TaskFinished(task_id=task.task_id, returns=locations, tenant=tenant)
                ),
            )
        for location in locations:
            entry = self.objects.get((tenant, location.object_id))
            if entry is not None:
                self._object_ready(location.object_id, entry)

    # ================================================================= actors (hosted here)

    def _start_actor(self, task: TaskEntry) -> None:
        spec = task.spec
        actor = ActorEntry(creation=task, restarts_left=spec.actor_options.max_restarts)
        if (spec.tenant, spec.actor_id) in self.actors:
            self._fail(
                task, _err(E.INVALID_REQUEST, f"actor id {spec.actor_id.hex()} is already in use")
            )
            return
        self.actors[(spec.tenant, spec.actor_id)] = actor
        actor.resources = dict(spec.resources)
        options = spec.actor_options
        if options.name:
            info = pb.ActorInfo(
                actor_id=spec.actor_id,
                name=options.name,
                namespace=options.namespace,
                node_id=self.node_id,
                state="alive",
                class_name=options.class_name,
                handle_meta=options.handle_meta,
                tenant=spec.tenant,
            )
            asyncio.get_running_loop().create_task(self.directory.register_actor(info))
        for name, amount in actor.resources.items():
            self.available[name] = self.available.get(name, 0.0) - amount
        self._prepare_args(task, lambda: self._spawn_actor_worker(actor))
        if task.missing_args == 0:
            self._spawn_actor_worker(actor)

    def _spawn_actor_worker(self, actor: ActorEntry) -> None:
        async def spawn() -> None:
            try:
                worker = await self._spawn(actor.tenant, actor.creation.spec.actor_id)
            except Exception as e:
                self._actor_dead(
                    actor, _err(E.ACTOR_DIED, f"could not start the actor's worker: {e}")
                )
                return
            if actor.state is ActorState.DEAD:
                worker.kill()
                return
            actor.worker = worker

        asyncio.get_running_loop().create_task(spawn())

    def _actor_started(self, task: TaskEntry, result: pb.TaskResult) -> None:
        actor = self.actors.get((task.spec.tenant, task.spec.actor_id))
        if actor is None:
            return
        if result.is_error:
            blob = result.returns[0].inline_blob if result.returns else b""
            summary = _blob_error_summary(blob)
            actor.restarts_left = 0
            self._actor_dead(actor, _err(E.ACTOR_DIED, f"the actor's constructor raised {summary}"))
            if actor.worker is not None:
                actor.worker.kill()
            return
        first_start = actor.state is ActorState.STARTING
        actor.state = ActorState.ALIVE
        if first_start:
            self._store_results(task, result)
        self._pump_actor(actor)

    def _actor_call(self, task: TaskEntry) -> None:
        spec = task.spec
        actor = self.actors.get((spec.tenant, spec.actor_id))
        if actor is None:
            self._fail(task, _actor_gone(spec.actor_id))
            return
        if actor.state is ActorState.DEAD:
            assert actor.death is not None
            self._fail(task, actor.death)
            return
        task.state = TaskState.WAITING
        actor.queued.append(task)
        self._prepare_args(task, lambda: self._pump_actor(actor))
        self._pump_actor(actor)

    def _pump_actor(self, actor: ActorEntry) -> None:
        """Send queued calls in submission order while their arguments are here."""
        if actor.state is not ActorState.ALIVE or actor.worker is None:
            return
        while actor.queued and actor.queued[0].missing_args == 0:
            task = actor.queued.pop(0)
            if task.cancelled:
                self._fail(task, _err(E.TASK_CANCELLED, "the task was cancelled"))
                continue
            error = self._arg_error(task)
            if error is not None:
                self._fail(task, error)
                continue
            actor.inflight[task.task_id] = task
            self._execute(task, actor.worker)

    def _actor_worker_died(self, worker: Worker, reason: str) -> None:
        actor = self.actors.get((worker.tenant, worker.actor_id))
        if actor is None or actor.worker is not worker:
            return
        actor.worker = None
        if actor.state is ActorState.DEAD:
            return
        if actor.restarts_left != 0 and actor.state is not ActorState.STARTING:
            actor.restarts_left -= 1
            actor.state = ActorState.RESTARTING
            retry: list[TaskEntry] = []
            for task in actor.inflight.values():
                if task.retries_left != 0:
                    task.retries_left -= 1
                    task.missing_args = 0
                    retry.append(task)
                else:
                    self._fail(
                        task,
                        _err(
                            E.ACTOR_DIED,
                            f"the actor died while running {task.spec.method_name}: {reason}",
                        ),
                    )
            actor.inflight.clear()
            actor.queued[:0] = retry
            log.info("restarting actor %s after: %s", actor.creation.spec.actor_id.hex(), reason)
            self._spawn_actor_worker(actor)
            return
        self._actor_dead(actor, _err(E.ACTOR_DIED, f"the actor died: {reason}"))

    def _actor_dead(self, actor: ActorEntry, error: pb.ErrorInfo) -> None:
        if actor.state is ActorState.DEAD:
            return
        first_start = actor.state is ActorState.STARTING
        actor.state = ActorState.DEAD
        actor.death = error
        for task in [*actor.inflight.values(), *actor.queued]:
            self._fail(task, error)
        actor.inflight.clear()
        actor.queued.clear()
        for name, amount in actor.resources.items():
            self.available[name] = self.available.get(name, 0.0) + amount
        actor.resources = {}
        if first_start:
            self._fail(actor.creation, error)
        spec = actor.creation.spec
        if spec.actor_options.name:
            asyncio.get_running_loop().create_task(
                self.directory.remove_actor(spec.tenant, spec.actor_id)
            )
        self._schedule_dispatch()

    def _route_kill(self, kill: pb.KillActor, reason: str) -> None:
        key = (kill.tenant, kill.actor_id)
        node = (
            self.node_id
            if key in self.actors
            else (self.actor_locations.get(key) or kill.actor_node or self.node_id)
        )
        if node != self.node_id:
            self.peers.send(node, pb.PeerMessage(kill=kill))
            return
        actor = self.actors.get(key)
        if actor is None or actor.state is ActorState.DEAD:
            return
        if kill.no_restart:
            actor.restarts_left = 0
            self._actor_dead(actor, _err(E.ACTOR_DIED, f"the actor was {reason}"))
        if actor.worker is not None:
            actor.worker.death_reason = reason
            actor.worker.kill()

    async def _get_actor(self, session: Session, request_id: int, query: pb.GetActor) -> None:
        namespace = query.namespace or session.namespace
        info = await self.directory.lookup_actor(session.tenant, namespace, query.name)
        if info is None:
            self._reply(
                session,
                request_id,
                pb.Reply(
                    error=_err(
                        E.ACTOR_NOT_FOUND,
                        f"no actor named {query.name!r} in namespace {namespace!r}",
                    )
                ),
            )
        else:
            self._reply(session, request_id, pb.Reply(actor=info))

    # ================================================================= cancel

    def _cancel(self, cancel: pb.CancelTask) -> None:
        task = self.tasks.get((cancel.tenant, cancel.task_id))
        if task is None:
            return
        if task.state is TaskState.REMOTE:
            self.peers.send(task.remote_node, pb.PeerMessage(cancel=cancel))
            return
        task.cancelled = True
        if task.state in (TaskState.PLACING, TaskState.WAITING):
            if task in self.placing:
                self.placing.remove(task)
            self._fail(task, _err(E.TASK_CANCELLED, "the task was cancelled before it ran"))
        elif task.state is TaskState.RUNNING and task.worker is not None:
            if cancel.force and task.spec.kind == pb.NORMAL_TASK:
                task.worker.death_reason = "the task was force-cancelled"
                task.worker.kill()
            else:
                task.worker.send(pb.ToWorker(cancel=cancel))

    # ================================================================= peers

    def handle_peer(self, from_node: str, message: pb.PeerMessage) -> None:
        which = message.WhichOneof("body")
        if which == "forward":
            self._accept_forward(from_node, message.forward)
        elif which == "finished":
            self._remote_finished(from_node, message.finished)
        elif which == "kill":
            self._route_kill(message.kill, "killed by fabric.kill")
        elif which == "cancel":
            self._cancel(message.cancel)
        elif which == "free":
            entry = self.objects.get((message.free.tenant, message.free.object_id))
            if entry is not None and entry.remote_owner == from_node:
                entry.remote_owner = ""
                entry.holders.clear()
                self._maybe_free(message.free.object_id, entry)

    def _accept_forward(self, from_node: str, spec: pb.TaskSpec) -> None:
        if spec.function_blob:
            self.functions[(spec.tenant, spec.function_digest)] = spec.function_blob
            spec.ClearField("function_blob")
        problem = _validate_spec(spec) or self._collision(spec.tenant, spec)
        task = TaskEntry(spec, origin_node=from_node)
        if problem is not None:
            # Answer the sender without touching entries that may stand under these ids.
            error = _err(E.INVALID_REQUEST, problem)
            self.peers.send(
                from_node,
                pb.PeerMessage(
                    finished=pb.TaskFinished(
                        task_id=spec.task_id,
                        tenant=spec.tenant,
                        returns=[
                            pb.ObjectLocation(object_id=object_id, tenant=spec.tenant, error=error)
                            for object_id in task.return_ids
                        ],
                    )
                ),
            )
            return
        task.retries_left = (
            spec.max_retries
            if spec.kind == pb.NORMAL_TASK
            else (spec.actor_options.max_task_retries if spec.kind == pb.ACTOR_TASK else 0)
        )
        for object_id in task.return_ids:
            self.objects[(spec.tenant, object_id)] = ObjEntry(
                tenant=spec.tenant, producer=spec.task_id, remote_owner=from_node
            )
        self.tasks[(spec.tenant, spec.task_id)] = task
        bad_arg = self._pin_args(task)
        if bad_arg is not None:
            self._fail(task, bad_arg)
            return
        self._route(task)

    def _remote_finished(self, from_node: str, finished: pb.TaskFinished) -> None:
        tenant = finished.tenant
        task = self.tasks.get((tenant, finished.task_id))
        if task is None or task.remote_node != from_node:
            return
        expected = set(task.return_ids)
        locations = []
        for location in finished.returns:
            object_id = location.object_id
            entry = self.objects.get((tenant, object_id))
            if object_id not in expected or entry is None:
                continue
            which = location.WhichOneof("value")
            if which == "stored_size":
                entry.location = from_node  # the blob stays there until we free it
            else:
                self._fill(entry, object_id, location)
            self._contain(entry, location.contained_ids)
            entry.state = ObjState.READY
            locations.append(location)
        if task.spec.kind == pb.ACTOR_CREATION:
            failed = any(loc.HasField("error") for loc in finished.returns)
            if failed:
                session = self.sessions.get(task.origin_session)
                if session is not None:
                    session.owned_actors.pop(task.spec.actor_id, None)
        task.state = TaskState.DONE
        self.tasks.pop((tenant, task.task_id), None)
        self._unpin_args(task)
        if task.origin_node:
            # We only relayed this task (e.g. a call to an actor we placed): pass the
            # results on. Stored ones are fetched through us, since we know where they are.
            relayed = pb.TaskFinished(task_id=task.task_id, returns=locations, tenant=tenant)
            self.peers.send(task.origin_node, pb.PeerMessage(finished=relayed))
        for location in locations:
            entry = self.objects.get((tenant, location.object_id))
            if entry is None:
                continue
            if entry.location and not entry.local and entry.subscribers:
                self._ensure_fetch(location.object_id, entry)
            else:
                self._object_ready(location.object_id, entry)

    async def serve_fetch(self, tenant: str, object_id: bytes, requester: str) -> pb.ObjectLocation:
        """Another node wants an object we own or hold: wait until it is ready here."""
        entry = self.objects.get((tenant, object_id))
        if entry is None:
            return pb.ObjectLocation(object_id=object_id, tenant=tenant, error=_unknown(object_id))
        if not entry.local:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def ready() -> None:
                if not done.done():
                    done.set_result(None)

            entry.waiters.append(ready)
            self._ensure_fetch(object_id, entry)
            await done
            entry = self.objects.get((tenant, object_id)) or entry
        entry.copies.add(requester)
        location = pb.ObjectLocation(object_id=object_id, tenant=tenant)
        if entry.error is not None:
            location.error.CopyFrom(entry.error)
        elif entry.inline is not None:
            location.inline_blob = entry.inline
        else:
            location.stored_size = entry.stored_size
        return location

    # ================================================================= cluster view

    def update_cluster(self, info: pb.ClusterInfo) -> None:
        gone = set(self.nodes) - {n.node_id for n in info.nodes}
        self.nodes = {n.node_id: n for n in info.nodes}
        self.view_version = info.version
        if self.placing:
            placing, self.placing = self.placing, []
            for task in placing:
                self._route(task)
        self._spill_queued()
        # Tasks forwarded to a node that is gone fail over (or fail) now.
        for task in list(self.tasks.values()) if gone else ():
            if task.state is TaskState.REMOTE and task.remote_node not in self.nodes:
                task.state = TaskState.PLACING
                if task.spec.kind == pb.NORMAL_TASK and task.retries_left != 0:
                    task.retries_left -= 1
                    self.placing.append(task)
                else:
                    self._fail(task, _err(E.WORKER_CRASHED, f"node {task.remote_node} was lost"))
        self._schedule_dispatch()

    def node_info(self) -> pb.NodeInfo:
        return pb.NodeInfo(
            node_id=self.node_id,
            region=self.region,
            total=self.total,
            available=self.available,
            alive=True,
            labels=self.labels,
            running_tasks=sum(len(w.running) for p in self.workers.values() for w in p)
            + sum(len(a.inflight) for a in self.actors.values()),
            queued_tasks=len(self.queues) + len(self.placing),
            workers=self.worker_count(),
        )

    def cluster_info(self) -> pb.ClusterInfo:
        info = pb.ClusterInfo(version=self.view_version)
        mine = self.node_info()
        seen = False
        for node in self.nodes.values():
            if node.node_id == self.node_id:
                merged = pb.NodeInfo()
                merged.CopyFrom(node)
                merged.available.clear()
                merged.available.update(self.available)
                info.nodes.append(merged)
                seen = True
            else:
                info.nodes.append(node)
        if not seen:
            info.nodes.append(mine)
        return info

    def shutdown(self) -> None:
        for pool in self.workers.values():
            for worker in pool:
                worker.kill()
        for actor in self.actors.values():
            if actor.worker is not None:
                actor.worker.kill()


def _worker_sender(worker: Worker) -> Callable[[pb.ServerMessage], None]:
    def send(message: pb.ServerMessage) -> None:
        if worker.state is not WorkerState.DEAD:
            worker.send(pb.ToWorker(server=message))

    return send


def _validate_spec(spec: pb.TaskSpec) -> str | None:
    if len(spec.task_id) != 16:
        return "task_id must be 16 bytes"
    if spec.num_returns > MAX_RETURNS:
        return f"num_returns must be at most {MAX_RETURNS}"
    if any(v < 0 for v in spec.resources.values()):
        return "resource amounts must not be negative"
    if spec.kind in (pb.ACTOR_CREATION, pb.ACTOR_TASK) and len(spec.actor_id) != 16:
        return "actor_id must be 16 bytes"
    for arg in spec.args:
        if arg.WhichOneof("value") is None:
            return "an argument carries no value"
        if arg.WhichOneof("value") == "inline_blob" and len(arg.inline_blob) > 4 * INLINE_THRESHOLD:
            return "an inline argument is too large"
    return None
