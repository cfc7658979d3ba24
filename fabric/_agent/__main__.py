"""`python -m fabric._agent`: run a node agent (normally started by `fabric start`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import secrets
from pathlib import Path

from fabric import _reporting as reporting
from fabric._agent.durability import DurableGate, install
from fabric._agent.isolation import separate_uids_unavailable, tenant_uid
from fabric._agent.journal import Journal
from fabric._agent.local import serve_local
from fabric._agent.node import NodeAgent
from fabric._agent.recorder import Recorder
from fabric._agent.service import ALLOWED_KINDS, AgentService, HeadLink, PeerLinks
from fabric._agent.workers import WorkerLauncher
from fabric._launch import (
    add_credential_args,
    credential_paths,
    fail,
    load_credentials,
    secure_server,
    setup_logging,
    until_terminated,
    write_ready_file,
)
from fabric._object_store import ObjectStore, default_store_root
from fabric._proto import fabric_pb2_grpc as rpc
from fabric.exceptions import FabricError

log = logging.getLogger("fabric.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fabric._agent", description=__doc__)
    parser.add_argument("--head", required=True, help="HOST:PORT of the head")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on")
    add_credential_args(parser)
    parser.add_argument("--region", default="local")
    parser.add_argument("--resources", default="{}", help='JSON, e.g. {"CPU": 2}')
    parser.add_argument("--labels", default="{}", help="JSON map of labels")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--store-root", type=Path, help="parent of the object store directory")
    parser.add_argument("--log-dir", type=Path, help="where worker logs go")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the agent keeps its audit journal (default: beside its object store)",
    )
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="do not record decisions (for measuring what recording costs; never in use)",
    )
    parser.add_argument(
        "--invariant-hooks",
        action="append",
        default=[m for m in os.environ.get(HOOKS_ENV, "").split(",") if m],
        metavar="MODULE",
        help="import MODULE, which registers invariant hooks with "
        f"fabric.policy.register_invariant_hook (repeatable; also ${HOOKS_ENV}, comma-separated)",
    )
    reporting.add_args(parser)
    return parser.parse_args(argv)


HOOKS_ENV = "FABRIC_INVARIANT_HOOKS"


def _load_hooks(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # the agent must not run without the checks it was given
            fail(f"cannot load invariant hooks from {name!r}: {type(e).__name__}: {e}")
        log.info("invariant hooks loaded from %s", name)


def _resources(text: str) -> dict[str, float]:
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        resources = {str(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError) as e:
        fail(f"--resources must be a JSON object of numbers: {e}")
    if "CPU" not in resources:
        resources["CPU"] = float(os.cpu_count() or 1)
    return resources


async def serve(args: argparse.Namespace) -> None:
    creds = load_credentials(args.certs, args.identity)
    if creds.identity.kind != "node":
        fail(f"an agent needs a node certificate, got {creds.identity.uri}")
    node_id = creds.identity.name
    resources = _resources(args.resources)
    labels = {str(k): str(v) for k, v in json.loads(args.labels).items()}
    store_root = (
        args.store_root or default_store_root()
    ) / f"fabric-{node_id}-{secrets.token_hex(4)}"
    reason = separate_uids_unavailable()
    node: NodeAgent

    def policy_uid(tenant: str) -> tuple[int, int]:
        # The policy may assign a tenant's uid; otherwise one derived from its name.
        assigned = node.policy.tenant(tenant)
        if assigned is not None and assigned.uid:
            return assigned.uid, assigned.uid
        return tenant_uid(tenant)

    owner = policy_uid if reason is None else None
    if reason is None:
        log.info("workers run under a uid per tenant")
    else:
        log.warning(
            "workers share the agent's uid, so tenants' workers are not separated by "
            "file permissions: %s",
            reason,
        )
    store = ObjectStore(store_root, tenant_owner=owner)
    # Marks the store as this node's, so a co-located client knows it may map it.
    (store_root / f".node-{node_id}").touch()

    server, auth, address = secure_server(args.listen, creds, ALLOWED_KINDS)

    head = HeadLink(args.head, creds, address)

    def address_of(peer: str) -> str | None:
        info = node.nodes.get(peer)
        return info.address if info is not None else None

    peers = PeerLinks(node_id, creds, store, address_of)
    launcher = WorkerLauncher(node_id, store_root, args.log_dir, args.region, owner)
    node = NodeAgent(
        node_id=node_id,
        region=args.region,
        labels=labels,
        resources=resources,
        store=store,
        launcher=launcher,
        peers=peers,
        directory=head,
    )
    _load_hooks(args.invariant_hooks)
    metrics = reporting.start_metrics(args, "agent", node_id, args.region)
    if metrics is not None:
        metrics.gauge_by_tenant(
            "fabric_object_store_bytes", "Bytes in this node's object store.", store.bytes_by_tenant
        )
    node.start_budgets()
    head.node = node
    node.on_load_change = head.changed.set
    gate = None
    if not args.no_audit:
        journal_dir = args.state_dir or store_root / "journal"
        journal = Journal(journal_dir)
        gate = DurableGate(journal)
        install(gate)
        node.recorder = Recorder(node_id, journal)
        node.recorder.on_append = gate.soon
        head.journal = journal
        gate.on_synced = head.audit_ready.set
        recorder = node.recorder
        auth.on_refusal = lambda reason: recorder.event(
            kind="cert.refuse", tenant="", outcome="refuse", rules=("tls.peer",), reasons=(reason,)
        )
        log.info("decisions are journaled in %s before they are acted on", journal_dir)
    else:
        log.warning("decisions are NOT recorded (--no-audit)")
    rpc.add_AgentServicer_to_server(AgentService(node, auth), server)
    await server.start()
    # Drivers on this host may move their session to the local channel.
    local_path = store_root / "agent.sock"
    local = await serve_local(node, auth, local_path, credential_paths(args.certs, args.identity))
    node.local_socket = str(local_path)

    head_task = asyncio.get_running_loop().create_task(head.run())
    forwarder = (
        asyncio.get_running_loop().create_task(head.forward_audit())
        if head.journal is not None
        else None
    )
    joined = asyncio.ensure_future(head.first_view.wait())
    refused = asyncio.ensure_future(head.refused.wait())
    await asyncio.wait({joined, refused}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    joined.cancel()
    refused.cancel()
    if head.refused.is_set():
        fail(f"the head at {args.head} refused this node: {head.error}")
    if not head.first_view.is_set():
        fail(f"cannot reach head at {args.head}: {head.error or 'no answer'}")
    write_ready_file(args.ready_file, address=address, node_id=node_id, store=str(store_root))
    log.info(
        "agent %s serving on %s (region %s, resources %s)", node_id, address, args.region, resources
    )

    await until_terminated()
    log.info("agent %s stopping", node_id)
    node.shutdown()
    head_task.cancel()
    if forwarder is not None:
        forwarder.cancel()
    if gate is not None:
        gate.close()
    local.close()
    await server.stop(grace=0.5)
    await peers.close()
    store.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(f"agent[{args.identity}]")
    try:
        reporting.start_tracing(args, "agent", args.identity.partition("/")[2])
        asyncio.run(serve(args))
    except FabricError as e:
        fail(e.diagnostics())
    except OSError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
