"""Pure decision functions: every admit / place / refuse goes through here.

A decision is a pure function of (request, cluster view, policy bundle) returning a
:class:`Decision` value; the caller records it and then acts on it.

The tenancy policy those decisions are taken under is loaded and checked by
:func:`load_policy`, which either returns a complete :class:`Policy` or raises
:class:`PolicyError` naming every problem with its file, line and column.
"""

from fabric.policy._bundles import (
    BundleRequest as BundleRequest,
)
from fabric.policy._bundles import (
    decide_bundles as decide_bundles,
)
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
from fabric.policy._loader import (
    PolicyError as PolicyError,
)
from fabric.policy._loader import (
    Problem as Problem,
)
from fabric.policy._loader import (
    compile_policy as compile_policy,
)
from fabric.policy._loader import (
    load_policy as load_policy,
)
from fabric.policy._loader import (
    load_policy_text as load_policy_text,
)
from fabric.policy._model import (
    OPEN_POLICY as OPEN_POLICY,
)
from fabric.policy._model import (
    NodeClaim as NodeClaim,
)
from fabric.policy._model import (
    Policy as Policy,
)
from fabric.policy._model import (
    Quotas as Quotas,
)
from fabric.policy._model import (
    TenantPolicy as TenantPolicy,
)
from fabric.policy._model import (
    policy_version as policy_version,
)

__all__ = [
    "OPEN_POLICY",
    "BundleRequest",
    "Decision",
    "NodeClaim",
    "NodeView",
    "Outcome",
    "PlacementRequest",
    "Policy",
    "PolicyBundle",
    "PolicyError",
    "Problem",
    "Quotas",
    "TenantPolicy",
    "compile_policy",
    "decide_bundles",
    "decide_placement",
    "load_policy",
    "load_policy_text",
    "policy_version",
]
