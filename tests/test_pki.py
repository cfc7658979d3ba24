"""Certificate authority, identities and credentials (fabric._pki)."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fabric._pki import (
    DEFAULT_TRUST_DOMAIN,
    SERVER_NAME,
    CertificateAuthority,
    CredentialPaths,
    Credentials,
    Identity,
    PKIError,
    fingerprint,
    identity_of,
)
from fabric.exceptions import FabricError


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ca_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((ca.directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((ca.directory / "crl.pem").read_bytes())


def _crl_number(ca: CertificateAuthority) -> int:
    return _crl(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _handmade_cert(ca: CertificateAuthority, san: list[x509.GeneralName] | None) -> bytes:
    """A certificate signed by ``ca`` with arbitrary SANs (what issue() never makes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(_cert(ca.directory / "ca.pem").subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(_ca_key(ca), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# -- Identity -----------------------------------------------------------------------------

MALFORMED_URIS = [
    "",
    "fabric.local/node/a",
    "spiffe:/fabric.local/node/a",
    "spiffe:fabric.local/node/a",
    "SPIFFE://fabric.local/node/a",
    "https://fabric.local/node/a",
    " spiffe://fabric.local/node/a",
    "spiffe://fabric.local/node/a ",
    "spiffe://fabric.local/node/a\n",
    "spiffe://fabric.local/node/a\x00",
    "spiffe:///node/a",
    "spiffe://FABRIC.local/node/a",
    "spiffe://user@fabric.local/node/a",
    "spiffe://fabric.local:443/node/a",
    "spiffe://.fabric.local/node/a",
    "spiffe://fabric.local./node/a",
    "spiffe://fabric.local",
    "spiffe://fabric.local/",
    "spiffe://fabric.local/node",
    "spiffe://fabric.local/node/",
    "spiffe://fabric.local/node/a/",
    "spiffe://fabric.local/node/a/b",
    "spiffe://fabric.local//node/a",
    "spiffe://fabric.local/node//a",
    "spiffe://fabric.local/admin/a",
    "spiffe://fabric.local/Node/a",
    "spiffe://fabric.local/node/.",
    "spiffe://fabric.local/node/..",
    "spiffe://fabric.local/node/-a",
    "spiffe://fabric.local/node/_a",
    "spiffe://fabric.local/node/a b",
    "spiffe://fabric.local/node/a%2Fb",
    "spiffe://fabric.local/node/a?x=1",
    "spiffe://fabric.local/node/a#frag",
    "spiffe://fabric.local/node/a\\b",
    "spiffe://fabric.local/node/\uff41",  # fullwidth 'a'
    "spiffe://fabric.local/node/" + "a" * 64,
    "spiffe://" + "d" * 256 + "/node/a",
]


@pytest.mark.parametrize("uri", MALFORMED_URIS)
def test_identity_parse_rejects_malformed(uri: str) -> None:
    with pytest.raises(PKIError, match=r"^invalid SPIFFE ID"):
        Identity.parse(uri)


@pytest.mark.parametrize("value", [None, b"spiffe://fabric.local/node/a", 42])
def test_identity_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(PKIError):
        Identity.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://fabric.local/node/n1", Identity("node", "n1", "fabric.local")),
        ("spiffe://fabric.local/tenant/Alice.B-c_d", Identity("tenant", "Alice.B-c_d")),
        ("spiffe://prod.example-1/operator/root", Identity("operator", "root", "prod.example-1")),
        ("spiffe://fabric.local/node/" + "z" * 63, Identity("node", "z" * 63)),
        ("spiffe://a/node/0", Identity("node", "0", "a")),
    ],
)
def test_identity_parse_accepts_and_round_trips(uri: str, expected: Identity) -> None:
    parsed = Identity.parse(uri)
    assert parsed == expected
    assert parsed.uri == uri
    assert str(parsed) == uri


@pytest.mark.parametrize(
    ("kind", "name", "trust_domain"),
    [
        ("admin", "a", "fabric.local"),
        ("node", "../etc", "fabric.local"),
        ("node", "a/b", "fabric.local"),
        ("node", "", "fabric.local"),
        ("node", "a", "Fabric.Local"),
        ("node", "a", "fabric.local/x"),
    ],
)
def test_identity_construction_validates(kind: str, name: str, trust_domain: str) -> None:
    with pytest.raises(PKIError):
        Identity(kind, name, trust_domain)


def test_pki_error_is_a_fabric_error() -> None:
    assert issubclass(PKIError, FabricError)


# -- CertificateAuthority ------------------------------------------------------------------


def test_create_writes_ca_key_and_empty_signed_crl(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="prod.example")
    assert ca.trust_domain == "prod.example"
    assert ca.directory == tmp_path / "ca"
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    ca_cert = _cert(tmp_path / "ca" / "ca.pem")
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    crl = _crl(ca)
    assert len(crl) == 0
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)
    assert ca.revoked_serials() == set()


def test_create_refuses_to_overwrite_existing_ca(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca")
    key_before = (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(PKIError) as err:
        CertificateAuthority.create(tmp_path / "ca")
    assert str(err.value) == f"a certificate authority already exists in {tmp_path / 'ca'}"
    assert (tmp_path / "ca" / "ca.key").read_bytes() == key_before


def test_create_rejects_bad_trust_domain(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="invalid trust domain"):
        CertificateAuthority.create(tmp_path / "ca", trust_domain="Evil/Domain")


def test_load_round_trips_trust_domain(tmp_path: Path) -> None:
    created = CertificateAuthority.create(tmp_path / "ca", trust_domain="prod.example")
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.trust_domain == "prod.example"
    paths = loaded.issue("node", "n1")
    assert identity_of(paths.cert.read_bytes()) == Identity("node", "n1", "prod.example")
    assert created.ca_pem == loaded.ca_pem


def test_load_missing_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PKIError) as err:
        CertificateAuthority.load(tmp_path / "nowhere")
    assert str(err.value) == f"no certificate authority in {tmp_path / 'nowhere'} (missing ca.pem)"


def test_load_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(PKIError) as err:
        CertificateAuthority.load(tmp_path / "ca")
    assert str(err.value) == f"CA private key not found: {tmp_path / 'ca' / 'ca.key'}"


def test_issue_leaf_certificate_profile(ca: CertificateAuthority) -> None:
    paths = ca.issue("node", "n1")
    assert paths == CredentialPaths(
        cert=ca.directory / "issued" / "node-n1.pem",
        key=ca.directory / "issued" / "node-n1.key",
        ca=ca.directory / "ca.pem",
        crl=ca.directory / "crl.pem",
    )
    assert _mode(paths.key) == 0o600
    cert = _cert(paths.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://fabric.local/node/n1"
    ]
    assert san.get_values_for_type(x509.DNSName) == [SERVER_NAME]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    key = serialization.load_pem_private_key(paths.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    cert.verify_directly_issued_by(_cert(paths.ca))
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)


@pytest.mark.parametrize(
    ("kind", "serves"), [("node", True), ("tenant", False), ("operator", False)]
)
def test_only_node_certs_carry_the_server_name(
    ca: CertificateAuthority, kind: str, serves: bool
) -> None:
    paths = ca.issue(kind, "x", ca.directory / "out")
    assert paths.cert == ca.directory / "out" / f"{kind}-x.pem"
    cert = _cert(paths.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ([SERVER_NAME] if serves else [])
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (ExtendedKeyUsageOID.SERVER_AUTH in eku) is serves
    assert identity_of(paths.cert.read_bytes()) == Identity(kind, "x", DEFAULT_TRUST_DOMAIN)


@pytest.mark.parametrize(("kind", "name"), [("node", "../../etc/x"), ("node", "a/b"), ("god", "x")])
def test_issue_refuses_bad_identity_before_touching_disk(
    ca: CertificateAuthority, kind: str, name: str
) -> None:
    with pytest.raises(PKIError):
        ca.issue(kind, name)
    assert not (ca.directory / "issued").exists()


def test_issue_explicit_validity_window(ca: CertificateAuthority) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2020, 1, 2, tzinfo=dt.UTC)
    cert = _cert(ca.issue("tenant", "old", not_before=start, not_after=end).cert)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)


def test_issue_refuses_impossible_windows(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(PKIError, match="validity window is empty"):
        ca.issue("tenant", "t", not_before=now, not_after=now - dt.timedelta(days=1))
    with pytest.raises(PKIError, match="after the CA expires"):
        ca.issue("tenant", "t", not_after=now + dt.timedelta(days=365 * 20))


def test_issue_caps_lifetime_at_ca_expiry(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", valid_days=10)
    cert = _cert(ca.issue("node", "n", valid_days=365).cert)
    assert cert.not_valid_after_utc == _cert(ca.directory / "ca.pem").not_valid_after_utc


# -- revocation ----------------------------------------------------------------------------


def test_revoke_adds_serial_to_a_real_signed_crl(ca: CertificateAuthority) -> None:
    paths = ca.issue("tenant", "alice")
    serial = ca.revoke(paths.cert)
    assert serial == _cert(paths.cert).serial_number
    assert ca.revoked_serials() == {serial}
    crl = _crl(ca)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.is_signature_valid(_cert(ca.directory / "ca.pem").public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert _crl_number(ca) == 2
    assert _mode(ca.directory / "crl.pem") == 0o644


def test_revoke_is_idempotent_and_crl_number_increases(ca: CertificateAuthority) -> None:
    a = ca.issue("tenant", "a")
    b = ca.issue("tenant", "b")
    serial_a = ca.revoke(a.cert.read_bytes())
    crl_after_first = (ca.directory / "crl.pem").read_bytes()
    assert ca.revoke(a.cert) == serial_a
    assert (ca.directory / "crl.pem").read_bytes() == crl_after_first
    serial_b = ca.revoke(b.cert)
    assert ca.revoked_serials() == {serial_a, serial_b}
    assert _crl_number(ca) == 3


def test_revoke_survives_reload_of_ca(ca: CertificateAuthority) -> None:
    serial = ca.revoke(ca.issue("tenant", "a").cert)
    again = CertificateAuthority.load(ca.directory)
    other = again.revoke(again.issue("tenant", "b").cert)
    assert again.revoked_serials() == {serial, other}


def test_revoke_refuses_certificate_of_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    foreign = other.issue("tenant", "mallory")
    with pytest.raises(PKIError) as err:
        ca.revoke(foreign.cert)
    assert (
        str(err.value) == f"certificate {foreign.cert} was not issued by this certificate authority"
    )
    assert ca.revoked_serials() == set()


def test_revoke_refuses_to_build_on_a_forged_crl(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    (ca.directory / "crl.pem").write_bytes((other.directory / "crl.pem").read_bytes())
    with pytest.raises(PKIError, match="is not signed by this certificate authority"):
        ca.revoke(ca.issue("tenant", "a").cert)
    with pytest.raises(PKIError, match="is not signed by this certificate authority"):
        ca.revoked_serials()


def test_revoke_garbage_input(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError, match=r"not a valid X\.509 certificate"):
        ca.revoke(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_concurrent_revocations_lose_nothing(ca: CertificateAuthority) -> None:
    certs = [ca.issue("tenant", f"t{i}").cert for i in range(8)]
    errors: list[BaseException] = []

    def revoke(path: Path) -> None:
        try:
            ca.revoke(path)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=revoke, args=(c,)) for c in certs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert ca.revoked_serials() == {_cert(c).serial_number for c in certs}
    assert _crl_number(ca) == 1 + len(certs)


# -- identity_of / fingerprint ----------------------------------------------------------


def test_identity_of_accepts_pem_and_der(ca: CertificateAuthority) -> None:
    pem = ca.issue("operator", "root").cert.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert identity_of(pem) == identity_of(der) == Identity("operator", "root")


def test_identity_of_refuses_certificate_without_san(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError) as err:
        identity_of(_handmade_cert(ca, None))
    assert str(err.value) == "certificate has no subject alternative name"


def test_identity_of_refuses_certificate_without_uri_san(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError) as err:
        identity_of(_handmade_cert(ca, [x509.DNSName(SERVER_NAME)]))
    assert str(err.value) == "certificate has 0 URI SANs, expected exactly one SPIFFE ID"


def test_identity_of_refuses_two_uri_sans(ca: CertificateAuthority) -> None:
    pem = _handmade_cert(
        ca,
        [
            x509.UniformResourceIdentifier("spiffe://fabric.local/tenant/alice"),
            x509.UniformResourceIdentifier("spiffe://fabric.local/node/n1"),
        ],
    )
    with pytest.raises(PKIError) as err:
        identity_of(pem)
    assert str(err.value) == "certificate has 2 URI SANs, expected exactly one SPIFFE ID"


def test_identity_of_refuses_malformed_uri_san(ca: CertificateAuthority) -> None:
    pem = _handmade_cert(
        ca, [x509.UniformResourceIdentifier("spiffe://fabric.local/node/n1/../../x")]
    )
    with pytest.raises(PKIError, match="invalid SPIFFE ID"):
        identity_of(pem)


def test_identity_of_garbage() -> None:
    with pytest.raises(PKIError, match=r"not a valid X\.509 certificate"):
        identity_of(b"\x30\x03garbage")


def test_fingerprint_is_sha256_of_der(ca: CertificateAuthority) -> None:
    pem = ca.issue("node", "n1").cert.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert fingerprint(pem) == fingerprint(der) == hashlib.sha256(der).hexdigest()


# -- Credentials ---------------------------------------------------------------------------


def test_credentials_load(ca: CertificateAuthority) -> None:
    paths = ca.issue("tenant", "alice")
    creds = Credentials.load(paths)
    assert creds.identity == Identity("tenant", "alice")
    assert creds.cert_pem == paths.cert.read_bytes()
    assert creds.key_pem == paths.key.read_bytes()
    assert creds.ca_pem == paths.ca.read_bytes()
    assert creds.crl_path == paths.crl
    # The private key must never end up in a log line via repr().
    assert b"PRIVATE KEY" in creds.key_pem
    assert "PRIVATE KEY" not in repr(creds)


@pytest.mark.parametrize(
    ("field", "what"),
    [("cert", "certificate"), ("key", "private key"), ("ca", "CA certificate"), ("crl", "CRL")],
)
def test_credentials_load_missing_file(ca: CertificateAuthority, field: str, what: str) -> None:
    paths = ca.issue("tenant", "alice")
    missing = ca.directory / "missing.pem"
    broken = CredentialPaths(**{**paths.__dict__, field: missing})
    with pytest.raises(PKIError) as err:
        Credentials.load(broken)
    assert str(err.value) == f"{what} not found: {missing}"


def test_credentials_load_garbled_files(ca: CertificateAuthority) -> None:
    paths = ca.issue("tenant", "alice")
    paths.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError) as err:
        Credentials.load(paths)
    assert str(err.value) == (
        f"certificate {paths.cert} is not a valid X.509 certificate (PEM or DER)"
    )
    assert "\n" not in str(err.value)

    paths = ca.issue("tenant", "bob")
    paths.key.write_bytes(b"not a key")
    with pytest.raises(PKIError) as err:
        Credentials.load(paths)
    assert str(err.value) == f"private key {paths.key} is not a valid unencrypted PEM private key"


def test_credentials_load_refuses_mismatched_key(ca: CertificateAuthority) -> None:
    a = ca.issue("tenant", "a")
    b = ca.issue("tenant", "b")
    with pytest.raises(PKIError) as err:
        Credentials.load(CredentialPaths(cert=a.cert, key=b.key, ca=a.ca, crl=a.crl))
    assert str(err.value) == f"private key {b.key} does not match certificate {a.cert}"


def test_credentials_load_refuses_certificate_of_another_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    foreign = other.issue("tenant", "mallory")
    mixed = CredentialPaths(cert=foreign.cert, key=foreign.key, ca=ca.ca_path, crl=ca.crl_path)
    with pytest.raises(PKIError) as err:
        Credentials.load(mixed)
    assert str(err.value) == f"certificate {foreign.cert} was not issued by the CA in {ca.ca_path}"
