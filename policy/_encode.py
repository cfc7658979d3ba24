"""The policy's rules and invariants as Z3 formulas over the unknowns of one dispatch.

The formulas mirror the runtime, rule by rule, for one tenant at a time (fixing the
tenant makes every policy constant concrete, so each formula is small):

- :meth:`PolicyEncoding.allowed` mirrors :func:`fabric.policy._facts.rules_refusal`,
  which asks the runtime's own decision functions;
- :meth:`PolicyEncoding.holds` mirrors the evaluators compiled by ``_invariants.py``,
  with the same semantics for absent strings and unlimited quotas.

A test compares both with the runtime on thousands of generated dispatches. Names are
numbered within a :class:`Universe`, which may span two policies (for a diff): a region,
jurisdiction, data class, action or residency label is an integer index, a node label's
value a Z3 string, a set one Boolean per member of its universe, and a number a pair
(unlimited, value). A construct the encoder does not know is refused with
:class:`ProofError`, never skipped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import z3
from fabric.policy._expr import ACTIONS, LABELS, Expr
from fabric.policy._facts import DispatchFacts
from fabric.policy._invariants import Invariant
from fabric.policy._loader import PolicyError, Problem
from fabric.policy._model import ANY, Policy, ResidencyLabelError

# The runtime's tolerance in quota comparisons (`held + more <= limit + 1e-9`).
EPSILON = z3.RealVal(Fraction(1, 10**9))
_NUMBER_FIELDS = ("cpus", "gpus", "memory")
_USAGE_INTS = ("tasks", "actors", "object_store")
_USAGE_REALS = ("cpus", "gpus", "memory")


class ProofError(PolicyError):
    """A proof that cannot be done faithfully: a construct the encoder cannot express,
    a solver without an answer, or an encoding the runtime contradicts."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__([Problem("<proof>", 0, 0, message)])

    def diagnostics(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


@dataclass(frozen=True)
class Universe:
    """Every name a proof may mention, numbered: the union over the policies compared."""

    regions: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    classes: tuple[str, ...]
    tenants: tuple[str, ...]
    labels: tuple[str, ...]  # residency labels: classes, jurisdictions, regions and "any"
    label_keys: tuple[str, ...]  # node label keys the invariants read

    @classmethod
    def of(cls, *policies: Policy) -> Universe:
        regions = sorted({r for p in policies for r in p.regions})
        jurisdictions = sorted({j for p in policies for j in p.regions.values()})
        classes = sorted({c for p in policies for t in p.tenants.values() for c in t.data_classes})
        keys = sorted(
            {
                name[len(LABELS) + 2 : -2]
                for p in policies
                for invariant in p.invariants
                for name in invariant.fields
                if name.startswith(f"{LABELS}[")
            }
        )
        labels = sorted({*classes, *jurisdictions, *regions, ANY})
        tenants = sorted({t for p in policies for t in p.tenants})
        return cls(
            tuple(regions),
            tuple(jurisdictions),
            tuple(classes),
            tuple(tenants),
            tuple(labels),
            tuple(keys),
        )

    def names(self, domain: str) -> tuple[str, ...]:
        return {
            "region": self.regions,
            "jurisdiction": self.jurisdictions,
            "class": self.classes,
            "tenant": self.tenants,
            "action": ACTIONS,
            "residency": self.labels,
        }[domain]


class Point:
    """The unknowns of one dispatch: every fact but the tenant, which a proof fixes."""

    def __init__(self, universe: Universe) -> None:
        self.universe = universe
        self.action = z3.Int("action")
        self.region = z3.Int("node.region")
        self.labels = {
            key: (z3.Bool(f'has node.labels["{key}"]'), z3.String(f'node.labels["{key}"]'))
            for key in universe.label_keys
        }
        self.task_region = (z3.Bool("has task.region"), z3.Int("task.region"))
        self.task_residency = (z3.Bool("has task.residency"), z3.Int("task.residency"))
        self.asked = {name: z3.Real(f"task.{name}") for name in _NUMBER_FIELDS}
        self.classes = [z3.Bool(f"inputs.classes has {c}") for c in universe.classes]
        self.inputs = [z3.Bool(f"inputs.regions has {r}") for r in universe.regions]
        self.usage: dict[str, Any] = {name: z3.Int(f"usage.{name}") for name in _USAGE_INTS}
        self.usage |= {name: z3.Real(f"usage.{name}") for name in _USAGE_REALS}

    def domain(self) -> z3.BoolRef:
        """Every unknown within its range."""
        u = self.universe
        parts = [
            _within(self.action, len(ACTIONS)),
            _within(self.region, len(u.regions)),
            _within(self.task_region[1], len(u.regions)),
            _within(self.task_residency[1], len(u.labels)),
            *(value >= 0 for value in self.asked.values()),
            *(value >= 0 for value in self.usage.values()),
            # A node label's value is never empty (label values are 1 to 63 characters).
            *(z3.Length(value) >= 1 for _, value in self.labels.values()),
        ]
        return z3.And(parts)

    def plain(self) -> z3.BoolRef:
        """The request asks for no resources and the tenant holds nothing: what a
        counterexample should be when it can, to be read at a glance."""
        return z3.And([value == 0 for value in (*self.asked.values(), *self.usage.values())])

    def substitution(self, tenant_facts: DispatchFacts) -> list[tuple[Any, Any]]:
        """(unknown, value) pairs that put `tenant_facts` in place of the unknowns."""
        u, f = self.universe, tenant_facts
        pairs: list[tuple[Any, Any]] = [
            (self.action, z3.IntVal(ACTIONS.index(f.action))),
            (self.region, z3.IntVal(u.regions.index(f.node_region))),
        ]
        for key, (has, value) in self.labels.items():
            label = f.node_labels.get(key)
            pairs += [(has, z3.BoolVal(label is not None)), (value, z3.StringVal(label or "x"))]
        for (has, index), given, names in (
            (self.task_region, f.task_region, u.regions),
            (self.task_residency, f.task_residency, u.labels),
        ):
            pairs += [
                (has, z3.BoolVal(given is not None)),
                (index, z3.IntVal(names.index(given) if given is not None else 0)),
            ]
        for name, var in self.asked.items():
            pairs.append((var, z3.RealVal(Fraction(getattr(f, name)))))
        pairs += [
            (b, z3.BoolVal(c in f.input_classes))
            for b, c in zip(self.classes, u.classes, strict=True)
        ]
        pairs += [
            (b, z3.BoolVal(r in f.input_regions))
            for b, r in zip(self.inputs, u.regions, strict=True)
        ]
        for name, var in self.usage.items():
            value = getattr(f, f"usage_{name}")
            pairs.append(
                (var, z3.IntVal(value) if name in _USAGE_INTS else z3.RealVal(Fraction(value)))
            )
        return pairs

    def facts(self, model: z3.ModelRef, tenant: str) -> DispatchFacts:
        """The dispatch a model of the unknowns describes."""
        u = self.universe

        def get(term: Any) -> Any:
            return model.eval(term, model_completion=True)

        def true(term: Any) -> bool:
            return bool(z3.is_true(get(term)))

        def number(term: Any) -> float:
            value = get(term)
            if z3.is_int_value(value):
                return float(value.as_long())
            return float(Fraction(value.as_fraction()))

        labels = {
            key: get(value).as_string()
            for key, (has, value) in self.labels.items()
            if z3.is_true(get(has))
        }
        task_region = (
            u.regions[get(self.task_region[1]).as_long()]
            if z3.is_true(get(self.task_region[0]))
            else None
        )
        task_residency = (
            u.labels[get(self.task_residency[1]).as_long()]
            if z3.is_true(get(self.task_residency[0]))
            else None
        )
        p_in, p_cls = self.inputs, self.classes
        return DispatchFacts(
            tenant=tenant,
            action=ACTIONS[get(self.action).as_long()],
            node_region=u.regions[get(self.region).as_long()],
            input_regions=frozenset(r for b, r in zip(p_in, u.regions, strict=True) if true(b)),
            node_labels=labels,
            task_region=task_region,
            task_residency=task_residency,
            cpus=number(self.asked["cpus"]),
            gpus=number(self.asked["gpus"]),
            memory=number(self.asked["memory"]),
            input_classes=frozenset(c for b, c in zip(p_cls, u.classes, strict=True) if true(b)),
            usage_tasks=get(self.usage["tasks"]).as_long(),
            usage_actors=get(self.usage["actors"]).as_long(),
            usage_cpus=number(self.usage["cpus"]),
            usage_gpus=number(self.usage["gpus"]),
            usage_memory=number(self.usage["memory"]),
            usage_object_store=get(self.usage["object_store"]).as_long(),
        )


def _within(index: Any, size: int) -> z3.BoolRef:
    return z3.And(index >= 0, index < size)


def example_node(policy: Policy, region: str) -> str | None:
    """A node identity that may claim `region` under `policy`, for showing a counterexample."""
    for claim in policy.nodes:
        if region not in claim.regions:
            continue
        name = claim.identity.replace("*", "1").replace("?", "1")
        if fnmatch.fnmatchcase(name, claim.identity):
            return name
        return f"any node matching {claim.identity}"
    return None


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class _Num:
    unlimited: Any  # BoolRef
    value: Any  # ArithRef (Real)


@dataclass(frozen=True)
class _Str:
    present: Any  # BoolRef
    value: Any  # an index (ArithRef) into the universe's names, or a SeqRef for a label


@dataclass(frozen=True)
class _Set:
    members: tuple[Any, ...]  # one BoolRef per name of the universe's domain


class PolicyEncoding:
    """One policy's rules and invariants over a :class:`Point`, tenant by tenant."""

    def __init__(self, policy: Policy, point: Point) -> None:
        if policy.open:
            raise ProofError("the open default policy declares nothing to prove")
        self.policy = policy
        self.point = point
        self.universe = point.universe
        u = self.universe
        self._claimed = [any(r in c.regions for c in policy.nodes) for r in u.regions]
        jurisdiction_of = [policy.regions.get(r) for r in u.regions]
        node_jurisdiction: Any = z3.IntVal(-1)  # a region this policy does not declare
        for index, name in enumerate(jurisdiction_of):
            if name is not None:
                code = z3.IntVal(u.jurisdictions.index(name))
                node_jurisdiction = z3.If(point.region == index, code, node_jurisdiction)
        self._node_jurisdiction = node_jurisdiction
        self._input_jurisdictions = tuple(
            z3.Or(
                [b for b, j in zip(point.inputs, jurisdiction_of, strict=True) if j == name]
                or [z3.BoolVal(False)]
            )
            for name in u.jurisdictions
        )

    # -- the rules ----------------------------------------------------------------------

    def allowed(self, tenant_name: str) -> z3.BoolRef:
        """The rules take the dispatch at the point for `tenant_name` (`rules_refusal`)."""
        p, u, policy = self.point, self.universe, self.policy
        tenant = policy.tenants.get(tenant_name)
        if tenant is None:  # (1) not a tenant of this policy
            return z3.BoolVal(False)
        # (2) a node may claim the region
        parts = [self._region_in(p.region, self._claimed)]
        # (3) the inputs are what the residency label and their classes allow
        has_label, label = p.task_residency
        valid: list[int] = []
        covering: list[list[int]] = [[] for _ in u.regions]
        for index, name in enumerate(u.labels):
            try:
                regions = policy.residency(tenant, name)
            except ResidencyLabelError:
                continue
            valid.append(index)
            for r, region in enumerate(u.regions):
                if regions is None or region in regions:
                    covering[r].append(index)
        parts.append(z3.Implies(has_label, z3.Or([label == i for i in valid] or [False])))
        for r, member in enumerate(p.inputs):
            inside = z3.Or([label == i for i in covering[r]] or [False])
            parts.append(z3.Implies(z3.And(has_label, member), inside))
        for c, name in enumerate(u.classes):
            regions = tenant.data_classes.get(name)
            if regions is None:
                parts.append(z3.Not(p.classes[c]))
                continue
            for r, region in enumerate(u.regions):
                if region not in regions:
                    parts.append(z3.Implies(p.classes[c], z3.Not(p.inputs[r])))
        # (4) the decision: a transfer needs the region in the object's residency; work
        # also the tenant's run regions, the region it asks for, and its quotas.
        transfer = ACTIONS.index("transfer")
        in_inputs = self._region_in(p.region, p.inputs)
        run = [tenant.run_regions is None or r in tenant.run_regions for r in u.regions]
        has_region, asked_region = p.task_region
        placed = z3.And(
            self._region_in(p.region, run),
            z3.Implies(has_region, p.region == asked_region),
            in_inputs,
            self._admitted(tenant_name),
        )
        parts.append(z3.If(p.action == transfer, in_inputs, placed))
        return z3.And(parts)

    def _region_in(self, region: Any, members: Sequence[Any]) -> z3.BoolRef:
        return z3.Or(
            [
                (region == i) if m is True else z3.And(region == i, m)
                for i, m in enumerate(members)
                if m is not False
            ]
            or [False]
        )

    def _admitted(self, tenant_name: str) -> z3.BoolRef:
        """`admission_refusal` finds nothing and, for new work, `quota_allows`."""
        p = self.point
        quotas = self.policy.tenants[tenant_name].quotas
        creation = p.action == ACTIONS.index("actor.create")
        call = p.action == ACTIONS.index("actor.call")
        parts = []
        if quotas.tasks is not None:
            parts.append(z3.ToReal(p.usage["tasks"]) + 1 <= _real(quotas.tasks) + EPSILON)
        if quotas.actors is not None:
            fits = z3.ToReal(p.usage["actors"]) + 1 <= _real(quotas.actors) + EPSILON
            parts.append(z3.Implies(creation, fits))
        for name in _NUMBER_FIELDS:
            limit = getattr(quotas, name)
            if limit is None:
                continue
            asked = p.asked[name]
            parts.append(z3.Or(asked == 0, asked <= _real(limit) + EPSILON))
            room = p.usage[name] + asked <= _real(limit) + EPSILON
            parts.append(z3.Or(call, asked == 0, room))
        return z3.And(parts)

    # -- the invariants -----------------------------------------------------------------

    def holds(self, invariant: Invariant, tenant_name: str) -> z3.BoolRef:
        """The invariant holds at the point for `tenant_name`."""
        try:
            rule = self._bool(invariant.rule_expr, tenant_name)
            if invariant.when_expr is None:
                return rule
            return z3.Implies(self._bool(invariant.when_expr, tenant_name), rule)
        except _Unencodable as e:
            raise ProofError(
                f"invariant {invariant.name}: cannot be encoded for a proof: {e}"
            ) from None

    def all_hold(self, tenant_name: str) -> z3.BoolRef:
        return z3.And([self.holds(i, tenant_name) for i in self.policy.invariants] or [True])

    def applies(self, invariant: Invariant, tenant_name: str) -> z3.BoolRef | None:
        """The invariant has something to say at the point: its guard is true, and so is
        the condition of its rule when the rule is an implication; None when it has
        neither, and so always applies."""
        parts = []
        if invariant.when_expr is not None:
            parts.append(self._bool(invariant.when_expr, tenant_name))
        if invariant.rule_expr.op == "implies":
            parts.append(self._bool(invariant.rule_expr.args[0], tenant_name))
        return z3.And(parts) if parts else None

    def _bool(self, expr: Expr, tenant: str) -> Any:
        value = self._value(expr, tenant, "")
        if not z3.is_bool(value):
            raise _Unencodable(f"{expr.op} is not true or false")
        return value

    def _value(self, expr: Expr, tenant: str, domain: str) -> Any:
        op = expr.op
        if op == "const":
            return self._const(expr.value, domain or expr.type.domain)
        if op == "field":
            return self._field(expr.value, expr.key, tenant)
        if op == "not":
            return z3.Not(self._bool(expr.args[0], tenant))
        if op in ("and", "or"):
            parts = [self._bool(arg, tenant) for arg in expr.args]
            return z3.And(parts) if op == "and" else z3.Or(parts)
        if op == "implies":
            a, b = (self._bool(arg, tenant) for arg in expr.args)
            return z3.Implies(a, b)
        if len(expr.args) != 2:
            raise _Unencodable(f"operator {op!r}")
        left, right = expr.args
        context = left.type.domain or right.type.domain
        if op == "in" and context == "label" and right.op == "const":
            label = self._value(left, tenant, context)
            values = [label.value == z3.StringVal(v) for v in sorted(right.value)]
            return z3.And(label.present, z3.Or(values or [False]))
        a = self._value(left, tenant, context)
        b = self._value(right, tenant, context)
        if op in ("==", "!="):
            equal = _equal(a, b)
            return equal if op == "==" else z3.Not(equal)
        if op == "in" and isinstance(a, _Str) and isinstance(b, _Set):
            return z3.And(a.present, _member(a.value, b.members))
        if op == "subset" and isinstance(a, _Set) and isinstance(b, _Set):
            return z3.And(
                [z3.Implies(x, y) for x, y in zip(a.members, b.members, strict=True)] or [True]
            )
        if isinstance(a, _Num) and isinstance(b, _Num):
            if op == "+":
                return _Num(z3.Or(a.unlimited, b.unlimited), a.value + b.value)
            if op in ("<", ">"):
                small, large = (a, b) if op == "<" else (b, a)
                return z3.And(
                    z3.Not(small.unlimited), z3.Or(large.unlimited, small.value < large.value)
                )
            if op in ("<=", ">="):
                small, large = (a, b) if op == "<=" else (b, a)
                return z3.Or(
                    large.unlimited, z3.And(z3.Not(small.unlimited), small.value <= large.value)
                )
        raise _Unencodable(f"operator {op!r} on {left.type.describe()} and {right.type.describe()}")

    def _const(self, value: Any, domain: str) -> Any:
        if isinstance(value, bool):
            return z3.BoolVal(value)
        if isinstance(value, float):
            return _Num(z3.BoolVal(False), _real(value))
        if domain == "label":
            if isinstance(value, frozenset):
                raise _Unencodable("a set of label values")
            return _Str(z3.BoolVal(True), z3.StringVal(value))
        if not domain:
            raise _Unencodable(f"a constant {value!r} compared with nothing it could name")
        names = self.universe.names(domain)
        if isinstance(value, frozenset):
            return _Set(tuple(z3.BoolVal(name in value) for name in names))
        if value not in names:
            raise _Unencodable(f"{value!r} is not a name the policies declare")
        return _Str(z3.BoolVal(True), z3.IntVal(names.index(value)))

    def _field(self, path: str, key: str | None, tenant: str) -> Any:
        p, u = self.point, self.universe
        true = z3.BoolVal(True)
        if path == "tenant":
            return _Str(true, z3.IntVal(u.tenants.index(tenant)))
        if path == "action":
            return _Str(true, p.action)
        if path == "node.region":
            return _Str(true, p.region)
        if path == "node.jurisdiction":
            return _Str(true, self._node_jurisdiction)
        if path == LABELS and key in p.labels:
            return _Str(*p.labels[key])
        if path == "task.region":
            return _Str(*p.task_region)
        if path == "task.residency":
            return _Str(*p.task_residency)
        if path == "inputs.classes":
            return _Set(tuple(p.classes))
        if path == "inputs.regions":
            return _Set(tuple(p.inputs))
        if path == "inputs.jurisdictions":
            return _Set(self._input_jurisdictions)
        root, _, name = path.partition(".")
        if root == "task" and name in p.asked:
            return _Num(z3.BoolVal(False), p.asked[name])
        if root == "usage" and name in p.usage:
            value = p.usage[name]
            return _Num(z3.BoolVal(False), z3.ToReal(value) if name in _USAGE_INTS else value)
        if root == "quota":
            owner = self.policy.tenants.get(tenant)
            limit = getattr(owner.quotas, name) if owner is not None else None
            if limit is None:
                return _Num(z3.BoolVal(True), z3.RealVal(0))
            return _Num(z3.BoolVal(False), _real(limit))
        raise _Unencodable(f"field {path}")


class _Unencodable(Exception):
    """A construct the encoder has no formula for."""


def _real(value: float | int) -> Any:
    return z3.RealVal(Fraction(value))


def _equal(a: Any, b: Any) -> Any:
    if isinstance(a, _Num) and isinstance(b, _Num):
        both_finite = z3.And(z3.Not(a.unlimited), z3.Not(b.unlimited), a.value == b.value)
        return z3.Or(z3.And(a.unlimited, b.unlimited), both_finite)
    if isinstance(a, _Str) and isinstance(b, _Str):
        return z3.And(a.present, b.present, a.value == b.value)  # absent equals nothing
    if isinstance(a, _Set) and isinstance(b, _Set):
        return z3.And([x == y for x, y in zip(a.members, b.members, strict=True)] or [True])
    if z3.is_bool(a) and z3.is_bool(b):
        return a == b
    raise _Unencodable(f"'==' on {type(a).__name__} and {type(b).__name__}")


def _member(index: Any, members: Iterable[Any]) -> Any:
    if z3.is_int_value(index):
        return list(members)[index.as_long()]
    return z3.Or([z3.And(index == i, m) for i, m in enumerate(members)] or [False])
