"""The client side of a session with a node agent, shared by drivers and workers.

A driver reaches its agent over a mutual-TLS gRPC stream, a worker over the private local
channel its agent created; both speak the same `ClientMessage` / `ServerMessage` protocol, so
this module is transport-agnostic: a transport delivers `ServerMessage`s to
:meth:`CoreClient.deliver` from its receiving thread and sends `ClientMessage`s in order.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fabric import _tracing
from fabric import exceptions as exc
from fabric._budget_wire import from_wire
from fabric._object_store import StoreDirectory
from fabric._proto import fabric_pb2 as pb
from fabric._refs import ObjectRef
from fabric._serialization import (
    INLINE_THRESHOLD,
    ErrorPayload,
    Serialized,
    deserialize,
    serialize,
)

_ERRORS: dict[int, type[exc.FabricError]] = {
    pb.ErrorInfo.WORKER_CRASHED: exc.WorkerCrashedError,
    pb.ErrorInfo.ACTOR_DIED: exc.ActorDiedError,
    pb.ErrorInfo.TASK_CANCELLED: exc.TaskCancelledError,
    pb.ErrorInfo.OBJECT_FREED: exc.ObjectFreedError,
    pb.ErrorInfo.OBJECT_LOST: exc.ObjectLostError,
    pb.ErrorInfo.UNKNOWN_OBJECT: exc.UnknownObjectError,
    pb.ErrorInfo.PLACEMENT_REFUSED: exc.PlacementRefusedError,
    pb.ErrorInfo.ACTOR_UNAVAILABLE: exc.ActorUnavailableError,
    pb.ErrorInfo.ACTOR_NOT_FOUND: exc.ActorNotFoundError,
    pb.ErrorInfo.INVALID_REQUEST: exc.InvalidRequestError,
    pb.ErrorInfo.RESIDENCY_REFUSED: exc.ResidencyError,
    pb.ErrorInfo.QUOTA_EXCEEDED: exc.QuotaExceededError,
}
_BUDGET_ERRORS: dict[int, type[exc.BudgetExceededError]] = {
    pb.ErrorInfo.BUDGET_EXCEEDED: exc.BudgetExceededError,
    pb.ErrorInfo.BUDGET_REFUSED: exc.BudgetExceededError,
    pb.ErrorInfo.ACTOR_DIED: exc.ActorBudgetExceededError,
}


def error_from_info(info: pb.ErrorInfo) -> exc.FabricError:
    """The typed error an `ErrorInfo` from the fabric stands for."""
    if info.kind == pb.ErrorInfo.INVARIANT_VIOLATED:
        return exc.InvariantViolationError(info.message, info.invariant)
    if info.HasField("budget") and info.kind in _BUDGET_ERRORS:
        b = info.budget
        return _BUDGET_ERRORS[info.kind](info.message, b.budget, b.limit, b.measured)
    return _ERRORS.get(info.kind, exc.RaySystemError)(info.message)


class Transport(Protocol):
    def send(self, message: pb.ClientMessage) -> None:
        """Queue `message`; messages leave in the order they were sent. Thread-safe."""

    def close(self) -> None: ...


class _Object:
    """This process's view of one object it holds a reference to."""

    __slots__ = ("error", "events", "inline", "ready", "stored_size", "subscribed")

    def __init__(self, subscribed: bool) -> None:
        self.ready = False
        self.subscribed = subscribed
        # Whoever waits for it (a get, a wait): all are woken when it becomes ready.
        self.events: list[threading.Event] = []
        self.inline: bytes | None = None
        self.stored_size = 0
        self.error: pb.ErrorInfo | None = None


@dataclass
class _Pending:
    event: threading.Event
    reply: pb.Reply | None = None


class CoreClient:
    """Object references, gets, puts, waits and requests over one session."""

    def __init__(self, transport: Transport, welcome: pb.Welcome, *, is_worker: bool) -> None:
        self.transport = transport
        self.node_id = welcome.node_id
        self.tenant = welcome.tenant
        self.job_id = welcome.job_id
        self.namespace = welcome.namespace
        self.region = welcome.region
        # Why the agent refuses puts under the tenant's default residency, if it does.
        self.policy_version = welcome.policy_version
        self.acknowledge_puts_from = welcome.acknowledge_puts_from
        # The most one task or actor may ask for (the agent checks again at admission).
        self.task_budget_limit = from_wire(welcome.task_budget_limit)
        self.actor_budget_limit = from_wire(welcome.actor_budget_limit)
        self.is_worker = is_worker
        self.store: StoreDirectory | None = None
        if welcome.store_path and _shares_host(Path(welcome.store_path), welcome.node_id):
            self.store = StoreDirectory(Path(welcome.store_path))
        self._lock = threading.RLock()
        self._counts: dict[bytes, int] = {}
        self._objects: dict[bytes, _Object] = {}
        self._requests: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._sent_digests: set[bytes] = set()
        self.closed_reason: str | None = None
        # Set on workers while they run a task: nested submits name it as their parent.
        self.current_task_id: bytes = b""
        self.current_actor_id: bytes = b""
        # Workers: called as a task blocks in get (True) and resumes (False); returns the
        # ids of queued tasks handed back to the agent.
        self.on_blocked: Callable[[bool], list[bytes]] | None = None

    # -- references -------------------------------------------------------------------

    def ref_created(self, object_id: bytes, *, borrowed: bool) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0)
            self._counts[object_id] = count + 1
            if count:
                return
            if object_id not in self._objects:
                self._objects[object_id] = _Object(subscribed=not borrowed)
        if borrowed:
            self.transport.send(pb.ClientMessage(refs=pb.RefUpdate(add=[object_id])))

    def ref_dropped(self, object_id: bytes) -> None:
        with self._lock:
            count = self._counts.get(object_id, 0) - 1
            if count > 0:
                self._counts[object_id] = count
                return
            self._counts.pop(object_id, None)
            self._objects.pop(object_id, None)
        if self.closed_reason is None:
            self.transport.send(pb.ClientMessage(refs=pb.RefUpdate(release=[object_id])))

    def owned_ref(self, object_id: bytes, owner_node: str = "") -> ObjectRef:
        return ObjectRef(object_id, owner_node or self.node_id, _borrowed=False)

    # -- messages from the agent ------------------------------------------------------------

    def deliver(self, message: pb.ServerMessage) -> None:
        """Called by the transport's receiving thread for every message from the agent."""
        which = message.WhichOneof("body")
        if which == "ready":
            ready = message.ready
            with self._lock:
                obj = self._objects.get(ready.object_id)
                if obj is None:
                    return  # released meanwhile
                value = ready.WhichOneof("value")
                if value == "inline_blob":
                    obj.inline = ready.inline_blob
                elif value == "stored_size":
                    obj.stored_size = ready.stored_size
                else:
                    obj.error = ready.error
                obj.ready = True
                events, obj.events = obj.events, []
            for event in events:
                event.set()
        elif which == "reply":
            pending = self._requests.pop(message.request_id, None)
            if pending is not None:
                pending.reply = message.reply
                pending.event.set()

    def connection_lost(self, reason: str) -> None:
        """The session ended: wake every waiter with the reason."""
        self.closed_reason = reason
        with self._lock:
            events = [e for o in self._objects.values() for e in o.events]
            pending = list(self._requests.values())
            self._requests.clear()
        for event in events:
            event.set()
        for p in pending:
            p.event.set()

    # -- requests ---------------------------------------------------------------------------

    def request(self, message: pb.ClientMessage, timeout: float | None = None) -> pb.Reply:
        """Send `message` and wait for the agent's reply."""
        request_id = next(self._request_ids)
        message.request_id = request_id
        pending = _Pending(threading.Event())
        self._requests[request_id] = pending
        self._check_open()
        self.transport.send(message)
        if not pending.event.wait(timeout):
            self._requests.pop(request_id, None)
            raise exc.GetTimeoutError(f"no reply from the node agent within {timeout} s")
        if pending.reply is None:
            self._check_open()
            raise exc.RaySystemError("the request was dropped")
        if pending.reply.HasField("error"):
            raise error_from_info(pending.reply.error)
        return pending.reply

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise exc.ConnectionLostError(
                f"connection to the node agent lost: {self.closed_reason}"
            )

    # -- submit and put ---------------------------------------------------------------------

    def submit(
        self, spec: pb.TaskSpec, function_blob: Callable[[], bytes] | None, *, wait: bool = False
    ) -> None:
        """Send a task. The function body travels once per session, then by digest only.
        With `wait`, block until the agent accepted it (its error raises here)."""
        if function_blob is not None and spec.function_digest not in self._sent_digests:
            spec.function_blob = function_blob()
            self._sent_digests.add(spec.function_digest)
        spec.parent_task_id = self.current_task_id
        if _tracing.ON:
            _tracing.submitted(spec, self.tenant, self.node_id, in_worker=self.is_worker)
        if wait:
            self.request(pb.ClientMessage(submit=spec), timeout=60)
        else:
            self._check_open()
            self.transport.send(pb.ClientMessage(submit=spec))
        # Arguments this call put into the store itself: the agent pinned them for the
        # task when it took the submit, so this process lets go of them now.
        auto_put = [
            arg.object_id
            for arg in spec.args
            if arg.WhichOneof("value") == "object_id" and arg.object_id not in self._counts
        ]
        if auto_put:
            with self._lock:
                for object_id in auto_put:
                    self._objects.pop(object_id, None)
            self.transport.send(pb.ClientMessage(refs=pb.RefUpdate(release=auto_put)))

    def encode_arg(self, value: Any, describe: Callable[[], str]) -> pb.Arg:
        """A top-level argument: refs by id, small values inline, large ones put first."""
        if isinstance(value, ObjectRef):
            return pb.Arg(object_id=value.binary(), owner_node=value._owner_node)
        serialized = self.serialize_arg(value, describe)
        if serialized.total_size <= INLINE_THRESHOLD:
            return pb.Arg(inline_blob=serialized.to_bytes())
        object_id = os.urandom(16) + b"\0\0\0\0"
        self._put_serialized(object_id, serialized)
        return pb.Arg(object_id=object_id, owner_node=self.node_id)

    @staticmethod
    def serialize_arg(value: Any, describe: Callable[[], str]) -> Serialized:
        try:
            return serialize(value)
        except exc.FabricError as e:
            raise TypeError(f"could not serialize {describe()}: {e}") from e
        except Exception as e:
            raise TypeError(f"could not serialize {describe()}: {type(e).__name__}: {e}") from e

    def put(self, value: Any, residency: str | None = None) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself")
        if residency is not None and (not isinstance(residency, str) or not residency):
            raise ValueError(f"residency must be a non-empty string, got {residency!r}")
        serialized = self.serialize_arg(
            value, lambda: f"the value passed to put() ({type(value).__name__})"
        )
        object_id = os.urandom(16) + b"\0\0\0\0"
        ref = self.owned_ref(object_id)
        self._put_serialized(object_id, serialized, residency or "")
        return ref

    def _put_serialized(
        self, object_id: bytes, serialized: Serialized, residency: str = ""
    ) -> None:
        self._check_open()
        contained = list(serialized.contained_refs)
        if serialized.total_size > INLINE_THRESHOLD and self.store is not None:
            size = self.store.put(object_id, serialized)
            message = pb.PutObject(object_id=object_id, sealed_size=size, contained_ids=contained)
            stored = True
        else:
            blob = serialized.to_bytes()
            message = pb.PutObject(object_id=object_id, inline_blob=blob, contained_ids=contained)
            stored = False
        message.residency_label = residency
        with self._lock:
            obj = self._objects.get(object_id)
            if obj is None:
                obj = self._objects[object_id] = _Object(subscribed=True)
            if stored:
                obj.stored_size = message.sealed_size
            else:
                obj.inline = message.inline_blob
            obj.ready = True
        wait_from = self.acknowledge_puts_from
        if not residency and not (wait_from and serialized.total_size >= wait_from):
            self.transport.send(pb.ClientMessage(put=message))
            return
        # A residency or a quota the agent may refuse: wait for its answer, so that put()
        # raises.
        try:
            self.request(pb.ClientMessage(put=message), timeout=60)
        except exc.FabricError:
            with self._lock:
                self._objects.pop(object_id, None)
            raise

    # -- get and wait ------------------------------------------------------------------------

    def _subscribe_missing(self, ids: Sequence[bytes]) -> list[bytes]:
        """Subscribe to the not-yet-ready objects among `ids`; returns the not-ready ones."""
        missing: list[bytes] = []
        subscribe: list[bytes] = []
        with self._lock:
            for object_id in ids:
                obj = self._objects.get(object_id)
                if obj is None:
                    # A ref this process no longer counts (e.g. passed in by id only).
                    obj = self._objects[object_id] = _Object(subscribed=False)
                if obj.ready:
                    continue
                missing.append(object_id)
                if not obj.subscribed:
                    obj.subscribed = True
                    subscribe.append(object_id)
        if subscribe:
            self._check_open()
            self.transport.send(pb.ClientMessage(subscribe=pb.Subscribe(object_ids=subscribe)))
        return missing

    def _wait_ready(self, object_id: bytes, deadline: float | None) -> bool:
        with self._lock:
            obj = self._objects.get(object_id)
            if obj is None or obj.ready:
                return True
            event = threading.Event()
            obj.events.append(event)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return obj.ready
            if event.wait(remaining if remaining is not None else 1.0):
                self._check_open()
                return True
            self._check_open()

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        ids = [r.binary() for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        missing = self._subscribe_missing(ids)
        if missing:
            self._set_blocked(True)
            try:
                for object_id in missing:
                    if not self._wait_ready(object_id, deadline):
                        raise exc.GetTimeoutError(
                            f"get timed out after {timeout} s waiting for "
                            f"ObjectRef({object_id.hex()})"
                        )
            finally:
                self._set_blocked(False)
        return [self._value(object_id) for object_id in ids]

    def _set_blocked(self, blocked: bool) -> None:
        if self.is_worker and self.current_task_id and self.closed_reason is None:
            message = pb.Blocked(blocked=blocked)
            if self.on_blocked is not None:
                message.returned.extend(self.on_blocked(blocked))
            self.transport.send(pb.ClientMessage(blocked=message))

    def _value(self, object_id: bytes) -> Any:
        with self._lock:
            obj = self._objects.get(object_id)
        if obj is None:
            raise exc.UnknownObjectError(
                f"ObjectRef({object_id.hex()}) is not held by this process"
            )
        if obj.error is not None:
            raise error_from_info(obj.error)
        if obj.inline is not None:
            value = deserialize(obj.inline)
        elif self.store is not None:
            value = self.store.get(object_id)
        else:
            reply = self.request(pb.ClientMessage(fetch=pb.FetchInline(object_id=object_id)))
            value = deserialize(reply.inline_blob)
        if isinstance(value, ErrorPayload):
            raise _task_error(value)
        return value

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._subscribe_missing([r.binary() for r in refs])
        event = threading.Event()
        while True:
            with self._lock:
                ready_ids = {
                    r.binary()
                    for r in refs
                    if (o := self._objects.get(r.binary())) is None or o.ready
                }
                if len(ready_ids) < num_returns:
                    # One shared event: any arrival re-checks the set.
                    for r in refs:
                        o = self._objects.get(r.binary())
                        if o is not None and not o.ready and event not in o.events:
                            o.events.append(event)
            if len(ready_ids) >= num_returns:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            event.wait(remaining)
            event.clear()
            self._check_open()
        ready: list[ObjectRef] = []
        rest: list[ObjectRef] = []
        for r in refs:
            (ready if r.binary() in ready_ids and len(ready) < num_returns else rest).append(r)
        return ready, rest


def _task_error(payload: ErrorPayload) -> BaseException:
    error = payload.exc
    if isinstance(error, exc.TaskError):
        return error
    return exc.TaskError("task", payload.traceback_text, error).as_instanceof_cause()


def _shares_host(store_path: Path, node_id: str) -> bool:
    """True when this process can use the agent's store directory directly (same host)."""
    marker = store_path.parent / f".node-{node_id}"
    return store_path.is_dir() and marker.exists() and os.access(store_path, os.W_OK)
