"""Talking to the head from a command: its options and one mutual-TLS connection.

``--address HEAD --certs DIR --identity KIND/NAME --timeout SECONDS`` name the head and
whose certificate to present; :func:`head_stub` opens the connection and turns an RPC error
into one line saying what went wrong, in terms of the head and the certificates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fabric.cli._common import CommandError

if TYPE_CHECKING:
    from fabric._proto import fabric_pb2_grpc

DEFAULT_TIMEOUT = 30.0


def add_head_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", required=True, metavar="HEAD", help="the head, HOST:PORT")
    add_credential_args(parser, required=True)


def add_credential_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--certs",
        type=Path,
        required=required,
        metavar="DIR",
        help="certificate directory (DIR/ca.pem, DIR/crl.pem, DIR/issued/<kind>-<name>.*)",
    )
    parser.add_argument(
        "--identity",
        default="operator/admin",
        metavar="KIND/NAME",
        help="whose certificate to use (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up after this long, 0 for never (default: %(default)s)",
    )


def timeout(args: argparse.Namespace) -> float | None:
    return args.timeout or None


@contextlib.contextmanager
def head_stub(args: argparse.Namespace, what: str) -> Iterator[fabric_pb2_grpc.HeadStub]:
    """A Head stub over mutual TLS as ``--identity``; an RPC error raised inside becomes one
    line saying what went wrong (`what` names the command)."""
    # grpc core logs failed handshakes on stderr at INFO; it reads this when first loaded.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import grpc
    from fabric.cli._common import credential_paths, parse_identity
    from fabric.cli._status import check_usable, explain_rpc_error

    from fabric._pki import Credentials, Identity
    from fabric._proto import fabric_pb2_grpc
    from fabric._tls import secure_channel

    kind, name = parse_identity(args.identity)
    Identity(kind, name)  # a malformed --identity is reported as such, not as a missing file
    paths = credential_paths(args.certs, kind, name)
    creds = Credentials.load(paths)
    check_usable(paths)
    with secure_channel(args.address, creds) as channel:
        try:
            yield fabric_pb2_grpc.HeadStub(channel)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNIMPLEMENTED,
            ):
                message = explain_rpc_error(exc, args.address, creds, paths, args.timeout)
            else:
                details = " ".join(
                    ((exc.details() if hasattr(exc, "details") else "") or "").split()
                )
                message = f"{what}: {details or (code.name if code else 'failed')}"
            raise CommandError(message) from exc
