"""The resource names placement-group bundles are reserved under, as Ray renames them.

A node that holds bundle ``i`` of group ``G`` of tenant ``T`` adds, to its totals and to
what it has free, the bundle's resources under names of their own:

- ``pg:T:G:i:NAME`` (bundle ``i`` only) and ``pg:T:G:*:NAME`` (any bundle of ``G`` on
  the node), with the bundle's amount of ``NAME``;
- the markers ``pg:T:G:i`` and ``pg:T:G:*`` (``MARKER`` each), so that work asking for
  no resource at all still goes where its bundle is.

Work scheduled into bundle ``i`` asks for those names instead of the plain ones
(:func:`task_resources`), so the ordinary placement code takes it to the bundle's node and
the plain resources stay reserved for the group. ``G`` is the group id in hex. The tenant
in a name is always the session's: an agent refuses a submit that names another tenant's
(:func:`name_problem`), so a group id learnt from a handle gives nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PREFIX = "pg:"
ANY_BUNDLE = "*"
MARKER = 1000.0  # a bundle marker's amount, as Ray's "bundle" resource
TASK_MARKER = 0.001  # what one piece of work takes of it

_GROUP_HEX = re.compile(r"^[0-9a-f]{32}$")


def group_prefix(tenant: str, group_id: bytes) -> str:
    return f"{PREFIX}{tenant}:{group_id.hex()}:"


def reserved_resources(
    tenant: str, group_id: bytes, index: int, bundle: Mapping[str, float]
) -> dict[str, float]:
    """What a node adds to its totals while it holds bundle `index` (the `*` names add up
    over the group's bundles on the node)."""
    prefix = group_prefix(tenant, group_id)
    names = {f"{prefix}{index}": MARKER, f"{prefix}{ANY_BUNDLE}": MARKER}
    for name, amount in bundle.items():
        if amount > 0:
            names[f"{prefix}{index}:{name}"] = amount
            names[f"{prefix}{ANY_BUNDLE}:{name}"] = amount
    return names


def task_resources(
    tenant: str, group_id: bytes, index: int, request: Mapping[str, float]
) -> dict[str, float]:
    """The resource request of work scheduled into bundle `index` (-1: any bundle)."""
    prefix = group_prefix(tenant, group_id)
    slots = [ANY_BUNDLE] if index < 0 else [str(index), ANY_BUNDLE]
    names: dict[str, float] = {}
    for slot in slots:
        names[f"{prefix}{slot}"] = TASK_MARKER
        for name, amount in request.items():
            if amount > 0:
                names[f"{prefix}{slot}:{name}"] = float(amount)
    return names


def parse(name: str) -> tuple[str, str, str] | None:
    """(tenant, group id hex, bundle index or "*") of a bundle resource name; None for a
    name that does not start with ``pg:`` or does not parse."""
    if not name.startswith(PREFIX):
        return None
    parts = name.split(":", 4)
    if len(parts) < 4:
        return None
    _, tenant, group, slot = parts[:4]
    if not tenant or not _GROUP_HEX.fullmatch(group):
        return None
    if slot != ANY_BUNDLE and not (slot.isdigit() and slot.isascii()):
        return None
    if len(parts) == 5 and not parts[4]:
        return None
    return tenant, group, slot


def group_of(resources: Mapping[str, float]) -> tuple[str, bytes] | None:
    """The (tenant, group id) a resource request schedules into, if any."""
    for name in resources:
        parsed = parse(name)
        if parsed is not None:
            return parsed[0], bytes.fromhex(parsed[1])
    return None


def name_problem(tenant: str, resources: Mapping[str, float]) -> str | None:
    """Why a request of `tenant` may not ask for these resources: a ``pg:`` name that does
    not parse, names another tenant, or mixes groups. None when it may."""
    group: str | None = None
    for name in resources:
        if not name.startswith(PREFIX):
            continue
        parsed = parse(name)
        if parsed is None:
            return f"malformed placement group resource {name!r}"
        if parsed[0] != tenant:
            return f"resource {name!r} is not one of this tenant's placement groups"
        if group is not None and parsed[1] != group:
            return "a request may ask for the resources of one placement group only"
        group = parsed[1]
    return None


def is_other_tenants(name: str, tenant: str) -> bool:
    """Whether `name` is a bundle resource of another tenant than `tenant`."""
    return name.startswith(PREFIX) and not name.startswith(f"{PREFIX}{tenant}:")
