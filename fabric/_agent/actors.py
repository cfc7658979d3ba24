"""Actors on the node agent: creation and naming, routing calls to where the actor lives,
the actors hosted here (their workers, call order, restarts, death) and kill."""

from __future__ import annotations

import asyncio

from fabric import _metrics
from fabric._agent.base import (
    MAX_ACTOR_HOPS,
    E,
    actor_gone,
    blob_error_summary,
    error_info,
    log,
    refusal,
)
from fabric._agent.dispatch import Dispatch
from fabric._agent.durability import mark
from fabric._agent.state import (
    MAX_CHECKPOINT_BYTES,
    ActorEntry,
    ActorState,
    Session,
    TaskEntry,
    TaskState,
)
from fabric._agent.workers import Worker
from fabric._proto import fabric_pb2 as pb
from fabric.policy import Outcome, PlacementRequest, decide_placement


class Actors(Dispatch):
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
        if node and node != self.node_id and node not in self.nodes:
            self._fail(
                task,
                self.refused_actors.get(key)
                or error_info(E.ACTOR_DIED, f"the actor's node {node} was lost"),
            )
            return
        if node and node != self.node_id and task.spec.hops < MAX_ACTOR_HOPS:
            if self._may_run_at(task, node):
                self._forward(task, node)
            return
        self._fail(task, self.refused_actors.get(key) or actor_gone(actor_id))

    def _may_run_at(self, task: TaskEntry, node_id: str) -> bool:
        """Whether an actor call's inputs may go to the actor's node; fails it if not."""
        if task.residency is None or self._region_of(node_id) in task.residency:
            return True
        request = PlacementRequest(
            tenant=task.spec.tenant,
            task_id=task.task_id,
            resources={},
            local_node_id=self.node_id,
            pinned_node_id=node_id,
            data_regions=task.residency,
        )
        decision = decide_placement(
            request, self._node_views(), self._policy_of(task.spec), self.view_version
        )
        task.audit_id = self._record(decision, task.spec, parent=task.audit_id) or task.audit_id
        task.audit_needed = mark()
        if decision.outcome is Outcome.REFUSE:
            self._fail(task, refusal(E.RESIDENCY_REFUSED, decision))
            return False
        return True

    def _actor_placed(self, tenant: str, actor_id: bytes, node_id: str) -> None:
        if node_id:
            self.actor_locations[(tenant, actor_id)] = node_id
        for task in self.actor_pending.pop((tenant, actor_id), []):
            self._route_actor_call(task)

    def _start_actor(self, task: TaskEntry) -> None:
        spec = task.spec
        actor = ActorEntry(creation=task, restarts_left=spec.actor_options.max_restarts)
        if (spec.tenant, spec.actor_id) in self.actors:
            self._fail(
                task,
                error_info(E.INVALID_REQUEST, f"actor id {spec.actor_id.hex()} is already in use"),
            )
            return
        self.actors[(spec.tenant, spec.actor_id)] = actor
        _metrics.actor_created(spec.tenant)
        actor.resources = dict(spec.resources)
        actor.residency = task.residency
        actor.classes = task.classes
        if spec.HasField("restore_state"):  # started again after its node was lost
            actor.checkpoint = spec.restore_state
            actor.checkpoint_call = actor.calls_done = spec.restore_call
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
        self._hold(spec.tenant, tuple(actor.resources.items()), 1)
        self._prepare_args(task, lambda: self._spawn_actor_worker(actor))
        if task.missing_args == 0:
            self._spawn_actor_worker(actor)

    def _spawn_actor_worker(self, actor: ActorEntry) -> None:
        async def spawn() -> None:
            try:
                spec = actor.creation.spec
                budget = spec.budget if spec.HasField("budget") else None
                worker = await self._spawn(actor.tenant, spec.actor_id, budget)
            except Exception as e:
                self._actor_dead(
                    actor, error_info(E.ACTOR_DIED, f"could not start the actor's worker: {e}")
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
            summary = blob_error_summary(blob)
            actor.restarts_left = 0
            # The worker sets `checkpoint_error` when restore() raised, not the constructor.
            if actor.state is ActorState.RESTARTING and result.checkpoint_error:
                message = (
                    f"the actor's restore() of the checkpoint taken after call "
                    f"{actor.checkpoint_call} raised {summary}"
                )
            else:
                message = f"the actor's constructor raised {summary}"
            self._actor_dead(actor, error_info(E.ACTOR_DIED, message))
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
            self._fail(task, actor_gone(spec.actor_id))
            return
        if actor.state is ActorState.DEAD:
            assert actor.death is not None
            self._fail(task, actor.death)
            return
        if not self._may_run_at(task, self.node_id):
            return
        refused = self._task_refusal(task, self.node_id)
        if refused is not None:
            self._fail(task, refused)
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
                self._fail(task, error_info(E.TASK_CANCELLED, "the task was cancelled"))
                continue
            error = self._arg_error(task)
            if error is not None:
                self._fail(task, error)
                continue
            actor.inflight[task.task_id] = task
            self._execute(task, actor.worker)

    def _actor_call_returned(
        self, actor: ActorEntry, worker: Worker, result: pb.TaskResult
    ) -> None:
        """Count a call that returned, and keep the checkpoint it came with. The caller
        delivers the call's result after this: a result a caller saw is always covered by
        the checkpoint a restart starts from."""
        actor.calls_done += 1
        if actor.worker is not worker:
            return  # not from the actor's current incarnation
        if result.HasField("checkpoint"):
            size = len(result.checkpoint)
            if size <= MAX_CHECKPOINT_BYTES:
                actor.checkpoint = result.checkpoint
                actor.checkpoint_call = actor.calls_done
                return
            problem = (
                f"the checkpoint of {size} bytes is over the limit of {MAX_CHECKPOINT_BYTES} bytes"
            )
        elif result.checkpoint_error:
            problem = result.checkpoint_error
        else:
            return
        if not actor.checkpoint_warned:
            actor.checkpoint_warned = True
            kept = (
                f"the checkpoint taken after call {actor.checkpoint_call}"
                if actor.checkpoint is not None
                else "no checkpoint"
            )
            log.warning(
                "actor %s of tenant %s: no checkpoint after call %d: %s; a restart would "
                "start from %s (later failed checkpoints of this actor are not logged)",
                actor.creation.spec.actor_id.hex(),
                actor.tenant,
                actor.calls_done,
                problem,
                kept,
            )

    def _actor_worker_died(
        self, worker: Worker, reason: str, stopped: pb.ErrorInfo | None = None
    ) -> None:
        """`stopped`: the error a budget stopped the actor with (it restarts only when its
        budget says ``retry``)."""
        actor = self.actors.get((worker.tenant, worker.actor_id))
        if actor is None or actor.worker is not worker:
            return
        actor.worker = None
        if actor.state is ActorState.DEAD:
            return
        if stopped is not None and not actor.creation.spec.budget.retry:
            self._actor_dead(actor, stopped)
            return
        if actor.restarts_left != 0 and actor.state is not ActorState.STARTING:
            actor.restarts_left -= 1
            actor.state = ActorState.RESTARTING
            _metrics.actor_restarted(actor.tenant)
            retry: list[TaskEntry] = []
            for task in actor.inflight.values():
                if task.retries_left != 0:
                    task.retries_left -= 1
                    task.missing_args = 0
                    retry.append(task)
                else:
                    self._fail(
                        task,
                        error_info(
                            E.ACTOR_DIED,
                            f"the actor died while running {task.spec.method_name}: {reason}",
                        ),
                    )
            actor.inflight.clear()
            actor.queued[:0] = retry
            self._record_restart(actor, reason)
            self._spawn_actor_worker(actor)
            return
        self._actor_dead(actor, error_info(E.ACTOR_DIED, f"the actor died: {reason}"))

    def _record_restart(self, actor: ActorEntry, reason: str) -> None:
        spec = actor.creation.spec
        if actor.checkpoint is not None:
            how = f"restores the checkpoint taken after call {actor.checkpoint_call}"
        else:
            how = "re-runs its constructor (no checkpoint)"
        log.info("restarting actor %s after: %s; it %s", spec.actor_id.hex(), reason, how)
        if self.recorder is not None:
            self.recorder.event(
                kind="actor.restart",
                tenant=spec.tenant,
                outcome="restart",
                rules=("actor.max-restarts",),
                reasons=(reason, how),
                task=spec.task_id.hex(),
                actor=spec.actor_id.hex(),
                job=spec.job_id.hex(),
                policy=spec.policy_version,
                parent=actor.creation.audit_id,
            )

    def _actor_dead(self, actor: ActorEntry, error: pb.ErrorInfo) -> None:
        if actor.state is ActorState.DEAD:
            return
        first_start = actor.state is ActorState.STARTING
        actor.state = ActorState.DEAD
        actor.death = error
        _metrics.actor_died(actor.tenant)
        # A dead actor no longer counts against its owner's actors quota.
        owner = self.sessions.get(actor.creation.origin_session)
        if owner is not None and owner.tenant == actor.tenant:
            owner.owned_actors.pop(actor.creation.spec.actor_id, None)
        for task in [*actor.inflight.values(), *actor.queued]:
            self._fail(task, error)
        actor.inflight.clear()
        actor.queued.clear()
        for name, amount in actor.resources.items():
            self.available[name] = self.available.get(name, 0.0) + amount
        self._hold(actor.tenant, tuple(actor.resources.items()), -1)
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
        if kill.no_restart:
            self.remote_actors.pop(key, None)  # not to be started again if its node is lost
        if node != self.node_id:
            self.peers.send(node, pb.PeerMessage(kill=kill))
            return
        actor = self.actors.get(key)
        if actor is None or actor.state is ActorState.DEAD:
            return
        if kill.no_restart:
            actor.restarts_left = 0
            self._actor_dead(actor, error_info(E.ACTOR_DIED, f"the actor was {reason}"))
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
                    error=error_info(
                        E.ACTOR_NOT_FOUND,
                        f"no actor named {query.name!r} in namespace {namespace!r}",
                    )
                ),
            )
        else:
            self._reply(session, request_id, pb.Reply(actor=info))
