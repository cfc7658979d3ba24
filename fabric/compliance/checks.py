"""The registry of compliance checks and what a check is.

A check is a function ``fn(ctx, evidence) -> reason`` registered with :func:`check`, under an
id (``group.name``), a title and the requirements its result is evidence for. It runs
against the live fabric through the :class:`~fabric.compliance.context.ComplianceContext`,
writes what it saw into ``evidence`` (audit entry ids, error messages, timings), and:

- returns a one-line reason: PASS;
- raises :class:`CheckFailed` (or :func:`fail`): FAIL, with that reason;
- raises :class:`CheckSkipped` (or :func:`skip`): SKIP, saying what it would need;
- raises anything else: FAIL, "could not run: ...". A check that cannot run never passes.

The built-in checks register themselves when :func:`registered` first loads them; an
operator's own module registers more with the same decorator, and
``fabric compliance run --checks-from MODULE`` (or importing it in a pytest conftest) adds
them to a run.
"""

from __future__ import annotations

import enum
import fnmatch
import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from fabric.compliance._errors import CheckFailed, CheckSkipped, ConfigError
from fabric.compliance.requirements import Requirement

if TYPE_CHECKING:
    from fabric.compliance.context import ComplianceContext

__all__ = [
    "BUILTIN_MODULES",
    "Check",
    "CheckFailed",
    "CheckFn",
    "CheckSkipped",
    "Evidence",
    "Status",
    "check",
    "fail",
    "load_checks_from",
    "registered",
    "skip",
]

CheckFn = Callable[["ComplianceContext", "Evidence"], "str | None"]

# In the order a run takes them: the policy first (every other check reads it), the audit
# log last (it looks for what the others did).
BUILTIN_MODULES: tuple[str, ...] = (
    "fabric.compliance._policy",
    "fabric.compliance._transport",
    "fabric.compliance._isolation",
    "fabric.compliance._residency",
    "fabric.compliance._budgets",
    "fabric.compliance._invariants",
    "fabric.compliance._audit",
)

_ID = re.compile(r"[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)+")


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


class Evidence:
    """What one check saw, as JSON-able values under names: it goes into the report as the
    check's ``details``, whether the check passes or not."""

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}

    def set(self, name: str, value: Any) -> None:
        self.details[name] = value

    def add(self, name: str, item: Any) -> None:
        """Append `item` to the list under `name`."""
        self.details.setdefault(name, []).append(item)


@dataclass(frozen=True)
class Check:
    """A registered check: its id, title, the requirements it evidences, and its function
    (whose docstring says what it does and why that is evidence)."""

    id: str
    title: str
    requirements: tuple[Requirement, ...]
    run: CheckFn

    @property
    def group(self) -> str:
        return self.id.partition(".")[0]

    @property
    def description(self) -> str:
        return inspect.getdoc(self.run) or ""


_REGISTRY: dict[str, Check] = {}
_builtins_loaded = False


def check(id: str, title: str, requirements: Sequence[Requirement]) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated function as the check `id` (``group.name``, lowercase)."""
    if _ID.fullmatch(id) is None:
        raise ValueError(f"bad check id {id!r}: expected group.name, lowercase, e.g. audit.proof")
    if not requirements:
        raise ValueError(f"check {id} cites no requirement")

    def register(fn: CheckFn) -> CheckFn:
        existing = _REGISTRY.get(id)
        if existing is not None and existing.run is not fn:
            raise ValueError(f"a check {id!r} is already registered ({existing.run.__module__})")
        _REGISTRY[id] = Check(id, title, tuple(requirements), fn)
        return fn

    return register


def fail(reason: str) -> NoReturn:
    raise CheckFailed(reason)


def skip(reason: str) -> NoReturn:
    raise CheckSkipped(reason)


def load_checks_from(module: str) -> None:
    """Import `module`, whose ``@check`` functions register themselves."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"cannot import checks from {module!r}: {error}") from error


def registered(patterns: Iterable[str] = ()) -> list[Check]:
    """The registered checks, built-in ones first, in registration order; with `patterns`
    (globs over ids, e.g. ``transport.*``), only those matching one of them. A pattern
    that matches nothing is an error, so that a typo cannot shrink a run unnoticed."""
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True
    # Built-in checks in the order of BUILTIN_MODULES, whichever imported which first.
    order = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    checks = sorted(_REGISTRY.values(), key=lambda c: order.get(c.run.__module__, len(order)))
    patterns = list(patterns)
    if not patterns:
        return checks
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(c.id, pattern) for c in checks):
            known = ", ".join(c.id for c in checks)
            raise ConfigError(f"no check matches {pattern!r} (checks: {known})")
    return [c for c in checks if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
