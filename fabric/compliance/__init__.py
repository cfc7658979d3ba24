"""The compliance suite: checks run from outside against a live fabric, as filed evidence.

Each check plays probe tenants (certificates of tenants the policy declares for the
purpose) against the fabric and against each other, and cites the requirements its
result is evidence for. ``fabric compliance run`` runs them and writes JSON and JUnit
reports; :mod:`fabric.compliance.plugin` offers the same to pytest, where an operator
adds checks of their own (``@check`` in a module, or plain tests using the
``compliance_context`` fixture).
"""

from fabric.compliance._errors import CheckFailed as CheckFailed
from fabric.compliance._errors import CheckSkipped as CheckSkipped
from fabric.compliance._errors import ComplianceError as ComplianceError
from fabric.compliance._errors import ConfigError as ConfigError
from fabric.compliance.checks import Check as Check
from fabric.compliance.checks import Evidence as Evidence
from fabric.compliance.checks import Status as Status
from fabric.compliance.checks import check as check
from fabric.compliance.checks import fail as fail
from fabric.compliance.checks import load_checks_from as load_checks_from
from fabric.compliance.checks import registered as registered
from fabric.compliance.checks import skip as skip
from fabric.compliance.context import ComplianceConfig as ComplianceConfig
from fabric.compliance.context import ComplianceContext as ComplianceContext
from fabric.compliance.context import LiveNode as LiveNode
from fabric.compliance.context import Probe as Probe
from fabric.compliance.report import CheckResult as CheckResult
from fabric.compliance.report import Report as Report
from fabric.compliance.requirements import Requirement as Requirement
from fabric.compliance.runner import run_check as run_check
from fabric.compliance.runner import run_checks as run_checks

__all__ = [
    "Check",
    "CheckFailed",
    "CheckResult",
    "CheckSkipped",
    "ComplianceConfig",
    "ComplianceContext",
    "ComplianceError",
    "ConfigError",
    "Evidence",
    "LiveNode",
    "Probe",
    "Report",
    "Requirement",
    "Status",
    "check",
    "fail",
    "load_checks_from",
    "registered",
    "run_check",
    "run_checks",
    "skip",
]
