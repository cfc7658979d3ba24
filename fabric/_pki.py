"""Certificate authority and workload identities for Fabric's mutual-TLS fabric.

Every process in a fabric (node agent, tenant driver, operator tool) holds an X.509
leaf certificate issued by the fabric's own certificate authority. The identity that
authorization decisions are made on is the certificate's single URI subject
alternative name, a SPIFFE ID of the form ``spiffe://<trust domain>/<kind>/<name>``
(SPIFFE X.509-SVID specification). The subject DN is informational only.

Revocation is published as a real X.509 v2 CRL (RFC 5280 §5) signed by the CA, so the
file can be inspected with standard tools (``openssl crl -in crl.pem -text``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fabric.exceptions import FabricError

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "KINDS",
    "SERVER_NAME",
    "CertificateAuthority",
    "CredentialPaths",
    "Credentials",
    "Identity",
    "PKIError",
    "fingerprint",
    "identity_of",
]

DEFAULT_TRUST_DOMAIN = "fabric.local"
# Every node certificate carries this DNS SAN and every client pins it with
# ssl_target_name_override, so nodes can be reached by IP address or any hostname
# without re-issuing certificates when addresses change.
SERVER_NAME = "fabric.internal"

KINDS: frozenset[str] = frozenset({"node", "tenant", "operator"})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# SPIFFE ID §2.1: trust domain names are lowercase letters, digits, '.', '-' and '_'
# only (so no userinfo, port, percent-encoding or uppercase), at most 255 characters.
# We additionally require an alphanumeric first and last character so that names like
# "." or "-x." that no DNS-style domain would use are refused.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,253}[a-z0-9])?")
_SPIFFE_SCHEME = "spiffe://"
# SPIFFE ID §2.3: a SPIFFE ID must not exceed 2048 bytes.
_MAX_SPIFFE_ID_BYTES = 2048

_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_CRL = "crl.pem"
_LOCK = ".pki.lock"
_ISSUED = "issued"

# Certificates are back-dated a little so that a peer whose clock is slightly behind
# the CA's does not see a freshly issued certificate as "not yet valid".
_CLOCK_SKEW = _dt.timedelta(minutes=5)

# Serialises revoke() between threads of one process; flock() below covers processes.
_THREAD_LOCK = threading.Lock()


class PKIError(FabricError):
    """A certificate, key, CRL or identity is missing, malformed or not acceptable."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _validate_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise PKIError(
            f"invalid identity kind {kind!r}: expected one of {', '.join(sorted(KINDS))}"
        )
    return kind


def _validate_name(name: object) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise PKIError(
            f"invalid identity name {name!r}: expected 1-63 characters of "
            "[A-Za-z0-9._-] starting with a letter or digit"
        )
    return name


def _validate_trust_domain(trust_domain: object) -> str:
    if not isinstance(trust_domain, str) or _TRUST_DOMAIN_RE.fullmatch(trust_domain) is None:
        raise PKIError(
            f"invalid trust domain {trust_domain!r}: expected lowercase letters, digits, "
            "'.', '-' and '_' (at most 255 characters)"
        )
    return trust_domain


@dataclass(frozen=True)
class Identity:
    """Who a peer is: ``spiffe://<trust_domain>/<kind>/<name>``."""

    kind: str
    name: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def __post_init__(self) -> None:
        # Validating on construction means an Identity value is always safe to embed in
        # a URI, a file name or a log line, however it was built.
        _validate_kind(self.kind)
        _validate_name(self.name)
        _validate_trust_domain(self.trust_domain)

    @property
    def uri(self) -> str:
        return f"{_SPIFFE_SCHEME}{self.trust_domain}/{self.kind}/{self.name}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Parse a SPIFFE ID strictly; anything that is not exactly what ``uri`` would
        produce is refused, so two different strings never map to the same identity."""
        if not isinstance(uri, str):
            raise PKIError(f"invalid SPIFFE ID {uri!r}: not a string")
        if len(uri.encode("utf-8", "surrogatepass")) > _MAX_SPIFFE_ID_BYTES:
            raise PKIError(f"invalid SPIFFE ID: longer than {_MAX_SPIFFE_ID_BYTES} bytes")
        # SPIFFE ID §2: the scheme is exactly "spiffe" followed by "//" and an authority.
        # Comparing case-sensitively refuses "SPIFFE://" variants that other parsers
        # might normalise differently.
        if not uri.startswith(_SPIFFE_SCHEME):
            raise PKIError(f"invalid SPIFFE ID {uri!r}: must start with {_SPIFFE_SCHEME!r}")
        rest = uri[len(_SPIFFE_SCHEME) :]
        parts = rest.split("/")
        # Exactly <trust domain>/<kind>/<name>: no empty, trailing or extra segments.
        if len(parts) != 3:
            raise PKIError(
                f"invalid SPIFFE ID {uri!r}: expected {_SPIFFE_SCHEME}<trust domain>/<kind>/<name>"
            )
        trust_domain, kind, name = parts
        try:
            return cls(kind=kind, name=name, trust_domain=trust_domain)
        except PKIError as exc:
            raise PKIError(f"invalid SPIFFE ID {uri!r}: {exc}") from None


@dataclass(frozen=True)
class CredentialPaths:
    """Where one identity's credentials live on disk."""

    cert: Path
    key: Path
    ca: Path
    crl: Path


@dataclass(frozen=True)
class Credentials:
    """An identity's certificate, private key, the CA bundle and the CRL location."""

    ca_pem: bytes
    cert_pem: bytes
    # Kept out of repr() so that logging a Credentials value never leaks the key.
    key_pem: bytes = field(repr=False)
    crl_path: Path | None
    identity: Identity

    @classmethod
    def load(cls, paths: CredentialPaths) -> Credentials:
        cert_pem = _read(paths.cert, "certificate")
        key_pem = _read(paths.key, "private key")
        ca_pem = _read(paths.ca, "CA certificate")
        _read(paths.crl, "CRL")  # the CRL must exist; RevocationList verifies it
        cert = _load_cert(cert_pem, what=f"certificate {paths.cert}")
        ca_cert = _load_cert(ca_pem, what=f"CA certificate {paths.ca}")
        key = _load_key(key_pem, what=f"private key {paths.key}")
        if key.public_key() != cert.public_key():
            raise PKIError(f"private key {paths.key} does not match certificate {paths.cert}")
        if not _issued_by(cert, ca_cert):
            raise PKIError(f"certificate {paths.cert} was not issued by the CA in {paths.ca}")
        try:
            identity = _identity_of_cert(cert)
        except PKIError as exc:
            raise PKIError(f"certificate {paths.cert}: {exc}") from None
        return cls(
            ca_pem=ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            crl_path=paths.crl,
            identity=identity,
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _load_cert(data: bytes, what: str = "certificate") -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError):
        raise PKIError(f"{what} is not a valid X.509 certificate (PEM or DER)") from None


def _load_key(data: bytes, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PKIError(f"{what} is not a valid unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{what} is not an EC private key")
    return key


def _load_crl(data: bytes, what: str = "CRL") -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (ValueError, TypeError):
        raise PKIError(f"{what} is not a valid X.509 CRL (PEM or DER)") from None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _identity_of_cert(cert: x509.Certificate) -> Identity:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("certificate has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    # SPIFFE X.509-SVID §2: an SVID carries exactly one URI SAN. With two, which one is
    # "the" identity would depend on the parser, so refuse instead of picking.
    if len(uris) != 1:
        raise PKIError(f"certificate has {len(uris)} URI SANs, expected exactly one SPIFFE ID")
    return Identity.parse(uris[0])


def identity_of(cert_pem_or_der: bytes) -> Identity:
    """The identity named by a certificate's single URI SAN."""
    return _identity_of_cert(_load_cert(cert_pem_or_der))


def fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    cert = _load_cert(cert_pem_or_der)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so readers (a RevocationList polling the
    CRL, a node loading its key) never observe a half-written file, and so the file
    never exists with permissions wider than ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` only if it does not exist (O_EXCL), so two concurrent
    ``CertificateAuthority.create`` calls cannot both believe they own the CA key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PKIError(f"a certificate authority already exists in {path.parent}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


class CertificateAuthority:
    """The fabric's private CA: issues leaf certificates and maintains the CRL."""

    def __init__(
        self,
        directory: Path,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        trust_domain: str,
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self._cert = cert
        self._key = key

    # -- construction -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        valid_days: int = 3650,
    ) -> CertificateAuthority:
        directory = Path(directory)
        _validate_trust_domain(trust_domain)
        if valid_days <= 0:
            raise PKIError(f"valid_days must be positive, got {valid_days}")
        for existing in (_CA_CERT, _CA_KEY, _CRL):
            if (directory / existing).exists():
                raise PKIError(f"a certificate authority already exists in {directory}")
        # The directory holds the CA key: create it private when it is ours to create.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        # The trust domain is recorded as the CA's own SPIFFE ID (a URI SAN without a
        # path, SPIFFE X.509-SVID §4.1) so that load() can recover it from ca.pem alone.
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fabric"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Fabric CA"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _dt.timedelta(days=valid_days))
            # RFC 5280 §4.2.1.9: a CA certificate has cA=TRUE, marked critical. A path
            # length of 0 means this CA can sign leaves but no intermediate CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            # RFC 5280 §4.2.1.3: keyCertSign to sign certificates, cRLSign for the CRL.
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"{_SPIFFE_SCHEME}{trust_domain}")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        ca = cls(directory, cert, key, trust_domain)
        _write_exclusive(directory / _CA_KEY, _key_pem(key), 0o600)
        _write_atomic(directory / _CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write_atomic(directory / _CRL, ca._build_crl({}, number=1), 0o644)
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        directory = Path(directory)
        cert_path, key_path = directory / _CA_CERT, directory / _CA_KEY
        if not cert_path.exists() and not key_path.exists():
            raise PKIError(f"no certificate authority in {directory} (missing {_CA_CERT})")
        cert = _load_cert(_read(cert_path, "CA certificate"), what=f"CA certificate {cert_path}")
        key = _load_key(_read(key_path, "CA private key"), what=f"CA private key {key_path}")
        if key.public_key() != cert.public_key():
            raise PKIError(f"CA private key {key_path} does not match {cert_path}")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if len(uris) != 1 or not uris[0].startswith(_SPIFFE_SCHEME):
            raise PKIError(f"CA certificate {cert_path} does not name a trust domain")
        trust_domain = _validate_trust_domain(uris[0][len(_SPIFFE_SCHEME) :])
        return cls(directory, cert, key, trust_domain)

    # -- paths ------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        return self.directory / _CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.directory / _CRL

    @property
    def ca_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    # -- issuance ---------------------------------------------------------------------

    def issue(
        self,
        kind: str,
        name: str,
        out_dir: Path | None = None,
        *,
        valid_days: int = 365,
        not_before: _dt.datetime | None = None,
        not_after: _dt.datetime | None = None,
    ) -> CredentialPaths:
        identity = Identity(kind=kind, name=name, trust_domain=self.trust_domain)
        now = _now()
        start = _aware(not_before) if not_before is not None else now - _CLOCK_SKEW
        ca_end = self._cert.not_valid_after_utc
        if not_after is not None:
            end = _aware(not_after)
            if end > ca_end:
                raise PKIError(f"not_after {end.isoformat()} is after the CA expires ({ca_end})")
        else:
            if valid_days <= 0:
                raise PKIError(f"valid_days must be positive, got {valid_days}")
            # A leaf that outlives its issuer would fail verification anyway; cap it so
            # the certificate states its real lifetime.
            end = min(now + _dt.timedelta(days=valid_days), ca_end)
        if end <= start:
            raise PKIError("certificate validity window is empty (not_after <= not_before)")

        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        if identity.kind == "node":
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            names.append(x509.DNSName(SERVER_NAME))
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            # RFC 5280 §4.1.2.2: serials are unique per CA; 159 random bits make a
            # collision (which would make one revocation hit two certificates) negligible.
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            # SPIFFE X.509-SVID §4.1 / RFC 5280 §4.2.1.9: leaves are not CAs.
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # Only nodes serve: a tenant's or operator's certificate carries neither the
            # serverAuth usage nor the server name clients check (RFC 6125 §6.4), so it
            # cannot be used to pose as a head or an agent.
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

        out = Path(out_dir) if out_dir is not None else self.directory / _ISSUED
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path = out / f"{kind}-{name}.pem"
        key_path = out / f"{kind}-{name}.key"
        # Key first: a reader that finds the new certificate must also find its key.
        _write_atomic(key_path, _key_pem(key), 0o600)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return CredentialPaths(cert=cert_path, key=key_path, ca=self.ca_path, crl=self.crl_path)

    # -- revocation -------------------------------------------------------------------

    def revoke(self, cert_pem_or_path: bytes | Path) -> int:
        """Add the certificate's serial to the CRL and return the serial. Revoking a
        certificate that is already revoked changes nothing."""
        if isinstance(cert_pem_or_path, (bytes, bytearray)):
            data = bytes(cert_pem_or_path)
            what = "certificate"
        else:
            data = _read(Path(cert_pem_or_path), "certificate")
            what = f"certificate {cert_pem_or_path}"
        cert = _load_cert(data, what=what)
        # RFC 5280 §5.3: a CRL entry names a serial within the scope of this CRL's issuer.
        # A serial from another CA's certificate means nothing here, so refuse it rather
        # than give the false impression that the certificate is now unusable.
        if not _issued_by(cert, self._cert):
            raise PKIError(f"{what} was not issued by this certificate authority")
        serial = cert.serial_number
        with self._locked():
            current = self._load_own_crl()
            entries = {r.serial_number: r.revocation_date_utc for r in current}
            if serial in entries:
                return serial
            entries[serial] = _now()
            crl = self._build_crl(entries, number=_crl_number(current) + 1)
            _write_atomic(self.crl_path, crl, 0o644)
        return serial

    def revoked_serials(self) -> set[int]:
        return {r.serial_number for r in self._load_own_crl()}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two operators revoking at once must not lose an entry or reuse a CRL number.
        with _THREAD_LOCK:
            fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _load_own_crl(self) -> x509.CertificateRevocationList:
        crl = _load_crl(_read(self.crl_path, "CRL"), what=f"CRL {self.crl_path}")
        # Rebuilding on top of an unverified CRL could silently drop revocations (or
        # adopt forged ones); refuse and let a human look.
        if crl.issuer != self._cert.subject or not crl.is_signature_valid(self._key.public_key()):
            raise PKIError(f"CRL {self.crl_path} is not signed by this certificate authority")
        return crl

    def _build_crl(self, entries: dict[int, _dt.datetime], number: int) -> bytes:
        now = _now()
        # RFC 5280 §5.1.2.5: nextUpdate is when a fresher CRL is promised. This CRL is
        # republished on every change, so promise the CA's whole remaining lifetime.
        next_update = self._cert.not_valid_after_utc
        if next_update <= now:
            raise PKIError("the certificate authority has expired")
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(next_update)
            # RFC 5280 §5.2.1: conforming CRLs include the authority key identifier.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            # RFC 5280 §5.2.3: a monotonically increasing CRL number lets relying
            # parties refuse an older CRL replayed in place of a newer one.
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial, when in sorted(entries.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _aware(when: _dt.datetime) -> _dt.datetime:
    # Naive datetimes are taken as UTC, which is what cryptography itself assumes.
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)
