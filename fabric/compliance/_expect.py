"""Expecting refusals: the fabric's typed errors and gRPC status codes, as evidence."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fabric.compliance._errors import CheckFailed
from fabric.exceptions import FabricError

if TYPE_CHECKING:
    import grpc

E = TypeVar("E", bound=FabricError)

# Refusals end with "[rule <id>, policy <version>]" (fabric/_agent/base.py error_info).
_RULE = re.compile(r"\[rule ([^,\]\s]+), policy ([^\]\s]+)\]")


def refused(attempt: Callable[[], object], errors: tuple[type[E], ...], what: str) -> E:
    """The error `attempt` is refused with, which must be one of `errors`; anything else
    (a value, another error) fails the check, naming `what` was attempted."""
    try:
        value = attempt()
    except errors as error:
        return error
    except FabricError as error:
        raise CheckFailed(
            f"{what}: failed with {type(error).__name__} ({one_line(error)}), not a refusal "
            f"({', '.join(e.__name__ for e in errors)})"
        ) from error
    raise CheckFailed(f"{what}: not refused, it returned {_short(value)}")


def rule_of(error: BaseException) -> tuple[str, str]:
    """(rule, policy version) a refusal's message names, ("", "") if it names none."""
    match = _RULE.search(str(error))
    return (match[1], match[2]) if match else ("", "")


def rpc_refusal(call: Callable[[], object]) -> tuple[str, str] | None:
    """(status code name, details) when `call` fails with a gRPC error, None when it
    succeeds."""
    import grpc

    try:
        call()
    except grpc.RpcError as error:
        return status_of(error)
    return None


def status_of(error: grpc.RpcError) -> tuple[str, str]:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return (code.name if code is not None else "UNKNOWN"), " ".join((details or "").split())


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
