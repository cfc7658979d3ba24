"""`ObjectRef`: a reference to an object that lives in the fabric.

Creating or unpickling a ref tells the process's client (driver or worker) that this
process holds the object; dropping the last local ref tells the agent it may free it.
"""

from __future__ import annotations

from typing import Any

from fabric import _state
from fabric._serialization import note_contained_ref


class ObjectRef:
    __slots__ = ("__weakref__", "_id", "_owner_node")

    def __init__(self, object_id: bytes, owner_node: str = "", *, _borrowed: bool = True) -> None:
        self._id = object_id
        self._owner_node = owner_node
        client = _state.client
        if client is not None:
            client.ref_created(object_id, borrowed=_borrowed)

    def __del__(self) -> None:
        client = _state.client
        if client is not None:
            try:
                client.ref_dropped(self._id)
            except Exception:
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        note_contained_ref(self._id)
        return (ObjectRef, (self._id, self._owner_node))

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __await__(self) -> Any:
        # `await ref` inside an async actor method: wait without blocking the event loop.
        import asyncio

        from fabric import _api

        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, _api.get, self).__await__()
