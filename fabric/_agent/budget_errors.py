"""Errors of the budget enforcement layer (kernel limits and the budget monitor).

These are the agent's own failures: a cgroup it cannot write, a group it cannot empty.
A worker that breaks its budget is not an error here; the monitor reports it as a
`BudgetBreach` and the caller turns it into the tenant-facing error.
"""

from __future__ import annotations

from pathlib import Path

from fabric.exceptions import FabricError


class BudgetError(FabricError):
    """Root of the enforcement layer's errors."""


class CgroupUnavailableError(BudgetError):
    """A cgroup operation was asked for where no writable cgroups were found."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"no cgroups to put the worker in: {reason}")


class CgroupWriteError(BudgetError):
    """A cgroup file or directory could not be written (or read back)."""

    def __init__(self, path: Path, action: str, cause: OSError) -> None:
        self.path = path
        self.action = action
        self.cause = cause
        super().__init__(f"cannot {action} {path}: {cause.strerror or cause}")


class InvalidGroupNameError(BudgetError, ValueError):
    """A group name that is not a single safe path component."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"invalid group name {name!r}: use 1 to 100 of [A-Za-z0-9_.-], not starting with '.'"
        )


class GroupExistsError(BudgetError):
    """A group of this name already exists under the agent's parent group."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a group named {name!r} already exists")


class AgentGroupInUseError(BudgetError):
    """Another live agent holds the per-agent parent group of the same name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} is held by another live agent with the same name")


class GroupNotEmptyError(BudgetError):
    """A group still holds processes where it had to be empty (remove before kill)."""

    def __init__(self, name: str, pids: list[int]) -> None:
        self.name = name
        self.pids = pids
        super().__init__(f"group {name!r} still holds processes {pids[:10]}")


class KillFailedError(BudgetError):
    """Processes survived every kill round until the deadline."""

    def __init__(self, what: str, survivors: list[int], timeout: float) -> None:
        self.what = what
        self.survivors = survivors
        self.timeout = timeout
        super().__init__(
            f"{what}: processes {survivors[:10]} still alive {timeout:g} s after the first SIGKILL"
        )


class RlimitError(BudgetError):
    """Rlimits could not be set (or read from the environment)."""


class NotWatchedError(BudgetError, KeyError):
    """The monitor has no worker under this key."""

    def __init__(self, key: object) -> None:
        self.key = key
        super().__init__(f"no worker is watched under {key!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class AlreadyWatchedError(BudgetError, ValueError):
    """The monitor already watches a worker under this key."""

    def __init__(self, key: object) -> None:
        self.key = key
        super().__init__(f"a worker is already watched under {key!r}")


class MonitorClosedError(BudgetError):
    """The monitor was closed; it watches nothing more."""

    def __init__(self) -> None:
        super().__init__("the budget monitor is closed")
