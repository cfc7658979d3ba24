"""Load a tenancy policy from YAML (or plain data) into a :class:`Policy`, or say exactly
what is wrong with it.

Every problem found is collected, and the policy is built only when there is none, so a
bad policy is never half-applied:

1. The YAML is read as a node tree, so that every value keeps its position and a key
   given twice is an error (PyYAML's own loader keeps the last one silently).
2. The data is checked as plain data (``_checks.py``): JSON types, the published JSON
   Schema, then the rules no schema can express. Each finding names a path in the
   document; the positions recorded in (1) turn it into ``file:line:column`` (inside
   an invariant's rule, the column of the character at fault).
3. The checked copy is normalised (sizes in bytes, a single residency name as a list)
   and becomes the policy's `document`, whose canonical JSON its version digests; its
   invariants are compiled to evaluators (``_invariants.py``).

Plain data from elsewhere (the canonical JSON a node agent receives from the head) goes
through steps 2 and 3 in :func:`compile_policy`; its problems have no positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from fabric.policy._budgets import build_budgets, normalise_budgets
from fabric.policy._checks import (
    Finding,
    Location,
    check_document,
    describe_location,
    shown,
    where,
)
from fabric.policy._invariants import compile_invariants
from fabric.policy._model import ANY, NodeClaim, Policy, Quotas, TenantPolicy

from fabric.exceptions import FabricError

# Aliases can make a short file expand into a huge tree; no real policy comes close.
MAX_NODES = 100_000

SIZE_UNITS = {
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?(" + "|".join(SIZE_UNITS) + ")")
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy; line and column count from 1, and are 0 if unknown."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(FabricError):
    """A policy that cannot be used, with every problem found in it, in document order.
    The root error of :mod:`fabric.policy`."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        if not self.problems:
            raise ValueError("a PolicyError needs at least one problem")
        super().__init__(self.diagnostics())

    def diagnostics(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)

    def __str__(self) -> str:
        return self.diagnostics()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


def load_policy(path: str | Path) -> Policy:
    """The policy in the YAML file at `path`; :class:`PolicyError` if it cannot be used."""
    filename = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError([Problem(filename, 0, 0, f"cannot read the policy: {reason}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError([Problem(filename, line, column, "not UTF-8 text")]) from None
    return load_policy_text(text, filename)


def load_policy_text(text: str, filename: str = "<policy>") -> Policy:
    """The policy in the YAML `text`; problems name `filename`."""
    try:
        tree = _Tree.read(text, filename)
    except yaml.YAMLError as exc:
        raise PolicyError([_yaml_problem(exc, text, filename)]) from None
    return _compile(tree.data, filename, tree.marks, tree.problems, tree.unread)


def compile_policy(document: Mapping[str, Any], filename: str = "<policy>") -> Policy:
    """The policy in `document`, plain data such as parsed JSON, checked exactly as a
    YAML file is; problems have no positions."""
    return _compile(document, filename, _Marks(), [], set())


def parse_size(text: str) -> int:
    """Bytes in a size string such as ``64GiB`` or ``1.5 GB``, rounded down."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(Decimal(match[1]) * SIZE_UNITS[match[2]])


# ----------------------------------------------------------------------------- compiling


def _compile(
    data: Any, filename: str, marks: _Marks, problems: list[Problem], unread: set[Location]
) -> Policy:
    """`problems` were found reading the YAML, at `unread`: values that could not be read."""
    document, findings = check_document(data, reported=unread)
    problems = problems + [_place(finding, filename, marks) for finding in findings]
    if problems:
        raise PolicyError(problems)
    return _build(_normalise(document))


def _place(finding: Finding, filename: str, marks: _Marks) -> Problem:
    if finding.offset is not None:
        line, column = marks.within(finding.location, finding.offset)
    else:
        line, column = marks.at(finding.location, finding.at_key)
    return Problem(filename, line, column, finding.message)


def _normalise(document: dict[str, Any]) -> dict[str, Any]:
    """Sizes in bytes and a single residency name as a list, so that equal policies have
    equal canonical forms. Nothing absent is filled in."""
    for tenant in document["tenants"].values():
        quotas = tenant.get("quotas", {})
        for key in ("memory", "object_store"):
            if isinstance(quotas.get(key), str):
                quotas[key] = parse_size(quotas[key])
        normalise_budgets(tenant.get("budgets", {}))
        residency = tenant.get("residency", {})
        if isinstance(residency.get("default"), str):
            residency["default"] = [residency["default"]]
        classes = residency.get("classes", {})
        for label, names in classes.items():
            if isinstance(names, str):
                classes[label] = [names]
    return document


def _build(document: dict[str, Any]) -> Policy:
    regions = {name: region["jurisdiction"] for name, region in document["regions"].items()}
    resolver = Policy(regions=regions, nodes=(), tenants={})

    def resolve(names: list[str]) -> frozenset[str]:
        covered = resolver.resolve_regions(names)
        assert covered is not None  # only the open policy leaves regions unrestricted
        return covered

    tenants = {}
    for name, spec in document["tenants"].items():
        placement, residency = spec.get("placement", {}), spec.get("residency", {})
        quotas = spec.get("quotas", {})
        tenants[name] = TenantPolicy(
            name=name,
            identities=frozenset(spec["identities"]),
            run_regions=resolve(placement.get("allow", [ANY])),
            default_residency=resolve(residency.get("default", [ANY])),
            data_classes={
                label: resolve(names) for label, names in residency.get("classes", {}).items()
            },
            export_regions=resolve(residency.get("export", [])),
            quotas=Quotas(
                tasks=_optional_int(quotas.get("tasks")),
                actors=_optional_int(quotas.get("actors")),
                cpus=_optional_float(quotas.get("cpus")),
                gpus=_optional_float(quotas.get("gpus")),
                memory=quotas.get("memory"),
                object_store=quotas.get("object_store"),
            ),
            budgets=build_budgets(spec.get("budgets", {})),
            uid=spec.get("uid"),
        )
    roles = document.get("roles", {})
    return Policy(
        regions=regions,
        nodes=tuple(
            NodeClaim(claim["identity"], resolve(claim["regions"]))
            for claim in document.get("nodes", [])
        ),
        tenants=tenants,
        operators=frozenset(roles.get("operators", [])),
        auditors=frozenset(roles.get("auditors", [])),
        document=document,
        invariants=compile_invariants(document.get("invariants", []), regions, tenants),
    )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- YAML


class _Marks:
    """Where each value and each mapping key of a YAML document starts (1-based)."""

    def __init__(self) -> None:
        self.values: dict[Location, tuple[int, int]] = {}
        self.keys: dict[Location, tuple[int, int]] = {}
        # Each string scalar's source: its start and end in `text`, style and value.
        self.strings: dict[Location, tuple[int, int, str | None, str]] = {}
        self.text = ""

    def at(self, location: Location, at_key: bool = False) -> tuple[int, int]:
        if at_key and location in self.keys:
            return self.keys[location]
        # A value the document lacks (a missing key) is reported where its parent is.
        while location not in self.values:
            if not location:
                return (0, 0)
            location = location[:-1]
        return self.values[location]

    def within(self, location: Location, offset: int) -> tuple[int, int]:
        """Where character `offset` of the string at `location` is written. The source
        spells the string with quotes, escapes, folds or indentation around its
        characters: they are matched in order; where they cannot be, the string's start."""
        if location not in self.strings or not self.strings[location][3]:
            return self.at(location)
        start, end, style, value = self.strings[location]
        if style in ("'", '"'):
            start += 1
        elif style in ("|", ">"):
            start = self.text.find("\n", start, end) + 1  # after the header line
        index, past = start, 0
        for char in value[: offset + 1]:
            found = self.text.find(char, index, end)
            if found < 0:
                return self.at(location)
            index = found + 1
        if offset >= len(value):
            past = offset - len(value) + 1  # the end of the string: after its last character
        index -= 1
        line = self.text.count("\n", 0, index) + 1
        return line, index - self.text.rfind("\n", 0, index) + past


def _position(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _Tree:
    """Plain data from a YAML node tree, recording where each value and key starts; what
    cannot become plain data (a key given twice, a key that is not a string, tags, merge
    keys, alias loops) is reported as a problem at its position."""

    def __init__(self, loader: yaml.SafeLoader, filename: str) -> None:
        self.loader = loader
        self.filename = filename
        self.data: Any = None
        self.marks = _Marks()
        self.problems: list[Problem] = []
        self.unread: set[Location] = set()  # values left out (None) after a problem
        self._count = 0
        self._open: set[int] = set()  # ids of the collections being read: alias loops

    @classmethod
    def read(cls, text: str, filename: str) -> _Tree:
        """The tree of the one YAML document in `text`; raises yaml.YAMLError on bad syntax."""
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise PolicyError(
                    [Problem(filename, 1, 1, "the policy is empty: expected a mapping")]
                )
            tree = cls(loader, filename)
            tree.marks.text = text
            tree.data = tree.value(root, ())
            return tree
        finally:
            loader.dispose()

    def value(self, node: yaml.Node, location: Location) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            self._report(node, f"the document is too large: more than {MAX_NODES} values")
            raise PolicyError(self.problems)
        self.marks.values[location] = _position(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            value = self.loader.construct_object(node, deep=True)
            if isinstance(value, str):
                span = (node.start_mark.index, node.end_mark.index, node.style, value)
                self.marks.strings[location] = span
            return value
        expected = _MAP_TAG if isinstance(node, yaml.MappingNode) else _SEQ_TAG
        if node.tag != expected:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._report(node, f"{where(location)}YAML tag {tag} is not supported")
            self.unread.add(location)
            return None
        if id(node) in self._open:
            self._report(node, f"{where(location)}an alias refers to a node that contains it")
            self.unread.add(location)
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, location)
            return [self.value(item, (*location, i)) for i, item in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, location: Location) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        place = f" in {describe_location(location)}" if location else ""
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._report(key_node, f"merge keys ('<<') are not supported{place}")
                continue
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                self._report(
                    key_node,
                    f"key {key_node.value}{place} is read as {shown(key)}, not as a string; "
                    "quote it",
                )
                continue
            line = key_node.start_mark.line + 1
            if key in first_lines:
                self._report(
                    key_node,
                    f"duplicate key {key!r}{place}; first given on line {first_lines[key]}",
                )
                continue
            first_lines[key] = line
            self.marks.keys[(*location, key)] = _position(key_node.start_mark)
            out[key] = self.value(value_node, (*location, key))
        return out

    def _report(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.filename, *_position(node.start_mark), message))


def _yaml_problem(exc: yaml.YAMLError, text: str, filename: str) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        line, column = _position(exc.problem_mark)
        message = f"invalid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            context_line, context_column = _position(exc.context_mark)
            message += f" ({exc.context} at line {context_line}, column {context_column})"
        elif exc.context:
            message += f" ({exc.context})"
        return Problem(filename, line, column, message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return Problem(filename, line, column, f"invalid YAML: {exc.reason}")
    return Problem(filename, 0, 0, f"invalid YAML: {exc}")
