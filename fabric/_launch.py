"""Plumbing shared by the head and agent processes: credentials, ready files, logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from fabric._pki import CredentialPaths, Credentials
from fabric._tls import (
    SERVER_OPTIONS,
    PeerAuthenticator,
    RevocationList,
    auth_aio_server_interceptor,
    server_credentials,
)


def add_credential_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--certs",
        type=Path,
        required=True,
        help="directory with ca.pem, crl.pem and issued/<kind>-<name>.pem|.key",
    )
    parser.add_argument(
        "--identity", required=True, help="KIND/NAME of this process, e.g. node/head"
    )


def credential_paths(certs: Path, identity: str) -> CredentialPaths:
    kind, _, name = identity.partition("/")
    return CredentialPaths(
        cert=certs / "issued" / f"{kind}-{name}.pem",
        key=certs / "issued" / f"{kind}-{name}.key",
        ca=certs / "ca.pem",
        crl=certs / "crl.pem",
    )


def load_credentials(certs: Path, identity: str) -> Credentials:
    return Credentials.load(credential_paths(certs, identity))


def write_ready_file(path: Path | None, **fields: Any) -> None:
    """Tell the launcher we serve: written atomically so a reader never sees half of it."""
    if path is None:
        return
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), **fields}))
    os.replace(tmp, path)


def setup_logging(name: str) -> None:
    level = os.environ.get("FABRIC_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # grpc's aio layer logs cancelled streams at ERROR when a peer goes away; that is
    # routine for us (drivers exit, agents stop).
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)


def fail(message: str) -> None:
    print(f"fabric: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def secure_server(
    listen: str, creds: Credentials, allowed_kinds: Mapping[str, frozenset[str]]
) -> tuple[grpc.aio.Server, PeerAuthenticator, str]:
    """An aio gRPC server on `listen` (HOST:PORT, port 0 for any) that authenticates every
    call by its client certificate; returns it unstarted, its authenticator, its address."""
    revocations = RevocationList(creds.crl_path, creds.ca_pem) if creds.crl_path else None
    auth = PeerAuthenticator(creds, revocations)
    server = grpc.aio.server(
        interceptors=[auth_aio_server_interceptor(auth, allowed_kinds)], options=SERVER_OPTIONS
    )
    host, _, port = listen.rpartition(":")
    bound = server.add_secure_port(f"{host}:{port}", server_credentials(creds))
    if bound == 0:
        fail(f"cannot listen on {listen}")
    return server, auth, f"{host}:{bound}"


async def until_terminated() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
