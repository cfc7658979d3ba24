"""Residency decisions: may an object's bytes go to a node or to a driver?

An object may live only in the regions of its residency. An agent asks `decide_transfer`
before it sends an object to another node and before it hands one to a driver connected
to it; the driver's location is the region of that agent, and a tenant's policy may allow
export to named regions explicitly.
"""

from __future__ import annotations

import enum
import hashlib

from fabric.policy._decision import Decision, Outcome
from fabric.policy._model import Policy, Regions, describe_regions, encode_regions

RULE_TRANSFER_INSIDE = "residency.transfer-inside"
RULE_TRANSFER_OUTSIDE = "residency.transfer-outside"
RULE_DRIVER_INSIDE = "residency.driver-inside"
RULE_DRIVER_EXPORT = "residency.driver-export"
RULE_DRIVER_OUTSIDE = "residency.driver-outside"
RULE_STORE_OUTSIDE = "residency.store-outside"
RULE_STORE_INSIDE = "residency.store-inside"


class Destination(enum.Enum):
    NODE = "node"  # another agent pulls a copy
    DRIVER = "driver"  # a driver connected to this agent reads it
    STORE = "store"  # a `put` or a result stored on this node


def decide_transfer(
    policy: Policy,
    tenant: str,
    object_id: bytes,
    residency: Regions,
    destination: Destination,
    target: str,
    target_region: str,
) -> Decision:
    """May `tenant`'s object with `residency` go to `target` (a node id, or the agent a
    driver is connected to) in `target_region`?"""
    digest = hashlib.sha256(
        b"\0".join(
            (
                tenant.encode(),
                object_id,
                encode_regions(residency).encode(),
                destination.value.encode(),
                target.encode(),
                target_region.encode(),
                policy.version.encode(),
            )
        )
    ).hexdigest()

    def decide(outcome: Outcome, rule: str, reason: str) -> Decision:
        node = target if outcome is Outcome.ALLOW else None
        return Decision(outcome, node, (rule,), (reason,), digest, policy.version)

    where = describe_regions(residency)
    inside = residency is None or target_region in residency
    if destination is Destination.NODE:
        if inside:
            return decide(Outcome.ALLOW, RULE_TRANSFER_INSIDE, f"{target_region} is in {where}")
        return decide(
            Outcome.REFUSE,
            RULE_TRANSFER_OUTSIDE,
            f"node {target} is in {target_region or 'no region'}; the object may live only "
            f"in {where}",
        )
    if destination is Destination.STORE:
        if inside:
            return decide(Outcome.ALLOW, RULE_STORE_INSIDE, f"{target_region} is in {where}")
        return decide(
            Outcome.REFUSE,
            RULE_STORE_OUTSIDE,
            f"this node is in {target_region or 'no region'}; an object of this residency "
            f"may live only in {where}",
        )
    if inside:
        return decide(Outcome.ALLOW, RULE_DRIVER_INSIDE, f"{target_region} is in {where}")
    owner = policy.tenant(tenant)
    if owner is not None and target_region in owner.export_regions:
        return decide(
            Outcome.ALLOW,
            RULE_DRIVER_EXPORT,
            f"the policy lets tenant {tenant!r} export data to {target_region}",
        )
    return decide(
        Outcome.REFUSE,
        RULE_DRIVER_OUTSIDE,
        f"the driver is connected to {target} in {target_region or 'no region'}; the object "
        f"may go only to {where} (connect to an agent there, or have the policy allow "
        "export)",
    )
