"""``fabric status``: the head's table of nodes, their load and their resources."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.cli._common import (
    CommandError,
    add_command,
    credential_paths,
    format_table,
    parse_identity,
)

if TYPE_CHECKING:
    import grpc

    from fabric._pki import CredentialPaths, Credentials
    from fabric._proto import fabric_pb2

# A status call either answers quickly or something is wrong; waiting longer only delays
# the error message.
DEFAULT_TIMEOUT = 5.0

# Substrings of gRPC's UNAVAILABLE details that mean the TLS handshake failed, as
# opposed to nothing listening at the address.
_TLS_MARKERS = ("ssl", "tls", "handshake", "certificate", "tsi_")
_CONNECT_PREFIX = re.compile(
    r"^failed to connect to all addresses; last error: [A-Z_]+: (?:ipv[46]:\S+: )?"
)
# BoringSSL's "CERTIFICATE_VERIFY_FAILED: <reason>: OK" -> <reason>
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = add_command(
        subparsers,
        "status",
        help="show the nodes of a fabric, their load and resources",
        description=(
            "Ask the head for its table of nodes. Resources are shown as available/total; "
            "the last row sums the nodes that are alive."
        ),
        handler=_status,
    )
    status.add_argument("--address", required=True, metavar="HEAD", help="the head, HOST:PORT")
    status.add_argument(
        "--certs",
        type=Path,
        required=True,
        metavar="DIR",
        help="certificate directory (DIR/ca.pem, DIR/crl.pem, DIR/issued/<kind>-<name>.*)",
    )
    status.add_argument(
        "--identity",
        required=True,
        metavar="KIND/NAME",
        help="whose certificate to use, e.g. operator/admin",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up after this long (default: %(default)s)",
    )


def _status(args: argparse.Namespace) -> int:
    # grpc core logs each failed TLS handshake at INFO on stderr, which would put a
    # second, less readable line next to ours. It reads this when it is first loaded.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from fabric._pki import Credentials, Identity

    kind, name = parse_identity(args.identity)
    Identity(kind, name)  # a malformed --identity is reported as such, not as a missing file
    paths = credential_paths(args.certs, kind, name)
    creds = Credentials.load(paths)
    check_usable(paths)
    info = fetch_status(args.address, creds, paths, timeout=args.timeout)
    if args.json:
        print(json.dumps(status_dict(info), indent=2, sort_keys=True))
    else:
        print(render_status(info, args.address))
    return 0


def check_usable(paths: CredentialPaths) -> None:
    """Refuse, naming the problem, a certificate the head would refuse anyway: expired,
    not yet valid, or revoked by the CRL this host has."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    now = _dt.datetime.now(_dt.UTC)
    if now > cert.not_valid_after_utc:
        raise CommandError(
            f"certificate {paths.cert} expired on {_format_time(cert.not_valid_after_utc)}"
        )
    if now < cert.not_valid_before_utc:
        raise CommandError(
            f"certificate {paths.cert} is not valid before "
            f"{_format_time(cert.not_valid_before_utc)}"
        )
    try:
        crl = x509.load_pem_x509_crl(paths.crl.read_bytes())
    except ValueError:
        raise CommandError(f"{paths.crl} is not a valid PEM CRL") from None
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise CommandError(f"certificate {paths.cert} is revoked (listed in {paths.crl})")


def fetch_status(
    address: str,
    creds: Credentials,
    paths: CredentialPaths,
    timeout: float = DEFAULT_TIMEOUT,
) -> fabric_pb2.ClusterInfo:
    """``Head.Status`` over mutual TLS; failures become one-line :class:`CommandError`."""
    import grpc

    from fabric._proto import fabric_pb2, fabric_pb2_grpc
    from fabric._tls import secure_channel

    with secure_channel(address, creds) as channel:
        stub = fabric_pb2_grpc.HeadStub(channel)
        try:
            info: fabric_pb2.ClusterInfo = stub.Status(
                fabric_pb2.Empty(), timeout=timeout, wait_for_ready=False
            )
        except grpc.RpcError as exc:
            raise CommandError(explain_rpc_error(exc, address, creds, paths, timeout)) from exc
    return info


def explain_rpc_error(
    exc: grpc.RpcError,
    address: str,
    creds: Credentials,
    paths: CredentialPaths,
    timeout: float,
) -> str:
    """One line saying what went wrong, in terms of the head and the certificates."""
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    details = _one_line(exc.details() if hasattr(exc, "details") else "") or "no details"
    if code == grpc.StatusCode.UNAVAILABLE:
        # grpc wraps the reason in "failed to connect to all addresses; last error:
        # UNKNOWN: ipv4:HOST:PORT: ..."; the reason is what helps.
        reason = _CONNECT_PREFIX.sub("", details)
        verify = _VERIFY_FAILED.search(reason)
        if verify is not None:
            return (
                f"TLS handshake with head at {address} failed: its certificate is not "
                f"from the CA in {paths.ca} ({verify.group(1)})"
            )
        if "WRONG_VERSION_NUMBER" in reason:
            return f"TLS handshake with head at {address} failed: it does not speak TLS"
        if any(marker in reason.lower() for marker in _TLS_MARKERS):
            return f"TLS handshake with head at {address} failed: {reason}"
        return f"cannot reach head at {address}: {reason}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"cannot reach head at {address}: no answer within {timeout:g} s"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return (
            f"head at {address} refused certificate {paths.cert} ({creds.identity.uri}): {details}"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{address} is not a fabric head: {details}"
    name = code.name if code is not None else "error"
    return f"status from head at {address} failed: {name}: {details}"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


# ----------------------------------------------------------------------------- output


def _alive(nodes: Iterable[fabric_pb2.NodeInfo]) -> list[fabric_pb2.NodeInfo]:
    return [node for node in nodes if node.alive]


def _sum(maps: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for mapping in maps:
        for key, value in mapping.items():
            total[key] = total.get(key, 0.0) + value
    return total


def status_dict(info: fabric_pb2.ClusterInfo) -> dict[str, Any]:
    """The cluster table as plain JSON-able data (``fabric status --json``)."""
    nodes = sorted(info.nodes, key=lambda node: node.node_id)
    alive = _alive(nodes)
    return {
        "nodes": [
            {
                "node_id": node.node_id,
                "address": node.address,
                "region": node.region,
                "alive": node.alive,
                "identity": node.identity,
                "total": dict(node.total),
                "available": dict(node.available),
                "labels": dict(node.labels),
                "running_tasks": node.running_tasks,
                "queued_tasks": node.queued_tasks,
                "workers": node.workers,
                # Per tenant; a tenant is shown only its own.
                "tenants": {
                    tenant: {
                        "running_tasks": load.running_tasks,
                        "queued_tasks": load.queued_tasks,
                        "workers": load.workers,
                        "actors": load.actors,
                    }
                    for tenant, load in sorted(node.tenant_load.items())
                },
            }
            for node in nodes
        ],
        "totals": {
            "nodes": len(nodes),
            "alive": len(alive),
            "total": _sum(node.total for node in alive),
            "available": _sum(node.available for node in alive),
            "running_tasks": sum(node.running_tasks for node in alive),
            "queued_tasks": sum(node.queued_tasks for node in alive),
            "workers": sum(node.workers for node in alive),
        },
    }


def render_status(info: fabric_pb2.ClusterInfo, address: str) -> str:
    """The cluster as a table: one row per node, then a TOTAL row over alive nodes."""
    nodes = sorted(info.nodes, key=lambda node: node.node_id)
    if not nodes:
        return f"no nodes have joined the head at {address}"
    # Placement-group bundles (``pg:...`` names) stay out of the table; --json has them.
    others = sorted(
        {key for node in nodes for key in node.total if not key.startswith("pg:")} - {"CPU"}
    )
    with_labels = any(node.labels for node in nodes)
    header = ["NODE", "REGION", "ADDRESS", "ALIVE", "CPU", *others]
    header += ["RUNNING", "QUEUED", "WORKERS"] + (["LABELS"] if with_labels else [])
    resources = ["CPU", *others]

    rows = []
    for node in nodes:
        row = [node.node_id, node.region, node.address, "yes" if node.alive else "no"]
        row += [_resource_cell(key, node.available, node.total) for key in resources]
        row += [str(node.running_tasks), str(node.queued_tasks), str(node.workers)]
        if with_labels:
            row.append(",".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-")
        rows.append(row)

    alive = _alive(nodes)
    total, available = _sum(n.total for n in alive), _sum(n.available for n in alive)
    plural = "s" if len(nodes) != 1 else ""
    totals = ["TOTAL", f"{len(nodes)} node{plural}", "", f"{len(alive)}/{len(nodes)}"]
    totals += [_resource_cell(key, available, total) for key in resources]
    totals += [
        str(sum(n.running_tasks for n in alive)),
        str(sum(n.queued_tasks for n in alive)),
        str(sum(n.workers for n in alive)),
    ]
    if with_labels:
        totals.append("")
    rows.append(totals)
    first_number = len(header) - (4 if with_labels else 3)
    right = {*range(4, 4 + len(resources)), *range(first_number, first_number + 3)}
    return format_table(header, rows, right=right)


def _resource_cell(key: str, available: Mapping[str, float], total: Mapping[str, float]) -> str:
    if key not in total:
        return "-"
    return f"{_amount(key, available.get(key, 0.0))}/{_amount(key, total[key])}"


def _amount(key: str, value: float) -> str:
    if "memory" in key.lower() and value >= 1024:
        unit = "B"
        for unit in ("KiB", "MiB", "GiB", "TiB"):  # noqa: B007 - the last unit is used
            value /= 1024
            if value < 1024:
                break
        return f"{value:.1f}{unit}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _format_time(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
