"""Pure decision functions: every admit / place / refuse goes through here.

A decision is a pure function of (request, cluster view, policy bundle) returning a
:class:`Decision` value; the caller records it and then acts on it.
"""

from fabric.policy._decision import (
    Decision as Decision,
)
from fabric.policy._decision import (
    NodeView as NodeView,
)
from fabric.policy._decision import (
    Outcome as Outcome,
)
from fabric.policy._decision import (
    PlacementRequest as PlacementRequest,
)
from fabric.policy._decision import (
    PolicyBundle as PolicyBundle,
)
from fabric.policy._decision import (
    decide_placement as decide_placement,
)

__all__ = [
    "Decision",
    "NodeView",
    "Outcome",
    "PlacementRequest",
    "PolicyBundle",
    "decide_placement",
]
