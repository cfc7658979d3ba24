"""``fabric certs``: create the fabric's CA, issue, revoke and list certificates."""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from fabric.cli._common import CommandError, add_command, format_table

if TYPE_CHECKING:
    from cryptography import x509

# Where the CA directory keeps copies of the certificates `issue --out` wrote elsewhere.
EXPORTED = "exported"

_DESCRIPTION = """\
Manage the fabric's certificate authority. Every head, node agent, tenant driver and
operator tool authenticates with a certificate issued here; its identity is the
certificate's SPIFFE ID, spiffe://<trust domain>/<kind>/<name>.

A CA directory holds ca.pem, ca.key (keep it private), crl.pem, issued/ (certificates
and keys issued here) and exported/ (copies of certificates issued with --out)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = add_command(
        subparsers,
        "certs",
        help="create the CA; issue, revoke and list certificates",
        description=_DESCRIPTION,
    )
    sub = certs.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)

    init = add_command(
        sub, "init", help="create a certificate authority in a new directory", handler=_init
    )
    init.add_argument("--dir", type=Path, required=True, help="directory for the CA")
    init.add_argument(
        "--trust-domain",
        default="fabric.local",
        help="trust domain of every identity this CA issues (default: %(default)s)",
    )

    issue = add_command(
        sub,
        "issue",
        help="issue a certificate to a node, tenant or operator",
        description=(
            "Issue a certificate and key. Without --out they are written to DIR/issued/. "
            "With --out, OUTDIR becomes a certificate directory for another host: "
            "OUTDIR/issued/<kind>-<name>.pem|.key plus copies of ca.pem and crl.pem, "
            "ready for `fabric start --certs OUTDIR`, without the CA key."
        ),
        handler=_issue,
    )
    issue.add_argument("--dir", type=Path, required=True, help="the CA directory")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", metavar="ID", help="a node agent (use 'head' for the head)")
    who.add_argument("--tenant", metavar="NAME", help="a tenant's drivers")
    who.add_argument("--operator", metavar="NAME", help="an operator (fabric status, policy)")
    issue.add_argument("--out", type=Path, metavar="OUTDIR", help="certificate directory to fill")
    issue.add_argument(
        "--days", type=int, default=365, metavar="N", help="validity in days (default: 365)"
    )

    revoke = add_command(
        sub,
        "revoke",
        help="revoke a certificate (adds its serial to the CRL)",
        description=(
            "Add a certificate's serial to DIR/crl.pem. Processes that read that file refuse "
            "the certificate from then on; hosts with their own copy need the new crl.pem."
        ),
        handler=_revoke,
    )
    revoke.add_argument("--dir", type=Path, required=True, help="the CA directory")
    revoke.add_argument("cert", type=Path, metavar="CERT_PATH", help="the certificate to revoke")

    listing = add_command(sub, "list", help="list the certificates in DIR/issued", handler=_list)
    listing.add_argument("--dir", type=Path, required=True, help="the CA directory")


def _init(args: argparse.Namespace) -> int:
    from fabric._pki import CertificateAuthority

    ca = CertificateAuthority.create(args.dir, trust_domain=args.trust_domain)
    print(f"created a certificate authority for trust domain {ca.trust_domain} in {args.dir}")
    files = [
        (str(ca.ca_path), "CA certificate: give it to every host"),
        (str(args.dir / "ca.key"), "CA key: keep it private, it signs every certificate"),
        (str(ca.crl_path), "revocation list: give it to every host"),
    ]
    print(textwrap.indent(format_table(*files[:1], files[1:]), "  "))
    return 0


def _issue(args: argparse.Namespace) -> int:
    from fabric._pki import CertificateAuthority, Identity

    if args.node is not None:
        kind, name = "node", args.node
    elif args.tenant is not None:
        kind, name = "tenant", args.tenant
    else:
        kind, name = "operator", args.operator
    ca = CertificateAuthority.load(args.dir)
    # Validate before anything is written, so a bad name leaves no half-made OUTDIR.
    identity = Identity(kind, name, ca.trust_domain)
    out = args.out
    if out is not None:
        _prepare_host_dir(ca.ca_path, out)
        paths = ca.issue(kind, name, out / "issued", valid_days=args.days)
        shutil.copyfile(ca.crl_path, out / "crl.pem")
        # The CA keeps the certificate (never the key) so `certs list` and `certs revoke`
        # can still find what it issued to other hosts.
        (ca.directory / EXPORTED).mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(paths.cert, ca.directory / EXPORTED / paths.cert.name)
        ca_path, crl_path = out / "ca.pem", out / "crl.pem"
    else:
        paths = ca.issue(kind, name, valid_days=args.days)
        ca_path, crl_path = paths.ca, paths.crl
    print(f"identity  {identity.uri}")
    print(f"cert      {paths.cert}")
    print(f"key       {paths.key}")
    print(f"ca        {ca_path}")
    print(f"crl       {crl_path}")
    print(f"expires   {_format_time(_load(paths.cert).not_valid_after_utc)}")
    return 0


def _prepare_host_dir(ca_path: Path, out: Path) -> None:
    """Make ``out`` a certificate directory of this CA (ca.pem copied in), refusing one
    that already belongs to another CA."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = out / "ca.pem"
    if target.exists():
        if target.samefile(ca_path):
            return
        if target.read_bytes() != ca_path.read_bytes():
            raise CommandError(f"{target} is the certificate of another CA")
    shutil.copyfile(ca_path, target)


def _revoke(args: argparse.Namespace) -> int:
    from fabric._pki import CertificateAuthority, identity_of

    ca = CertificateAuthority.load(args.dir)
    if not args.cert.is_file():
        raise CommandError(f"missing certificate file: {args.cert}")
    serial = ca.revoke(args.cert)
    print(f"revoked {identity_of(args.cert.read_bytes()).uri} (serial {serial:x})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from fabric._pki import CertificateAuthority, PKIError, identity_of

    ca = CertificateAuthority.load(args.dir)
    revoked = ca.revoked_serials()
    now = _dt.datetime.now(_dt.UTC)
    rows = []
    paths = [
        path
        for folder in ("issued", EXPORTED)
        for path in sorted((ca.directory / folder).glob("*.pem"))
    ]
    for path in paths:
        try:
            cert = _load(path)
            identity = identity_of(path.read_bytes()).uri
        except (PKIError, ValueError) as exc:
            rows.append((str(path.relative_to(ca.directory)), f"unreadable: {exc}", "-", "-"))
            continue
        expires = _format_time(cert.not_valid_after_utc)
        if cert.not_valid_after_utc < now:
            expires += " (expired)"
        is_revoked = "yes" if cert.serial_number in revoked else "no"
        rows.append((str(path.relative_to(ca.directory)), identity, expires, is_revoked))
    if not rows:
        print(f"no certificates issued by the CA in {ca.directory}")
        return 0
    print(format_table(("CERTIFICATE", "IDENTITY", "EXPIRES (UTC)", "REVOKED"), rows))
    return 0


def _load(path: Path) -> x509.Certificate:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _format_time(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M")
