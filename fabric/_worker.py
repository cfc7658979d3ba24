"""`python -m fabric._worker`: a worker process, serving exactly one tenant.

Spawned by a node agent with one end of a private socket pair; everything it learns and
says goes over that socket. It is the only place where tenant payloads are unpickled.
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import inspect
import os
import queue
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fabric import _state, _tracing
from fabric._agent.rlimits import apply_rlimits_from_env
from fabric._agent.state import MAX_CHECKPOINT_BYTES
from fabric._client import CoreClient
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import (
    INLINE_THRESHOLD,
    deserialize,
    loads_function,
    serialize,
    serialize_error,
)
from fabric.exceptions import FabricError, TaskCancelledError, TaskError

_LEN = struct.Struct("<I")
_MAX_CHECKPOINT_ERROR = 500  # characters of a failed checkpoint's reason sent to the agent


class _RestoreFailed(Exception):
    """A restarted actor's `restore()` raised, or its checkpoint could not be read."""

    def __init__(self, class_name: str, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.function_name = f"{class_name}.restore"
        self.cause = cause
        self.traceback_text = "".join(traceback.format_exception(cause))


def _checkpointed(cls: type) -> bool:
    """Whether the actors of `cls` are checkpointed: it defines `checkpoint` and `restore`."""
    return callable(getattr(cls, "checkpoint", None)) and callable(getattr(cls, "restore", None))


class LocalChannel:
    """Frames over the socket the agent handed us. Sends may come from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.reader = sock.makefile("rb", buffering=1 << 16)

    def send_from_worker(self, message: pb.FromWorker) -> None:
        data = message.SerializeToString()
        with self.lock:
            self.sock.sendall(_LEN.pack(len(data)) + data)

    def send(self, message: pb.ClientMessage) -> None:
        self.send_from_worker(pb.FromWorker(client=message))

    def recv(self) -> pb.ToWorker | None:
        header = self.reader.read(4)
        if len(header) < 4:
            return None
        (length,) = _LEN.unpack(header)
        data = self.reader.read(length)
        if len(data) < length:
            return None
        message = pb.ToWorker()
        message.ParseFromString(data)
        return message

    def close(self) -> None:
        self.sock.close()


class Worker:
    def __init__(self, channel: LocalChannel, client: CoreClient) -> None:
        self.channel = channel
        self.client = client
        self.functions: dict[bytes, Any] = {}
        self.blobs: dict[bytes, bytes] = {}  # function bodies by digest, as received
        self.tasks: queue.SimpleQueue[pb.ExecuteTask | None] = queue.SimpleQueue()
        self.actor: Any = None
        self.checkpointed = False  # the actor's class has `checkpoint` and `restore`
        # Held while a call's checkpoint is taken and sent with its result: the agent then
        # receives checkpoints in the order they were taken, even from concurrent calls.
        self.checkpoint_lock = threading.Lock()
        self.main_task_id = b""  # the task running on the main thread, for cancellation
        self.cancelled: set[bytes] = set()
        self.pool: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.semaphore: asyncio.Semaphore | None = None
        self.async_futures: dict[bytes, Future[Any]] = {}
        self.blocked = False  # the main thread's task waits in get

    # -- the receiving thread ------------------------------------------------------------

    def receive_forever(self) -> None:
        try:
            while True:
                message = self.channel.recv()
                if message is None:
                    break
                which = message.WhichOneof("body")
                if which == "server":
                    self.client.deliver(message.server)
                elif which == "execute":
                    execute = message.execute
                    if execute.spec.function_blob:
                        # The agent sends a body once per worker; keep it even for a task
                        # handed back unrun, since later ones come by digest only.
                        self.blobs[execute.spec.function_digest] = execute.spec.function_blob
                    if self.blocked and execute.spec.kind == pb.NORMAL_TASK:
                        self._hand_back([execute.spec.task_id])
                    else:
                        self.tasks.put(execute)
                elif which == "cancel":
                    self._cancel(message.cancel.task_id)
                elif which == "reclaim":
                    self._hand_back(self._drain_queued())
        finally:
            # The agent is gone: nothing of ours can be delivered any more.
            _tracing.flush()  # os._exit skips what would flush spans at exit
            os._exit(0)

    def on_blocked(self, blocked: bool) -> list[bytes]:
        """The running task blocks in get: hand queued tasks back to the agent, since they
        might be what it waits for."""
        self.blocked = blocked
        return self._drain_queued() if blocked else []

    def _drain_queued(self) -> list[bytes]:
        """Take the normal tasks that wait in our queue out of it; returns their ids."""
        returned: list[bytes] = []
        keep: list[pb.ExecuteTask | None] = []
        while True:
            try:
                item = self.tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None and item.spec.kind == pb.NORMAL_TASK:
                returned.append(item.spec.task_id)
            else:
                keep.append(item)
        for item in keep:
            self.tasks.put(item)
        return returned

    def _hand_back(self, task_ids: list[bytes]) -> None:
        message = pb.Blocked(blocked=self.blocked, returned=task_ids)
        self.channel.send(pb.ClientMessage(blocked=message))

    def _cancel(self, task_id: bytes) -> None:
        self.cancelled.add(task_id)
        future = self.async_futures.get(task_id)
        if future is not None:
            future.cancel()
        elif self.main_task_id == task_id:
            _thread.interrupt_main()

    # -- executing -----------------------------------------------------------------------

    def run_forever(self) -> None:
        while True:
            execute = self.tasks.get()
            if execute is None:
                return
            spec = execute.spec
            if spec.task_id in self.cancelled:
                self._send_error(
                    spec, TaskCancelledError("the task was cancelled before it ran"), ""
                )
                continue
            if spec.kind == pb.ACTOR_TASK and (self.pool is not None or self.loop is not None):
                self._run_concurrent(execute)
            else:
                self._run(execute)

    def _load(self, spec: pb.TaskSpec) -> Any:
        fn = self.functions.get(spec.function_digest)
        if fn is None:
            fn = loads_function(self.blobs[spec.function_digest])
            self.functions[spec.function_digest] = fn
        return fn

    def _resolve(self, execute: pb.ExecuteTask) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        store = self.client.store
        for arg in execute.args:
            if arg.WhichOneof("value") == "inline_blob":
                value = deserialize(arg.inline_blob)
            else:
                assert store is not None
                value = store.get(arg.stored_id)
            if arg.keyword:
                kwargs[arg.keyword] = value
            else:
                args.append(value)
        return args, kwargs

    def _call(self, execute: pb.ExecuteTask) -> Any:
        spec = execute.spec
        args, kwargs = self._resolve(execute)
        if spec.kind == pb.NORMAL_TASK:
            return self._load(spec)(*args, **kwargs)
        if spec.kind == pb.ACTOR_CREATION:
            cls = self._load(spec)
            self.client.current_actor_id = spec.actor_id
            self.actor = cls(*args, **kwargs)
            self.checkpointed = _checkpointed(cls)
            if execute.HasField("restore_state"):
                try:
                    self.actor.restore(deserialize(execute.restore_state))
                except Exception as e:
                    raise _RestoreFailed(cls.__qualname__, e) from e
            self._setup_concurrency(cls, spec.actor_options.max_concurrency)
            return None
        method = getattr(self.actor, spec.method_name)
        return method(*args, **kwargs)

    def _call_traced(self, execute: pb.ExecuteTask) -> Any:
        """`_call` inside the task's ``fabric.execute`` span (while tracing is on)."""
        return _tracing.traced_call(execute.spec, self._call, execute)

    def _setup_concurrency(self, cls: type, max_concurrency: int) -> None:
        is_async = any(
            inspect.iscoroutinefunction(m) for _, m in inspect.getmembers(cls, inspect.isfunction)
        )
        if is_async:
            loop = asyncio.new_event_loop()
            self.loop = loop
            limit = max_concurrency or 1000
            threading.Thread(target=loop.run_forever, name="actor-loop", daemon=True).start()

            async def make_semaphore() -> asyncio.Semaphore:
                return asyncio.Semaphore(limit)

            self.semaphore = asyncio.run_coroutine_threadsafe(make_semaphore(), loop).result()
        elif max_concurrency > 1:
            self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="actor")

    def _run(self, execute: pb.ExecuteTask) -> None:
        spec = execute.spec
        self.client.current_task_id = spec.task_id
        self.main_task_id = spec.task_id
        try:
            try:
                result = self._call_traced(execute) if _tracing.ON else self._call(execute)
            finally:
                self.main_task_id = b""
            self._send_result(spec, result)
        except KeyboardInterrupt:
            self._send_error(spec, TaskCancelledError("the task was cancelled"), "")
        except BaseException as e:
            self._send_error(spec, e, traceback.format_exc())
        finally:
            self.client.current_task_id = b""

    def _run_concurrent(self, execute: pb.ExecuteTask) -> None:
        spec = execute.spec
        method = getattr(self.actor, spec.method_name, None)
        if self.loop is not None:
            assert self.semaphore is not None
            semaphore = self.semaphore

            async def call() -> Any:
                async with semaphore:
                    with _tracing.executing(spec):
                        args, kwargs = self._resolve(execute)
                        assert method is not None
                        result = method(*args, **kwargs)
                        if inspect.isawaitable(result):
                            result = await result
                        return result

            future = asyncio.run_coroutine_threadsafe(call(), self.loop)
            self.async_futures[spec.task_id] = future
            future.add_done_callback(lambda f: self._finish_future(spec, f))
        else:
            assert self.pool is not None
            future2 = self.pool.submit(self._call_traced if _tracing.ON else self._call, execute)
            future2.add_done_callback(lambda f: self._finish_future(spec, f))

    def _finish_future(self, spec: pb.TaskSpec, future: Future[Any]) -> None:
        self.async_futures.pop(spec.task_id, None)
        if future.cancelled():
            self._send_error(spec, TaskCancelledError("the task was cancelled"), "")
            return
        error = future.exception()
        if error is not None:
            tb = "".join(traceback.format_exception(error))
            self._send_error(spec, error, tb)
        else:
            try:
                self._send_result(spec, future.result())
            except BaseException as e:
                self._send_error(spec, e, traceback.format_exc())

    # -- results -------------------------------------------------------------------------

    def _send_result(self, spec: pb.TaskSpec, result: Any) -> None:
        n = spec.num_returns
        if spec.kind == pb.ACTOR_CREATION:
            values: list[Any] = [None] * n
        elif n == 1:
            values = [result]
        elif n == 0:
            values = []
        else:
            values = list(result)
            if len(values) != n:
                raise ValueError(
                    f"{spec.function_name} was declared with num_returns={n} "
                    f"but returned {len(values)} values"
                )
        message = pb.TaskResult(task_id=spec.task_id)
        for index, value in enumerate(values):
            message.returns.append(self._encode_return(spec.task_id, index, value))
        if spec.kind == pb.ACTOR_TASK and self.checkpointed:
            with self.checkpoint_lock:
                self._checkpoint_into(message)
                self.channel.send_from_worker(pb.FromWorker(result=message))
            return
        self.channel.send_from_worker(pb.FromWorker(result=message))

    def _checkpoint_into(self, message: pb.TaskResult) -> None:
        """Attach the actor's checkpoint to a call's result, or why there is none (the call
        still returns its result; the agent keeps the previous checkpoint)."""
        try:
            serialized = serialize(self.actor.checkpoint())
        except Exception as e:
            problem = f"checkpoint() failed: {type(e).__name__}: {e}"
        else:
            size = serialized.total_size
            if serialized.contained_refs:
                # Nothing would keep the objects alive for a restart to read.
                problem = "the checkpoint holds object refs, which a checkpoint cannot keep"
            elif size > MAX_CHECKPOINT_BYTES:
                problem = (
                    f"the checkpoint of {size} bytes is over the limit of "
                    f"{MAX_CHECKPOINT_BYTES} bytes"
                )
            else:
                message.checkpoint = serialized.to_bytes()
                return
        message.checkpoint_error = problem[:_MAX_CHECKPOINT_ERROR]

    def _encode_return(self, task_id: bytes, index: int, value: Any) -> pb.ReturnValue:
        object_id = task_id + (index + 1).to_bytes(4, "big")
        serialized = serialize(value)
        out = pb.ReturnValue(object_id=object_id, contained_ids=serialized.contained_refs)
        store = self.client.store
        if serialized.total_size <= INLINE_THRESHOLD or store is None:
            out.inline_blob = serialized.to_bytes()
        else:
            out.stored_size = store.put(object_id, serialized)
        return out

    def _send_error(self, spec: pb.TaskSpec, error: BaseException, tb: str) -> None:
        name = spec.function_name or spec.method_name
        message = pb.TaskResult(task_id=spec.task_id, is_error=True)
        if isinstance(error, _RestoreFailed):
            # The agent names restore() in the actor's death, not its constructor.
            message.checkpoint_error = f"restore() raised {error}"[:_MAX_CHECKPOINT_ERROR]
            name, tb = error.function_name, error.traceback_text
            error = error.cause
        wrapped: BaseException = error
        if not isinstance(error, TaskCancelledError):
            wrapped = TaskError(name, tb, error).as_instanceof_cause()
        blob = serialize_error(wrapped, tb).to_bytes()
        for index in range(max(spec.num_returns, 1)):
            object_id = spec.task_id + (index + 1).to_bytes(4, "big")
            message.returns.append(pb.ReturnValue(object_id=object_id, inline_blob=blob))
        self.channel.send_from_worker(pb.FromWorker(result=message))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fabric._worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--store-dir", type=Path, required=True)
    parser.add_argument("--region", default="")
    args = parser.parse_args(argv)
    apply_rlimits_from_env()  # before any tenant code: a worker that cannot take them exits
    try:
        _tracing.configure(
            os.environ.get(_tracing.ENV), role="worker", node=args.node_id, tenant=args.tenant
        )
    except (FabricError, OSError) as e:
        print(f"fabric: tracing is off in this worker: {e}", file=sys.stderr)
    sock = socket.socket(fileno=args.fd)
    channel = LocalChannel(sock)
    welcome = pb.Welcome(
        node_id=args.node_id, tenant=args.tenant, store_path=str(args.store_dir), region=args.region
    )
    client = CoreClient(channel, welcome, is_worker=True)
    _state.client = client
    worker = Worker(channel, client)
    client.on_blocked = worker.on_blocked
    threading.Thread(target=worker.receive_forever, name="agent-channel", daemon=True).start()
    channel.send_from_worker(pb.FromWorker(started=pb.WorkerStarted(pid=os.getpid())))
    # Task output goes to the worker's log, never to the agent's stdout.
    sys.stdout = sys.stderr
    worker.run_forever()


run: Callable[[], None] = main

if __name__ == "__main__":
    main()
