"""Hard resource budgets: what a tenant, and each of its tasks and actors, may consume.

Quotas (:class:`~fabric.policy.Quotas`) bound what a tenant's work *holds* when it is
admitted; budgets bound what it *consumes* while it runs, as the agents measure it, and are
enforced by stopping the work. A tenant's :class:`Budgets` say, in its policy:

- ``cpu_seconds`` per ``window`` and ``total_tasks`` per ``window``, across the cluster
  (the head leases slices of them to the agents);
- ``memory`` and ``processes``: what all of its workers on one node may hold at once;
- ``task`` and ``actor``: the :class:`Limits` of any one task or actor, which are also the
  defaults for those that ask for none. A task may ask for less (``options(budget=...)``),
  never more: that request is refused.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

LIMIT_KEYS = ("cpu_seconds", "memory", "wall_seconds", "processes")
DEFAULT_WINDOW = 3600.0  # seconds

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*", re.ASCII)
_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_SECONDS["d"] = Decimal(86400)


@dataclass(frozen=True)
class Limits:
    """What one task or actor may consume; `None`: no limit."""

    cpu_seconds: float | None = None  # user + system CPU time of the worker and its children
    memory: int | None = None  # resident bytes of the worker and its children
    wall_seconds: float | None = None  # from start to result (an actor: its lifetime)
    processes: int | None = None  # the worker and its children

    @functools.cached_property
    def bounded(self) -> bool:
        return any(getattr(self, key) is not None for key in LIMIT_KEYS)

    def beyond(self, ceiling: Limits) -> tuple[str, float, float] | None:
        """(key, asked, ceiling) for the first limit above `ceiling`'s, else None."""
        for key in LIMIT_KEYS:
            asked, most = getattr(self, key), getattr(ceiling, key)
            if most is not None and asked is not None and asked > most:
                return key, asked, most
        return None

    def within(self, ceiling: Limits) -> Limits:
        """These limits where set, `ceiling`'s elsewhere (the effective budget)."""
        return Limits(
            **{
                key: getattr(ceiling, key) if getattr(self, key) is None else getattr(self, key)
                for key in LIMIT_KEYS
            }
        )

    def describe(self) -> str:
        parts = [
            f"{key} {format_limit(key, value)}"
            for key in LIMIT_KEYS
            if (value := getattr(self, key)) is not None
        ]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Budgets:
    """A tenant's budgets; `None`: no budget."""

    cpu_seconds: float | None = None  # per window, across the cluster
    window: float = DEFAULT_WINDOW  # seconds
    total_tasks: int | None = None  # tasks admitted per window, across the cluster
    memory: int | None = None  # resident bytes of all its workers on one node
    processes: int | None = None  # processes of all its workers on one node
    task: Limits = Limits()
    actor: Limits = Limits()

    @property
    def leased(self) -> bool:
        """Whether the agents need leases from the head (a cluster-wide budget is set)."""
        return self.cpu_seconds is not None or self.total_tasks is not None


def parse_duration(value: Any) -> float:
    """Seconds in a duration: a number of seconds, or a string such as ``"90s"``, ``"5m"``,
    ``"1.5h"`` or ``"1d"``. :class:`ValueError` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(Decimal(match[1]) * _SECONDS[match[2] or "s"])
    else:
        raise ValueError(f"not a duration (such as 30, '90s', '5m', '1h', '1d'): {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and >= 0, not {value!r}")
    return seconds


def parse_limits(spec: Mapping[str, Any], what: str = "budget") -> Limits:
    """:class:`Limits` from a mapping such as ``{"cpu_seconds": 30, "memory": "2GiB",
    "wall_seconds": "10m", "processes": 8}``: the form ``options(budget=...)`` takes.
    :class:`ValueError` naming the key for an unknown key or a bad value."""
    from fabric.policy._loader import parse_size  # the loader imports this module

    if not isinstance(spec, Mapping):
        raise ValueError(f"{what} must be a mapping such as {{'cpu_seconds': 30}}, not {spec!r}")
    unknown = sorted(set(spec) - set(LIMIT_KEYS))
    if unknown:
        raise ValueError(
            f"{what} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(LIMIT_KEYS)}"
        )
    values: dict[str, Any] = {}
    for key, value in spec.items():
        try:
            if key == "memory":
                values[key] = _size(value, parse_size)
            elif key == "processes":
                values[key] = _count(value)
            else:
                values[key] = parse_duration(value)
        except (ValueError, InvalidOperation) as error:
            raise ValueError(f"{what}[{key!r}]: {error}") from None
    return Limits(**values)


def build_budgets(spec: Mapping[str, Any]) -> Budgets:
    """The :class:`Budgets` of a tenant's validated, normalised ``budgets`` mapping."""
    return Budgets(
        cpu_seconds=spec.get("cpu_seconds"),
        window=spec.get("window", DEFAULT_WINDOW),
        total_tasks=spec.get("total_tasks"),
        memory=spec.get("memory"),
        processes=spec.get("processes"),
        task=Limits(**spec.get("task", {})),
        actor=Limits(**spec.get("actor", {})),
    )


def normalise_budgets(spec: dict[str, Any]) -> None:
    """Sizes in bytes and durations in seconds, in place (see the loader's `_normalise`)."""
    from fabric.policy._loader import parse_size

    if isinstance(spec.get("memory"), str):
        spec["memory"] = parse_size(spec["memory"])
    if "window" in spec:
        spec["window"] = parse_duration(spec["window"])
    if "cpu_seconds" in spec:
        spec["cpu_seconds"] = float(spec["cpu_seconds"])
    for name in ("task", "actor"):
        limits = spec.get(name, {})
        if isinstance(limits.get("memory"), str):
            limits["memory"] = parse_size(limits["memory"])
        if "wall_seconds" in limits:
            limits["wall_seconds"] = parse_duration(limits["wall_seconds"])
        if "cpu_seconds" in limits:
            limits["cpu_seconds"] = float(limits["cpu_seconds"])


def format_limit(key: str, value: float | None) -> str:
    """A limit or a measurement as people read it: ``2.0 GiB``, ``30.0 s``, ``8``."""
    if value is None:
        return "none"
    if key == "memory":
        return _format_bytes(value)
    if key == "processes" or key == "total_tasks":
        return f"{int(value)}"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _format_bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def _size(value: Any, parse_size: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a size is a number of bytes or a string such as '2GiB', not {value!r}")
    size = parse_size(value) if isinstance(value, str) else value
    if size <= 0:
        raise ValueError(f"must be more than 0 bytes, not {value!r}")
    return int(size)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a whole number >= 1, not {value!r}")
    return value
