"""Where tasks run and how they get there: argument pinning, placement, spill to peers,
the local run queues, worker leases and pipelining, and task results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from fabric import _metrics
from fabric._agent import observe
from fabric._agent.base import (
    MAX_HOPS,
    MAX_WORKERS_PER_TENANT,
    PIPELINE_DEPTH,
    PLACING_RETRY,
    SENT_MEMORY,
    E,
    error_info,
    log,
    refusal,
    unknown_object,
)
from fabric._agent.durability import mark
from fabric._agent.results import Results
from fabric._agent.scheduler import Shape, fits, how_many_fit, shape_of
from fabric._agent.state import (
    ActorEntry,
    Session,
    TaskEntry,
    TaskState,
)
from fabric._agent.workers import Worker, WorkerState
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import (
    KIND_ERROR,
    blob_kind,
)
from fabric.policy import NodeView, Outcome, PlacementRequest, decide_placement
from fabric.policy._model import encode_regions


class Dispatch(Results):
    if TYPE_CHECKING:
        # Defined by the layers above (actors.py, node.py).
        def _route_actor_call(self, task: TaskEntry) -> None: ...
        def _actor_placed(self, tenant: str, actor_id: bytes, node_id: str) -> None: ...
        def _start_actor(self, task: TaskEntry) -> None: ...
        def _actor_started(self, task: TaskEntry, result: pb.TaskResult) -> None: ...
        def _actor_call_returned(
            self, actor: ActorEntry, worker: Worker, result: pb.TaskResult
        ) -> None: ...
        def _actor_worker_died(
            self, worker: Worker, reason: str, error: pb.ErrorInfo | None = None
        ) -> None: ...
        # Defined by budgets.py.
        def _budget_worker_spawned(self, worker: Worker, budget: pb.Budget | None) -> None: ...
        def _budget_task_current(self, worker: Worker) -> None: ...
        def _budget_worker_exited(self, worker: Worker) -> pb.ErrorInfo | None: ...
        def worker_environment(self, tenant: str, budget: pb.Budget | None) -> dict[str, str]: ...

        _watches: Mapping[int, object]

        def open_session(
            self,
            tenant: str,
            namespace: str,
            identity: str,
            send: Callable[[pb.ServerMessage], None],
        ) -> Session: ...
        def close_session(self, session: Session) -> None: ...
        def handle_client(self, session: Session, message: pb.ClientMessage) -> None: ...

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
        """A peer's free resources as its last report said, less what we sent it that the
        report does not count yet: reports lag, and one burst must not all land on the node
        that looked free. A task counts until the peer reports having taken it (or, for a
        reservation, for `SENT_MEMORY` seconds)."""
        free = dict(info.available)
        sent = self.sent.get(info.node_id)
        if sent:
            now = time.monotonic()
            taken = info.accepted.get(self.node_id, 0)
            sent[:] = [s for s in sent if s[1] >= now and not 0 < s[0] <= taken]
            for _, _, resources in sent:
                for name, amount in resources:
                    free[name] = free.get(name, 0.0) - amount
        return free

    def _note_sent(self, node_id: str, resources: Shape, number: int = 0) -> None:
        """`resources` sent to `node_id`: the task we forwarded there as our `number`th,
        or (0) a reservation."""
        expires = time.monotonic() + SENT_MEMORY
        self.sent.setdefault(node_id, []).append((number, expires, resources))

    def _route(self, task: TaskEntry) -> None:
        spec = task.spec
        if spec.kind == pb.ACTOR_TASK:
            self._route_actor_call(task)
            return
        forbidden = self._forbidden_nodes(task)  # by the policy's invariants
        request = PlacementRequest(
            tenant=spec.tenant,
            task_id=spec.task_id,
            resources=dict(spec.resources),
            local_node_id=self.node_id,
            # A forwarded task may spill on once more (the sender's view was stale),
            # never back and forth for ever.
            pinned_node_id=self.node_id if spec.hops >= MAX_HOPS else None,
            excluded_node_ids=frozenset((task.origin_node,)) if task.origin_node else frozenset(),
            forbidden_node_ids=frozenset(forbidden),
            data_regions=task.residency,
            selector=task.selector,
        )
        decision = decide_placement(
            request, self._node_views(), self._policy_of(spec), self.view_version
        )
        if (
            forbidden
            and decision.outcome is Outcome.REFUSE
            # While nodes are joining, a node the invariants allow may be missing from the
            # view: placing is tried again then, as for any refusal that is not final.
            and (decision.final or time.monotonic() >= self.joining_until)
        ):
            # No node the invariants allow could take it. If the rules alone would have
            # refused it too, theirs is the reason; else the invariant that forbids the node
            # they would have chosen.
            unguarded = decide_placement(
                replace(request, forbidden_node_ids=frozenset()),
                self._node_views(),
                self._policy_of(spec),
                self.view_version,
            )
            violation = forbidden.get(unguarded.node_id or "")
            if unguarded.outcome is not Outcome.REFUSE and violation is not None:
                self._refuse_dispatch(task, self._refusal(violation, spec, spec.tenant, ()))
                if spec.kind == pb.ACTOR_CREATION:
                    self._actor_placed(spec.tenant, spec.actor_id, "")
                return
        session = self.sessions.get(task.origin_session) if task.origin_session else None
        task.audit_id = (
            self._record(decision, spec, parent=task.audit_id, session=session) or task.audit_id
        )
        task.audit_needed = mark()  # acting on the placement waits for it to be durable
        observe.placed(task, decision, self.node_id)
        # Placement chose among the nodes the invariants allow (`forbidden` left the others
        # out): no second check here or at the forward.
        if decision.node_id == self.node_id and not (
            decision.outcome is Outcome.QUEUE and spec.kind == pb.ACTOR_CREATION
        ):
            self._place_here(task)  # runs here now, or waits here for local capacity
        elif decision.outcome is Outcome.PLACE and decision.node_id:
            self._forward(task, decision.node_id, checked=True)
        elif decision.outcome is Outcome.QUEUE:
            task.state = TaskState.PLACING
            self.placing.append(task)
            self._retry_placing_later()
        elif not decision.final and time.monotonic() < self.joining_until:
            # Refused by a view that may not list every node yet (this agent, or the
            # cluster, just started): ask again until the joining window has passed.
            task.state = TaskState.PLACING
            self.placing.append(task)
            self._retry_placing_later()
            return
        else:
            self._fail(task, refusal(E.PLACEMENT_REFUSED, decision))
        if spec.kind == pb.ACTOR_CREATION and (
            decision.node_id or decision.outcome is Outcome.REFUSE
        ):
            # Calls made before placement follow the actor now that it has a place.
            placed = decision.node_id if task.state is not TaskState.DONE else ""
            self._actor_placed(spec.tenant, spec.actor_id, placed or "")

    def _refuse_dispatch(self, task: TaskEntry, refused: pb.ErrorInfo) -> None:
        """Fail `task`, which an invariant keeps from where it was to go; an actor whose
        creation it was fails every call with the same refusal."""
        if task.spec.kind == pb.ACTOR_CREATION:
            self.refused_actors[(task.spec.tenant, task.spec.actor_id)] = refused
        self._fail(task, refused)

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

    def _forward(self, task: TaskEntry, node_id: str, *, checked: bool = False) -> None:
        """Send `task` to `node_id`; `checked`: the invariants already allowed it there."""
        spec = task.spec
        if not checked and spec.kind != pb.ACTOR_TASK:  # a call is checked on its actor's node
            refused = self._task_refusal(task, node_id)
            if refused is not None:
                self._refuse_dispatch(task, refused)
                return
        task.state = TaskState.REMOTE
        task.remote_node = node_id
        # Every task forwarded is numbered; the peer reports how many it has taken.
        number = self.forwarded[node_id] = self.forwarded.get(node_id, 0) + 1
        forward = pb.TaskSpec()
        forward.CopyFrom(spec)
        forward.hops += 1
        forward.audit_parent = task.audit_id  # the chain goes on where the task goes
        if spec.kind != pb.ACTOR_TASK:
            self._note_sent(node_id, shape_of(spec.resources), number)
            forward.function_blob = self.functions.get((spec.tenant, spec.function_digest), b"")
        for arg in forward.args:
            if arg.WhichOneof("value") == "object_id":
                entry = self.objects.get((spec.tenant, arg.object_id))
                if entry is not None:
                    arg.residency = encode_regions(entry.residency)
                    arg.data_classes[:] = sorted(entry.classes)
                    if not entry.remote_owner:
                        arg.owner_node = self.node_id  # ask us: we know where it is
        if spec.kind == pb.ACTOR_CREATION:
            session = self.sessions.get(task.origin_session)
            if session is not None and spec.actor_id in session.owned_actors:
                session.owned_actors[spec.actor_id] = node_id
        self.peers.send(node_id, pb.PeerMessage(forward=forward), needs=task.audit_needed)

    def _prepare_args(self, task: TaskEntry, on_ready: Callable[[], None]) -> None:
        """Count the task's arguments not yet on this node and start pulling them."""
        missing = 0
        for arg in task.spec.args:
            if arg.WhichOneof("value") != "object_id":
                continue
            entry = self.objects.get((task.spec.tenant, arg.object_id))
            if entry is None or entry.local:
                if entry is not None:
                    _metrics.object_hit(entry.tenant)
                continue
            missing += 1

            def arrived(task: TaskEntry = task) -> None:
                task.missing_args -= 1
                if task.missing_args == 0:
                    on_ready()

            entry.waiters.append(arrived)
            self._ensure_fetch(arg.object_id, entry)
        task.missing_args = missing

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
                if not self._quota_allows(tenant, shape):
                    break  # the tenant's running work holds its quota: wait
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
        self._hold(worker.tenant, shape, 1)

    def _end_lease(self, worker: Worker) -> None:
        shape = worker.lease_shape
        if shape is None:
            return
        worker.lease_shape = None
        self._hold(worker.tenant, shape, -1)
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
                return unknown_object(arg.object_id)
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

    def _execute(self, task: TaskEntry, worker: Worker, restore_state: bytes | None = None) -> None:
        """`restore_state`: for an actor's creation on a new worker, the checkpoint it
        restores after its constructor."""
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
        if restore_state is not None:
            execute.restore_state = restore_state
        digest = spec.function_digest
        if spec.kind != pb.ACTOR_TASK and digest not in worker.seen_digests:
            execute.spec.function_blob = self.functions.get((spec.tenant, digest), b"")
            worker.seen_digests.add(digest)
        observe.dispatched(task, execute, worker, self.node_id)
        worker.send(pb.ToWorker(execute=execute), needs=task.audit_needed)
        if len(worker.running) == 1 and spec.HasField("budget"):
            self._budget_task_current(worker)

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

    async def _spawn(
        self, tenant: str, actor_id: bytes = b"", budget: pb.Budget | None = None
    ) -> Worker:
        directory = self.store.tenant_directory(tenant)
        worker = await self.launcher.spawn(
            tenant,
            directory.directory,
            self.handle_worker,
            self._worker_exited,
            actor_id,
            self.worker_environment(tenant, budget),
        )
        self._budget_worker_spawned(worker, budget)
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
                    self._execute(actor.creation, worker, actor.checkpoint)
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
        stopped = self._budget_worker_exited(worker)
        session = self.sessions.get(worker.session_id)
        if session is not None:
            self.close_session(session)
        if worker.actor_id:
            self._actor_worker_died(worker, reason, stopped)
            return
        pool = self.workers.get(worker.tenant, [])
        if worker in pool:
            pool.remove(worker)
        idle = self.idle.get(worker.tenant, [])
        if worker in idle:
            idle.remove(worker)
        self._end_lease(worker)
        for position, task in enumerate(list(worker.running.values())):
            assert isinstance(task, TaskEntry)
            task.worker = None
            if stopped is not None and position > 0:
                # Queued behind the task a budget stopped: it never ran, so it is no retry.
                task.state = TaskState.WAITING
                self.queues.commit(task)
                self.queues.push(task, front=True)
            elif stopped is not None:
                if task.spec.budget.retry and task.retries_left != 0:
                    task.retries_left -= 1
                    task.state = TaskState.WAITING
                    self.queues.commit(task)
                    self.queues.push(task)
                else:
                    self._fail(task, stopped)
            elif task.cancelled:
                self._fail(task, error_info(E.TASK_CANCELLED, "the task was cancelled"))
            elif task.retries_left != 0:
                task.retries_left -= 1
                log.info("retrying task %s after: %s", task.task_id.hex(), reason)
                task.state = TaskState.WAITING
                self.queues.commit(task)
                self.queues.push(task)
            else:
                self._fail(
                    task,
                    error_info(
                        E.WORKER_CRASHED, f"{reason} while running {task.spec.function_name}"
                    ),
                )
        worker.running.clear()
        self._schedule_dispatch()

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
            if spec.HasField("budget") or (worker.running and self._watches):
                self._budget_task_current(worker)
        else:
            actor = self.actors.get((spec.tenant, spec.actor_id))
            if actor is not None:
                actor.inflight.pop(spec.task_id, None)
                # Its checkpoint is kept before its result goes out: a restart never starts
                # from a state older than a result its caller has seen.
                self._actor_call_returned(actor, worker, result)
        self._store_results(task, result)
        self._schedule_dispatch()


def _worker_sender(worker: Worker) -> Callable[[pb.ServerMessage], None]:
    def send(message: pb.ServerMessage) -> None:
        if worker.state is not WorkerState.DEAD:
            worker.send(pb.ToWorker(server=message))

    return send
