"""Typed errors. Every error Fabric raises derives from :class:`FabricError`.

The names mirror Ray's ``ray.exceptions`` so that ``import fabric as ray`` ports the
``except`` clauses of a Ray program too.
"""

from __future__ import annotations

from typing import Any


class FabricError(Exception):
    """Root of every error Fabric raises."""

    def diagnostics(self) -> str:
        """A readable explanation for humans (the CLI prints this)."""
        return str(self)


class GetTimeoutError(FabricError, TimeoutError):
    """``get`` or ``wait`` did not see the object(s) ready before the timeout."""


class RaySystemError(FabricError):
    """The fabric itself failed (lost connection, protocol violation)."""


class ConnectionLostError(RaySystemError):
    """The connection to the node agent was lost."""


class TaskError(FabricError):
    """A task raised. ``get`` re-raises it as an instance of both this class and the
    original exception's type, so ``except ValueError`` still catches a remote ValueError."""

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        super().__init__(self._message())

    def _message(self) -> str:
        kind = type(self.cause).__name__ if self.cause else "error"
        return f"{kind} in {self.function_name}\n{self.traceback_str}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause))

    def as_instanceof_cause(self) -> TaskError:
        """This error as an instance of both ``TaskError`` and the cause's class."""
        cause = self.cause
        if cause is None or isinstance(self, type(cause)):
            return self
        cause_cls = type(cause)
        try:
            combined = _dual_class(cause_cls)
            err = combined.__new__(combined)  # type: ignore[call-overload]
            # Copy the cause's state so attributes such as ``errno`` survive.
            err.__dict__.update(getattr(cause, "__dict__", {}))
            err.args = cause.args
            err.function_name = self.function_name
            err.traceback_str = self.traceback_str
            err.cause = cause
            return err
        except TypeError:
            # Some builtins (with incompatible layouts) cannot be mixed in; the plain
            # TaskError still carries the cause and the remote traceback.
            return self


RayTaskError = TaskError

_DUAL_CLASSES: dict[type, type] = {}


def _dual_class(cause_cls: type) -> type:
    cls = _DUAL_CLASSES.get(cause_cls)
    if cls is None:
        cls = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {"__init__": lambda self, *a, **k: None, "__str__": TaskError.__str__},
        )
        _DUAL_CLASSES[cause_cls] = cls
    return cls


def _rebuild_task_error(name: str, tb: str, cause: BaseException | None) -> TaskError:
    return TaskError(name, tb, cause).as_instanceof_cause()


class ActorError(FabricError):
    """Base of errors about actors."""


class ActorDiedError(ActorError):
    """The actor is dead: killed, crashed past its restarts, or its owner exited."""


RayActorError = ActorDiedError


class ActorUnavailableError(ActorError):
    """The actor is restarting; the call may succeed if retried."""


class ActorNotFoundError(ActorError, ValueError):
    """``get_actor`` found no live actor of that name in the namespace."""


class WorkerCrashedError(FabricError):
    """The worker process running the task died (and retries, if any, ran out)."""


class TaskCancelledError(FabricError):
    """The task was cancelled before it finished."""


class ObjectLostError(FabricError):
    """The object's value is gone and cannot be recovered."""


class ObjectFreedError(ObjectLostError):
    """The object was freed: no reference held it any longer."""


class UnknownObjectError(FabricError):
    """A reference is unknown to this session (foreign, forged or never existed)."""


class OutOfMemoryError(FabricError):
    """The node's object store is full."""


ObjectStoreFullError = OutOfMemoryError


class PlacementRefusedError(FabricError):
    """No node may ever run the request (its resources or the policy rule it out)."""


class PermissionDeniedError(FabricError, PermissionError):
    """The fabric's policy does not admit this identity for what it asked (a session by a
    certificate that is no tenant of the policy, a policy change by a non-operator)."""


class ResidencyError(FabricError):
    """The policy does not let the object go where it was asked to: another node, or a
    driver connected in a region outside the object's residency. The message names the
    rule and the policy version."""


class QuotaExceededError(FabricError):
    """The tenant's admission quota (tasks, actors, CPUs, GPUs, memory, object-store bytes)
    is used up; the message names the quota, its limit and what is held."""


class BudgetExceededError(FabricError):
    """The work consumed more than its budget and was stopped, or asked for more than the
    tenant's policy allows, or the tenant's budget for the window is used up and nothing
    more is admitted. `budget` names the budget (``"task.cpu_seconds"``,
    ``"tenant.memory"``, ...), `limit` is its limit and `measured` what was measured or
    asked for, in seconds, bytes or a count."""

    def __init__(
        self, message: str, budget: str = "", limit: float = 0.0, measured: float = 0.0
    ) -> None:
        super().__init__(message)
        self.budget = budget
        self.limit = limit
        self.measured = measured

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.budget, self.limit, self.measured))


class ActorBudgetExceededError(ActorDiedError, BudgetExceededError):
    """A budget stopped the actor: this call, and every call after, fails with it."""


class InvariantViolationError(FabricError):
    """A declared invariant of the policy (or an operator's invariant hook) refused the
    dispatch before it happened. `invariant` names it; the message also gives the values
    that broke it, the rule and the policy version."""

    def __init__(self, message: str, invariant: str = "") -> None:
        super().__init__(message)
        self.invariant = invariant

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.invariant))


class InvalidRequestError(FabricError, ValueError):
    """The fabric rejected a malformed or forbidden request."""
