"""The compliance suite's errors, rooted in :class:`fabric.exceptions.FabricError`."""

from __future__ import annotations

from fabric.exceptions import FabricError


class ComplianceError(FabricError):
    """Root of the compliance suite's errors."""


class ConfigError(ComplianceError):
    """The suite cannot start: a missing certificate, a probe the policy does not declare,
    a head it cannot reach. Nothing was checked."""


class CheckFailed(ComplianceError):
    """Raised by a check: the fabric did not do what the requirement needs. The message is
    the one-line reason the report shows."""


class CheckSkipped(ComplianceError):
    """Raised by a check that cannot produce evidence here (no CA key, no applicable
    invariant...). The message says what it would need; a skip is never a pass."""
