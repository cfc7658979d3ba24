"""Checks: who may reach the head's and the agents' ports.

Every check first makes the same call with a probe's valid certificate and expects it to
be accepted (the control: the port is a live fabric server), then makes it with the
credentials under test and expects the server to refuse them. The call is the first one a
legitimate client makes: ``Status`` on the head, a driver session's hello on an agent.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from fabric.compliance._certs import expired_credentials, fabric_ca, foreign_credentials
from fabric.compliance._errors import CheckFailed
from fabric.compliance._expect import rpc_refusal
from fabric.compliance.checks import Evidence, check, fail, skip
from fabric.compliance.requirements import (
    GDPR_ART_32_1_A,
    ISO_A_5_18,
    ISO_A_8_5,
    ISO_A_8_24,
    SOC2_CC6_1,
    SOC2_CC6_2,
    SOC2_CC6_6,
    SOC2_CC6_7,
)

if TYPE_CHECKING:
    from fabric._pki import Credentials
    from fabric.compliance.context import ComplianceContext


@dataclass(frozen=True)
class Target:
    """A server the checks call: the head, or the agent of one node."""

    name: str
    address: str
    is_head: bool


def targets(ctx: ComplianceContext) -> list[Target]:
    return [Target("head", ctx.config.address, True)] + [
        Target(f"agent {n.node_id}", n.address, False) for n in ctx.nodes()
    ]


def first_call(target: Target, channel: grpc.Channel, timeout: float) -> None:
    """The first call a legitimate client makes; raises ``grpc.RpcError`` when refused."""
    from fabric._proto import fabric_pb2 as pb
    from fabric._proto import fabric_pb2_grpc as rpc

    if target.is_head:
        rpc.HeadStub(channel).Status(pb.Empty(), timeout=timeout, wait_for_ready=False)
        return
    done = threading.Event()

    def hello() -> Iterator[pb.ClientBatch]:
        yield pb.ClientBatch(messages=[pb.ClientMessage(request_id=1, hello=pb.Hello())])
        done.wait(timeout)

    call = rpc.AgentStub(channel).Session(hello(), timeout=timeout, wait_for_ready=False)
    try:
        batch = next(call)
    except StopIteration:
        raise _Refused(grpc.StatusCode.UNAVAILABLE, "the agent closed the session") from None
    finally:
        done.set()
        call.cancel()
    reply = batch.messages[0].reply if batch.messages else None
    if reply is None or not reply.HasField("welcome"):
        message = reply.error.message if reply is not None else "no welcome"
        raise _Refused(grpc.StatusCode.PERMISSION_DENIED, message)


def outcome(
    ctx: ComplianceContext, target: Target, creds: Credentials | None
) -> tuple[str, str] | None:
    """How `target` answers the first call made with `creds` (None: plaintext): None when
    it is accepted, else (status code, details)."""
    from fabric._tls import secure_channel

    if creds is None:
        channel = grpc.insecure_channel(target.address)
    else:
        channel = secure_channel(target.address, creds)
    with channel:
        return rpc_refusal(lambda: first_call(target, channel, ctx.timeout))


def control(ctx: ComplianceContext, evidence: Evidence, creds: Credentials) -> list[Target]:
    """Every target, after checking each accepts `creds` (a valid probe certificate)."""
    found = targets(ctx)
    for target in found:
        refusal = outcome(ctx, target, creds)
        if refusal is not None:
            fail(f"{target.name} at {target.address} refuses a valid certificate: {refusal[1]}")
    evidence.set("accepted_with_a_valid_certificate", [t.name for t in found])
    return found


def expect_refused(
    ctx: ComplianceContext, evidence: Evidence, found: list[Target], creds: Credentials | None
) -> None:
    accepted = []
    for target in found:
        refusal = outcome(ctx, target, creds)
        if refusal is None:
            accepted.append(target.name)
            continue
        code, details = refusal
        evidence.add("refusals", {"target": target.name, "code": code, "details": details})
    if accepted:
        fail(f"accepted by {', '.join(accepted)}")


def _summary(found: list[Target]) -> str:
    agents = sum(not t.is_head for t in found)
    return f"the head and {agents} agent{'s' if agents != 1 else ''}"


@check(
    "transport.plaintext",
    "Plaintext gRPC is refused by the head and every agent",
    (SOC2_CC6_7, SOC2_CC6_6, ISO_A_8_24, GDPR_ART_32_1_A),
)
def plaintext_refused(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Call the head and every live agent without TLS.

    Evidence that information is protected in transmission: a server that answers
    plaintext could be read or tampered with on the wire; this one ends the connection
    before any request is read.
    """
    probe = ctx.probes[0]
    found = control(ctx, evidence, ctx.credentials(probe.identity))
    expect_refused(ctx, evidence, found, None)
    return f"{_summary(found)} refused plaintext"


@check(
    "transport.unknown-ca",
    "A client certificate from an unknown CA is refused",
    (SOC2_CC6_1, SOC2_CC6_6, ISO_A_8_5),
)
def unknown_ca_refused(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Call the head and every live agent with a certificate for a probe's own identity,
    issued by a CA made in memory for the purpose and thrown away after.

    Evidence that identity comes only from the fabric's CA: the certificate names a real
    tenant and looks like the fabric's own, yet the servers refuse it at the handshake.
    """
    probe = ctx.probes[0]
    creds = ctx.credentials(probe.identity)
    found = control(ctx, evidence, creds)
    forged = foreign_credentials(creds.identity, creds.ca_pem)
    evidence.set("identity", creds.identity.uri)
    expect_refused(ctx, evidence, found, forged)
    return f"{_summary(found)} refused a certificate for {probe.identity} from an unknown CA"


@check(
    "transport.expired",
    "An expired client certificate is refused",
    (SOC2_CC6_1, ISO_A_8_5),
)
def expired_refused(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Issue, with the CA key in the certificates directory, a certificate for a probe's
    identity that expired yesterday, and call the head and every live agent with it.
    Skipped without the CA key: an expired certificate cannot be made otherwise.

    Evidence that credentials stop working when their validity ends.
    """
    probe = ctx.probes[0]
    creds = ctx.credentials(probe.identity)
    ca = fabric_ca(ctx.config.certs)
    found = control(ctx, evidence, creds)
    with tempfile.TemporaryDirectory(prefix="fabric-compliance-") as tmp:
        expired = expired_credentials(ca, creds.identity, Path(tmp))
    evidence.set("identity", creds.identity.uri)
    expect_refused(ctx, evidence, found, expired)
    return f"{_summary(found)} refused a certificate of {probe.identity} that expired yesterday"


@check(
    "transport.revoked",
    "A revoked client certificate is refused once the CRL names it",
    (SOC2_CC6_2, SOC2_CC6_1, ISO_A_5_18),
)
def revoked_refused(ctx: ComplianceContext, evidence: Evidence) -> str:
    """Only with ``--allow-revoke`` (it adds to the fabric's CRL): issue a fresh certificate
    for a probe's identity, check the head and every agent accept it, revoke it the way
    ``fabric certs revoke`` does (its serial into DIR/crl.pem), then wait, up to the
    timeout, until every server refuses it. Skipped without the CA key.

    Evidence that access is removed when a credential is withdrawn, and how long that
    takes: the seconds until each server refused are in the details.
    """
    if not ctx.config.allow_revoke:
        skip("needs --allow-revoke: it revokes a fresh probe certificate in the CA's CRL")
    from fabric._pki import Credentials

    probe = ctx.probes[0]
    identity = ctx.credentials(probe.identity).identity
    ca = fabric_ca(ctx.config.certs)
    with tempfile.TemporaryDirectory(prefix="fabric-compliance-") as tmp:
        paths = ca.issue(identity.kind, identity.name, Path(tmp), valid_days=1)
        fresh = Credentials.load(paths)
        found = control(ctx, evidence, fresh)
        serial = ca.revoke(paths.cert)
    revoked_at = time.monotonic()
    evidence.set("serial", f"{serial:x}")
    evidence.set("crl", str(ca.crl_path))
    pending = {t.name: t for t in found}

    def all_refuse() -> bool:
        for name, target in list(pending.items()):
            refusal = outcome(ctx, target, fresh)
            if refusal is not None:
                code, details = refusal
                evidence.add(
                    "refusals",
                    {
                        "target": name,
                        "code": code,
                        "details": details,
                        "seconds_after_revocation": round(time.monotonic() - revoked_at, 3),
                    },
                )
                del pending[name]
        return not pending

    try:
        ctx.wait_until(all_refuse, "refusal of the revoked certificate by every server")
    except CheckFailed:
        pass  # the targets still accepting it are named below
    if pending:
        fail(
            f"still accepted {ctx.timeout:g} s after revocation by {', '.join(pending)} "
            f"(do they read {ca.crl_path}?)"
        )
    slowest = max(r["seconds_after_revocation"] for r in evidence.details["refusals"])
    return f"{_summary(found)} refused a revoked certificate within {slowest:.1f} s"


class _Refused(grpc.RpcError):
    """An agent's refusal of a session inside an accepted RPC, as a gRPC error."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details
