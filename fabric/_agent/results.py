"""A task's arguments and results on the node agent: pinning the objects a task takes,
storing (or failing) the objects it returns, and finishing it: its completion recorded,
its origin told, its waiters woken."""

from __future__ import annotations

from fabric._agent import observe
from fabric._agent.base import E, error_info, unknown_object
from fabric._agent.objects import ObjectTable
from fabric._agent.state import ObjEntry, ObjState, TaskEntry, TaskState
from fabric._object_store import ObjectStoreError
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import KIND_ERROR, peek_kind
from fabric.policy._model import Regions, decode_regions, encode_regions, intersect


class Results(ObjectTable):
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
                    residency=decode_regions(arg.residency),
                    classes=frozenset(arg.data_classes),
                )
                self.objects[key] = entry
            if entry is None:
                self._unpin_args(task)
                return unknown_object(object_id)
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

    def _result_residency(self, task: TaskEntry) -> Regions:
        """Its results' residency: the task's (narrowed by what it read), and for an actor's
        call also the actor's state."""
        residency = task.residency
        if task.spec.kind == pb.ACTOR_TASK:
            actor = self.actors.get((task.spec.tenant, task.spec.actor_id))
            if actor is not None:
                residency = intersect(residency, actor.residency)
        return residency

    def _store_results(self, task: TaskEntry, result: pb.TaskResult) -> None:
        tenant = task.spec.tenant
        expected = set(task.return_ids)
        residency = self._result_residency(task)
        wire_residency = encode_regions(residency)
        classes = task.classes
        if task.spec.kind == pb.ACTOR_TASK:
            actor = self.actors.get((tenant, task.spec.actor_id))
            if actor is not None:
                classes |= actor.classes
        wire_classes = sorted(classes)
        # Small results travel back inline to the node that sent the task, unless their
        # residency keeps them out of its region: then that node learns where they are.
        origin_region = self._region_of(task.origin_node) if task.origin_node else self.region
        keep_here = (residency is not None and origin_region not in residency) or (
            self._transfer_violation(tenant, residency, classes, task.origin_node or self.node_id)
            is not None
        )
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
                entry.error = error_info(
                    E.OBJECT_LOST, f"the task's result could not be stored: {e}"
                )
            self._contain(entry, value.contained_ids)
            entry.state = ObjState.READY
            entry.residency = residency
            entry.classes = classes
            location = pb.ObjectLocation(
                object_id=object_id,
                tenant=tenant,
                contained_ids=value.contained_ids,
                residency=wire_residency,
                data_classes=wire_classes,
            )
            if entry.inline is not None and keep_here:
                location.stored_size = len(entry.inline)  # held here: fetch it from us
            elif entry.inline is not None:
                location.inline_blob = entry.inline
            elif entry.error is not None:
                location.error.CopyFrom(entry.error)
            else:
                location.stored_size = entry.stored_size
            locations.append(location)
        self._finish(task, locations)

    def _send_checkpoint(self, task: TaskEntry, finished: pb.TaskFinished) -> None:
        """An actor call that came from another node: send the checkpoint taken after it
        along with its result, toward the node that created the actor, where the actor's
        state may go (its residency and data classes allow that node)."""
        spec = task.spec
        if spec.kind != pb.ACTOR_TASK:
            return
        actor = self.actors.get((spec.tenant, spec.actor_id))
        if actor is None or actor.checkpoint is None or actor.checkpoint_call != actor.calls_done:
            return  # no checkpoint came with this call
        origin = task.origin_node
        if actor.residency is not None and self._region_of(origin) not in actor.residency:
            return
        if self._transfer_violation(spec.tenant, actor.residency, actor.classes, origin):
            return
        finished.checkpoint = actor.checkpoint
        finished.checkpoint_call = actor.checkpoint_call

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
        observe.finished(task, locations, self.node_id)
        tenant = task.spec.tenant
        if self.recorder is not None:
            failed = next((loc.error.message for loc in locations if loc.HasField("error")), "")
            errored = failed or any(
                loc.inline_blob and peek_kind(loc.inline_blob) == KIND_ERROR for loc in locations
            )
            self.recorder.event(
                kind="task.finish",
                tenant=tenant,
                outcome="error" if errored else "ok",
                rules=("task.finish",),
                reasons=(failed,) if failed else (),
                task=task.task_id.hex(),
                actor=task.spec.actor_id.hex(),
                job=task.spec.job_id.hex(),
                policy=task.spec.policy_version,
                parent=task.audit_id,
            )
        self.tasks.pop((tenant, task.task_id), None)
        self._release_admission(task)
        self._unpin_args(task)
        if task.origin_node:
            finished = pb.TaskFinished(
                task_id=task.task_id, returns=locations, tenant=tenant, ran_on=self.node_id
            )
            self._send_checkpoint(task, finished)
            self.peers.send(task.origin_node, pb.PeerMessage(finished=finished))
        for location in locations:
            entry = self.objects.get((tenant, location.object_id))
            if entry is not None:
                self._object_ready(location.object_id, entry)
