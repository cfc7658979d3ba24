"""Utilities with Ray's names (``ray.util``): placement groups and scheduling strategies.

``import fabric.util`` as a Ray program does ``import ray.util``; a test pins this list.
"""

from fabric.util import scheduling_strategies as scheduling_strategies
from fabric.util.placement_group import PlacementGroup as PlacementGroup
from fabric.util.placement_group import get_placement_group as get_placement_group
from fabric.util.placement_group import placement_group as placement_group
from fabric.util.placement_group import remove_placement_group as remove_placement_group

__all__ = [
    "PlacementGroup",
    "get_placement_group",
    "placement_group",
    "remove_placement_group",
    "scheduling_strategies",
]
