"""`@fabric.remote`, bare or with options, on functions and classes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fabric._remote import ActorClass, RemoteFunction


def _make(target: Any, options: dict[str, Any]) -> RemoteFunction | ActorClass:
    if inspect.isclass(target):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@fabric.remote applies to functions and classes, not {type(target).__name__}")


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote task, or a class an actor class.

    ``@fabric.remote`` alone, or ``@fabric.remote(num_cpus=2, max_retries=1)`` with options.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError(
            "@fabric.remote takes either one function or class, or only keyword options"
        )

    def decorate(target: Any) -> Any:
        return _make(target, options)

    decorator: Callable[[Any], Any] = decorate
    return decorator
