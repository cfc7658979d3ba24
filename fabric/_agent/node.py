"""The node agent: sessions and their messages, task submission, cancel, peer messages and
the cluster view, on top of the object, dispatch and actor layers."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace

from fabric._agent import observe
from fabric._agent.base import (
    JOIN_GRACE,
    MAX_RETURNS,
    REFUSED_ACTORS_KEPT,
    E,
    error_info,
    log,
    refusal,
)
from fabric._agent.base import (
    Directory as Directory,
)
from fabric._agent.base import (
    Peers as Peers,
)
from fabric._agent.bundles import BUNDLE_PEER_MESSAGES, GROUP_MESSAGES
from fabric._agent.lineage import Lineages
from fabric._agent.state import (
    ObjEntry,
    ObjState,
    Session,
    TaskEntry,
    TaskState,
    return_id,
)
from fabric._budget_wire import from_wire, to_wire
from fabric._bundle_resources import name_problem as bundle_name_problem
from fabric._object_store import ObjectStoreError
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import (
    INLINE_THRESHOLD,
    SerializationError,
)
from fabric._views import only_own
from fabric.policy import Budgets, Decision, Limits, Outcome
from fabric.policy._admission import Usage, admission_refusal, decide_admission
from fabric.policy._budget_decisions import decide_budget
from fabric.policy._labels import LabelSelectorError, parse_selector
from fabric.policy._model import (
    ResidencyLabelError,
    TenantPolicy,
    decode_regions,
    encode_regions,
    intersect,
)

BUDGET_DECISIONS_KEPT = 1024
NO_LIMITS = Limits()


class NodeAgent(Lineages):
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
        if not self.policy.open and not identity.startswith("worker:"):
            self.lease_prefetch(tenant)
        return session

    def welcome(self, session: Session) -> pb.Welcome:
        directory = self.store.tenant_directory(session.tenant)
        owner = self.policy.tenant(session.tenant)
        budgets = owner.budgets if owner is not None else Budgets()
        return pb.Welcome(
            node_id=self.node_id,
            tenant=session.tenant,
            job_id=session.job_id,
            store_path=str(directory.directory),
            namespace=session.namespace,
            region=self.region,
            local_socket=self.local_socket,
            policy_version=self.policy.version,
            acknowledge_puts_from=self._acknowledge_puts_from(session.tenant),
            task_budget_limit=to_wire(budgets.task),
            actor_budget_limit=to_wire(budgets.actor),
        )

    def _acknowledge_puts_from(self, tenant: str) -> int:
        """Which puts the client waits for, so that a refusal raises at put(): all of them
        here, outside the tenant's default residency; under an object-store quota, those
        large enough to be stored (they are what fills the store)."""
        owner = self.policy.tenant(tenant)
        if owner is None:
            return 0
        if owner.default_residency is not None and self.region not in owner.default_residency:
            return 1
        return INLINE_THRESHOLD + 1 if owner.quotas.object_store is not None else 0

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
        self._close_session_groups(session)

    def handle_client(self, session: Session, message: pb.ClientMessage) -> None:
        which = message.WhichOneof("body")
        try:
            if which == "submit":
                self._submit(session, message.submit, message.request_id)
            elif which == "refs":
                self._ref_update(session, message.refs)
            elif which == "put":
                problem = self._put(session, message.put)
                self._reply(session, message.request_id, pb.Reply(error=problem))
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
                self._reply(
                    session,
                    message.request_id,
                    pb.Reply(cluster=self.cluster_info(session.tenant)),
                )
            elif which == "fetch":
                self._fetch_inline(session, message.request_id, message.fetch.object_id)
            elif which in GROUP_MESSAGES:
                self._group_message(session, message)
            else:
                self._reply_error(
                    session, message.request_id, E.INVALID_REQUEST, f"unexpected message {which!r}"
                )
        except (ObjectStoreError, SerializationError) as e:
            self._reply_error(session, message.request_id, E.INVALID_REQUEST, str(e))

    def _submit(self, session: Session, spec: pb.TaskSpec, request_id: int) -> None:
        tenant = session.tenant
        spec.tenant = tenant
        spec.owner_node = self.node_id
        spec.job_id = session.job_id
        spec.caller_id = session.session_id.to_bytes(8, "big")
        spec.hops = 0
        if self.park_for_lease(session, spec, request_id):
            return  # admitted, or refused, once the head has answered for its budget
        spec.audit_parent = self._parent_entry(session, spec)
        if spec.function_blob:
            self.functions[(tenant, spec.function_digest)] = spec.function_blob
            spec.ClearField("function_blob")
        problem = (
            _validate_spec(spec)
            or self._collision(tenant, spec)
            # Bundle resources of the session's tenant only, whatever the spec says.
            or bundle_name_problem(tenant, spec.resources)
        )
        if (
            problem is None
            and spec.kind == pb.NORMAL_TASK
            and ((tenant, spec.function_digest) not in self.functions)
        ):
            problem = "unknown function digest: send the function body with its first task"
        error = error_info(E.INVALID_REQUEST, problem) if problem is not None else None
        if error is None:
            error = self._admit(session, spec)
        observe.submitted(spec, error, self.node_id)
        if error is not None:
            if spec.kind == pb.ACTOR_CREATION and error.kind != E.INVALID_REQUEST:
                self.refused_actors[(tenant, spec.actor_id)] = error
                if len(self.refused_actors) > REFUSED_ACTORS_KEPT:
                    self.refused_actors.popitem(last=False)
            # Nothing is recorded: the refused ids may belong to entries that stand.
            self._reply(session, request_id, pb.Reply(error=error))
            for index in range(min(spec.num_returns, MAX_RETURNS)):
                session.send(
                    pb.ServerMessage(
                        ready=pb.ObjectReady(object_id=return_id(spec.task_id, index), error=error)
                    )
                )
            return
        task = TaskEntry(spec, origin_session=session.session_id, admitted=True)
        if spec.kind == pb.NORMAL_TASK and not self.policy.open:
            self.task_admitted(tenant)
        usage = self.usage.setdefault(tenant, Usage())
        usage.tasks += 1
        usage.add(spec.resources)
        for object_id in task.return_ids:
            entry = ObjEntry(tenant=tenant)
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

    def _parent_entry(self, session: Session, spec: pb.TaskSpec) -> str:
        """The audit entry a task submitted from inside a running task follows from: the
        latest entry of that task on this node ("" for a driver's submission)."""
        worker = session.worker
        if worker is None:
            return ""
        parent = worker.running.get(spec.parent_task_id)
        return parent.audit_id if isinstance(parent, TaskEntry) else ""

    def _admit(self, session: Session, spec: pb.TaskSpec) -> pb.ErrorInfo | None:
        """Check a submission against the policy: its label selector and residency label
        mean something, its quotas allow it. Sets the residency and policy version it is
        admitted under."""
        policy = self.policy
        spec.policy_version = policy.version
        tenant = policy.tenant(session.tenant)
        if tenant is None:
            return error_info(E.INVALID_REQUEST, f"{session.tenant!r} is not a tenant")
        try:
            # Inside a task, work without a label derives from what the task read.
            residency = (
                self._session_residency(session)
                if session.worker is not None and not spec.residency_label
                else intersect(
                    policy.residency(tenant, spec.residency_label or None),
                    self._session_residency(session),
                )
            )
        except ResidencyLabelError as e:
            return error_info(E.INVALID_REQUEST, str(e))
        classes = self._session_classes(session)
        if spec.residency_label in tenant.data_classes:
            classes |= {spec.residency_label}
        for arg in spec.args:
            arg.residency = ""  # agents say where an object may live, never a client
            del arg.data_classes[:]
            if arg.WhichOneof("value") == "object_id":
                entry = self.objects.get((session.tenant, arg.object_id))
                if entry is not None:
                    residency = intersect(residency, entry.residency)
                    classes |= entry.classes
        spec.residency = encode_regions(residency)
        spec.data_classes[:] = sorted(classes)
        # A budget the request asks for holds under any policy, the open default included.
        budgeted, breach = self._budget_decision(tenant, spec)
        if policy.open and (budgeted is None or budgeted.outcome is Outcome.ADMIT):
            return None
        if budgeted is not None and budgeted.outcome is Outcome.REFUSE:
            spec.audit_parent = self._record(
                budgeted, spec, kind="admit", parent=spec.audit_parent, session=session
            )
            error = refusal(E.BUDGET_REFUSED, budgeted)
            if breach is not None:
                error.budget.CopyFrom(breach)
            return error
        creation = spec.kind == pb.ACTOR_CREATION
        usage = self._usage(session.tenant, actors=creation)
        asked = {"tasks": 1, "actors": 1 if creation else 0, "resources": spec.resources}
        if admission_refusal(policy, session.tenant, usage, **asked) is None:
            if self.on_decision is None and self.recorder is None:
                return None  # admitted; nobody records the decision, so none is made
        decision = decide_admission(policy, session.tenant, usage, **asked)
        if budgeted is not None and decision.outcome is Outcome.ADMIT:
            decision = replace(
                decision,
                rule_ids=decision.rule_ids + budgeted.rule_ids,
                reasons=decision.reasons + budgeted.reasons,
            )
        spec.audit_parent = self._record(
            decision, spec, kind="admit", parent=spec.audit_parent, session=session
        )
        if decision.outcome is Outcome.REFUSE:
            return refusal(E.QUOTA_EXCEEDED, decision)
        return None

    def _budget_decision(
        self, tenant: TenantPolicy, spec: pb.TaskSpec
    ) -> tuple[Decision | None, pb.BudgetBreach | None]:
        """The budget a task or actor runs under, written into its spec, as a Decision (and
        what a refusal broke); None when no budget bounds it (nothing to decide or watch)."""
        if spec.kind not in (pb.NORMAL_TASK, pb.ACTOR_CREATION):
            return None, None
        kind = "actor" if spec.kind == pb.ACTOR_CREATION else "task"
        ceiling = getattr(tenant.budgets, kind)
        if not spec.HasField("budget"):
            if not ceiling.bounded and not tenant.budgets.leased:
                return None, None  # the common case, decided without building anything
            asked = NO_LIMITS
        else:
            asked = from_wire(spec.budget)
        exhausted = self.budget_exhausted(tenant.name) if kind == "task" else None
        if not asked.bounded and not ceiling.bounded and exhausted is None:
            spec.ClearField("budget")
            return None, None
        retry = spec.budget.retry
        # Most requests ask for the same (often nothing): decide each kind of request once
        # per policy version.
        key = (self.policy.version, tenant.name, kind, asked, exhausted)
        cached = self._budget_decisions.get(key)
        if cached is None:
            decision, effective = decide_budget(self.policy, tenant.name, kind, asked, exhausted)
            cached = decision, to_wire(effective)
            if len(self._budget_decisions) >= BUDGET_DECISIONS_KEPT:
                self._budget_decisions.clear()
            self._budget_decisions[key] = cached
        decision, wire = cached
        spec.budget.CopyFrom(wire)
        spec.budget.retry = retry
        if decision.outcome is Outcome.ADMIT and not asked.bounded:
            # It runs under the policy's ceiling, which the policy version already says:
            # nothing to add to its admission's entry.
            return None, None
        beyond = asked.beyond(ceiling)
        if beyond is not None:
            key, value, most = beyond
            return decision, pb.BudgetBreach(budget=f"{kind}.{key}", limit=most, measured=value)
        if exhausted is not None:
            name, limit, used = exhausted
            return decision, pb.BudgetBreach(budget=f"tenant.{name}", limit=limit, measured=used)
        return decision, None

    def _usage(self, tenant: str, *, actors: bool = False) -> Usage:
        """What `tenant` holds here; its live actors are counted only when asked (an
        actor creation), since that walks the sessions."""
        usage = self.usage.setdefault(tenant, Usage())
        usage.object_store = self.store.tenant_bytes(tenant)
        if actors:
            usage.actors = sum(
                len(s.owned_actors) for s in self.sessions.values() if s.tenant == tenant
            )
        return usage

    def _collision(self, tenant: str, spec: pb.TaskSpec, sender: str = "") -> str | None:
        """A task or actor id already in use by this tenant (reuse would overwrite it). A
        task forwarded by `sender` may find entries of its results here that it replaces:
        copies awaited here (a task that takes them can arrive first, when the one that
        makes them took a longer way), or results held for the sender that it makes again
        (they were lost)."""
        if (tenant, spec.task_id) in self.tasks or any(
            (entry := self.objects.get((tenant, return_id(spec.task_id, i)))) is not None
            and not (sender and _replaceable(entry, sender))
            for i in range(spec.num_returns)
        ):
            return f"task id {spec.task_id.hex()} is already in use"
        key = (tenant, spec.actor_id)
        if spec.kind == pb.ACTOR_CREATION and (
            key in self.actors or key in self.actor_pending or key in self.actor_locations
        ):
            return f"actor id {spec.actor_id.hex()} is already in use"
        return None

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
            self._fail(task, error_info(E.TASK_CANCELLED, "the task was cancelled before it ran"))
        elif task.state is TaskState.RUNNING and task.worker is not None:
            if cancel.force and task.spec.kind == pb.NORMAL_TASK:
                task.worker.death_reason = "the task was force-cancelled"
                task.worker.kill()
            else:
                task.worker.send(pb.ToWorker(cancel=cancel))

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
        elif which in BUNDLE_PEER_MESSAGES:
            self._bundle_peer_message(from_node, message)

    def _accept_forward(self, from_node: str, spec: pb.TaskSpec) -> None:
        self.accepted[from_node] = self.accepted.get(from_node, 0) + 1  # see _remote_free
        if spec.function_blob:
            self.functions[(spec.tenant, spec.function_digest)] = spec.function_blob
            spec.ClearField("function_blob")
        problem = _validate_spec(spec)
        if problem is None and self._answer_from_copies(from_node, spec):
            return
        problem = problem or self._collision(spec.tenant, spec, from_node)
        if problem is not None:
            # Answer the sender without touching entries that may stand under these ids.
            log.warning("refused task %s from %s: %s", spec.task_id.hex(), from_node, problem)
            error = error_info(E.INVALID_REQUEST, problem)
            self.peers.send(
                from_node,
                pb.PeerMessage(
                    finished=pb.TaskFinished(
                        task_id=spec.task_id,
                        tenant=spec.tenant,
                        returns=[
                            pb.ObjectLocation(
                                object_id=return_id(spec.task_id, index),
                                tenant=spec.tenant,
                                error=error,
                            )
                            for index in range(min(spec.num_returns, MAX_RETURNS))
                        ],
                    )
                ),
            )
            return
        task = TaskEntry(spec, origin_node=from_node)
        for object_id in task.return_ids:
            entry = self.objects.get((spec.tenant, object_id))
            if entry is None:
                self.objects[(spec.tenant, object_id)] = ObjEntry(
                    tenant=spec.tenant, remote_owner=from_node
                )
            else:  # replaced: it is made here now (its waiters stay)
                self._stop_fetch(object_id, entry)
                entry.state, entry.location = ObjState.PENDING, ""
                entry.remote_owner, entry.cache = from_node, False
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
        ran_on = finished.ran_on or from_node
        locations = []
        for location in finished.returns:
            object_id = location.object_id
            entry = self.objects.get((tenant, object_id))
            if object_id not in expected or entry is None:
                continue
            which = location.WhichOneof("value")
            entry.residency = decode_regions(location.residency)
            entry.classes = frozenset(location.data_classes)
            if which == "stored_size":
                # The blob stays where it was made until we free it. When it came through
                # a relay, the relay hears of the free with the holder's copies.
                entry.location = ran_on
                if ran_on != from_node:
                    entry.copies.add(from_node)
            else:
                self._fill(entry, object_id, location)
            self._contain(entry, location.contained_ids)
            entry.state = ObjState.READY
            locations.append(location)
        self._keep_lineage(task)
        self._keep_actor(task, ran_on)
        self._keep_checkpoint(task, finished)
        if task.spec.kind == pb.ACTOR_CREATION:
            failed = any(loc.HasField("error") for loc in finished.returns)
            if failed:
                session = self.sessions.get(task.origin_session)
                if session is not None:
                    session.owned_actors.pop(task.spec.actor_id, None)
        task.state = TaskState.DONE
        self.tasks.pop((tenant, task.task_id), None)
        self._release_admission(task)
        self._unpin_args(task)
        if task.origin_node:
            # We only relayed this task (e.g. a call to an actor we placed): pass the
            # results on, with the node that ran it, where stored ones are fetched.
            relayed = pb.TaskFinished(
                task_id=task.task_id, returns=locations, tenant=tenant, ran_on=ran_on
            )
            if finished.HasField("checkpoint") and (tenant, task.spec.actor_id) not in (
                self.remote_actors
            ):  # on its way to the node that created the actor
                relayed.checkpoint = finished.checkpoint
                relayed.checkpoint_call = finished.checkpoint_call
            self.peers.send(task.origin_node, pb.PeerMessage(finished=relayed))
        for location in locations:
            entry = self.objects.get((tenant, location.object_id))
            if entry is None:
                continue
            # Wanted here (by a driver, or as a task's argument): pull it first.
            wanted = entry.subscribers or entry.waiters
            if entry.location and not entry.local and wanted and self._may_hold(entry):
                self._ensure_fetch(location.object_id, entry)
            else:
                self._object_ready(location.object_id, entry)

    def update_cluster(self, info: pb.ClusterInfo) -> None:
        gone = set(self.nodes) - {n.node_id for n in info.nodes}
        if {n.node_id for n in info.nodes} - set(self.nodes):
            # A node joined: others may be joining too; give refusals a moment longer.
            self.joining_until = max(self.joining_until, time.monotonic() + JOIN_GRACE)
        self.nodes = {n.node_id: n for n in info.nodes}
        self.view_version = info.version
        if self.placing:
            placing, self.placing = self.placing, []
            for task in placing:
                self._route(task)
        self._spill_queued()
        # Tasks forwarded to a node that is gone fail over (or fail) now, and what we held
        # only there is rebuilt from its lineage (or fails).
        if gone:
            self._actors_lost(gone)
        for task in list(self.tasks.values()) if gone else ():
            if task.state is TaskState.REMOTE and task.remote_node not in self.nodes:
                self._retry_elsewhere(task, task.remote_node)
        if gone:
            self._nodes_lost(gone)
        self._groups_view_changed(gone)
        self._schedule_dispatch()

    def tenant_load(self) -> dict[str, pb.TenantLoad]:
        load: dict[str, pb.TenantLoad] = {}

        def of(tenant: str) -> pb.TenantLoad:
            return load.setdefault(tenant, pb.TenantLoad())

        for tenant, pool in self.workers.items():
            of(tenant).workers += len(pool)
            of(tenant).running_tasks += sum(len(w.running) for w in pool)
        for (tenant, _), actor in self.actors.items():
            of(tenant).actors += 1
            of(tenant).running_tasks += len(actor.inflight)
            of(tenant).workers += actor.worker is not None
        for task in self.placing:
            of(task.spec.tenant).queued_tasks += 1
        for (tenant, _), queue in self.queues.heads():
            of(tenant).queued_tasks += len(queue)
        return load

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
            tenant_load=self.tenant_load(),
            accepted=self.accepted,
        )

    def cluster_info(self, tenant: str | None = None) -> pb.ClusterInfo:
        """The cluster view; for `tenant`, the load figures are its own only."""
        info = pb.ClusterInfo(version=self.view_version)
        mine = self.node_info()
        seen = False
        for node in self.nodes.values():
            if node.node_id == self.node_id:
                merged = pb.NodeInfo()
                merged.CopyFrom(node)
                merged.available.clear()
                merged.available.update(self.available)
                merged.total.clear()
                merged.total.update(self.total)  # bundles reserved since the last report
                info.nodes.append(merged)
                seen = True
            else:
                info.nodes.append(node)
        if not seen:
            info.nodes.append(mine)
        if tenant is not None:
            for node in info.nodes:
                only_own(node, tenant)
        return info

    def shutdown(self) -> None:
        for pool in self.workers.values():
            for worker in pool:
                worker.kill()
        for actor in self.actors.values():
            if actor.worker is not None:
                actor.worker.kill()
        self.close_budgets()


def _replaceable(entry: ObjEntry, sender: str) -> bool:
    """Whether a task `sender` forwards may make the object of `entry` here: a copy of
    another node's object that has not arrived, or a result held for the sender that is
    not here (it is being made again)."""
    if entry.local or not entry.remote_owner:
        return False
    return entry.cache or entry.remote_owner == sender


def _validate_spec(spec: pb.TaskSpec) -> str | None:
    if len(spec.task_id) != 16:
        return "task_id must be 16 bytes"
    if spec.HasField("budget"):
        budget = spec.budget
        for key in ("cpu_seconds", "wall_seconds"):
            if budget.HasField(key) and not 0 < getattr(budget, key) < math.inf:
                return f"budget {key} must be a finite number of seconds > 0"
        for key in ("memory", "processes"):
            if budget.HasField(key) and getattr(budget, key) == 0:
                return f"budget {key} must be > 0"
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
    if spec.label_selector:
        try:
            parse_selector(spec.label_selector)
        except LabelSelectorError as e:
            return str(e)
    return None
