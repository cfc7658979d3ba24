"""Pure decision functions: every admit / place / refuse goes through here.

A decision is a pure function of (request, cluster view, policy bundle) returning a
:class:`Decision` value; the caller records it and then acts on it.

The tenancy policy those decisions are taken under is loaded and checked by
:func:`load_policy`, which either returns a complete :class:`Policy` or raises
:class:`PolicyError` naming every problem with its file, line and column.

The invariants a policy declares are compiled into :attr:`Policy.invariants`; before a
dispatch, :func:`check_invariants` checks them (and the registered invariant hooks) against
its :class:`DispatchFacts`. :func:`prove_policy` proves them from the policy's rules with
Z3, and :func:`prove_narrower` compares two policies; neither is ever on the dispatch path.
"""

from fabric.policy._admission import Usage as Usage
from fabric.policy._admission import decide_admission as decide_admission
from fabric.policy._budgets import Budgets as Budgets
from fabric.policy._budgets import Limits as Limits
from fabric.policy._budgets import parse_limits as parse_limits
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
from fabric.policy._encode import ProofError as ProofError
from fabric.policy._enforce import check_invariants as check_invariants
from fabric.policy._facts import DispatchFacts as DispatchFacts
from fabric.policy._facts import Violation as Violation
from fabric.policy._facts import rules_refusal as rules_refusal
from fabric.policy._hooks import INVARIANT_HOOKS as INVARIANT_HOOKS
from fabric.policy._hooks import HookRegistry as HookRegistry
from fabric.policy._hooks import InvariantHookError as InvariantHookError
from fabric.policy._hooks import register_invariant_hook as register_invariant_hook
from fabric.policy._hooks import unregister_invariant_hook as unregister_invariant_hook
from fabric.policy._invariants import Invariant as Invariant
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
from fabric.policy._prove import Counterexample as Counterexample
from fabric.policy._prove import InvariantProof as InvariantProof
from fabric.policy._prove import NarrowerProof as NarrowerProof
from fabric.policy._prove import Observation as Observation
from fabric.policy._prove import PolicyProof as PolicyProof
from fabric.policy._prove import prove_narrower as prove_narrower
from fabric.policy._prove import prove_policy as prove_policy
from fabric.policy._residency import Destination as Destination
from fabric.policy._residency import decide_transfer as decide_transfer

__all__ = [
    "INVARIANT_HOOKS",
    "OPEN_POLICY",
    "BundleRequest",
    "Counterexample",
    "Decision",
    "Destination",
    "DispatchFacts",
    "HookRegistry",
    "Invariant",
    "InvariantHookError",
    "InvariantProof",
    "LabelSelector",
    "LabelSelectorError",
    "NarrowerProof",
    "NodeClaim",
    "NodeView",
    "Observation",
    "Outcome",
    "PlacementRequest",
    "Policy",
    "PolicyError",
    "PolicyProof",
    "Problem",
    "ProofError",
    "Quotas",
    "ResidencyLabelError",
    "TenantPolicy",
    "Usage",
    "Violation",
    "check_invariants",
    "compile_policy",
    "decide_admission",
    "decide_bundles",
    "decide_placement",
    "decide_transfer",
    "load_policy",
    "load_policy_text",
    "parse_selector",
    "policy_version",
    "prove_narrower",
    "prove_policy",
    "register_invariant_hook",
    "rules_refusal",
    "unregister_invariant_hook",
]
