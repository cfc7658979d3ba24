"""The node agent's object table: references, puts, subscriptions, pulls and frees."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fabric import _metrics
from fabric._agent.base import E, error_info, log, refusal, unknown_object
from fabric._agent.guard import Guard
from fabric._agent.state import (
    ObjEntry,
    ObjState,
    Session,
    TaskEntry,
)
from fabric._object_store import ObjectStoreError
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import (
    read_header,
)
from fabric.policy import Outcome
from fabric.policy._admission import Usage, decide_admission
from fabric.policy._model import Regions, ResidencyLabelError, encode_regions, intersect
from fabric.policy._residency import Destination, decide_transfer

if TYPE_CHECKING:
    from fabric._agent.lineage import Lineage


FETCH_RETRY = 0.1  # seconds before a failed fetch is tried again (its owner may rebuild it)
MAX_REDIRECTS = 2  # an owner names the holder, which has it: one hop is enough


class ObjectTable(Guard):
    if TYPE_CHECKING:
        # Defined by lineage.py.
        def _nodes_lost(self, gone: set[str]) -> None: ...
        def _rebuild(self, lineage: Lineage, lost_node: str) -> None: ...

    def _rebuildable(self, entry: ObjEntry) -> bool:
        """Whether `entry` is ours and its task may run again to make it."""
        return (
            not entry.remote_owner
            and entry.lineage is not None
            and (entry.lineage.rebuilds_left > 0)
        )

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

    def _session_residency(self, session: Session) -> Regions:
        """What a worker's session reads and makes inherits the residency of what it runs."""
        worker = session.worker
        if worker is None:
            return None
        if worker.actor_id:
            actor = self.actors.get((session.tenant, worker.actor_id))
            return actor.residency if actor is not None else None
        residency: Regions = None
        for task in worker.running.values():
            if isinstance(task, TaskEntry):
                residency = intersect(residency, task.residency)
        return residency

    def _session_classes(self, session: Session) -> frozenset[str]:
        """The data classes what a worker's session runs derives from."""
        worker = session.worker
        if worker is None:
            return frozenset()
        if worker.actor_id:
            actor = self.actors.get((session.tenant, worker.actor_id))
            return actor.classes if actor is not None else frozenset()
        classes: frozenset[str] = frozenset()
        for task in worker.running.values():
            if isinstance(task, TaskEntry):
                classes |= task.classes
        return classes

    def _taint(self, session: Session, residency: Regions, classes: frozenset[str]) -> None:
        """A worker read data of `residency` and `classes`: what it runs now derives from
        it."""
        worker = session.worker
        if worker is None or (residency is None and not classes):
            return
        if worker.actor_id:
            actor = self.actors.get((session.tenant, worker.actor_id))
            if actor is not None:
                actor.residency = intersect(actor.residency, residency)
                actor.classes |= classes
            return
        for task in worker.running.values():
            if isinstance(task, TaskEntry):
                task.residency = intersect(task.residency, residency)
                task.classes |= classes

    def _put(self, session: Session, put: pb.PutObject) -> pb.ErrorInfo | None:
        object_id = put.object_id
        if len(object_id) != 20 or (session.tenant, object_id) in self.objects:
            raise ObjectStoreError(f"invalid or duplicate object id {object_id.hex()}")
        entry = ObjEntry(tenant=session.tenant, state=ObjState.READY)
        problem = self._put_residency(session, object_id, entry, put.residency_label)
        if problem is None:  # the bytes arrive here: a transfer to this node
            problem = self._transfer_refusal(
                session.tenant, object_id, entry.residency, entry.classes, self.node_id
            )
        if problem is None and not self.policy.open:
            problem = self._put_quota(session, object_id, put)
        if problem is not None:
            # The get of this ref raises the refusal; nothing of the value is kept.
            if put.WhichOneof("value") == "sealed_size":
                self.store.delete(session.tenant, object_id)
            entry.error = problem
        elif put.WhichOneof("value") == "inline_blob":
            read_header(put.inline_blob)  # fail early on a malformed blob
            entry.inline = put.inline_blob
            _metrics.object_put(session.tenant, len(put.inline_blob))
        else:
            entry.stored_size = self.store.adopt(session.tenant, object_id, put.sealed_size)
            _metrics.object_put(session.tenant, entry.stored_size)
        entry.holders.add(session.session_id)
        session.held.add(object_id)
        self.objects[(session.tenant, object_id)] = entry
        self._contain(entry, put.contained_ids)
        self.on_load_change()
        return problem

    def _put_residency(
        self, session: Session, object_id: bytes, entry: ObjEntry, label: str
    ) -> pb.ErrorInfo | None:
        policy = self.policy
        tenant = policy.tenant(session.tenant)
        if tenant is None:
            return error_info(E.INVALID_REQUEST, f"{session.tenant!r} is not a tenant")
        try:
            # Inside a task, a put without a label derives from what the task read.
            residency = (
                self._session_residency(session)
                if session.worker is not None and not label
                else intersect(
                    policy.residency(tenant, label or None), self._session_residency(session)
                )
            )
        except ResidencyLabelError as e:
            return error_info(E.INVALID_REQUEST, str(e))
        entry.residency = residency
        entry.classes = self._session_classes(session)
        if label in tenant.data_classes:
            entry.classes |= {label}
        if entry.residency is None:
            return None
        decision = decide_transfer(
            policy,
            session.tenant,
            object_id,
            entry.residency,
            Destination.STORE,
            self.node_id,
            self.region,
        )
        self._record(
            decision, kind="store", tenant=session.tenant, objects=(object_id,), session=session
        )
        if decision.outcome is Outcome.REFUSE:
            return refusal(E.RESIDENCY_REFUSED, decision)
        return None

    def _put_quota(
        self, session: Session, object_id: bytes, put: pb.PutObject
    ) -> pb.ErrorInfo | None:
        size = len(put.inline_blob) if put.WhichOneof("value") == "inline_blob" else put.sealed_size
        usage = Usage(object_store=self.store.tenant_bytes(session.tenant))
        decision = decide_admission(self.policy, session.tenant, usage, object_bytes=size)
        if decision.outcome is Outcome.REFUSE:
            self._record(
                decision, kind="admit", tenant=session.tenant, objects=(object_id,), session=session
            )
            return refusal(E.QUOTA_EXCEEDED, decision)
        return None

    def _driver_refusal(
        self, session: Session, object_id: bytes, entry: ObjEntry
    ) -> pb.ErrorInfo | None:
        """Why a driver connected here may not read `entry`, or None when it may."""
        if entry.residency is None or (self.region in entry.residency and entry.local):
            return None
        decision = decide_transfer(
            self.policy,
            session.tenant,
            object_id,
            entry.residency,
            Destination.DRIVER,
            self.node_id,
            self.region,
        )
        self._record(
            decision, kind="deliver", tenant=session.tenant, objects=(object_id,), session=session
        )
        if decision.outcome is Outcome.REFUSE:
            return refusal(E.RESIDENCY_REFUSED, decision)
        return None

    def _may_hold(self, entry: ObjEntry) -> bool:
        return entry.residency is None or self.region in entry.residency

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
                    ready=pb.ObjectReady(object_id=object_id, error=unknown_object(object_id))
                )
            )
            return
        entry.holders.add(session.session_id)
        session.held.add(object_id)
        if entry.local or (entry.state is ObjState.READY and not self._may_hold(entry)):
            if entry.local:
                _metrics.object_hit(entry.tenant)
            self._push(session, object_id, entry)
        else:
            entry.subscribers.add(session.session_id)
            self._ensure_fetch(object_id, entry)

    def _push(self, session: Session, object_id: bytes, entry: ObjEntry) -> None:
        ready = pb.ObjectReady(object_id=object_id)
        refused = None
        if entry.error is None:
            if session.worker is None:
                refused = self._driver_refusal(session, object_id, entry)
            else:
                self._taint(session, entry.residency, entry.classes)
        if entry.error is not None:
            ready.error.CopyFrom(entry.error)
        elif refused is not None:
            ready.error.CopyFrom(refused)
        elif not entry.local:
            return  # not here, and not refused: the fetch under way pushes it
        elif entry.inline is not None:
            ready.inline_blob = entry.inline
        else:
            ready.stored_size = entry.stored_size
        session.send(pb.ServerMessage(ready=ready))

    def _fetch_inline(self, session: Session, request_id: int, object_id: bytes) -> None:
        entry = self._owned_entry(session, object_id)
        if entry is None or not entry.local:
            self._reply(session, request_id, pb.Reply(error=unknown_object(object_id)))
            return
        error = entry.error
        if error is None and session.worker is None:
            error = self._driver_refusal(session, object_id, entry)
        if error is not None:
            self._reply(session, request_id, pb.Reply(error=error))
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
        if entry.lost_with and entry.lineage is not None:
            self._rebuild(entry.lineage, entry.lost_with)  # lost, and needed now
            return
        if entry.local or entry.fetching or not entry.location or entry.location == self.node_id:
            return
        if not self._may_hold(entry):
            return  # its residency keeps it out of this node: it stays where it is
        if entry.state is ObjState.PENDING and not entry.location:
            return
        entry.fetching = True
        key = (entry.tenant, object_id)
        pull = asyncio.get_running_loop().create_task(self._fetch(object_id, entry))
        self.fetches[key] = pull
        pull.add_done_callback(
            lambda _: self.fetches.pop(key, None) if self.fetches.get(key) is pull else None
        )

    def _stop_fetch(self, object_id: bytes, entry: ObjEntry) -> None:
        """Give up a pull of `entry` under way: its object is made here, or again, now."""
        pull = self.fetches.pop((entry.tenant, object_id), None)
        if pull is not None:
            pull.cancel()
        entry.fetching = False

    async def _fetch(self, object_id: bytes, entry: ObjEntry) -> None:
        source = entry.location
        try:
            location = await self.peers.fetch(source, entry.tenant, object_id)
            for _ in range(MAX_REDIRECTS):
                if not location.moved_to or entry.location != source:
                    break
                # The owner may not hold it: ask the node that does.
                source = entry.location = location.moved_to
                location = await self.peers.fetch(source, entry.tenant, object_id)
        except Exception as e:
            if entry.location != source:
                return  # lost with its node meanwhile, and being rebuilt
            if self._rebuildable(entry):
                # Ours, and we can make it again: once the head declares the node lost it is
                # rebuilt; until then (a slow or cut link) the fetch is tried again.
                log.warning("fetching %s from %s failed: %s", object_id.hex(), source, e)
                entry.fetching = False
                if source in self.nodes:
                    asyncio.get_running_loop().call_later(
                        FETCH_RETRY, self._ensure_fetch, object_id, entry
                    )
                else:
                    self._nodes_lost({source})
                return
            log.warning("fetching %s from %s failed: %s", object_id.hex(), source, e)
            owner = entry.remote_owner
            if owner and source != owner and owner in self.nodes:
                # Its owner sent us to a node that is gone: ask the owner again, who makes
                # it again once it learns of the loss.
                entry.location, entry.fetching = owner, False
                asyncio.get_running_loop().call_later(
                    FETCH_RETRY, self._ensure_fetch, object_id, entry
                )
                return
            location = None
            failure = str(e)
        if entry.location != source:
            return  # lost with its node meanwhile, and being rebuilt
        if (
            location is not None
            and location.error.kind in (E.UNKNOWN_OBJECT, E.OBJECT_LOST)
            and entry.lineage is not None
            and self._rebuildable(entry)
        ):
            # The node that had it (or passed it on) has it no more: make it again.
            entry.fetching = False
            self._rebuild(entry.lineage, source)
            return
        if location is not None:
            self._fill(entry, object_id, location)
            if not location.HasField("error"):
                size = location.stored_size or len(location.inline_blob)
                _metrics.object_fetched(entry.tenant, size)
        else:
            entry.error = error_info(
                E.OBJECT_LOST,
                f"could not fetch ObjectRef({object_id.hex()}) from node {source}: {failure}",
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
        entry.classes |= frozenset(location.data_classes)

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
        lineage = entry.lineage
        if lineage is not None:
            # With the last result of a task its lineage goes, and the arguments it kept.
            lineage.alive -= 1
            if lineage.alive == 0:
                pinned, lineage.pinned = lineage.pinned, []
                for arg_id in pinned:
                    arg = self.objects.get((entry.tenant, arg_id))
                    if arg is not None:
                        arg.pins -= 1
                        self._maybe_free(arg_id, arg)
        for inner_id in entry.contained:
            inner = self.objects.get((entry.tenant, inner_id))
            if inner is not None:
                inner.pins -= 1
                self._maybe_free(inner_id, inner)

    async def _until_ready(self, object_id: bytes, entry: ObjEntry) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ready() -> None:
            if not done.done():
                done.set_result(None)

        entry.waiters.append(ready)
        self._ensure_fetch(object_id, entry)
        await done

    async def serve_fetch(self, tenant: str, object_id: bytes, requester: str) -> pb.ObjectLocation:
        """Another node wants an object we own or hold: wait until it is ready here."""
        entry = self.objects.get((tenant, object_id))
        if entry is None:
            return pb.ObjectLocation(
                object_id=object_id, tenant=tenant, error=unknown_object(object_id)
            )
        while not entry.local:
            if entry.state is ObjState.READY and entry.location and not self._may_hold(entry):
                # Ours, but not ours to hold: the node that has it decides for itself.
                return pb.ObjectLocation(
                    object_id=object_id, tenant=tenant, moved_to=entry.location
                )
            await self._until_ready(object_id, entry)
            entry = self.objects.get((tenant, object_id)) or entry
        location = pb.ObjectLocation(
            object_id=object_id,
            tenant=tenant,
            residency=encode_regions(entry.residency),
            data_classes=sorted(entry.classes),
        )
        if entry.residency is not None and entry.error is None:
            decision = decide_transfer(
                self.policy,
                tenant,
                object_id,
                entry.residency,
                Destination.NODE,
                requester,
                self._region_of(requester),
            )
            self._record(decision, kind="transfer", tenant=tenant, objects=(object_id,))
            if decision.outcome is Outcome.REFUSE:
                location.error.CopyFrom(refusal(E.RESIDENCY_REFUSED, decision))
                return location
        if entry.error is None:
            refused = self._transfer_refusal(
                tenant, object_id, entry.residency, entry.classes, requester
            )
            if refused is not None:
                location.error.CopyFrom(refused)
                return location
        entry.copies.add(requester)
        if entry.error is not None:
            location.error.CopyFrom(entry.error)
        elif entry.inline is not None:
            location.inline_blob = entry.inline
        else:
            location.stored_size = entry.stored_size
        return location
