"""Hostile payloads and malformed messages against a real cluster's agents.

The control plane must never unpickle a tenant's bytes: only the tenant's own workers
load functions, arguments and values. The payloads here are pickles whose *loading*
runs code (``eval`` of an expression that appends ``<tag> <pid>`` to a marker file), sent
with raw protocol messages, so the marker says exactly which processes loaded what.

The malformed-message tests send what no honest client would (garbage blobs, lying
sealed puts, impossible task specs) and require a clear, typed error and an agent that
stays healthy: alive, and still running a legitimate task on every node.

As in the other security modules, drivers are raw sessions made the process's client
only inside ``acting_as`` blocks; ``fabric`` is left as it was found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

import fabric
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric._proto import fabric_pb2 as pb
from fabric._refs import ObjectRef
from fabric._serialization import (
    INLINE_THRESHOLD,
    KIND_ERROR,
    KIND_PICKLE,
    Serialized,
    dumps_function,
    serialize,
)
from fabric.exceptions import InvalidRequestError, UnknownObjectError
from tests.sessions import acting_as, started_cluster, tenant_session

TIMEOUT = 10.0
NODES = [
    NodeSpec("node-1", "local", {"CPU": 2}),
    # Only node-2 has "far": tasks asking for it are forwarded there by node-1.
    NodeSpec("node-2", "local", {"CPU": 2, "far": 4}),
]
ON_NODE_2 = {"far": 1.0}


# ----------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def session(cluster: LocalCluster, tenant: str, node: str = "node-1") -> Iterator[CoreClient]:
    """A session of `tenant` that is also the process's client meanwhile."""
    with tenant_session(cluster, tenant, node) as client, acting_as(client):
        yield client


@pytest.fixture(scope="module")
def payload_cluster() -> Iterator[LocalCluster]:
    with started_cluster(NODES, ("alice", "mallory")) as cluster:
        yield cluster


@pytest.fixture
def mallory(payload_cluster: LocalCluster) -> Iterator[CoreClient]:
    """A session of the attacking tenant on node-1 (the process's client meanwhile)."""
    with session(payload_cluster, "mallory") as client:
        yield client


# ----------------------------------------------------------------------------- payloads


class _RunsOnLoad:
    """Pickles as ``eval(code)``: unpickling it runs `code` in the unpickling process."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (eval, (self.code,))


def loading_runs_code(marker: Path, tag: str, result: str) -> bytes:
    """A pickle whose loading appends ``<tag> <pid>`` to `marker` and yields `result`."""
    code = (
        f"(open({str(marker)!r}, 'a').write({tag!r} + ' ' + str(__import__('os').getpid())"
        f" + '\\n'), {result})[1]"
    )
    return pickle.dumps(_RunsOnLoad(code), protocol=5)


def value_blob(marker: Path, tag: str, result: str, padding: int = 0) -> bytes:
    """An object blob (pickle kind) carrying the payload; `padding` bytes of an unused
    out-of-band buffer make it as large as needed."""
    buffers = [memoryview(bytes(padding))] if padding else []
    return Serialized(KIND_PICKLE, loading_runs_code(marker, tag, result), buffers).to_bytes()


def error_blob(marker: Path, tag: str) -> bytes:
    """An error blob: the agents read its JSON summary; its pickle carries the payload."""
    summary = json.dumps({"type": "Boom", "message": "boom", "traceback": ""}).encode()
    payload = loading_runs_code(marker, tag, "(RuntimeError('boom'), '')")
    return Serialized(KIND_ERROR, payload, [memoryview(summary)]).to_bytes()


def who_loaded(marker: Path) -> dict[str, set[int]]:
    """Tag -> pids of the processes that unpickled a payload carrying it."""
    loaded: dict[str, set[int]] = {}
    if marker.exists():
        for line in marker.read_text().splitlines():
            tag, pid = line.split()
            loaded.setdefault(tag, set()).add(int(pid))
    return loaded


# ----------------------------------------------------------------------------- raw protocol


def new_object_id() -> bytes:
    return os.urandom(16) + b"\0\0\0\0"


def round_trip(client: CoreClient) -> None:
    """A request the agent answers after everything this session sent before it."""
    client.request(pb.ClientMessage(cluster_info=pb.ClusterInfoRequest()), timeout=TIMEOUT)


def send_put(client: CoreClient, put: pb.PutObject) -> ObjectRef:
    """A raw put, processed by the agent when this returns; the caller holds the ref."""
    ref = client.owned_ref(put.object_id)
    client.transport.send(pb.ClientMessage(put=put))
    round_trip(client)
    return ref


def fetch_blob(client: CoreClient, object_id: bytes) -> bytes:
    """An object's blob as the agent holds it, fetched without deserializing it."""
    fetch = pb.ClientMessage(fetch=pb.FetchInline(object_id=object_id))
    return client.request(fetch, timeout=TIMEOUT).inline_blob


def request_put(client: CoreClient, put: pb.PutObject) -> pb.Reply:
    """A put that expects an (error) reply: honest puts are not answered."""
    return client.request(pb.ClientMessage(put=put), timeout=TIMEOUT)


def ping() -> str:
    return "pong"


def echo_pid(*args: object) -> tuple[int, tuple[object, ...]]:
    return os.getpid(), args


def task_spec(
    function_blob: bytes,
    args: Sequence[pb.Arg] = (),
    resources: dict[str, float] | None = None,
    overrides: dict[str, object] | None = None,
) -> pb.TaskSpec:
    """A NORMAL_TASK spec running `function_blob`; `overrides` sets any field to anything."""
    spec = pb.TaskSpec(
        task_id=os.urandom(16),
        kind=pb.NORMAL_TASK,
        function_digest=hashlib.sha256(function_blob).digest(),
        function_name="attack",
        num_returns=1,
        resources=resources if resources is not None else {"CPU": 1.0},
        args=list(args),
    )
    for name, value in (overrides or {}).items():
        if isinstance(value, dict):
            getattr(spec, name).clear()
            getattr(spec, name).update(value)
        elif isinstance(value, list):
            del getattr(spec, name)[:]
            getattr(spec, name).extend(value)
        else:
            setattr(spec, name, value)
    return spec


def submit(client: CoreClient, spec: pb.TaskSpec, function_blob: bytes | None) -> ObjectRef:
    """Send a raw TaskSpec (with its function blob, if given); the ref of its first return."""
    ref = client.owned_ref(spec.task_id + (1).to_bytes(4, "big"))
    client.submit(spec, (lambda: function_blob) if function_blob is not None else None)
    return ref


def run_legit_task(client: CoreClient, resources: dict[str, float] | None = None) -> object:
    blob = dumps_function(ping)
    return fabric.get(submit(client, task_spec(blob, resources=resources), blob), timeout=60)


def assert_agents_healthy(cluster: LocalCluster) -> None:
    for name, process in cluster.processes.items():
        assert process.poll() is None, f"{name} exited with {process.returncode}"
    with session(cluster, "mallory") as client:
        assert run_legit_task(client) == "pong"
        assert run_legit_task(client, ON_NODE_2) == "pong"


def server_pids(cluster: LocalCluster) -> set[int]:
    return {process.pid for process in cluster.processes.values()}


def assert_worker_of(cluster: LocalCluster, pid: int, tenant: str) -> None:
    process = psutil.Process(pid)
    agents = {cluster.processes[node].pid for node in cluster.agent_addresses}
    assert process.ppid() in agents
    cmdline = process.cmdline()
    assert cmdline[1:3] == ["-m", "fabric._worker"]
    assert cmdline[cmdline.index("--tenant") + 1] == tenant


# ----------------------------------------------------------------------------- unpickling


def test_put_payloads_are_never_unpickled(
    payload_cluster: LocalCluster, mallory: CoreClient, tmp_path: Path
) -> None:
    marker = tmp_path / "loaded"
    assert mallory.store is not None  # same host: mallory may write sealed files
    inline_id, sealed_id, error_id = new_object_id(), new_object_id(), new_object_id()
    small = value_blob(marker, "inline", "1")
    held = [send_put(mallory, pb.PutObject(object_id=inline_id, inline_blob=small))]
    big = value_blob(marker, "sealed", "2", padding=2 * INLINE_THRESHOLD)
    size = mallory.store.put_blob(sealed_id, big)
    held.append(send_put(mallory, pb.PutObject(object_id=sealed_id, sealed_size=size)))
    # Both were accepted: the agent hands back the very bytes, unopened.
    assert fetch_blob(mallory, inline_id) == small
    assert fetch_blob(mallory, sealed_id) == big
    # An error blob is the one kind of blob agents look into (its header, to propagate it
    # to dependent tasks, and its JSON summary), here on node-1 and, fetched, on node-2.
    error = error_blob(marker, "error")
    held.append(send_put(mallory, pb.PutObject(object_id=error_id, inline_blob=error)))
    blob = dumps_function(ping)
    refs = [
        submit(mallory, task_spec(blob, [pb.Arg(object_id=error_id, owner_node="node-1")]), blob),
        submit(
            mallory,
            task_spec(blob, [pb.Arg(object_id=error_id, owner_node="node-1")], ON_NODE_2),
            blob,
        ),
    ]
    ready, _ = fabric.wait(refs, num_returns=2, timeout=60)
    assert len(ready) == 2
    for ref in refs:
        # Passed on unopened: the dependent task's result is the very same bytes.
        assert fetch_blob(mallory, ref.binary()) == error
    del held, refs, ready  # dropping the refs releases (and frees) the objects
    round_trip(mallory)
    assert who_loaded(marker) == {}
    assert_agents_healthy(payload_cluster)


def test_task_payloads_are_unpickled_only_by_the_tenants_workers(
    payload_cluster: LocalCluster, mallory: CoreClient, tmp_path: Path
) -> None:
    marker = tmp_path / "loaded"
    assert mallory.store is not None
    function = loading_runs_code(
        marker, "function", "lambda *args: (__import__('os').getpid(), args)"
    )
    inline_arg = value_blob(marker, "inline-arg", "'inline'")
    # Larger than the inline limit: node-2 receives it in chunks into its store.
    stored_id = new_object_id()
    size = mallory.store.put_blob(
        stored_id, value_blob(marker, "stored-arg", "'stored'", padding=2 * INLINE_THRESHOLD)
    )
    stored = send_put(mallory, pb.PutObject(object_id=stored_id, sealed_size=size))
    args = [pb.Arg(inline_blob=inline_arg), pb.Arg(object_id=stored_id, owner_node="node-1")]
    ran_in: set[int] = set()
    for resources in ({"CPU": 1.0}, ON_NODE_2):
        ref = submit(mallory, task_spec(function, args, resources), function)
        pid, got = fabric.get(ref, timeout=60)
        assert got == ("inline", "stored")
        ran_in.add(pid)
    del stored
    assert len(ran_in) == 2  # one worker on each node
    loaded = who_loaded(marker)
    assert set(loaded) == {"function", "inline-arg", "stored-arg"}
    loaders = set().union(*loaded.values())
    assert loaders == ran_in
    assert not loaders & server_pids(payload_cluster)
    for pid in loaders:
        assert_worker_of(payload_cluster, pid, "mallory")
    assert_agents_healthy(payload_cluster)


# ----------------------------------------------------------------------------- malformed puts


def test_garbage_inline_blob_in_put_is_refused(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    put = pb.PutObject(object_id=new_object_id(), inline_blob=b"GARBAGE!" * 8)
    with pytest.raises(InvalidRequestError, match="bad blob magic"):
        request_put(mallory, put)
    assert_agents_healthy(payload_cluster)


def test_sealed_put_of_a_file_never_written_is_refused(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    object_id = new_object_id()
    with pytest.raises(InvalidRequestError) as info:
        request_put(mallory, pb.PutObject(object_id=object_id, sealed_size=4096))
    assert str(info.value) == f"object {object_id.hex()} of mallory was never sealed"
    assert_agents_healthy(payload_cluster)


def test_sealed_put_with_a_wrong_size_is_refused(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    assert mallory.store is not None
    object_id = new_object_id()
    size = mallory.store.put_blob(object_id, serialize("x" * 1000).to_bytes())
    with pytest.raises(InvalidRequestError) as info:
        request_put(mallory, pb.PutObject(object_id=object_id, sealed_size=size + 4096))
    assert str(info.value) == (
        f"refusing object {object_id.hex()} of mallory: reported {size + 4096} bytes, "
        f"file has {size}"
    )
    # A refused file is removed: it must not occupy memory nobody accounts for.
    assert not mallory.store.path(object_id).exists()
    assert_agents_healthy(payload_cluster)


def test_sealed_put_of_a_garbage_file_is_refused(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    assert mallory.store is not None
    object_id = new_object_id()
    size = mallory.store.put_blob(object_id, b"GARBAGE!" * 512)
    with pytest.raises(InvalidRequestError) as info:
        request_put(mallory, pb.PutObject(object_id=object_id, sealed_size=size))
    assert str(info.value) == (
        f"refusing object {object_id.hex()} of mallory: invalid blob: bad blob magic b'GARB'"
    )
    assert not mallory.store.path(object_id).exists()
    assert_agents_healthy(payload_cluster)


def _symlink(target: Path, link: Path) -> None:
    os.symlink(target, link)


def _hard_link(target: Path, link: Path) -> None:
    os.link(target, link)


@pytest.mark.parametrize(
    ("link", "problem"),
    [(_symlink, "[Errno 40] Too many levels of symbolic links"), (_hard_link, "it has 2 links")],
    ids=["symlink", "hard-link"],
)
def test_sealed_put_linking_to_another_tenants_file_is_refused(
    payload_cluster: LocalCluster,
    mallory: CoreClient,
    link: Callable[[Path, Path], None],
    problem: str,
) -> None:
    secret = "alice's secret " * (INLINE_THRESHOLD // 10)
    with session(payload_cluster, "alice") as alice:
        assert alice.store is not None
        victim = fabric.put(secret)  # large: alice's driver seals it into her directory
        round_trip(alice)
        victim_file = alice.store.path(victim.binary())
        assert victim_file.is_file()
        with acting_as(mallory):
            assert mallory.store is not None
            object_id = new_object_id()
            stolen = mallory.store.path(object_id)
            link(victim_file, stolen)
            with pytest.raises(InvalidRequestError) as info:
                request_put(
                    mallory,
                    pb.PutObject(object_id=object_id, sealed_size=victim_file.stat().st_size),
                )
            message = str(info.value)
            assert message.startswith(f"refusing object {object_id.hex()} of mallory: ")
            assert problem in message
            # Only mallory's link is removed; alice's object is intact and still hers.
            assert not os.path.lexists(stolen)
            with pytest.raises(UnknownObjectError):
                fabric.get(ObjectRef(object_id), timeout=TIMEOUT)
        assert victim_file.is_file()
        assert fabric.get(victim, timeout=TIMEOUT) == secret
    assert_agents_healthy(payload_cluster)


# ----------------------------------------------------------------------------- malformed tasks


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task_id": b"abc"}, "task_id must be 16 bytes"),
        ({"resources": {"CPU": -4.0}}, "resource amounts must not be negative"),
        ({"resources": {"CPU": 1.0, "far": -1e9}}, "resource amounts must not be negative"),
        ({"args": [pb.Arg(keyword="x")]}, "an argument carries no value"),
        ({"kind": pb.ACTOR_CREATION, "actor_id": b"xyz"}, "actor_id must be 16 bytes"),
        (
            {"args": [pb.Arg(inline_blob=bytes(4 * INLINE_THRESHOLD + 1))]},
            "an inline argument is too large",
        ),
    ],
    ids=[
        "3-byte-task-id",
        "negative-cpu",
        "negative-custom-resource",
        "arg-without-value",
        "3-byte-actor-id",
        "oversized-inline-arg",
    ],
)
def test_malformed_task_spec_is_refused(
    payload_cluster: LocalCluster, mallory: CoreClient, fields: dict[str, object], message: str
) -> None:
    blob = dumps_function(ping)
    spec = task_spec(blob, overrides=fields)
    spec.function_blob = blob
    with pytest.raises(InvalidRequestError) as info:
        mallory.request(pb.ClientMessage(submit=spec), timeout=TIMEOUT)
    assert str(info.value) == message
    assert_agents_healthy(payload_cluster)


def test_unknown_function_digest_fails_the_task(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    spec = task_spec(b"never sent")
    ref = submit(mallory, spec, None)
    with pytest.raises(InvalidRequestError) as info:
        fabric.get(ref, timeout=TIMEOUT)
    assert str(info.value) == "unknown function digest: send the function body with its first task"
    assert_agents_healthy(payload_cluster)


def test_another_tenants_function_digest_is_unknown(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    with session(payload_cluster, "alice") as alice:
        blob = dumps_function(echo_pid)
        assert fabric.get(submit(alice, task_spec(blob), blob), timeout=60)[1] == ()
    # Mallory names alice's function by its digest without sending the body.
    ref = submit(mallory, task_spec(blob), None)
    with pytest.raises(InvalidRequestError) as info:
        fabric.get(ref, timeout=TIMEOUT)
    assert str(info.value) == "unknown function digest: send the function body with its first task"
    assert_agents_healthy(payload_cluster)


def test_submit_with_unknown_function_digest_answers_its_request(
    payload_cluster: LocalCluster, mallory: CoreClient
) -> None:
    """Every other refused submit answers a request; this one left the caller waiting."""
    spec = task_spec(b"never sent")
    with pytest.raises(InvalidRequestError) as info:
        mallory.request(pb.ClientMessage(submit=spec), timeout=TIMEOUT)
    assert str(info.value) == "unknown function digest: send the function body with its first task"
    assert_agents_healthy(payload_cluster)


# ----------------------------------------------------------------------------- huge num_returns


@pytest.fixture
def agent_with_memory_ceiling() -> Iterator[LocalCluster]:
    """A one-node cluster whose agent may map at most 1 GiB more than it does now.

    An agent that creates the entries of a spec's return values before validating the
    spec allocates tens of GiB for num_returns=10**9. The ceiling turns that into a
    MemoryError inside the agent instead of exhausting the machine running the tests.
    An agent busy allocating is killed when the cluster stops, before it can remove its
    object store, so that is removed here.
    """
    cluster = LocalCluster([NodeSpec("node-1", "local", {"CPU": 2})], tenants=("mallory",))
    cluster.start()
    store = Path(json.loads((cluster.base_dir / "run" / "node-1.json").read_text())["store"])
    try:
        agent = psutil.Process(cluster.processes["node-1"].pid)
        ceiling = agent.memory_info().vms + (1 << 30)
        agent.rlimit(psutil.RLIMIT_AS, (ceiling, ceiling))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(store, ignore_errors=True)


def test_huge_num_returns_is_refused_before_anything_is_allocated(
    agent_with_memory_ceiling: LocalCluster,
) -> None:
    cluster = agent_with_memory_ceiling
    with session(cluster, "mallory") as client:
        blob = dumps_function(ping)
        spec = task_spec(blob, overrides={"num_returns": 10**9})
        spec.function_blob = blob
        with pytest.raises(InvalidRequestError) as info:
            client.request(pb.ClientMessage(submit=spec), timeout=TIMEOUT)
        assert str(info.value) == "num_returns must be at most 10000"
        assert cluster.processes["node-1"].poll() is None
        assert run_legit_task(client) == "pong"
