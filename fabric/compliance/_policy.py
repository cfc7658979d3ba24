"""Check: the policy the fabric enforces is the one the suite was given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabric.compliance.checks import Evidence, check, fail
from fabric.compliance.requirements import ISO_A_8_9, SOC2_CC8_1

if TYPE_CHECKING:
    from fabric.compliance.context import ComplianceContext


@check(
    "policy.in-force",
    "The head enforces the policy under review, signed by the head",
    (SOC2_CC8_1, ISO_A_8_9),
)
def policy_in_force(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Fetch the policy in force from the head (``GetPolicy``, as the operator), check the
    head's signature on it under the fabric's CA (the check every agent makes before it
    uses a policy), and compare its version, the SHA-256 digest of its canonical document,
    with the version of the ``--policy`` file.

    Evidence that the configuration in force is the reviewed one: every other check probes
    what that file says, so a mismatch means they probed rules the fabric may not apply.
    """
    from fabric._policy_bundle import PolicyBundleError, verify_policy
    from fabric._proto import fabric_pb2 as pb

    path = ctx.config.policy
    evidence.set("policy_file", str(path))
    evidence.set("file_version", ctx.policy.version)
    signed = ctx.head().GetPolicy(pb.Empty(), timeout=ctx.timeout)
    evidence.set("head_version", signed.version)
    try:
        verify_policy(signed, ctx.ca_pem)
    except PolicyBundleError as error:
        fail(f"the head's policy {signed.version} does not verify: {error}")
    if signed.version != ctx.policy.version:
        fail(
            f"the head enforces policy version {signed.version}, not {ctx.policy.version} ({path})"
        )
    return f"the head enforces version {signed.version} of {path.name}, signed by node/head"
