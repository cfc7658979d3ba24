"""Everything wrong with a policy document as plain data, as findings: where (a path of
keys and indexes) and what, in plain words. The loader places them in the YAML file.

The steps, each reported in full:

1. Plain data only: string keys and finite numbers, so that the document has one
   canonical JSON form, which is what its version digests.
2. The published JSON Schema (``schema.json``, draft 2020-12). Each error is said as what
   was expected (the schema's titles are written as the noun phrases used here) and
   what was given, at the value it concerns, or at the key for an unknown key.
3. The rules no schema can express: every name used is declared, an identity belongs to
   one tenant and has the kind its place needs, uids are unique, data classes do not
   shadow regions, a tenant can run somewhere its data may live, invariants have unique
   names and rules that type-check (``_expr.py``). These read data that
   may have failed the schema too, so each skips what lacks the shape it expects.

A place reported by one step is not reported again by a later one: the earlier finding
explains it best (a name that fails the schema's pattern is not also "undeclared").
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import json
import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from fabric.policy._expr import ExprErrors, Vocabulary, check
from fabric.policy._model import ANY, Policy, ResidencyLabelError, describe_regions

Location = tuple[str | int, ...]  # keys and list indexes from the document's root

# Maps whose keys are names the document chooses, by the key that holds them.
_NAME_KINDS = {"regions": "region", "tenants": "tenant", "classes": "data class"}


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the value at `location`, said in `message`."""

    location: Location
    message: str
    at_key: bool = False  # point at the mapping key at `location`, not at its value
    offset: int | None = None  # a character of the string at `location` (a rule's error)


def check_document(document: Any, reported: Collection[Location] = ()) -> tuple[Any, list[Finding]]:
    """A plain copy of `document`, for the policy to own, and what is wrong with it;
    values at `reported` have been reported by the caller already."""
    plain: list[Finding] = []
    data = _plain(document, (), plain)
    steps = [plain]
    if not isinstance(data, dict):
        steps.append([Finding((), f"the policy document must be a mapping, got {shown(data)}")])
    else:
        steps.append(_schema_findings(data))
        steps.append(_semantic_findings(data))
    done = {(location, False) for location in reported}
    findings = []
    for step in steps:
        places = set()
        for finding in dict.fromkeys(step):  # each once, in order
            place = (finding.location, finding.at_key)
            if place not in done:
                places.add(place)
                findings.append(finding)
        done |= places
    return data, findings


def describe_location(location: Location) -> str:
    """``("nodes", 0, "regions", 1)`` -> ``nodes[0].regions[1]``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def shown(value: Any) -> str:
    """`value` as a message quotes it."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str | int | float):
        return repr(value)
    return str(value)


def where(location: Location) -> str:
    """The prefix of a message about the value at `location`: ``"tenants.alice: "``."""
    return f"{describe_location(location)}: " if location else ""


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice the user most likely meant by `word`, or None."""
    for choice in choices:
        if choice.casefold() == word.casefold():
            return choice
    matches = difflib.get_close_matches(word, choices, n=1)
    return matches[0] if matches else None


# ----------------------------------------------------------------------------- (1) plain data


def _plain(value: Any, location: Location, findings: list[Finding]) -> Any:
    """A deep copy of `value` as JSON data; entries with keys that are not strings are
    left out, and they and numbers that are not finite are reported."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, str):
                out[key] = _plain(item, (*location, key), findings)
            else:
                findings.append(Finding(location, f"{where(location)}key {key!r} is not a string"))
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, (*location, i), findings) for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        findings.append(
            Finding(location, f"{where(location)}expected a finite number, got {value}")
        )
    return copy.deepcopy(value)


# ----------------------------------------------------------------------------- (2) the schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    text = importlib.resources.files("fabric.policy").joinpath("schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def _schema_findings(document: dict[str, Any]) -> list[Finding]:
    findings: list[Finding] = []
    for error in _validator().iter_errors(document):
        findings.extend(_explain(error))
    return findings


def _explain(error: jsonschema.ValidationError) -> list[Finding]:
    location: Location = tuple(error.absolute_path)
    prefix, schema, instance = where(location), error.schema, error.instance
    assert isinstance(schema, dict)
    if error.validator in ("anyOf", "oneOf"):
        branch = _matching_branch(error.context or [])
        if branch is not None:
            return [finding for sub in branch for finding in _explain(sub)]
    elif error.validator == "required":
        # One error per missing key comes here; each says all of them, once.
        missing = [repr(key) for key in schema["required"] if key not in instance]
        keys = f"key {missing[0]}" if len(missing) == 1 else f"keys {_and(missing)}"
        return [Finding(location, f"{prefix}missing required {keys}", at_key=True)]
    elif error.validator == "additionalProperties":
        return _unknown_keys(location, schema, instance)
    elif error.validator == "uniqueItems":
        seen: list[Any] = []
        for index, item in enumerate(instance):
            if item in seen:
                at = (*location, index)
                return [Finding(at, f"{where(at)}{shown(item)} is listed twice")]
            seen.append(item)
    message = f"{prefix}expected {_describe(schema)}, got {shown(instance)}"
    if schema.get("type") == "string" and isinstance(instance, bool):
        message += "; quote it if you meant a string"  # YAML reads yes, no, on, off as booleans
    return [Finding(location, message)]


def _matching_branch(
    errors: Sequence[jsonschema.ValidationError],
) -> list[jsonschema.ValidationError] | None:
    """The errors of the one alternative whose type the instance has, if exactly one has:
    for a list of names, what is wrong with the list, not that it is not a name."""
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for error in errors:
        branches.setdefault(error.relative_schema_path[0], []).append(error)
    fitting = [
        branch
        for branch in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in branch)
    ]
    return fitting[0] if len(fitting) == 1 else None


def _unknown_keys(location: Location, schema: dict[str, Any], instance: Any) -> list[Finding]:
    allowed = sorted(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    findings = []
    for key in instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        at = (*location, key)
        if patterns and not allowed:
            kind = _NAME_KINDS.get(str(location[-1]) if location else "", "name")
            findings.append(
                Finding(
                    at,
                    f"{where(location)}{key!r} is not a valid {kind} name: expected lowercase "
                    "letters, digits and '-', starting with a letter, at most 63 characters",
                    at_key=True,
                )
            )
            continue
        place = describe_location(location) if location else "the policy"
        match = _suggest(key, allowed)
        hint = (
            f"; did you mean {match!r}?" if match else f" (expected one of: {', '.join(allowed)})"
        )
        findings.append(Finding(at, f"unknown key {key!r} in {place}{hint}", at_key=True))
    return findings


def _describe(schema: Mapping[str, Any]) -> str:
    """What `schema` wants, as a noun phrase."""
    if "title" in schema:
        return str(schema["title"])
    kinds = {"object": "a mapping", "array": "a list", "string": "a string"}
    return kinds.get(schema.get("type", ""), "something else")


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# ----------------------------------------------------------------------------- (3) the rules


def _semantic_findings(document: Mapping[str, Any]) -> list[Finding]:
    names = _Names(document)
    return [
        *_check_regions(names),
        *_check_nodes(document, names),
        *_check_tenants(document, names),
        *_check_roles(document),
        *_check_invariants(document, names),
    ]


class _Names:
    """The regions and jurisdictions a document declares, and how names resolve to them."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.regions: dict[str, str] = {}
        for name, region in _mapping(document.get("regions")).items():
            jurisdiction = _mapping(region).get("jurisdiction")
            self.regions[name] = jurisdiction if isinstance(jurisdiction, str) else ""
        self.jurisdictions = sorted({j for j in self.regions.values() if j})
        self._resolver = Policy(regions=self.regions, nodes=(), tenants={})

    def known(self, name: str, allow_any: bool) -> bool:
        return name in self.regions or name in self.jurisdictions or (allow_any and name == ANY)

    def choices(self, allow_any: bool) -> list[str]:
        return [*sorted(self.regions), *self.jurisdictions, *([ANY] if allow_any else [])]

    def resolve(self, names: list[str]) -> frozenset[str] | None:
        """The regions `names` cover, or None when one of them is not declared."""
        try:
            return self._resolver.resolve_regions(names)
        except ResidencyLabelError:
            return None


def _check_regions(names: _Names) -> Iterator[Finding]:
    if ANY in names.regions:
        yield Finding(
            ("regions", ANY),
            f"regions.{ANY}: the name {ANY!r} is reserved: it stands for every region",
            at_key=True,
        )


def _check_nodes(document: Mapping[str, Any], names: _Names) -> Iterator[Finding]:
    for index, claim in enumerate(_list(document.get("nodes"))):
        claim = _mapping(claim)
        identity = claim.get("identity")
        if isinstance(identity, str):
            yield from _check_kind(("nodes", index, "identity"), identity, "node")
        yield from _check_places(("nodes", index, "regions"), claim.get("regions"), names)


def _check_tenants(document: Mapping[str, Any], names: _Names) -> Iterator[Finding]:
    owners: dict[str, str] = {}  # identity -> the first tenant that lists it
    uids: dict[int, str] = {}  # uid -> the first tenant that has it
    for name, tenant in _mapping(document.get("tenants")).items():
        tenant = _mapping(tenant)
        here: Location = ("tenants", name)

        for index, identity in enumerate(_list(tenant.get("identities"))):
            if not isinstance(identity, str):
                continue
            at = (*here, "identities", index)
            yield from _check_kind(at, identity, "tenant")
            owner = owners.setdefault(identity, name)
            if owner != name:
                yield Finding(
                    at,
                    f"{where(at)}identity {identity!r} already belongs to tenant {owner!r}",
                )

        uid = tenant.get("uid")
        if isinstance(uid, int) and not isinstance(uid, bool):
            other = uids.setdefault(uid, name)
            if other != name:
                at = (*here, "uid")
                yield Finding(at, f"{where(at)}uid {uid} is already the uid of tenant {other!r}")

        placement, residency = _mapping(tenant.get("placement")), _mapping(tenant.get("residency"))
        yield from _check_places((*here, "placement", "allow"), placement.get("allow"), names)
        yield from _check_places((*here, "residency", "default"), residency.get("default"), names)
        for label, regions in _mapping(residency.get("classes")).items():
            at = (*here, "residency", "classes", label)
            yield from _check_class_name(at, label, names)
            yield from _check_places(at, regions, names)
        yield from _check_places(
            (*here, "residency", "export"), residency.get("export"), names, allow_any=False
        )
        yield from _check_overlap(name, placement.get("allow"), residency.get("default"), names)


def _check_roles(document: Mapping[str, Any]) -> Iterator[Finding]:
    for role, identities in _mapping(document.get("roles")).items():
        for index, identity in enumerate(_list(identities)):
            if isinstance(identity, str):
                yield from _check_kind(("roles", role, index), identity, "operator")


def _check_kind(at: Location, identity: str, kind: str) -> Iterator[Finding]:
    given, slash, _ = identity.partition("/")
    # Identities without a known kind fail the schema's pattern; that message is enough.
    if slash and given in ("tenant", "operator", "node") and given != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        yield Finding(
            at,
            f"{where(at)}{identity!r} is not {article} {kind} identity: expected '{kind}/<name>'",
        )


def _check_places(
    at: Location, value: Any, names: _Names, allow_any: bool = True
) -> Iterator[Finding]:
    """Every name in `value` (a name or a list of names) is declared."""
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, name in items:
        if not isinstance(name, str) or names.known(name, allow_any):
            continue
        here = at if index is None else (*at, index)
        if name == ANY:
            yield Finding(here, f"{where(here)}expected a region or a jurisdiction, got 'any'")
            continue
        choices = names.choices(allow_any)
        match = _suggest(name, choices)
        hint = f"; did you mean {match!r}?" if match else f" (declared: {', '.join(choices)})"
        yield Finding(here, f"{where(here)}unknown region or jurisdiction {name!r}{hint}")


def _check_class_name(at: Location, label: str, names: _Names) -> Iterator[Finding]:
    if label in names.regions:
        shadowed = f"region {label!r}"
    elif label in names.jurisdictions:
        shadowed = f"jurisdiction {label!r}"
    elif label == ANY:
        shadowed = f"the label {ANY!r}, which allows every region"
    else:
        return
    yield Finding(
        at,
        f"{where(at)}data class {label!r} shadows {shadowed}: "
        "a residency label would mean two things; rename the class",
        at_key=True,
    )


def _check_overlap(tenant: str, allow: Any, default: Any, names: _Names) -> Iterator[Finding]:
    """The tenant can run somewhere its data may live by default."""
    run = names.resolve(_names_or_any(allow))
    data = names.resolve(_names_or_any(default))
    if not names.regions or not run or not data or run & data:
        return  # nothing to compare, or another finding explains it
    yield Finding(
        ("tenants", tenant),
        f"tenants.{tenant}: tenant {tenant!r} can run nowhere its data may live: "
        f"placement.allow covers {describe_regions(run)}; "
        f"residency.default covers {describe_regions(data)}",
        at_key=True,
    )


def _check_invariants(document: Mapping[str, Any], names: _Names) -> Iterator[Finding]:
    """Names are unique, and each rule and guard parses and type-checks against the
    names the document declares."""
    tenants = _mapping(document.get("tenants"))
    classes = {
        label
        for tenant in tenants.values()
        for label in _mapping(_mapping(_mapping(tenant).get("residency")).get("classes"))
    }
    vocabulary = Vocabulary(names.regions, tuple(tenants), tuple(classes))
    first: dict[str, int] = {}
    for index, invariant in enumerate(_list(document.get("invariants"))):
        invariant = _mapping(invariant)
        name = invariant.get("name")
        if isinstance(name, str):
            earlier = first.setdefault(name, index)
            if earlier != index:
                at: Location = ("invariants", index, "name")
                message = f"invariant {name!r} is already declared at invariants[{earlier}]"
                yield Finding(at, f"{where(at)}{message}")
        for key in ("rule", "when"):
            text = invariant.get(key)
            if not isinstance(text, str):
                continue
            at = ("invariants", index, key)
            try:
                check(text, vocabulary)
            except ExprErrors as errors:
                for error in errors.errors:
                    yield Finding(at, f"{where(at)}{error.message}", offset=error.offset)


def _names_or_any(value: Any) -> list[str]:
    if value is None:
        return [ANY]
    if isinstance(value, str):
        return [value]
    return [name for name in _list(value) if isinstance(name, str)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
