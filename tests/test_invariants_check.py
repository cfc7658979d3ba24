"""Checking a dispatch against compiled invariants and hooks: what each operator means,
what a violation says, and that a hook that says no, raises or does not answer denies."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
from fabric.policy import (
    INVARIANT_HOOKS,
    DispatchFacts,
    HookRegistry,
    InvariantHookError,
    Violation,
    check_invariants,
    register_invariant_hook,
    unregister_invariant_hook,
)

from tests.conftest import wait_for
from tests.invariant_examples import policy_with

EU_WEST = frozenset({"eu-west"})


def facts(**changes: object) -> DispatchFacts:
    """A task of clinic on an eu-west node, reading its health data; `changes` override."""
    base: dict[str, object] = {
        "tenant": "clinic",
        "action": "task",
        "node_region": "eu-west",
        "input_regions": EU_WEST,
        "input_classes": frozenset({"health"}),
        "node_labels": {"confidential": "true"},
        "cpus": 1.0,
    }
    return DispatchFacts(**{**base, **changes})  # type: ignore[arg-type]


def holds(rule: str, **changes: object) -> bool:
    (invariant,) = policy_with(rule).invariants
    return invariant.holds(facts(**changes))


# ----------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("rule", "changes", "expected"),
    [
        ('tenant == "clinic"', {}, True),
        ('tenant == "clinic"', {"tenant": "retail"}, False),
        ('tenant != "clinic"', {}, False),
        ('action in {"task", "actor.create"}', {"action": "actor.call"}, False),
        ('action not in {"transfer"}', {}, True),
        ('node.jurisdiction == "EU"', {}, True),
        ('node.jurisdiction == "EU"', {"node_region": "us-east"}, False),
        ('node.jurisdiction == "EU"', {"node_region": "mars"}, False),  # undeclared: none
        ('"health" in inputs.classes', {}, True),
        ('inputs.classes contains "health"', {"input_classes": frozenset()}, False),
        ("node.region in inputs.regions", {"input_regions": frozenset({"eu-central"})}, False),
        ('inputs.regions subset {"eu-west", "eu-central"}', {}, True),
        ('inputs.regions subset {"eu-central"}', {}, False),
        ('inputs.regions == {"eu-west"}', {}, True),
        (
            'inputs.jurisdictions == {"EU", "US"}',
            {"input_regions": frozenset({"eu-west", "us-east"})},
            True,
        ),
        ('inputs.jurisdictions subset {"EU"}', {"input_regions": frozenset({"us-east"})}, False),
        ('node.labels["confidential"] == "true"', {}, True),
        ('node.labels["confidential"] == "true"', {"node_labels": {}}, False),
        # Absent equals nothing, not even another absent label; != is its negation.
        ('node.labels["a"] == node.labels["b"]', {"node_labels": {}}, False),
        ('node.labels["a"] != node.labels["b"]', {"node_labels": {}}, True),
        ('node.labels["a"] == node.labels["b"]', {"node_labels": {"a": "x", "b": "x"}}, True),
        ('node.labels["confidential"] != "true"', {"node_labels": {}}, True),
        ('node.labels["zone"] in {"a", "b"}', {"node_labels": {}}, False),
        ("task.region == node.region", {}, False),  # absent
        ("task.region == node.region", {"task_region": "eu-west"}, True),
        ('task.residency == "health"', {"task_residency": "health"}, True),
        # Numbers, and the quota a tenant does not have: unlimited.
        ("usage.tasks < quota.tasks", {"usage_tasks": 9}, True),
        ("usage.tasks < quota.tasks", {"usage_tasks": 10}, False),
        ("usage.cpus + task.cpus <= quota.cpus", {"usage_cpus": 3.0}, True),
        ("usage.cpus + task.cpus <= quota.cpus", {"usage_cpus": 3.5}, False),
        ("usage.gpus + task.gpus <= quota.gpus", {"usage_gpus": 1e12, "gpus": 1.0}, True),
        ("quota.actors == quota.gpus", {}, True),  # both unlimited
        ("quota.actors > 1000000", {}, True),
        ("quota.actors + 1 >= quota.actors", {}, True),
        ("quota.tasks < quota.actors", {}, True),
        ("quota.tasks >= 10 and quota.tasks <= 10", {}, True),
        ("usage.tasks + 1 > quota.tasks", {"tenant": "retail"}, False),
        # Logic.
        ('"payments" in inputs.classes implies node.jurisdiction == "US"', {}, True),
        ('"health" in inputs.classes => node.jurisdiction == "US"', {}, False),
        ('not (tenant == "clinic") or action == "task"', {}, True),
        ("false or true and false", {}, False),
    ],
)
def test_operators(rule: str, changes: dict[str, object], expected: bool) -> None:
    assert holds(rule, **changes) is expected


def test_a_guard_limits_where_the_rule_applies() -> None:
    policy = policy_with(("usage.tasks < 5", 'tenant == "retail"'))
    (invariant,) = policy.invariants
    assert invariant.holds(facts(usage_tasks=7))  # clinic: the guard is false
    assert not invariant.holds(facts(tenant="retail", usage_tasks=7))


# ----------------------------------------------------------------------------- violations


HEALTH_IN_EU = (
    '"health" in inputs.classes implies node.jurisdiction == "EU" '
    'and node.labels["confidential"] == "true"'
)


def test_a_violation_names_the_invariant_and_the_values_that_broke_it() -> None:
    policy = policy_with("true", HEALTH_IN_EU)
    broken = facts(node_region="us-east", input_regions=frozenset({"us-east"}))
    violation = check_invariants(policy.invariants, broken, hooks=None)
    assert violation == Violation(
        "i1",
        'invariant i1: node.jurisdiction is "US", expected "EU"; inputs.classes = {"health"}',
        {
            "inputs.classes": '{"health"}',
            "node.jurisdiction": '"US"',
            'node.labels["confidential"]': '"true"',
        },
    )
    assert violation.rule_id == "invariant.i1"
    assert str(violation) == violation.message


@pytest.mark.parametrize(
    ("rule", "changes", "message"),
    [
        (
            HEALTH_IN_EU,
            {"node_labels": {}},
            'node.labels["confidential"] is absent, expected "true"; inputs.classes = {"health"}',
        ),
        (
            'node.region != "eu-west"',
            {},
            'node.region is "eu-west", expected anything but "eu-west"',
        ),
        (
            'not ("health" in inputs.classes)',
            {},
            'inputs.classes is {"health"}, which contains "health"',
        ),
        (
            'node.region in {"us-east"}',
            {},
            'node.region is "eu-west", expected one of {"us-east"}',
        ),
        (
            'node.region not in {"eu-west"}',
            {},
            'node.region is "eu-west", expected none of {"eu-west"}',
        ),
        (
            "usage.cpus + task.cpus <= quota.cpus",
            {"usage_cpus": 4.0},
            "usage.cpus + task.cpus <= quota.cpus is false "
            "(usage.cpus is 4, task.cpus is 1, quota.cpus is 4)",
        ),
        (
            'tenant == "retail" or action == "transfer"',
            {},
            'tenant is "clinic", expected "retail"; action is "task", expected "transfer"',
        ),
        (
            "quota.gpus < usage.gpus",
            {},
            "quota.gpus < usage.gpus is false (quota.gpus is unlimited, usage.gpus is 0)",
        ),
        (
            'inputs.regions subset {"us-east"}',
            {},
            'inputs.regions subset {"us-east"} is false (inputs.regions is {"eu-west"})',
        ),
    ],
)
def test_violation_messages(rule: str, changes: dict[str, object], message: str) -> None:
    (invariant,) = policy_with(rule).invariants
    violation = invariant.violation(facts(**changes))
    assert violation is not None
    assert violation.message == f"invariant i0: {message}"


def test_the_guard_is_context_of_a_violation() -> None:
    (invariant,) = policy_with(("usage.tasks < 5", 'action == "task"')).invariants
    violation = invariant.violation(facts(usage_tasks=5))
    assert violation is not None
    assert violation.message == (
        'invariant i0: usage.tasks < 5 is false (usage.tasks is 5); action = "task"'
    )


def test_the_first_violated_invariant_in_policy_order_is_reported() -> None:
    policy = policy_with('tenant == "clinic"', 'action == "transfer"', "false")
    violation = check_invariants(policy.invariants, facts(), hooks=None)
    assert violation is not None and violation.invariant == "i1"
    assert check_invariants(policy.invariants[:1], facts(), hooks=None) is None
    assert check_invariants((), facts(), hooks=None) is None


# ----------------------------------------------------------------------------- hooks


@pytest.fixture
def hooks() -> Iterator[HookRegistry]:
    yield HookRegistry()


def test_a_hook_that_returns_true_allows(hooks: HookRegistry) -> None:
    seen: list[DispatchFacts] = []

    def record(f: DispatchFacts) -> bool:
        seen.append(f)
        return True

    hooks.register("audit-only", record)
    assert check_invariants((), facts(), hooks) is None
    assert seen == [facts()]


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda f: False, "returned False"),
        (lambda f: None, "returned None, not True or False"),
        (lambda f: 1, "returned 1, not True or False"),
        (lambda f: 1 / 0, "raised ZeroDivisionError: division by zero"),
        (lambda f: exec("raise SystemExit(3)"), "raised SystemExit: 3"),
    ],
    ids=["false", "none", "truthy", "raises", "system-exit"],
)
def test_a_hook_that_does_not_return_true_denies(hooks: HookRegistry, fn: object, why: str) -> None:
    hooks.register("no-gpus", fn)  # type: ignore[arg-type]
    violation = check_invariants((), facts(), hooks)
    assert violation == Violation("no-gpus", f"invariant hook no-gpus: {why}; denied")
    assert violation.rule_id == "invariant.no-gpus"


def test_a_hook_past_its_limit_denies_without_holding_up_the_caller(hooks: HookRegistry) -> None:
    release = threading.Event()
    hooks.register("slow", lambda f: release.wait(), timeout_s=0.05)
    violation = check_invariants((), facts(), hooks)
    # The check answered while the hook was still blocked: it did not wait for it.
    assert not release.is_set()
    assert violation == Violation("slow", "invariant hook slow: no answer within 0.05 s; denied")
    assert hooks.overdue == 1
    release.set()
    wait_for(lambda: hooks.overdue == 0, timeout=10, what="the overdue hook to return")


def test_hooks_that_never_return_use_up_the_threads_and_then_everything_is_denied() -> None:
    hooks = HookRegistry(threads=1)
    release = threading.Event()
    calls = []

    def stuck_once(f: DispatchFacts) -> bool:
        calls.append(f)
        if len(calls) == 1:
            release.wait()
        return True

    hooks.register("stuck-once", stuck_once, timeout_s=0.05)
    assert check_invariants((), facts(), hooks) is not None  # the thread is now held
    second = check_invariants((), facts(), hooks)
    assert second is not None and "no answer within 0.05 s" in second.message
    release.set()
    wait_for(lambda: hooks.overdue == 0, timeout=10, what="the held thread to return")
    assert check_invariants((), facts(), hooks) is None


def test_the_hooks_of_one_check_run_at_once(hooks: HookRegistry) -> None:
    second_ran = threading.Event()

    def second(f: DispatchFacts) -> bool:
        second_ran.set()
        return True

    # The first answers only once the second has run: in turn, it would time out.
    hooks.register("first", lambda f: second_ran.wait(timeout=30), timeout_s=30)
    hooks.register("second", second)
    assert check_invariants((), facts(), hooks) is None


def test_invariants_are_checked_before_hooks(hooks: HookRegistry) -> None:
    called: list[DispatchFacts] = []

    def deny(f: DispatchFacts) -> bool:
        called.append(f)
        return False

    hooks.register("after", deny)
    policy = policy_with("false")
    violation = check_invariants(policy.invariants, facts(), hooks)
    assert violation is not None and violation.invariant == "i0"
    assert called == []
    violation = check_invariants((), facts(), hooks)
    assert violation is not None and violation.invariant == "after"


def test_the_first_hook_to_deny_in_registration_order_is_reported(hooks: HookRegistry) -> None:
    hooks.register("first", lambda f: False)
    hooks.register("second", lambda f: 1 / 0)
    violation = check_invariants((), facts(), hooks)
    assert violation is not None and violation.invariant == "first"
    assert hooks.names() == ["first", "second"]
    hooks.unregister("first")
    violation = check_invariants((), facts(), hooks)
    assert violation is not None and violation.invariant == "second"


@pytest.mark.parametrize(
    ("name", "fn", "timeout_s", "message"),
    [
        (
            "Bad Name",
            bool,
            1.0,
            "hook name 'Bad Name': expected lowercase letters, digits and "
            "'-', starting with a letter",
        ),
        ("ok", "not callable", 1.0, "hook 'ok': 'not callable' is not callable"),
        ("ok", bool, 0, "hook 'ok': timeout_s must be a number of seconds in (0, 60], got 0"),
        (
            "ok",
            bool,
            float("inf"),
            "hook 'ok': timeout_s must be a number of seconds in (0, 60], got inf",
        ),
        ("ok", bool, True, "hook 'ok': timeout_s must be a number of seconds in (0, 60], got True"),
        ("taken", bool, 1.0, "hook 'taken' is already registered"),
    ],
)
def test_registration_errors(
    hooks: HookRegistry, name: str, fn: object, timeout_s: float, message: str
) -> None:
    hooks.register("taken", bool)
    with pytest.raises(InvariantHookError, match=f"^{re.escape(message)}$") as info:
        hooks.register(name, fn, timeout_s)  # type: ignore[arg-type]
    assert info.value.diagnostics() == message
    with pytest.raises(InvariantHookError, match=r"^no hook 'missing' is registered$"):
        hooks.unregister("missing")


def test_the_process_wide_registry() -> None:
    assert len(INVARIANT_HOOKS) == 0
    register_invariant_hook("process-wide", lambda f: f.tenant != "retail", timeout_s=1)
    try:
        assert check_invariants((), facts()) is None
        violation = check_invariants((), facts(tenant="retail"))
        assert violation is not None and violation.invariant == "process-wide"
        # hooks=None checks the invariants alone.
        assert check_invariants((), facts(tenant="retail"), hooks=None) is None
    finally:
        unregister_invariant_hook("process-wide")
    assert check_invariants((), facts(tenant="retail")) is None
