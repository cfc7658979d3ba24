"""Objects lost with a node, rebuilt from their lineage.

The node that submitted a task owns its results. When a result stays on the node that ran
the task (stored there, too large to come back inline), the owner keeps the task's spec as
the result's *lineage*, and keeps the task's object arguments while any of its results is
referenced, so the task can be run again. When that node is lost (the head's view drops
it), a result the owner held there is rebuilt, as soon as something needs it, by running
the task that made it again: placed by the same rules, within the same residency, so a
rebuild never moves data where it may not go; if no node it may run on remains, the
objects fail with that refusal. Its lost arguments are needed in turn, so a chain of tasks
comes back link by link, and what nobody needs costs nothing. A node that holds copies
of every result of a task sent to it to be run again answers with them.

What cannot be rebuilt fails with an object-lost error that says why: an object made by
``put`` (its bytes existed only there), a result of an actor method (re-running it would
change the actor), a task whose retries are used up, and a copy whose owner was lost.
Every rebuild and every loss is an audit entry (``object.rebuild``, ``object.lost``), and
so is every answer from copies (``task.finish``, rule ``lineage.copy``) and every task sent
elsewhere because the node running it was lost (``task.retry``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fabric._agent.base import E, error_info, log
from fabric._agent.bundles import Bundles
from fabric._agent.state import ObjEntry, ObjState, TaskEntry, TaskState, return_id
from fabric._proto import fabric_pb2 as pb
from fabric.policy._model import encode_regions

RULE_REBUILD = "lineage.rebuild"
RULE_LOST = "lineage.lost"
RULE_RETRY = "node.lost"
RULE_COPY = "lineage.copy"
RULE_RESTART = "actor.max-restarts"


@dataclass(eq=False)
class Lineage:
    """How to make a task's results again: the task as submitted here."""

    spec: pb.TaskSpec
    pinned: list[bytes]  # its object arguments, kept while any of its results is
    alive: int  # its results still in the object table
    rebuilds_left: int
    audit_id: str = ""  # the entry the task's last run here follows from


@dataclass(eq=False)
class RemoteActor:
    """An actor created through this node, living on another."""

    spec: pb.TaskSpec  # its creation, as submitted here
    node: str
    restarts_left: int  # -1: as often as it takes
    checkpoint: bytes | None = None  # its latest, when its state may be kept here
    checkpoint_call: int = 0


class Lineages(Bundles):
    def _keep_actor(self, task: TaskEntry, from_node: str) -> None:
        """`task` ran on `from_node`: if it created an actor there, remember how, to start
        it again; if a call found the actor dead, forget it."""
        spec = task.spec
        if spec.kind == pb.NORMAL_TASK:
            return
        key = (spec.tenant, spec.actor_id)
        errors = [
            entry.error
            for object_id in task.return_ids
            if (entry := self.objects.get((spec.tenant, object_id))) is not None
            and entry.error is not None
        ]
        if spec.kind == pb.ACTOR_TASK:
            if any(error.kind == E.ACTOR_DIED for error in errors):
                self.remote_actors.pop(key, None)
            return
        if task.origin_node or errors:
            return  # created for another node, or it never started
        restarts = spec.actor_options.max_restarts
        self.remote_actors[key] = RemoteActor(spec, from_node, restarts if restarts >= 0 else -1)
        self.actor_locations[key] = from_node  # calls go straight there, not through a relay

    def _keep_checkpoint(self, task: TaskEntry, finished: pb.TaskFinished) -> None:
        """A call to an actor created here came back with its checkpoint: keep it, before
        the call's result is delivered, to start the actor from it if its node is lost."""
        actor = self.remote_actors.get((task.spec.tenant, task.spec.actor_id))
        if actor is not None and finished.HasField("checkpoint"):
            if finished.checkpoint_call >= actor.checkpoint_call:
                actor.checkpoint = finished.checkpoint
                actor.checkpoint_call = finished.checkpoint_call

    def _actors_lost(self, gone: set[str]) -> None:
        """Start again elsewhere, per `max_restarts`, the actors created here that lived on
        a node in `gone`; the others are dead, and say where they died."""
        for key, actor in list(self.remote_actors.items()):
            if actor.node not in gone:
                continue
            del self.remote_actors[key]
            if actor.restarts_left == 0:
                self.refused_actors[key] = error_info(
                    E.ACTOR_DIED, f"the actor's node {actor.node} was lost"
                )
                continue
            again = pb.TaskSpec()
            again.CopyFrom(actor.spec)
            if actor.checkpoint is not None:
                again.restore_state = actor.checkpoint
                again.restore_call = actor.checkpoint_call
            task = TaskEntry(again)
            self.tasks[(again.tenant, again.task_id)] = task
            bad_arg = self._pin_args(task)
            if bad_arg is not None:
                self._fail(task, bad_arg)
                self._actor_placed(again.tenant, again.actor_id, "")
                continue
            self._start_again(task, actor.node, actor.restarts_left)

    def _start_again(self, task: TaskEntry, lost_node: str, restarts_left: int) -> None:
        """Place the creation `task` again: its actor was (or was being) started on
        `lost_node`, and has `restarts_left` (-1: unlimited); calls wait for its new place."""
        spec = task.spec
        left = restarts_left - 1 if restarts_left > 0 else -1
        spec.actor_options.max_restarts = left
        start = (
            f"the checkpoint taken after call {spec.restore_call}"
            if spec.HasField("restore_state")
            else "its constructor"
        )
        reason = (
            f"its node {lost_node} was lost: starting it again elsewhere, from {start} "
            f"({'unlimited' if left < 0 else left} restart(s) left)"
        )
        log.info("actor %s: %s", spec.actor_id.hex(), reason)
        if self.recorder is not None:
            task.audit_id = spec.audit_parent = self.recorder.event(
                kind="actor.restart",
                tenant=spec.tenant,
                outcome="restart",
                rules=(RULE_RESTART,),
                reasons=(reason,),
                actor=spec.actor_id.hex(),
                job=spec.job_id.hex(),
                policy=spec.policy_version,
                parent=task.audit_id,
            )
        key = (spec.tenant, spec.actor_id)
        self.actor_locations.pop(key, None)
        self.actor_pending.setdefault(key, [])  # calls wait for its new place
        task.state = TaskState.PLACING
        self._route(task)

    def _keep_lineage(self, task: TaskEntry) -> None:
        """`task` finished elsewhere, leaving results there: keep what rebuilds them
        (the task's argument pins move from the task to its lineage)."""
        spec = task.spec
        if spec.kind != pb.NORMAL_TASK or task.origin_node:
            return  # an actor's results cannot be rebuilt; a relayed task is not ours
        tenant = spec.tenant
        entries = [self.objects.get((tenant, object_id)) for object_id in task.return_ids]
        held = [e for e in entries if e is not None]
        if all(e.local or not e.location for e in held):
            return  # everything came back here
        if any(e.lineage is not None for e in held):
            return  # a rebuild: the lineage kept from the first run still holds
        lineage = Lineage(
            spec=spec,
            pinned=task.pinned,
            alive=len(held),
            rebuilds_left=max(task.retries_left, 0),
            audit_id=task.audit_id,
        )
        task.pinned = []
        for entry in held:
            entry.lineage = lineage

    def _answer_from_copies(self, from_node: str, spec: pb.TaskSpec) -> bool:
        """A task run again to rebuild its results, sent to a node that holds a copy of
        every one of them: answer with the copies instead of running it."""
        if spec.num_returns == 0 or (spec.tenant, return_id(spec.task_id, 0)) not in self.objects:
            return False  # the usual case: nothing of it here
        ids = [return_id(spec.task_id, index) for index in range(spec.num_returns)]
        copies = [self.objects.get((spec.tenant, object_id)) for object_id in ids]
        held = [
            e
            for e in copies
            if e is not None
            and e.local
            and e.error is None
            and (e.cache or e.remote_owner == from_node)
        ]
        if len(held) != len(ids) or (spec.tenant, spec.task_id) in self.tasks:
            return False
        locations = []
        for object_id, entry in zip(ids, held, strict=True):
            entry.remote_owner, entry.cache = from_node, False  # held for the asker now
            size = len(entry.inline) if entry.inline is not None else entry.stored_size
            locations.append(
                pb.ObjectLocation(
                    object_id=object_id,
                    tenant=spec.tenant,
                    stored_size=size,  # held here: fetched from here, by the rules
                    residency=encode_regions(entry.residency),
                    data_classes=sorted(entry.classes),
                )
            )
        if self.recorder is not None:
            self.recorder.event(
                kind="task.finish",
                tenant=spec.tenant,
                outcome="ok",
                rules=(RULE_COPY,),
                reasons=("its results were held here as copies: served, not run again",),
                task=spec.task_id.hex(),
                job=spec.job_id.hex(),
                policy=spec.policy_version,
                parent=spec.audit_parent,
            )
        finished = pb.TaskFinished(
            task_id=spec.task_id, tenant=spec.tenant, returns=locations, ran_on=self.node_id
        )
        self.peers.send(from_node, pb.PeerMessage(finished=finished))
        return True

    def _nodes_lost(self, gone: set[str]) -> None:
        """Rebuild or fail every object of ours that lived only on a node in `gone`."""
        rebuild: dict[int, tuple[Lineage, str]] = {}
        for (_, object_id), entry in list(self.objects.items()):
            if entry.local:
                continue
            if entry.remote_owner:
                # Another node's object: lost with its owner, else its owner makes it again.
                if entry.remote_owner in gone:
                    self._lose(
                        object_id,
                        entry,
                        f"its owner, node {entry.remote_owner}, was lost with what it knew "
                        "of the object",
                    )
                elif entry.location in gone:
                    # Ours to use, not to make: its owner makes it again; ask the owner.
                    self._stop_fetch(object_id, entry)
                    entry.location, entry.cache = entry.remote_owner, True
                    entry.state = ObjState.UNKNOWN
                    if entry.waiters or entry.subscribers:
                        self._ensure_fetch(object_id, entry)
                continue
            if entry.location not in gone:
                continue
            lineage = entry.lineage
            if lineage is None:
                self._lose(
                    object_id,
                    entry,
                    f"it was stored on node {entry.location}, which was lost, and was not "
                    "made by a task that can run again (a put, or an actor's method)",
                )
            elif lineage.rebuilds_left <= 0:
                self._lose(
                    object_id,
                    entry,
                    f"it was stored on node {entry.location}, which was lost, and the task "
                    f"that made it ({lineage.spec.function_name}) has no retries left",
                )
            else:
                # Made again when something needs it: now if anything waits for it, else
                # when something asks (`_ensure_fetch`), so what nobody needs costs nothing.
                node = entry.location
                self._stop_fetch(object_id, entry)
                _pending_again(entry)
                entry.lost_with = node
                rebuild[id(lineage)] = (lineage, node)
        for lineage, node in rebuild.values():
            if self._wanted(lineage):
                self._rebuild(lineage, node)

    def _wanted(self, lineage: Lineage) -> bool:
        """Whether anything waits for a result of the task of `lineage` here."""
        spec = lineage.spec
        for index in range(spec.num_returns):
            entry = self.objects.get((spec.tenant, return_id(spec.task_id, index)))
            if entry is not None and (entry.waiters or entry.subscribers):
                return True
        return False

    def _rebuild(self, lineage: Lineage, lost_node: str) -> None:
        """Run the task of `lineage` again; its results are pending until it finishes."""
        spec = lineage.spec
        tenant = spec.tenant
        if (tenant, spec.task_id) in self.tasks:
            return  # already running again
        lineage.rebuilds_left -= 1
        lost = []
        for index in range(spec.num_returns):
            object_id = return_id(spec.task_id, index)
            entry = self.objects.get((tenant, object_id))
            if entry is None or entry.local:
                continue
            self._stop_fetch(object_id, entry)
            _pending_again(entry)
            entry.lost_with = ""
            lost.append(object_id)
        if not lost:
            return
        reason = (
            f"{len(lost)} result(s) of task {spec.task_id.hex()} ({spec.function_name}) were "
            f"lost with node {lost_node}: running it again ({lineage.rebuilds_left} more "
            "rebuild(s) allowed)"
        )
        log.info("rebuilding: %s", reason)
        audit_id = ""
        if self.recorder is not None:
            audit_id = self.recorder.event(
                kind="object.rebuild",
                tenant=tenant,
                outcome="rebuild",
                rules=(RULE_REBUILD,),
                reasons=(reason,),
                task=spec.task_id.hex(),
                job=spec.job_id.hex(),
                policy=spec.policy_version,
                parent=lineage.audit_id,
            )
        again = pb.TaskSpec()
        again.CopyFrom(spec)
        again.audit_parent = audit_id or lineage.audit_id
        task = TaskEntry(again)
        task.retries_left = lineage.rebuilds_left
        self.tasks[(tenant, spec.task_id)] = task
        bad_arg = self._pin_args(task)
        if bad_arg is not None:
            self._fail(task, bad_arg)
            return
        self._route(task)

    def _lose(self, object_id: bytes, entry: ObjEntry, why: str) -> None:
        message = f"ObjectRef({object_id.hex()}) is lost: {why}"
        entry.error = error_info(E.OBJECT_LOST, message)
        entry.state = ObjState.READY
        entry.fetching = False
        if self.recorder is not None:
            self.recorder.event(
                kind="object.lost",
                tenant=entry.tenant,
                outcome="lost",
                rules=(RULE_LOST,),
                reasons=(message,),
            )
        self._object_ready(object_id, entry)

    def _retry_elsewhere(self, task: TaskEntry, lost_node: str) -> None:
        """`task` was running on `lost_node`: send it again (a task placed anew, a call to
        its actor started again elsewhere) while its retries allow, or fail it."""
        task.state = TaskState.PLACING
        spec = task.spec
        key = (spec.tenant, spec.actor_id)
        restarts = spec.actor_options.max_restarts
        if spec.kind == pb.ACTOR_CREATION and restarts != 0 and not task.origin_node:
            self._start_again(task, lost_node, restarts)  # it was being created there
            return
        if task.retries_left == 0:
            again = False
        elif spec.kind == pb.NORMAL_TASK:
            again = True
        else:  # a call goes again only if its actor is starting again
            again = spec.kind == pb.ACTOR_TASK and (
                key in self.actor_pending or self.actor_locations.get(key) in self.nodes
            )
        if not again:
            if spec.kind == pb.NORMAL_TASK:
                error = error_info(E.WORKER_CRASHED, f"node {lost_node} was lost")
            else:  # a call to (or the creation of) an actor that lived there
                error = error_info(E.ACTOR_DIED, f"the actor's node {lost_node} was lost")
            self._fail(task, error)
            return
        task.retries_left -= 1
        if self.recorder is not None:
            task.audit_id = self.recorder.event(
                kind="task.retry",
                tenant=spec.tenant,
                outcome="retry",
                rules=(RULE_RETRY,),
                reasons=(
                    f"node {lost_node} was lost while running it: sending it again "
                    f"({max(task.retries_left, 0)} retries left)",
                ),
                task=spec.task_id.hex(),
                actor=spec.actor_id.hex(),
                job=spec.job_id.hex(),
                policy=spec.policy_version,
                parent=task.audit_id,
            )
        if spec.kind == pb.NORMAL_TASK:
            self.placing.append(task)
        else:
            self._route_actor_call(task)


def _pending_again(entry: ObjEntry) -> None:
    """The entry of a result whose bytes were lost: pending until its task runs again."""
    entry.state = ObjState.PENDING
    entry.location = ""
    entry.inline = None
    entry.stored_size = -1
    entry.error = None
    entry.copies.clear()
