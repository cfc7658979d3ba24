"""Remote functions, actor classes and actor handles: what `@fabric.remote` returns."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from fabric import _api, _options
from fabric._client import CoreClient
from fabric._proto import fabric_pb2 as pb
from fabric._refs import ObjectRef
from fabric._serialization import dumps_function
from fabric.exceptions import InvalidRequestError


def _return_id(task_id: bytes, index: int) -> bytes:
    return task_id + (index + 1).to_bytes(4, "big")


class _Pickled:
    """A function or class pickled once, on first use, and identified by its digest."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._blob: bytes | None = None
        self._digest = b""

    def digest(self) -> bytes:
        if self._blob is None:
            with self._lock:
                if self._blob is None:
                    blob = dumps_function(self._target)
                    self._digest = hashlib.sha256(blob).digest()
                    self._blob = blob
        return self._digest

    def blob(self) -> bytes:
        self.digest()
        assert self._blob is not None
        return self._blob


def _encode_args(
    client: CoreClient, spec: pb.TaskSpec, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    for i, value in enumerate(args):
        arg = client.encode_arg(value, lambda i=i: f"argument {i} of {name}")  # type: ignore[misc]
        spec.args.append(arg)
    for key, value in kwargs.items():
        arg = client.encode_arg(value, lambda key=key: f"argument {key!r} of {name}")  # type: ignore[misc]
        arg.keyword = key
        spec.args.append(arg)


def _submit(client: CoreClient, spec: pb.TaskSpec, blob: Callable[[], bytes] | None) -> Any:
    # Refs first: the agent's answer may arrive before submit() returns.
    refs = [client.owned_ref(_return_id(spec.task_id, i)) for i in range(spec.num_returns)]
    client.submit(spec, blob)
    if spec.num_returns == 1:
        return refs[0]
    return refs if refs else None


class RemoteFunction:
    """A function decorated with `@fabric.remote`; call it with `.remote(...)`."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any]) -> None:
        self._function = function
        self._options = _options.validate(options, _options.TASK_OPTIONS, "a remote function")
        self._pickled = _Pickled(function)
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "function"))
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", "function")

    def __reduce__(self) -> tuple[Any, ...]:
        # Tasks that call other remote functions carry them by value; the cache and its
        # lock stay behind.
        return (RemoteFunction, (self._function, self._options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; "
            f"use {self.__name__}.remote(...) and fabric.get() the result"
        )

    def options(self, **options: Any) -> RemoteFunction:
        _options.validate(options, _options.TASK_OPTIONS, f"{self._name}.options()")
        clone = RemoteFunction.__new__(RemoteFunction)
        clone.__dict__.update(self.__dict__)
        clone._options = {**self._options, **options}
        return clone

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        client = _api.client_for_submit()
        options = {
            **_options.TASK_DEFAULTS,
            **{k: v for k, v in self._options.items() if v is not None},
        }
        spec = pb.TaskSpec(
            task_id=os.urandom(16),
            kind=pb.NORMAL_TASK,
            function_digest=self._pickled.digest(),
            function_name=self._name,
            num_returns=options["num_returns"],
            resources=_options.resource_request(options, client.tenant),
            max_retries=options["max_retries"],
            retry_exceptions=options["retry_exceptions"],
        )
        _options.placement(options, spec)
        _options.budget(options, spec, client.task_budget_limit, f"task {self._name}")
        _encode_args(client, spec, self._name, args, kwargs)
        return _submit(client, spec, self._pickled.blob)


def method(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Per-method options for actor methods, as `@fabric.method(num_returns=2)`."""
    _options.validate(options, _options.METHOD_OPTIONS, "fabric.method")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__fabric_method_options__ = options  # type: ignore[attr-defined]
        return fn

    return decorate


def _method_table(cls: type) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for name, member in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        table[name] = dict(getattr(member, "__fabric_method_options__", {}))
    return table


def _check_checkpoint_methods(cls: type) -> None:
    """An actor class is checkpointed when it defines both `checkpoint` and `restore`
    (plain methods, run between calls); one without the other is a mistake."""
    defined = [n for n in ("checkpoint", "restore") if callable(getattr(cls, n, None))]
    if len(defined) == 1:
        [present] = defined
        missing = "restore" if present == "checkpoint" else "checkpoint"
        raise InvalidRequestError(
            f"actor class {cls.__name__} defines {present}() but not {missing}(): "
            "a checkpointed actor needs both"
        )
    for name in defined:
        if inspect.iscoroutinefunction(getattr(cls, name)):
            raise InvalidRequestError(
                f"actor class {cls.__name__}: {name}() must be a plain method, not async"
            )


class ActorClass:
    """A class decorated with `@fabric.remote`; instantiate it with `.remote(...)`."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _options.validate(
            options, _options.ACTOR_OPTIONS, f"actor class {cls.__name__}"
        )
        self._pickled = _Pickled(cls)
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorClass, (self._cls, self._options))

    @functools.cached_property
    def _methods(self) -> dict[str, dict[str, Any]]:
        # Read when first needed, not when made: unpickling a method that creates actors of
        # its own class makes this object while the class is still an empty skeleton.
        return _method_table(self._cls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self.__name__} cannot be instantiated directly; "
            f"use {self.__name__}.remote(...)"
        )

    def options(self, **options: Any) -> ActorClass:
        _options.validate(options, _options.ACTOR_OPTIONS, f"{self.__name__}.options()")
        clone = ActorClass.__new__(ActorClass)
        clone.__dict__.update(self.__dict__)
        clone._options = {**self._options, **options}
        return clone

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        _check_checkpoint_methods(self._cls)
        client = _api.client_for_submit()
        options = {
            **_options.ACTOR_DEFAULTS,
            **{k: v for k, v in self._options.items() if v is not None},
        }
        name = options.get("name", "")
        namespace = options.get("namespace", "")
        if name and options.get("get_if_exists"):
            try:
                return _api.get_actor(name, namespace or None)
            except ValueError:
                pass
        actor_id = os.urandom(16)
        meta = json.dumps(
            {
                "class_name": self.__name__,
                "methods": self._methods,
                "max_task_retries": options["max_task_retries"],
            }
        )
        spec = pb.TaskSpec(
            task_id=os.urandom(16),
            kind=pb.ACTOR_CREATION,
            function_digest=self._pickled.digest(),
            function_name=f"{self.__name__}.__init__",
            num_returns=1,
            resources=_options.resource_request(options, client.tenant),
            actor_id=actor_id,
            actor_options=pb.ActorOptions(
                max_restarts=options["max_restarts"],
                max_task_retries=options["max_task_retries"],
                max_concurrency=options["max_concurrency"],
                name=name,
                namespace=namespace,
                detached=options.get("lifetime") == "detached",
                class_name=self.__name__,
                handle_meta=meta,
            ),
        )
        _options.placement(options, spec)
        _options.budget(options, spec, client.actor_budget_limit, f"actor {self.__name__}")
        _encode_args(client, spec, f"{self.__name__}.__init__", args, kwargs)
        ready = client.owned_ref(_return_id(spec.task_id, 0))
        # Ray raises at once when the name is taken: wait for the directory's answer.
        client.submit(spec, self._pickled.blob, wait=bool(name))
        return ActorHandle(
            actor_id,
            client.node_id,
            self.__name__,
            self._methods,
            options["max_task_retries"],
            ready,
        )


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, options: dict[str, Any]) -> None:
        self._handle = handle
        self._name = name
        self._options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor method {self._handle._class_name}.{self._name} cannot be called directly; "
            f"use .{self._name}.remote(...)"
        )

    def options(self, **options: Any) -> ActorMethod:
        _options.validate(options, _options.METHOD_OPTIONS, f"{self._name}.options()")
        return ActorMethod(self._handle, self._name, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._name, self._options, args, kwargs)


class ActorHandle:
    """A reference to an actor. Picklable: pass it to tasks and other actors."""

    def __init__(
        self,
        actor_id: bytes,
        owner_node: str,
        class_name: str,
        methods: dict[str, dict[str, Any]],
        max_task_retries: int,
        ready: ObjectRef | None = None,
    ) -> None:
        self._actor_id = actor_id
        self._owner_node = owner_node
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries
        self._ready = ready
        self._lock = threading.Lock()
        self._sequence = 0

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")
        if methods is None or name not in methods:
            raise AttributeError(
                f"actor {self.__dict__.get('_class_name', '?')} has no method {name!r}"
            )
        return ActorMethod(self, name, methods[name])

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ActorHandle,
            (
                self._actor_id,
                self._owner_node,
                self._class_name,
                self._methods,
                self._max_task_retries,
            ),
        )

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def _call(
        self, name: str, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        client = _api.client_for_submit()
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        num_returns = options.get("num_returns", 1)
        spec = pb.TaskSpec(
            task_id=os.urandom(16),
            kind=pb.ACTOR_TASK,
            function_name=f"{self._class_name}.{name}",
            method_name=name,
            num_returns=num_returns,
            actor_id=self._actor_id,
            sequence_no=sequence,
            actor_node=self._owner_node,
            actor_options=pb.ActorOptions(
                max_task_retries=options.get("max_task_retries", self._max_task_retries)
            ),
        )
        _encode_args(client, spec, f"{self._class_name}.{name}", args, kwargs)
        return _submit(client, spec, None)
