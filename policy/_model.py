"""The compiled tenancy policy: who the tenants are, where their work may run, where their
data may live, what they may consume, and which node identities may claim which regions.

A :class:`Policy` is built only by the loader (`_loader.py`), which validates the YAML
document first; every name in it is therefore declared. Region sets are plain frozensets
of region names; `None` stands for "unrestricted" and occurs only in the open default
policy, which has no regions of its own.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabric.policy._budgets import Budgets

if TYPE_CHECKING:
    from fabric.policy._invariants import Invariant

Regions = frozenset[str] | None  # None: unrestricted (the open default policy only)

ANY = "any"  # the residency label that allows every declared region


@dataclass(frozen=True)
class Quotas:
    """Admission quotas of one tenant; `None` means no quota."""

    tasks: int | None = None  # tasks admitted and not finished
    actors: int | None = None  # live actors
    cpus: float | None = None  # CPUs held by admitted tasks and actors
    gpus: float | None = None
    memory: int | None = None  # bytes of `memory` resource held
    object_store: int | None = None  # bytes of objects stored


@dataclass(frozen=True)
class TenantPolicy:
    name: str
    identities: frozenset[str]  # certificate identities as "kind/name", e.g. "tenant/alice"
    run_regions: Regions  # where its work may run
    default_residency: Regions  # where its data may live unless it says otherwise
    data_classes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Driver locations (regions) that may receive any of its data whatever its residency.
    export_regions: frozenset[str] = frozenset()
    quotas: Quotas = Quotas()
    budgets: Budgets = field(default_factory=Budgets)
    uid: int | None = None  # the uid its workers run under, when the agent separates uids


@dataclass(frozen=True)
class NodeClaim:
    identity: str  # a glob over "node/<name>", e.g. "node/eu-*"
    regions: frozenset[str]


class ResidencyLabelError(ValueError):
    """A residency label that names no data class, jurisdiction or region."""


@dataclass(frozen=True)
class Policy:
    regions: Mapping[str, str]  # region -> jurisdiction
    nodes: tuple[NodeClaim, ...]
    tenants: Mapping[str, TenantPolicy]
    operators: frozenset[str] = frozenset()  # "kind/name" identities
    auditors: frozenset[str] = frozenset()
    # The validated document as plain data: what is signed, distributed and digested.
    document: Mapping[str, Any] = field(default_factory=dict)
    open: bool = False  # the default policy: every identity is its own tenant, anywhere
    # What must never happen, checked before each dispatch (compiled from `document`).
    invariants: tuple[Invariant, ...] = ()

    @functools.cached_property
    def version(self) -> str:
        # Computed once: the document is the policy's content and does not change.
        return policy_version(self.document) if not self.open else "default"

    # -- identities ------------------------------------------------------------------

    def tenant_of(self, identity: str) -> TenantPolicy | None:
        """The tenant a certificate identity ("kind/name") acts for, or None."""
        if self.open:
            kind, _, name = identity.partition("/")
            return open_tenant(name) if kind == "tenant" else None
        for tenant in self.tenants.values():
            if identity in tenant.identities:
                return tenant
        return None

    def tenant(self, name: str) -> TenantPolicy | None:
        if self.open:
            return open_tenant(name)
        return self.tenants.get(name)

    def role(self, identity: str) -> str | None:
        """'operator', 'auditor' or None for a "kind/name" identity."""
        if identity in self.operators or (self.open and identity.startswith("operator/")):
            return "operator"
        if identity in self.auditors:
            return "auditor"
        return None

    def claimable_regions(self, node_identity: str) -> Regions:
        """The regions a node identity ("node/<name>") may claim."""
        if self.open:
            return None
        allowed: set[str] = set()
        for claim in self.nodes:
            if fnmatch.fnmatchcase(node_identity, claim.identity):
                allowed |= claim.regions
        return frozenset(allowed)

    # -- regions and residency ---------------------------------------------------------

    def jurisdiction(self, region: str) -> str:
        return self.regions.get(region, "")

    def resolve_regions(self, names: str | list[str] | tuple[str, ...]) -> Regions:
        """Region and jurisdiction names (or "any") to the set of regions they cover."""
        if self.open:
            return None
        if isinstance(names, str):
            names = [names]
        out: set[str] = set()
        for name in names:
            if name == ANY:
                return frozenset(self.regions)
            if name in self.regions:
                out.add(name)
                continue
            covered = {r for r, j in self.regions.items() if j == name}
            if not covered:
                raise ResidencyLabelError(
                    f"{name!r} is neither a region nor a jurisdiction of the policy"
                )
            out |= covered
        return frozenset(out)

    def residency(self, tenant: TenantPolicy, label: str | None) -> Regions:
        """The regions data labelled `label` may live in: the tenant's default for None,
        else a data class of the tenant, a jurisdiction, a region, or "any"."""
        if label is None or label == "":
            return tenant.default_residency
        if label in tenant.data_classes:
            return tenant.data_classes[label]
        if self.open:
            if label == ANY:
                return None
            raise ResidencyLabelError(
                f"residency {label!r} means nothing under the default policy, which declares "
                "no regions or data classes"
            )
        try:
            return self.resolve_regions(label)
        except ResidencyLabelError:
            known = sorted({*tenant.data_classes, *set(self.regions.values()), *self.regions})
            raise ResidencyLabelError(
                f"unknown residency {label!r}: expected a data class of tenant "
                f"{tenant.name!r}, a jurisdiction, a region or 'any' "
                f"(one of: {', '.join(known)})"
            ) from None


def open_tenant(name: str) -> TenantPolicy:
    return TenantPolicy(
        name=name,
        identities=frozenset({f"tenant/{name}"}),
        run_regions=None,
        default_residency=None,
    )


OPEN_POLICY = Policy(regions={}, nodes=(), tenants={}, open=True)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Deterministic bytes of a policy document: what its version digests and is signed."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def policy_version(document: Mapping[str, Any]) -> str:
    """A policy's version: the first 16 hex digits of the SHA-256 of its canonical form."""
    return hashlib.sha256(canonical_json(document)).hexdigest()[:16]


def intersect(a: Regions, b: Regions) -> Regions:
    if a is None or a is b:
        return b
    if b is None:
        return a
    return a & b


# Every task and object carries a region set: the few distinct ones a policy yields are
# encoded and decoded once each, and decoding hands back the same set objects.
@functools.lru_cache(maxsize=4096)
def encode_regions(regions: Regions) -> str:
    """Wire form: "" for unrestricted, else the sorted names joined by commas."""
    if regions is None:
        return ""
    return ",".join(sorted(regions)) or "!"  # "!": the empty set, nowhere


@functools.lru_cache(maxsize=4096)
def decode_regions(text: str) -> Regions:
    if text == "":
        return None
    if text == "!":
        return frozenset()
    return frozenset(text.split(","))


def describe_regions(regions: Regions) -> str:
    if regions is None:
        return "anywhere"
    if not regions:
        return "nowhere"
    return ", ".join(sorted(regions))
