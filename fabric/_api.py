"""The tenant API: `init`, `get`, `put`, `wait`, `remote`, ... (Ray Core's names and behaviour)."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from fabric import _state, _tracing
from fabric._client import CoreClient
from fabric._proto import fabric_pb2 as pb
from fabric._refs import ObjectRef
from fabric.exceptions import ActorNotFoundError, FabricError

_lock = threading.RLock()
_cluster: Any = None  # the embedded LocalCluster started by init() without an address

# Ray's init() arguments that have no meaning here; accepted so Ray programs port unchanged.
_IGNORED_INIT_ARGS = frozenset(
    {
        "include_dashboard",
        "dashboard_host",
        "dashboard_port",
        "log_to_driver",
        "logging_level",
        "logging_format",
        "configure_logging",
        "runtime_env",
        "object_store_memory",
        "_system_config",
        "_temp_dir",
        "local_mode",
        "job_config",
        "num_gpus",
        "resources",
    }
)


class InitError(FabricError):
    """`init()` could not connect or start the embedded cluster."""


def is_initialized() -> bool:
    return _state.client is not None


def init(
    address: str | None = None,
    *,
    namespace: str | None = None,
    num_cpus: int | None = None,
    certs: str | os.PathLike[str] | None = None,
    identity: str | None = None,
    ignore_reinit_error: bool = False,
    tracing: str | None = None,
    **ray_options: Any,
) -> RuntimeContext:
    """Connect this process to a Fabric cluster as a tenant driver.

    With no address (and no ``FABRIC_ADDRESS``), start an embedded local cluster: a head
    and one node agent as separate processes, with their own CA and certificates. With an
    address ``HOST:PORT`` of a node agent, authenticate with the tenant certificate named
    by ``identity`` (``tenant/NAME``) in the ``certs`` directory.

    ``tracing`` (default: ``FABRIC_TRACES``, else off) exports OpenTelemetry spans of the
    tasks this driver submits: ``console``, ``otlp``, ``memory`` or ``file:DIR`` (see
    ``fabric/_tracing.py``); an embedded cluster's processes trace likewise.
    """
    global _cluster
    unknown = sorted(set(ray_options) - _IGNORED_INIT_ARGS)
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(unknown)}")
    with _lock:
        if _state.client is not None:
            if ignore_reinit_error:
                return get_runtime_context()
            raise RuntimeError(
                "fabric.init() was already called; call fabric.shutdown() first "
                "or pass ignore_reinit_error=True"
            )
        from fabric._driver import connect
        from fabric._launch import load_credentials

        traces = _tracing.normalize(
            tracing if tracing is not None else os.environ.get(_tracing.ENV)
        )
        _tracing.configure(traces, role="driver")
        address = address or os.environ.get("FABRIC_ADDRESS")
        if address in (None, "", "local"):
            from fabric._cluster import LocalCluster, NodeSpec

            cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
            cluster = LocalCluster([NodeSpec("node-1", "local", {"CPU": cpus})], traces=traces)
            cluster.start()
            _cluster = cluster
            creds_dir = cluster.certs_dir
            agent_address = next(iter(cluster.agent_addresses.values()))
            who = "tenant/default"
        else:
            if address == "auto":
                raise InitError(
                    "address='auto' is not supported; pass the HOST:PORT of a node agent"
                )
            certs_env = certs or os.environ.get("FABRIC_CERTS")
            who = identity or os.environ.get("FABRIC_IDENTITY") or ""
            if not certs_env or not who:
                raise InitError(
                    "connecting to a cluster needs certs=DIR and identity='tenant/NAME' "
                    "(or FABRIC_CERTS and FABRIC_IDENTITY)"
                )
            creds_dir = Path(certs_env)
            agent_address = address
        try:
            creds = load_credentials(creds_dir, who)
            client = connect(agent_address, creds, namespace or "")
        except BaseException:
            _stop_cluster()
            raise
        _state.client = client
        return get_runtime_context()


def shutdown() -> None:
    """Disconnect; stop the embedded cluster if `init()` started one."""
    with _lock:
        client = _state.client
        _state.client = None
        if client is not None:
            client.closed_reason = "fabric.shutdown() was called"
            client.transport.close()
        _stop_cluster()


def _stop_cluster() -> None:
    global _cluster
    cluster, _cluster = _cluster, None
    if cluster is not None:
        cluster.stop()


atexit.register(shutdown)


def client_for_submit() -> CoreClient:
    """The process's client, starting the embedded cluster on first use as Ray does."""
    client = _state.client
    if client is None:
        init()
        client = _state.client
        assert client is not None
    return client


def _client() -> CoreClient:
    client = _state.client
    if client is None:
        raise RuntimeError("fabric.init() has not been called")
    return client


# ---------------------------------------------------------------------------- objects


def put(value: Any, *, residency: str | None = None) -> ObjectRef:
    """Store `value` in the object store; returns its reference. `residency` names where it
    may live (a data class of the tenant, a jurisdiction, a region, or "any"); by default the
    tenant's default residency, narrowed, inside a task, by what the task read."""
    return client_for_submit().put(value, residency)


@overload
def get(refs: ObjectRef, *, timeout: float | None = None) -> Any: ...
@overload
def get(refs: Sequence[ObjectRef], *, timeout: float | None = None) -> list[Any]: ...


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """The value(s) behind one ref or a list of refs, waiting up to `timeout` seconds."""
    client = _client()
    if isinstance(refs, ObjectRef):
        return client.get([refs], timeout)[0]
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"get() takes ObjectRefs, got an element of type {type(r).__name__}"
                )
        return client.get(list(refs), timeout)
    raise TypeError(f"get() takes an ObjectRef or a list of them, got {type(refs).__name__}")


def wait(
    refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split `refs` into (ready, not ready) once `num_returns` are ready or on timeout."""
    client = _client()
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("wait() takes a list of ObjectRefs")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"wait() takes ObjectRefs, got an element of type {type(r).__name__}")
    if len({r.binary() for r in refs}) != len(refs):
        raise ValueError("wait() got duplicate ObjectRefs")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
    if num_returns > len(refs):
        raise ValueError(f"num_returns ({num_returns}) exceeds the number of refs ({len(refs)})")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    return client.wait(list(refs), num_returns, timeout)


# ---------------------------------------------------------------------------- control


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Stop an actor now. Pending and later calls raise ActorDiedError."""
    from fabric._remote import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}")
    _client().transport.send(
        pb.ClientMessage(
            kill=pb.KillActor(
                actor_id=actor._actor_id, no_restart=no_restart, actor_node=actor._owner_node
            )
        )
    )


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces `ref`; its `get` raises TaskCancelledError."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    _client().transport.send(
        pb.ClientMessage(
            cancel=pb.CancelTask(task_id=ref.task_id(), force=force, recursive=recursive)
        )
    )


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the live actor called `name` in `namespace` (default: this job's)."""
    import json

    from fabric._remote import ActorHandle

    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs a non-empty name")
    reply = _client().request(
        pb.ClientMessage(get_actor=pb.GetActor(name=name, namespace=namespace or "")), timeout=60
    )
    info = reply.actor
    try:
        meta = json.loads(info.handle_meta)
    except ValueError as e:
        raise ActorNotFoundError(f"actor {name!r} has no usable handle metadata") from e
    return ActorHandle(
        info.actor_id,
        info.node_id,
        meta.get("class_name", info.class_name),
        meta.get("methods", {}),
        int(meta.get("max_task_retries", 0)),
    )


# ---------------------------------------------------------------------------- cluster


def _cluster_info() -> pb.ClusterInfo:
    return (
        _client()
        .request(pb.ClientMessage(cluster_info=pb.ClusterInfoRequest()), timeout=60)
        .cluster
    )


def nodes() -> list[dict[str, Any]]:
    """One dict per node, with Ray's keys plus the node's region and labels."""
    return [
        {
            "NodeID": n.node_id,
            "Alive": n.alive,
            "NodeManagerAddress": n.address.rpartition(":")[0],
            "Address": n.address,
            "Resources": dict(n.total),
            "Region": n.region,
            "Labels": dict(n.labels),
        }
        for n in _cluster_info().nodes
    ]


def _sum(pick: Callable[[pb.NodeInfo], Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for n in _cluster_info().nodes:
        if n.alive:
            for k, v in pick(n).items():
                total[k] = total.get(k, 0.0) + v
    return total


def cluster_resources() -> dict[str, float]:
    return _sum(lambda n: n.total)


def available_resources() -> dict[str, float]:
    return _sum(lambda n: n.available)


@dataclass
class RuntimeContext:
    """What this process is: its job, node, and the task or actor it is running."""

    job_id: str
    node_id: str
    namespace: str
    tenant: str
    region: str
    task_id: str | None
    actor_id: str | None

    def get_job_id(self) -> str:
        return self.job_id

    def get_node_id(self) -> str:
        return self.node_id

    def get_task_id(self) -> str | None:
        return self.task_id

    def get_actor_id(self) -> str | None:
        return self.actor_id


def get_runtime_context() -> RuntimeContext:
    client = _client()
    return RuntimeContext(
        job_id=client.job_id.hex(),
        node_id=client.node_id,
        namespace=client.namespace,
        tenant=client.tenant,
        region=client.region,
        task_id=client.current_task_id.hex() or None,
        actor_id=client.current_actor_id.hex() or None,
    )
