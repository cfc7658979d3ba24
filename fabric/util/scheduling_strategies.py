"""Scheduling strategies, as Ray's ``ray.util.scheduling_strategies``:
``.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i))`` runs a task or
an actor in bundle ``i`` of placement group ``pg`` (-1: any of its bundles)."""

from __future__ import annotations

from typing import Any

from fabric.util.placement_group import PlacementGroup


class PlacementGroupSchedulingStrategy:
    """Run in bundle `placement_group_bundle_index` of `placement_group` (-1: any bundle).
    The work's resources come out of the bundle's, so it must fit in the bundle."""

    def __init__(
        self,
        placement_group: PlacementGroup,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        if not isinstance(placement_group, PlacementGroup):
            raise ValueError(
                f"placement_group must be a PlacementGroup, got {type(placement_group).__name__}"
            )
        if placement_group_capture_child_tasks:
            raise ValueError(
                "placement_group_capture_child_tasks is not supported: schedule child tasks "
                "into the group explicitly"
            )
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks
        self.check()

    def check(self) -> None:
        """ValueError unless the bundle index names a bundle of the group (or is -1)."""
        index: Any = self.placement_group_bundle_index
        count = self.placement_group.bundle_count
        if isinstance(index, bool) or not isinstance(index, int) or not -1 <= index < count:
            raise ValueError(
                f"placement_group_bundle_index must be -1 or an index of one of the group's "
                f"{count} bundles (0 to {count - 1}), got {index!r}"
            )

    def __repr__(self) -> str:
        return (
            f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
            f"{self.placement_group_bundle_index})"
        )


__all__ = ["PlacementGroupSchedulingStrategy"]
