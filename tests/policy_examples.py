"""The policy the unit tests of the pure policy modules decide under, built directly from the
dataclasses (no loader, no YAML):

- regions ``eu-west`` and ``eu-central`` (jurisdiction ``EU``) and ``us-east`` (``US``);
- ``alice`` may run anywhere, her data lives in the EU by default, and her ``health`` data
  only in ``eu-west``; she may export nothing;
- ``bob`` is unrestricted within the declared regions and has data classes of his own
  (``ledger`` and ``payroll``) that alice must not be able to name;
- ``carol`` may run only in the EU and may export data to drivers in ``us-east``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fabric.policy._decision import (
    NodeView,
    PlacementRequest,
)
from fabric.policy._model import (
    NodeClaim,
    Policy,
    TenantPolicy,
)

EU = frozenset({"eu-west", "eu-central"})
ALL = frozenset({"eu-west", "eu-central", "us-east"})
REGIONS = {"eu-west": "EU", "eu-central": "EU", "us-east": "US"}

ALICE = TenantPolicy(
    name="alice",
    identities=frozenset({"tenant/alice", "tenant/alice-ci"}),
    run_regions=ALL,
    default_residency=EU,
    data_classes={"health": frozenset({"eu-west"})},
    export_regions=frozenset(),
)
BOB = TenantPolicy(
    name="bob",
    identities=frozenset({"tenant/bob"}),
    run_regions=ALL,
    default_residency=ALL,
    data_classes={"ledger": frozenset({"us-east"}), "payroll": frozenset({"eu-central"})},
)
CAROL = TenantPolicy(
    name="carol",
    identities=frozenset({"tenant/carol"}),
    run_regions=EU,
    default_residency=EU,
    export_regions=frozenset({"us-east"}),
)
CLAIMS = (
    NodeClaim("node/eu-*", frozenset({"eu-west", "eu-central"})),
    NodeClaim("node/us-1", frozenset({"us-east"})),
    NodeClaim("node/edge-?", frozenset({"us-east"})),
    NodeClaim("node/edge-1", frozenset({"eu-west"})),
)
POLICY = Policy(
    regions=REGIONS,
    nodes=CLAIMS,
    tenants={"alice": ALICE, "bob": BOB, "carol": CAROL},
    operators=frozenset({"operator/ops"}),
    auditors=frozenset({"operator/audit"}),
    document={"name": "test"},
)


def with_tenant(tenant: TenantPolicy) -> Policy:
    """POLICY with `tenant` replacing (or joining) the tenant of its name."""
    return dataclasses.replace(POLICY, tenants={**POLICY.tenants, tenant.name: tenant})


def node(
    node_id: str,
    region: str,
    cpu: float = 4.0,
    free: float | None = None,
    *,
    alive: bool = True,
    labels: Mapping[str, str] | None = None,
) -> NodeView:
    """A node with `cpu` CPUs in total and `free` (default: all of them) available."""
    return NodeView(
        node_id=node_id,
        region=region,
        total={"CPU": cpu},
        available={"CPU": cpu if free is None else free},
        alive=alive,
        labels=dict(labels or {}),
    )


def request(
    tenant: str = "alice",
    cpu: float = 1.0,
    local: str = "n-local",
    **fields: Any,
) -> PlacementRequest:
    return PlacementRequest(
        tenant=tenant,
        task_id=b"task-1",
        resources={"CPU": cpu},
        local_node_id=local,
        **fields,
    )
