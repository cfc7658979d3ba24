"""Label selectors in the style of Ray's (2.49+): ``{"region": "in(eu-west,eu-central)"}``.

A value is one of ``v`` (equals), ``!v`` (differs or is absent), ``in(a,b,...)`` and
``!in(a,b,...)``. Every node carries the built-in label ``region``; `options(region=...)` is
shorthand for ``{"region": ...}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fabric.policy._model import Regions

REGION_LABEL = "region"
_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_IN = re.compile(r"^(!?)in\((.*)\)$")


class LabelSelectorError(ValueError):
    """A label selector that does not parse."""


@dataclass(frozen=True)
class Constraint:
    key: str
    values: frozenset[str]
    negated: bool

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        inside = value is not None and value in self.values
        return not inside if self.negated else inside

    def __str__(self) -> str:
        values = ",".join(sorted(self.values))
        body = f"in({values})" if len(self.values) > 1 else values
        return f"{self.key}={'!' if self.negated else ''}{body}"


@dataclass(frozen=True)
class LabelSelector:
    constraints: tuple[Constraint, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(c.matches(labels) for c in self.constraints)

    def regions(self, declared: Regions) -> Regions:
        """The regions the selector admits out of `declared` (None when it does not constrain
        regions, or when nothing is declared and it names none)."""
        result: Regions = None
        for c in self.constraints:
            if c.key != REGION_LABEL:
                continue
            if c.negated:
                if declared is None:
                    continue
                allowed = declared - c.values
            else:
                allowed = c.values if declared is None else declared & c.values
            result = allowed if result is None else result & allowed
        return result

    def __str__(self) -> str:
        return ", ".join(str(c) for c in self.constraints)

    def __bool__(self) -> bool:
        return bool(self.constraints)


NO_SELECTOR = LabelSelector()


def _parse_value(key: str, text: str) -> Constraint:
    if not isinstance(text, str):
        raise LabelSelectorError(f"label_selector[{key!r}] must be a string, got {text!r}")
    match = _IN.fullmatch(text)
    if match:
        negated = match.group(1) == "!"
        values = [v.strip() for v in match.group(2).split(",")]
    else:
        negated = text.startswith("!")
        values = [text[1:] if negated else text]
    for value in values:
        if not _VALUE.fullmatch(value):
            raise LabelSelectorError(
                f"label_selector[{key!r}]: invalid value {value!r} in {text!r} "
                "(expected v, !v, in(a,b) or !in(a,b) over letters, digits, '.', '_', '-')"
            )
    return Constraint(key, frozenset(values), negated)


def parse_selector(selector: Mapping[str, str] | None) -> LabelSelector:
    if not selector:
        return NO_SELECTOR
    if not isinstance(selector, Mapping):
        raise LabelSelectorError(f"label_selector must be a dict, got {type(selector).__name__}")
    constraints = []
    for key in sorted(selector):
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise LabelSelectorError(f"invalid label key {key!r}")
        constraints.append(_parse_value(key, selector[key]))
    return LabelSelector(tuple(constraints))
