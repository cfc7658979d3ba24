"""Declared invariants, compiled to fast evaluators, and the explanation of a violation.

Each invariant's rule (and its `when` guard) is type-checked by ``_expr.py`` and compiled
once, when the policy is built, into nested closures over :class:`DispatchFacts`: checking
a dispatch calls them and interprets nothing. Names the policy fixes are resolved at
compile time: a node's jurisdiction is a lookup of its region, a quota the tenant's.

Semantics, shared with the Z3 encoding in ``_encode.py``:

- An absent string (a label the node lacks, a task option not given) equals nothing, not
  even another absent string; ``!=`` is the negation of ``==``. ``in`` is false for it.
- A quota the tenant does not have is unlimited: larger than every number, equal to
  itself, and unlimited plus a number is unlimited.
- ``inputs.jurisdictions`` are the jurisdictions of the regions in ``inputs.regions``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.policy._expr import LABELS, Expr, Vocabulary, check, field_name
from fabric.policy._facts import DispatchFacts, Violation
from fabric.policy._model import TenantPolicy

Fn = Callable[[DispatchFacts], Any]
INF = math.inf

# Fields read straight off the facts.
_ATTRIBUTES = {
    "tenant": "tenant",
    "action": "action",
    "node.region": "node_region",
    "task.region": "task_region",
    "task.residency": "task_residency",
    "task.cpus": "cpus",
    "task.gpus": "gpus",
    "task.memory": "memory",
    "inputs.classes": "input_classes",
    "inputs.regions": "input_regions",
    **{
        f"usage.{name}": f"usage_{name}"
        for name in ("tasks", "actors", "cpus", "gpus", "memory", "object_store")
    },
}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Invariant:
    """One declared invariant: it holds for a dispatch when its `when` guard is false or
    its `rule` is true. Equal invariants have equal text; the compiled parts are derived."""

    name: str
    description: str
    rule: str
    when: str | None = None
    # Compiled: the typed trees, the evaluator, and one closure per node for explaining.
    rule_expr: Expr = field(kw_only=True, compare=False, repr=False)
    when_expr: Expr | None = field(kw_only=True, compare=False, repr=False)
    test: Fn = field(kw_only=True, compare=False, repr=False)
    fns: Mapping[int, Fn] = field(kw_only=True, compare=False, repr=False)  # by id(node)
    readers: Mapping[str, Fn] = field(kw_only=True, compare=False, repr=False)  # by field

    @property
    def fields(self) -> frozenset[str]:
        """Every field the invariant reads, as written (``node.labels["k"]``)."""
        guard = self.when_expr.fields if self.when_expr is not None else frozenset()
        return self.rule_expr.fields | guard

    def holds(self, facts: DispatchFacts) -> bool:
        return bool(self.test(facts))

    def violation(self, facts: DispatchFacts) -> Violation | None:
        """What is wrong with `facts`, or None when the invariant holds."""
        if self.test(facts):
            return None
        values = {name: show(read(facts)) for name, read in sorted(self.readers.items())}
        explainer = _Explainer(self, facts)
        if self.when_expr is not None:
            explainer.context |= self.when_expr.fields
        reasons = explainer.why_not(self.rule_expr, True)
        mentioned = {name for name in values if any(name in r for r in reasons)}
        context = [f"{name} = {values[name]}" for name in sorted(explainer.context - mentioned)]
        message = f"invariant {self.name}: {'; '.join(reasons + context)}"
        return Violation(self.name, message, values)


def compile_invariants(
    specs: Sequence[Mapping[str, Any]],
    regions: Mapping[str, str],
    tenants: Mapping[str, TenantPolicy],
) -> tuple[Invariant, ...]:
    """The invariants of a checked policy document (its ``invariants`` list), compiled
    against its `regions` (region -> jurisdiction) and `tenants`."""
    classes = {label for tenant in tenants.values() for label in tenant.data_classes}
    vocabulary = Vocabulary(regions, tuple(tenants), tuple(classes))
    quotas = {name: tenant.quotas for name, tenant in tenants.items()}
    return tuple(
        compile_invariant(
            spec["name"],
            spec["rule"],
            vocabulary,
            quotas,
            description=spec.get("description", ""),
            when=spec.get("when"),
        )
        for spec in specs
    )


def compile_invariant(
    name: str,
    rule: str,
    vocabulary: Vocabulary,
    quotas: Mapping[str, Any],
    *,
    description: str = "",
    when: str | None = None,
) -> Invariant:
    """One invariant, compiled; raises :class:`~fabric.policy._expr.ExprErrors` when its
    rule or guard does not type-check. `quotas` maps tenant names to their Quotas."""
    compiler = _Compiler(vocabulary.regions, quotas)
    rule_expr = check(rule, vocabulary)
    test = compiler.compile(rule_expr)
    when_expr = None
    if when is not None:
        when_expr = check(when, vocabulary)
        guard = compiler.compile(when_expr)
        rule_test = test

        def test(facts: DispatchFacts) -> bool:
            return not guard(facts) or rule_test(facts)

    return Invariant(
        name,
        description,
        rule,
        when,
        rule_expr=rule_expr,
        when_expr=when_expr,
        test=test,
        fns=compiler.fns,
        readers=compiler.readers,
    )


# ----------------------------------------------------------------------------- compiling


class _Compiler:
    """Typed trees to closures; every node's closure is kept for explanations."""

    def __init__(self, regions: Mapping[str, str], quotas: Mapping[str, Any]) -> None:
        self.regions = dict(regions)
        self.quotas = quotas
        self.fns: dict[int, Fn] = {}
        self.readers: dict[str, Fn] = {}

    def compile(self, expr: Expr) -> Fn:
        fn = self._compile(expr)
        self.fns[id(expr)] = fn
        return fn

    def _compile(self, expr: Expr) -> Fn:
        op = expr.op
        if op == "const":
            value = expr.value
            return lambda facts: value
        if op == "field":
            fn = self._field(expr.value, expr.key)
            self.readers[field_name(expr.value, expr.key)] = fn
            return fn
        args = [self.compile(arg) for arg in expr.args]
        if op == "not":
            (a,) = args
            return lambda facts: not a(facts)
        if op in ("and", "or"):
            return _chain(op, args)
        if op == "implies":
            a, b = args
            return lambda facts: not a(facts) or b(facts)
        if op in ("==", "!="):
            equal = self._equal(*expr.args, *args)
            if op == "==":
                return equal
            return lambda facts: not equal(facts)
        if op == "in":
            return self._member(*expr.args, *args)
        if op == "subset":
            a, b = args
            return lambda facts: a(facts) <= b(facts)
        if op == "+":
            a, b = args
            return lambda facts: a(facts) + b(facts)
        if op in _ORDER:
            compare, right = _ORDER[op], expr.args[1]
            a, b = args
            if right.op == "const":
                limit = right.value
                return lambda facts: compare(a(facts), limit)
            return lambda facts: compare(a(facts), b(facts))
        raise AssertionError(f"no evaluator for {op!r}")  # the checker admits no other op

    def _field(self, path: str, key: str | None) -> Fn:
        if path in _ATTRIBUTES:
            return operator.attrgetter(_ATTRIBUTES[path])
        if path == LABELS:
            return lambda facts: facts.node_labels.get(key)
        regions = self.regions
        if path == "node.jurisdiction":
            return lambda facts: regions.get(facts.node_region)
        if path == "inputs.jurisdictions":
            cache: dict[frozenset[str], frozenset[str]] = {}

            def jurisdictions(facts: DispatchFacts) -> frozenset[str]:
                found = cache.get(facts.input_regions)
                if found is None:
                    found = frozenset(regions[r] for r in facts.input_regions if r in regions)
                    if len(cache) < 1024:  # the agent reuses a few region sets
                        cache[facts.input_regions] = found
                return found

            return jurisdictions
        if path.startswith("quota."):
            name = path.removeprefix("quota.")
            limits = {
                tenant: INF if getattr(q, name) is None else getattr(q, name)
                for tenant, q in self.quotas.items()
            }
            return lambda facts: limits.get(facts.tenant, INF)
        raise AssertionError(f"no evaluator for field {path!r}")

    def _equal(self, left: Expr, right: Expr, a: Fn, b: Fn) -> Fn:
        if left.op == "const":
            left, right, a, b = right, left, b, a
        if right.op == "const":
            value = right.value
            if left.op == "field" and left.value == "node.jurisdiction":
                inside = frozenset(r for r, j in self.regions.items() if j == value)
                return lambda facts: facts.node_region in inside
            return lambda facts: a(facts) == value  # an absent string (None) equals no constant
        if left.type.optional or right.type.optional:

            def equal(facts: DispatchFacts) -> bool:
                x = a(facts)
                return x is not None and x == b(facts)

            return equal
        return lambda facts: a(facts) == b(facts)

    def _member(self, element: Expr, group: Expr, a: Fn, b: Fn) -> Fn:
        if group.op == "const":
            members = group.value
            return lambda facts: a(facts) in members  # None is in no set of strings
        if element.op == "const":
            value = element.value
            return lambda facts: value in b(facts)

        def member(facts: DispatchFacts) -> bool:
            x = a(facts)
            return x is not None and x in b(facts)

        return member


def _chain(op: str, fns: list[Fn]) -> Fn:
    """`and` / `or` of `fns`, short-circuiting, as nested pairs of closures."""
    if len(fns) == 1:
        return fns[0]
    a, rest = fns[0], _chain(op, fns[1:])
    if op == "and":
        return lambda facts: a(facts) and rest(facts)
    return lambda facts: a(facts) or rest(facts)


# ----------------------------------------------------------------------------- explaining


def show(value: Any) -> str:
    """A value as a violation message shows it."""
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, frozenset | set):
        return "{" + ", ".join(json.dumps(v) for v in sorted(value)) + "}"
    if isinstance(value, int | float):
        return "unlimited" if value == INF else f"{value:g}"
    return repr(value)


class _Explainer:
    """Why a rule came out false for some facts, in terms of the values it read."""

    def __init__(self, invariant: Invariant, facts: DispatchFacts) -> None:
        self.invariant = invariant
        self.facts = facts
        self.context: set[str] = set()  # fields that made the rule apply

    def value(self, expr: Expr) -> Any:
        return self.invariant.fns[id(expr)](self.facts)

    def text(self, expr: Expr) -> str:
        return self.invariant.rule[expr.start : expr.end]  # only the rule is explained

    def why_not(self, expr: Expr, want: bool) -> list[str]:
        """Why `expr` is not `want`."""
        op = expr.op
        if op == "not":
            return self.why_not(expr.args[0], not want)
        if op in ("and", "or"):
            # and: one false part makes it false; or: every part must be false.
            decisive = (op == "and") == want
            parts = [a for a in expr.args if bool(self.value(a)) != want]
            if decisive:
                return self.why_not(parts[0], want)
            return [reason for part in parts for reason in self.why_not(part, want)]
        if op == "implies" and want:
            self.context |= expr.args[0].fields
            return self.why_not(expr.args[1], True)
        if op == "const":
            return [f"the rule is always {show(expr.value)}"]
        if op in ("==", "!=", "in") and len(expr.args) == 2:
            return [self._compare(expr, want)]
        return [f"{self.text(expr)} is {show(not want)}{self._values(expr)}"]

    def _compare(self, expr: Expr, want: bool) -> str:
        left, right = expr.args
        if expr.op == "in" and left.op == "const":
            # "health" in inputs.classes
            verb = "expected it to contain" if want else "which contains"
            return f"{self._is(right)}, {verb} {show(left.value)}"
        if left.op == "const":
            left, right = right, left
        equal = (expr.op == "==") == want
        if right.op == "const":
            if expr.op == "in":
                expected = "one of" if want else "none of"
                return f"{self._is(left)}, expected {expected} {show(right.value)}"
            expected = show(right.value) if equal else f"anything but {show(right.value)}"
            return f"{self._is(left)}, expected {expected}"
        return f"{self.text(expr)} is {show(not want)}{self._values(expr)}"

    def _is(self, expr: Expr) -> str:
        return f"{self.text(expr)} is {show(self.value(expr))}"

    def _values(self, expr: Expr) -> str:
        shown = [self._is(arg) for arg in _leaves(expr)]
        return f" ({', '.join(shown)})" if shown else ""


def _leaves(expr: Expr) -> list[Expr]:
    if expr.op == "field":
        return [expr]
    return [leaf for arg in expr.args for leaf in _leaves(arg)]
