"""Proofs about policies, with Z3 (never on the dispatch path).

:func:`prove_policy` proves each invariant for every dispatch the policy's rules allow,
or gives a concrete counterexample, and finds what the rules make dead: tenants that can
never run, data classes that can never be placed, invariants that never apply, invariants
that together leave a tenant nowhere to run, node claims that add nothing.
:func:`prove_narrower` proves that one policy allows nothing another refused, or gives a
dispatch it allows that the other refused.

A dispatch ranges over every fact an invariant reads (``_encode.py``): the tenant, the
action, the node's region and labels, the request's region, residency label and
resources, its inputs' classes and regions, and what the tenant holds. Two bounds are
wider than the runtime's, so that a proof is never weaker than the runtime: inputs may
live in any subset of what their labels allow, and work without a residency label (which
inherits one from what submitted it) may have inputs anywhere. Every counterexample is
replayed through the runtime's own functions before it is reported; a disagreement is a
:class:`ProofError`, not a result.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass

import z3
from fabric.policy._encode import Point, PolicyEncoding, ProofError, Universe, example_node
from fabric.policy._expr import ACTIONS
from fabric.policy._facts import DispatchFacts, Violation, rules_refusal
from fabric.policy._invariants import Invariant, show
from fabric.policy._model import Policy, describe_regions

TIMEOUT_MS = 60_000  # for one solver call; no answer in time is an error, never a pass


@dataclass(frozen=True)
class Counterexample:
    """A dispatch, and a node identity that may be where it happens."""

    facts: DispatchFacts
    node: str | None

    def lines(self) -> list[str]:
        f = self.facts
        labels = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in f.node_labels.items())
        node = f" ({self.node})" if self.node else ""
        return [
            f"tenant {f.tenant}, action {f.action}",
            f"node in region {f.node_region}{node}, labels {{{labels}}}",
            f"request: region {show(f.task_region)}, residency {show(f.task_residency)}, "
            f"cpus {show(f.cpus)}, gpus {show(f.gpus)}, memory {show(f.memory)}",
            f"inputs: classes {show(f.input_classes)}, regions {show(f.input_regions)}",
            f"held by the tenant on the node: tasks {f.usage_tasks}, actors {f.usage_actors}, "
            f"cpus {show(f.usage_cpus)}, gpus {show(f.usage_gpus)}, "
            f"memory {show(f.usage_memory)}, object_store {f.usage_object_store}",
        ]


@dataclass(frozen=True)
class InvariantProof:
    """An invariant proved, or a counterexample: a dispatch the rules allow that breaks
    it, with the violation the runtime evaluator reports for it."""

    invariant: str
    counterexample: Counterexample | None = None
    violation: Violation | None = None

    @property
    def proved(self) -> bool:
        return self.counterexample is None


@dataclass(frozen=True)
class Observation:
    """Something the rules make dead or redundant. `kind` is one of "tenant-never-runs",
    "class-never-placed", "invariant-never-applies", "invariants-conflict" and
    "claim-shadowed"; `subject` names what it is about."""

    kind: str
    subject: str
    message: str


@dataclass(frozen=True)
class PolicyProof:
    version: str
    invariants: tuple[InvariantProof, ...]
    observations: tuple[Observation, ...]

    @property
    def proved(self) -> bool:
        """Every invariant holds for every dispatch the rules allow."""
        return all(result.proved for result in self.invariants)


@dataclass(frozen=True)
class NarrowerProof:
    """NEW allows nothing OLD refused, or `witness`: a dispatch NEW allows (its rules and
    invariants) that OLD refused, and why OLD refused it."""

    witness: Counterexample | None = None
    old_refusal: str = ""

    @property
    def proved(self) -> bool:
        return self.witness is None


# ----------------------------------------------------------------------------- one policy


def prove_policy(policy: Policy) -> PolicyProof:
    """Prove each of `policy`'s invariants from its rules, and find what the rules make dead."""
    point = Point(Universe.of(policy))
    encoding = PolicyEncoding(policy, point)
    task = point.action == ACTIONS.index("task")
    found: dict[str, InvariantProof] = {}
    applies: set[str] = set()
    observations: list[Observation] = list(_shadowed_claims(policy))
    for name in sorted(policy.tenants):
        tenant = policy.tenants[name]
        solver = _solver(point.domain(), encoding.allowed(name))
        runs = _satisfiable(solver, task)
        if not runs:
            observations.append(_never_runs(policy, name))
        else:
            for label in sorted(tenant.data_classes):
                member = point.classes[point.universe.classes.index(label)]
                if not _satisfiable(solver, task, member):
                    observations.append(_class_never_placed(policy, name, label))
        for invariant in policy.invariants:
            if invariant.name not in found:
                model = _simplest_model(solver, point, z3.Not(encoding.holds(invariant, name)))
                if model is not None:
                    found[invariant.name] = _counterexample(policy, invariant, point, model, name)
            guard = encoding.applies(invariant, name)
            if invariant.name not in applies and (guard is None or _satisfiable(solver, guard)):
                applies.add(invariant.name)
        if runs and policy.invariants:
            conflict = _conflict(solver, encoding, name, task)
            if conflict:
                observations.append(
                    Observation(
                        "invariants-conflict",
                        name,
                        f"tenant {name} can never run: the rules let it, but invariants "
                        f"{', '.join(conflict)} together deny every placement",
                    )
                )
    for invariant in policy.invariants:
        if invariant.name not in applies:
            observations.append(_never_applies(invariant))
    results = tuple(found.get(i.name, InvariantProof(i.name)) for i in policy.invariants)
    return PolicyProof(policy.version, results, tuple(observations))


def _solver(*assertions: z3.BoolRef) -> z3.Solver:
    solver = z3.Solver()
    solver.set("timeout", TIMEOUT_MS)
    solver.add(*assertions)
    return solver


def _satisfiable(solver: z3.Solver, *extra: z3.BoolRef) -> bool:
    return _model(solver, *extra) is not None


def _model(solver: z3.Solver, *extra: z3.BoolRef) -> z3.ModelRef | None:
    """A model of the solver's assertions and `extra`, or None when there is none."""
    solver.push()
    try:
        solver.add(*extra)
        answer = solver.check()
        if answer == z3.unknown:
            raise ProofError(f"Z3 gave no answer: {solver.reason_unknown()}")
        return solver.model() if answer == z3.sat else None
    finally:
        solver.pop()


def _simplest_model(solver: z3.Solver, point: Point, *extra: z3.BoolRef) -> z3.ModelRef | None:
    """A model of `extra`, one without resources asked or held if there is one."""
    model = _model(solver, *extra, point.plain())
    return model if model is not None else _model(solver, *extra)


def _counterexample(
    policy: Policy, invariant: Invariant, point: Point, model: z3.ModelRef, tenant: str
) -> InvariantProof:
    facts = point.facts(model, tenant)
    refused = rules_refusal(policy, facts)
    violation = invariant.violation(facts)
    if refused is not None or violation is None:
        why = f"the rules refuse it ({refused[0]})" if refused else "the invariant holds there"
        raise ProofError(
            f"invariant {invariant.name}: the Z3 encoding found a counterexample that the "
            f"runtime does not confirm: {why}; facts {facts}"
        )
    return InvariantProof(
        invariant.name, Counterexample(facts, example_node(policy, facts.node_region)), violation
    )


def _conflict(
    solver: z3.Solver, encoding: PolicyEncoding, tenant: str, task: z3.BoolRef
) -> list[str]:
    """The invariants that together deny every task of `tenant` the rules allow (a small
    set, from an unsat core), or [] when some task gets through."""
    solver.push()
    try:
        solver.add(task)
        flags = []
        for invariant in encoding.policy.invariants:
            flag = z3.Bool(f"holds {invariant.name}")
            solver.add(z3.Implies(flag, encoding.holds(invariant, tenant)))
            flags.append(flag)
        answer = solver.check(*flags)
        if answer == z3.unknown:
            raise ProofError(f"Z3 gave no answer: {solver.reason_unknown()}")
        if answer == z3.sat:
            return []
        return sorted(str(flag).removeprefix("holds ") for flag in solver.unsat_core())
    finally:
        solver.pop()


def _never_runs(policy: Policy, name: str) -> Observation:
    tenant = policy.tenants[name]
    run = tenant.run_regions if tenant.run_regions is not None else frozenset(policy.regions)
    claimed = frozenset(r for claim in policy.nodes for r in claim.regions)
    if not run & claimed:
        why = (
            f"it may run only in {describe_regions(run)}, and no node may claim those "
            f"(node claims cover {describe_regions(claimed)})"
        )
    elif tenant.quotas.tasks is not None and tenant.quotas.tasks < 1:
        why = "its tasks quota is 0"
    else:
        why = "no task of it passes the placement and admission rules"
    return Observation("tenant-never-runs", name, f"tenant {name} can never run: {why}")


def _class_never_placed(policy: Policy, name: str, label: str) -> Observation:
    tenant = policy.tenants[name]
    regions = tenant.data_classes[label]
    run = tenant.run_regions if tenant.run_regions is not None else frozenset(policy.regions)
    claimed = frozenset(r for claim in policy.nodes for r in claim.regions)
    return Observation(
        "class-never-placed",
        f"{name}.{label}",
        f"data class {label} of tenant {name} can never be placed: it may live in "
        f"{describe_regions(regions)}, the tenant may run in {describe_regions(run)}, "
        f"and nodes may claim {describe_regions(claimed)}",
    )


def _never_applies(invariant: Invariant) -> Observation:
    parts = []
    if invariant.when is not None:
        parts.append(f"its when guard ({invariant.when})")
    if invariant.rule_expr.op == "implies":
        condition = invariant.rule_expr.args[0]
        parts.append(
            f"the condition of its rule ({invariant.rule[condition.start : condition.end]})"
        )
    what = " and ".join(parts)
    return Observation(
        "invariant-never-applies",
        invariant.name,
        f"invariant {invariant.name} never applies: no dispatch the rules allow meets {what}",
    )


def _shadowed_claims(policy: Policy) -> Iterator[Observation]:
    """Node claims an earlier claim already grants: its pattern (wildcards '*' only)
    matches every identity the later one does, for at least the same regions."""
    for index, claim in enumerate(policy.nodes):
        for earlier in policy.nodes[:index]:
            if (
                not set(earlier.identity) & set("?[")
                and fnmatch.fnmatchcase(claim.identity, earlier.identity)
                and claim.regions <= earlier.regions
            ):
                yield Observation(
                    "claim-shadowed",
                    f"nodes[{index}]",
                    f"node claim nodes[{index}] ({claim.identity}: "
                    f"{describe_regions(claim.regions)}) adds nothing: {earlier.identity} "
                    f"already grants {describe_regions(earlier.regions)}",
                )
                break


# ----------------------------------------------------------------------------- two policies


def prove_narrower(old: Policy, new: Policy) -> NarrowerProof:
    """Prove that every dispatch `new` allows (by its rules and its invariants), `old`
    allowed too; else a dispatch `new` allows that `old` refused."""
    point = Point(Universe.of(old, new))
    before, after = PolicyEncoding(old, point), PolicyEncoding(new, point)
    for name in sorted(new.tenants):
        allowed_before = z3.And(before.allowed(name), before.all_hold(name))
        solver = _solver(point.domain(), after.allowed(name), after.all_hold(name))
        model = _simplest_model(solver, point, z3.Not(allowed_before))
        if model is None:
            continue
        facts = point.facts(model, name)
        refusal = _refusal(old, facts)
        if refusal is None or _refusal(new, facts) is not None:
            raise ProofError(
                "the Z3 encoding found a dispatch the new policy allows and the old refused, "
                f"which the runtime does not confirm: {facts}"
            )
        return NarrowerProof(Counterexample(facts, example_node(new, facts.node_region)), refusal)
    return NarrowerProof()


def _refusal(policy: Policy, facts: DispatchFacts) -> str | None:
    """Why `policy` refuses `facts`, by its rules or its invariants; None if it allows it."""
    refused = rules_refusal(policy, facts)
    if refused is not None:
        return f"{refused[1]} [rule {refused[0]}]"
    for invariant in policy.invariants:
        violation = invariant.violation(facts)
        if violation is not None:
            return f"{violation.message} [rule {violation.rule_id}]"
    return None
