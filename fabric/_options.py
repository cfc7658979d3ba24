"""Validation of `@remote(...)` and `.options(...)` arguments, as Ray names them."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from fabric._budget_wire import to_wire
from fabric._bundle_resources import PREFIX as BUNDLE_PREFIX
from fabric._bundle_resources import task_resources
from fabric.exceptions import BudgetExceededError
from fabric.policy._budgets import Limits, format_limit, parse_limits
from fabric.policy._labels import LabelSelectorError, parse_selector

# Where work may run and where its results may live; the policy has the last word.
PLACEMENT_OPTIONS = ("region", "label_selector", "residency", "scheduling_strategy")

TASK_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "memory",
        "resources",
        "num_returns",
        "max_retries",
        "retry_exceptions",
        "name",
        "budget",
        *PLACEMENT_OPTIONS,
    }
)
ACTOR_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "memory",
        "resources",
        "max_restarts",
        "max_task_retries",
        "max_concurrency",
        "name",
        "namespace",
        "lifetime",
        "get_if_exists",
        "budget",
        *PLACEMENT_OPTIONS,
    }
)
METHOD_OPTIONS = frozenset({"num_returns", "max_task_retries", "name"})

TASK_DEFAULTS: dict[str, Any] = {
    "num_cpus": 1,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
}
ACTOR_DEFAULTS: dict[str, Any] = {
    "num_cpus": 0,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": 0,
}


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate(options: Mapping[str, Any], allowed: frozenset[str], what: str) -> dict[str, Any]:
    """Check option names and values; a typo is a TypeError naming it, as in Ray."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"invalid option{'s' if len(unknown) > 1 else ''} for {what}: "
            f"{', '.join(map(repr, unknown))}; valid options are {', '.join(sorted(allowed))}"
        )
    for name, value in options.items():
        if value is None:
            continue
        if name in ("num_cpus", "num_gpus", "memory"):
            _number(name, value)
        elif name == "num_returns":
            _integer(name, value, 0)
        elif name in ("max_retries", "max_restarts", "max_task_retries"):
            _integer(name, value, -1)
        elif name == "max_concurrency":
            _integer(name, value, 1)
        elif name == "resources":
            if not isinstance(value, Mapping):
                raise ValueError(f"resources must be a dict, got {type(value).__name__}")
            for key, amount in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"resource names must be strings, got {key!r}")
                if key in ("CPU", "GPU", "memory"):
                    raise ValueError(
                        f"use num_cpus / num_gpus / memory instead of resources[{key!r}]"
                    )
                if key.startswith(BUNDLE_PREFIX):
                    raise ValueError(
                        f"resource names starting with {BUNDLE_PREFIX!r} are reserved for "
                        "placement groups; use scheduling_strategy="
                        "PlacementGroupSchedulingStrategy(...)"
                    )
                _number(f"resources[{key!r}]", amount)
        elif name in ("name", "namespace"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        elif name == "lifetime":
            if value not in ("detached", "non_detached"):
                raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {value!r}")
        elif name in ("retry_exceptions", "get_if_exists") and not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        elif name in ("region", "residency"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        elif name == "label_selector":
            try:
                parse_selector(value)
            except LabelSelectorError as e:
                raise ValueError(str(e)) from None
        elif name == "scheduling_strategy":
            _scheduling_strategy(value)
        elif name == "budget":
            budget_of(value)
    if options.get("region") and "region" in (options.get("label_selector") or {}):
        raise ValueError("give either region= or label_selector={'region': ...}, not both")
    return dict(options)


def _scheduling_strategy(value: Any) -> None:
    from fabric.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if isinstance(value, PlacementGroupSchedulingStrategy):
        value.check()
    elif value != "DEFAULT":
        raise ValueError(
            "scheduling_strategy must be 'DEFAULT' or a PlacementGroupSchedulingStrategy, "
            f"got {value!r}"
        )


def budget_of(value: Any) -> tuple[Limits, bool]:
    """The limits and the retry flag of a ``budget=`` option: a mapping of cpu_seconds,
    memory, wall_seconds, processes and retry. ValueError naming what is wrong."""
    if not isinstance(value, Mapping):
        raise ValueError(f"budget must be a dict such as {{'cpu_seconds': 30}}, got {value!r}")
    limits = dict(value)
    retry = limits.pop("retry", False)
    if not isinstance(retry, bool):
        raise ValueError(f"budget['retry'] must be a bool, got {retry!r}")
    return parse_limits(limits, "budget"), retry


def budget(options: Mapping[str, Any], spec: Any, ceiling: Limits, what: str) -> None:
    """Copy the ``budget=`` option onto a TaskSpec, refusing (BudgetExceededError) a
    budget above `ceiling`, the most the tenant's policy lets one task or actor have."""
    if not options.get("budget"):
        return
    limits, retry = budget_of(options["budget"])
    beyond = limits.beyond(ceiling)
    if beyond is not None:
        key, asked, most = beyond
        raise BudgetExceededError(
            f"{what} asks for a budget of {key} {format_limit(key, asked)}, more than the "
            f"{format_limit(key, most)} the tenant's policy allows one "
            f"{'actor' if what.startswith('actor') else 'task'} (rule budget.ceiling)",
            f"{'actor' if what.startswith('actor') else 'task'}.{key}",
            most,
            asked,
        )
    spec.budget.CopyFrom(to_wire(limits, retry))


def placement(options: Mapping[str, Any], spec: Any) -> None:
    """Copy the placement options onto a TaskSpec."""
    selector = dict(options.get("label_selector") or {})
    if options.get("region"):
        selector["region"] = options["region"]
    if selector:
        spec.label_selector.update(selector)
    if options.get("residency"):
        spec.residency_label = options["residency"]


def resource_request(options: Mapping[str, Any], tenant: str) -> dict[str, float]:
    """The resources a task or actor of `tenant` asks for, under the names the scheduler
    uses: in a placement group, those of its bundle (see `fabric._bundle_resources`)."""
    request: dict[str, float] = {}
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        amount = options.get(option)
        if amount:
            request[resource] = float(amount)
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            request[name] = float(amount)
    strategy = options.get("scheduling_strategy")
    if strategy is None or isinstance(strategy, str):
        return request
    strategy.check()
    group = strategy.placement_group
    index = strategy.placement_group_bundle_index
    bundles = group.bundle_specs if index < 0 else [group.bundle_specs[index]]
    if not any(
        all(bundle.get(name, 0.0) + 1e-9 >= amount for name, amount in request.items())
        for bundle in bundles
    ):
        which = "any bundle" if index < 0 else f"bundle {index}"
        asked = ", ".join(f"{k}={v:g}" for k, v in sorted(request.items()))
        raise ValueError(
            f"the request ({asked}) does not fit in {which} of {group!r}; a task or actor in "
            "a placement group uses its bundle's resources"
        )
    return task_resources(tenant, group.id, index, request)
