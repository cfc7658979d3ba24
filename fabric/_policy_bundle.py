"""Signed policy bundles: the head signs the canonical document of each policy it applies;
agents accept a bundle only when the head's certificate, issued by the fabric CA, signed it
and its version is the digest of its document."""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fabric._pki import Credentials, Identity
from fabric._proto import fabric_pb2 as pb
from fabric.exceptions import FabricError
from fabric.policy._model import OPEN_POLICY, Policy, canonical_json, policy_version

HEAD_IDENTITY = "node/head"


class PolicyBundleError(FabricError):
    """A policy bundle whose signature, signer or version does not check out."""


def sign_policy(policy: Policy, creds: Credentials) -> pb.SignedPolicy:
    if policy.open:
        return pb.SignedPolicy(version=policy.version)
    document = canonical_json(policy.document)
    key = serialization.load_pem_private_key(creds.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PolicyBundleError("the head's key is not an EC key")
    signature = key.sign(document, ec.ECDSA(hashes.SHA256()))
    return pb.SignedPolicy(
        version=policy.version,
        document=document,
        signature=signature,
        signer_certificate=creds.cert_pem,
    )


def verify_policy(signed: pb.SignedPolicy, ca_pem: bytes) -> Policy:
    """The Policy of a bundle, after checking the head signed it under the fabric CA."""
    from fabric.policy import compile_policy

    if signed.version == "default" and not signed.document:
        return OPEN_POLICY
    try:
        cert = x509.load_pem_x509_certificate(signed.signer_certificate)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        identities = {f"{i.kind}/{i.name}" for i in map(Identity.parse, uris)}
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as e:
        raise PolicyBundleError(f"the policy's signer certificate does not check out: {e}") from e
    if HEAD_IDENTITY not in identities:
        raise PolicyBundleError(
            f"the policy is signed by {', '.join(sorted(identities))}, not by the head"
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PolicyBundleError("the head's certificate does not carry an EC key")
    try:
        key.verify(signed.signature, signed.document, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PolicyBundleError("the policy's signature does not match its document") from None
    document = json.loads(signed.document)
    policy = compile_policy(document)
    if policy_version(policy.document) != signed.version:
        raise PolicyBundleError(
            f"the policy claims version {signed.version} but its document digests to "
            f"{policy.version}"
        )
    return policy
