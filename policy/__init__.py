"""Pure decision functions: every admit / place / refuse goes through here.

A decision is a pure function of (request, cluster view, policy bundle) returning a
:class:`Decision` value; the caller records it and then acts on it.

The tenancy policy those decisions are taken under is loaded and checked by
:func:`load_policy`, which either returns a complete :class:`Policy` or raises
:class:`PolicyError` naming every problem with its file, line and column.
"""

from fabric.policy._admission import Usage as Usage
from fabric.policy._admission import decide_admission as decide_admission
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
    decide_placement as decide_placement,
)
from fabric.policy._labels import LabelSelector as LabelSelector
from fabric.policy._labels import LabelSelectorError as LabelSelectorError
from fabric.policy._labels import parse_selector as parse_selector
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
from fabric.policy._model import ResidencyLabelError as ResidencyLabelError
from fabric.policy._model import (
    TenantPolicy as TenantPolicy,
)
from fabric.policy._model import (
    policy_version as policy_version,
)
from fabric.policy._residency import Destination as Destination
from fabric.policy._residency import decide_transfer as decide_transfer

__all__ = [
    "OPEN_POLICY",
    "BundleRequest",
    "Decision",
    "Destination",
    "LabelSelector",
    "LabelSelectorError",
    "NodeClaim",
    "NodeView",
    "Outcome",
    "PlacementRequest",
    "Policy",
    "PolicyError",
    "Problem",
    "Quotas",
    "ResidencyLabelError",
    "TenantPolicy",
    "Usage",
    "compile_policy",
    "decide_admission",
    "decide_bundles",
    "decide_placement",
    "decide_transfer",
    "load_policy",
    "load_policy_text",
    "parse_selector",
    "policy_version",
]
