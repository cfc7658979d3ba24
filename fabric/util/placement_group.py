"""Placement groups, as Ray's ``ray.util.placement_group``: bundles of resources reserved
together, all or none, that tasks and actors are then scheduled into.

The agent this process is connected to coordinates the group: it decides where each bundle
goes (`fabric.policy._bundles.decide_bundles`, within the regions the tenant's policy and
the group's `region` / `label_selector` allow), reserves them, and makes `ready()` ready once
every bundle is held. A group the policy can never satisfy is refused at once
(`PlacementRefusedError`, naming the rule); one that lacks capacity waits.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fabric import _api, _options
from fabric._bundle_resources import PREFIX
from fabric._proto import fabric_pb2 as pb
from fabric._refs import ObjectRef
from fabric.policy._bundles import MAX_BUNDLES, Strategy

STRATEGIES = tuple(s.value for s in Strategy)
REQUEST_TIMEOUT = 60.0  # seconds to wait for the agent's answer to a create or remove


def ready_object_id(group_id: bytes) -> bytes:
    """The id of the object that becomes ready when every bundle of the group is held."""
    return group_id + (1).to_bytes(4, "big")


class PlacementGroup:
    """A handle to a placement group. Picklable: pass it to tasks and actors, which may
    schedule work into it (a handle names the group of its own tenant only)."""

    def __init__(
        self,
        id: bytes,
        bundles: Sequence[Mapping[str, float]],
        strategy: str = "PACK",
        name: str = "",
        node_id: str = "",
        _ready: ObjectRef | None = None,
    ) -> None:
        self.id = id
        self._bundles = [dict(b) for b in bundles]
        self.strategy = strategy
        self.name = name
        self._node_id = node_id  # the agent that coordinates it
        self._ready = _ready

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles, in index order."""
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return len(self._bundles)

    def ready(self) -> ObjectRef:
        """A ref that becomes ready (its value: this group) when every bundle is reserved;
        its `get` raises PlacementRefusedError if the group is refused or removed first."""
        if self._ready is not None:
            return self._ready
        return ObjectRef(ready_object_id(self.id), self._node_id)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Wait up to `timeout_seconds` for every bundle to be reserved: True once they
        are, False on timeout; PlacementRefusedError if the group was refused or removed."""
        ref = self.ready()
        ready, _ = _api.wait([ref], timeout=timeout_seconds)
        if not ready:
            return False
        _api.get(ref)
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            PlacementGroup,
            (self.id, self._bundles, self.strategy, self.name, self._node_id),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()}, {self.strategy}, {self._bundles})"


def _validate_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("bundles must be a non-empty list of dicts of resource amounts")
    if len(bundles) > MAX_BUNDLES:
        raise ValueError(f"a placement group has at most {MAX_BUNDLES} bundles")
    checked = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping) or not bundle:
            raise ValueError(f"bundle {i} must be a non-empty dict of resource amounts")
        amounts: dict[str, float] = {}
        for name, amount in bundle.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"bundle {i}: resource names must be non-empty strings")
            if name.startswith(PREFIX):
                raise ValueError(
                    f"bundle {i}: resource names starting with {PREFIX!r} are reserved"
                )
            if (
                isinstance(amount, bool)
                or not isinstance(amount, numbers.Real)
                or amount < 0
                or not math.isfinite(amount)
            ):
                raise ValueError(
                    f"bundle {i}: {name} must be a non-negative number, got {amount!r}"
                )
            amounts[name] = float(amount)
        if not any(amounts.values()):
            raise ValueError(f"bundle {i} asks for no resources")
        checked.append(amounts)
    return checked


def placement_group(
    bundles: Sequence[Mapping[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    *,
    region: str | None = None,
    label_selector: Mapping[str, str] | None = None,
) -> PlacementGroup:
    """Reserve `bundles` (e.g. ``[{"CPU": 1}, {"CPU": 1}]``) together, under `strategy`:
    PACK (as few nodes as possible), SPREAD (distinct nodes when possible), STRICT_PACK (one
    node) or STRICT_SPREAD (a node each). `region` or `label_selector` (as in task options)
    narrows where, within what the tenant's policy allows. `lifetime="detached"` keeps the
    group after this driver exits; otherwise it is removed then.

    Returns at once with the group pending; `ready()` / `wait()` tell when it is reserved.
    Raises PlacementRefusedError when no reservation could ever satisfy it."""
    checked = _validate_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    where = _options.validate(
        {"region": region, "label_selector": label_selector},
        frozenset({"region", "label_selector"}),
        "placement_group()",
    )
    selector = dict(where.get("label_selector") or {})
    if region:
        selector["region"] = region
    client = _api.client_for_submit()
    group_id = os.urandom(16)
    # The ref first: the agent may make it ready before the reply arrives.
    ready = client.owned_ref(ready_object_id(group_id))
    client.request(
        pb.ClientMessage(
            create_placement_group=pb.CreatePlacementGroup(
                group_id=group_id,
                bundles=[pb.Bundle(resources=b) for b in checked],
                strategy=strategy,
                name=name,
                label_selector=selector,
                detached=lifetime == "detached",
            )
        ),
        timeout=REQUEST_TIMEOUT,
    )
    return PlacementGroup(group_id, checked, strategy, name, client.node_id, ready)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's reservations back. Work running in it is stopped, and work
    scheduled into it later is refused (PlacementRefusedError)."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(
            f"remove_placement_group() takes a PlacementGroup, got {type(placement_group).__name__}"
        )
    client = _api.client_for_submit()
    node = placement_group._node_id
    client.request(
        pb.ClientMessage(
            remove_placement_group=pb.RemovePlacementGroup(
                group_id=placement_group.id, node_id=node if node != client.node_id else ""
            )
        ),
        timeout=REQUEST_TIMEOUT,
    )


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of this tenant called `placement_group_name`, among those created
    through the agent this process is connected to. ValueError when there is none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("get_placement_group() needs a non-empty name")
    reply = _api.client_for_submit().request(
        pb.ClientMessage(get_placement_group=pb.GetPlacementGroup(name=placement_group_name)),
        timeout=REQUEST_TIMEOUT,
    )
    info = reply.placement_group
    return PlacementGroup(
        info.group_id,
        [dict(b.resources) for b in info.bundles],
        info.strategy,
        info.name,
        info.node_id,
    )
