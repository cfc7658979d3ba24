"""Certificates the transport checks present: from a throwaway CA, expired, to be revoked."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fabric._pki import CertificateAuthority, Credentials, Identity, PKIError
from fabric.compliance._errors import CheckSkipped

CA_KEY = "ca.key"


def foreign_credentials(identity: Identity, trusted_ca_pem: bytes) -> Credentials:
    """A certificate for `identity` from a CA made in memory and thrown away, shaped like
    the fabric CA's own (same names, same extensions). The client side trusts the
    fabric's CA, so only the server's check of the client certificate can refuse it."""
    now = _dt.datetime.now(_dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fabric"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Fabric CA"),
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Credentials(
        ca_pem=trusted_ca_pem,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        crl_path=None,
        identity=identity,
    )


def fabric_ca(certs: Path) -> CertificateAuthority:
    """The fabric's CA with its key, as ``fabric certs`` uses it; the check is skipped
    when the certificates directory holds no CA key (as on a host that is not the CA's)."""
    if not (certs / CA_KEY).is_file():
        raise CheckSkipped(f"needs the CA key ({certs / CA_KEY}) to issue a probe certificate")
    try:
        return CertificateAuthority.load(certs)
    except PKIError as error:
        raise CheckSkipped(f"cannot use the CA in {certs}: {error}") from error


def expired_credentials(ca: CertificateAuthority, identity: Identity, out_dir: Path) -> Credentials:
    """A certificate for `identity` from the fabric's CA that expired yesterday."""
    now = _dt.datetime.now(_dt.UTC)
    paths = ca.issue(
        identity.kind,
        identity.name,
        out_dir,
        not_before=now - _dt.timedelta(days=2),
        not_after=now - _dt.timedelta(days=1),
    )
    return Credentials.load(paths)
