"""Tenant isolation on a real cluster: bob attacks alice with everything he can name.

Two tenants, ``alice`` and ``bob``, each with a driver session on a real two-node
cluster. Bob is assumed to have learnt alice's identifiers (object ids, task ids, actor
ids and names: they travel inside values and handles, and ids are not secrets); holding
them must give him nothing: no value, no effect on her tasks and actors, and not even the
knowledge that they exist.

Both drivers live in this process: each is a raw session (``fabric._driver.connect``),
and the public API acts for whichever one a block names (``acting_as``), so this module
never starts or stops an embedded cluster and leaves ``fabric`` as it found it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import fabric
from fabric import _state
from fabric._agent.isolation import DISABLE_ENV, separate_uids_unavailable, tenant_uid
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric._proto import fabric_pb2 as pb
from fabric._refs import ObjectRef
from fabric._remote import ActorHandle
from fabric._serialization import dumps_function, serialize
from fabric.exceptions import (
    ActorDiedError,
    ActorNotFoundError,
    FabricError,
    UnknownObjectError,
)
from tests.conftest import wait_for
from tests.sessions import acting_as, started_cluster
from tests.sessions import tenant_session as session

TIMEOUT = 10.0
NODES = [
    # "near" exists only on node-1 and "far" only on node-2, so a task can be sent to
    # either node whichever agent it is submitted to.
    NodeSpec("node-1", "local", {"CPU": 2, "near": 4}),
    NodeSpec("node-2", "local", {"CPU": 2, "far": 4}),
]
SECRET = "alice's secret"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tenants_cluster() -> Iterator[LocalCluster]:
    with started_cluster(NODES, ("alice", "bob")) as cluster:
        yield cluster


@pytest.fixture
def alice(tenants_cluster: LocalCluster) -> Iterator[CoreClient]:
    with session(tenants_cluster, "alice") as client:
        yield client


@pytest.fixture
def bob(tenants_cluster: LocalCluster) -> Iterator[CoreClient]:
    with session(tenants_cluster, "bob") as client:
        yield client


@pytest.fixture
def files(tmp_path: Path) -> Callable[[str], Path]:
    """Paths of flag files through which the test and its tasks signal each other."""
    return lambda name: tmp_path / name


# ----------------------------------------------------------------------------- remote code


@fabric.remote
def echo(value: object) -> object:
    return value


@fabric.remote
def deref(refs: list[ObjectRef]) -> object:
    return fabric.get(refs[0])


@fabric.remote
def gated(started: str, release: str, value: str) -> str:
    """Say it started, then wait (up to a minute) for the test to release it."""
    Path(started).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.02)
    return value


def whoami() -> dict[str, Any]:
    """Who runs this: the tenant the runtime says, the process and its store directory."""
    client = _state.client
    assert client is not None and client.store is not None
    directory = client.store.directory
    return {
        "tenant": fabric.get_runtime_context().tenant,
        "pid": os.getpid(),
        "store": str(directory),
        "mode": stat.S_IMODE(os.stat(directory).st_mode),
    }


identify = fabric.remote(whoami)


class _Vault:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.count = 0

    def read(self) -> str:
        return self.secret

    def incr(self) -> int:
        self.count += 1
        return self.count

    def whoami(self) -> dict[str, Any]:
        return whoami()


Vault: fabric.ActorClass = fabric.remote(_Vault)


class Squatter:
    """Bob's actor class, created under an actor id he copied from alice."""

    def read(self) -> str:
        return "bob's squatter"


# ----------------------------------------------------------------------------- helpers


def round_trip(client: CoreClient) -> None:
    """A request the agent answers after everything this session sent before it."""
    client.request(pb.ClientMessage(cluster_info=pb.ClusterInfoRequest()), timeout=TIMEOUT)


def unknown(object_id: bytes) -> str:
    return f"ObjectRef({object_id.hex()}) is unknown (freed, or never yours)"


def outcome(fn: Callable[[], object], *ids: bytes) -> tuple[str, str]:
    """What `fn` gave: its value, or its error's type and message with `ids` blanked out,
    for comparing two attempts that differ only in the ids they name."""
    try:
        return "value", repr(fn())
    except FabricError as exc:
        message = str(exc)
        for object_id in ids:
            message = message.replace(object_id.hex(), "<id>")
        return type(exc).__name__, message


def arrived(client: CoreClient, ref: ObjectRef) -> bool:
    """Whether `ref`'s value (or error) has reached `client`, without deserializing it."""
    with acting_as(client):
        ready, _ = fabric.wait([ref], num_returns=1, timeout=0)
    return bool(ready)


def new_task_id() -> bytes:
    return os.urandom(16)


def submit_raw(client: CoreClient, spec: pb.TaskSpec, function: object) -> ObjectRef:
    """Send a hand-made TaskSpec with `function`'s body; the ref of its first return."""
    blob = dumps_function(function)
    spec.function_digest = hashlib.sha256(blob).digest()
    ref = client.owned_ref(spec.task_id + (1).to_bytes(4, "big"))
    client.submit(spec, lambda: blob)
    return ref


def assert_worker_of(cluster: LocalCluster, pid: int, tenant: str) -> None:
    process = psutil.Process(pid)
    agents = {cluster.processes[node].pid for node in cluster.agent_addresses}
    assert process.ppid() in agents
    cmdline = process.cmdline()
    assert cmdline[1:3] == ["-m", "fabric._worker"]
    assert cmdline[cmdline.index("--tenant") + 1] == tenant


# ----------------------------------------------------------------------------- objects


def test_forged_ref_is_unknown_exactly_like_a_never_existing_one(
    alice: CoreClient, bob: CoreClient, files: Callable[[str], Path]
) -> None:
    with acting_as(alice):
        stored = fabric.put(SECRET)
        small = fabric.put(7)
        big = fabric.put(SECRET * 20_000)  # sealed into alice's store directory
        result = echo.remote(SECRET)
        assert fabric.get(result, timeout=60) == SECRET
        pending = gated.remote(str(files("started")), str(files("release")), SECRET)
        wait_for(files("started").exists, what="alice's task to start")
        round_trip(alice)
    ids = [r.binary() for r in (stored, small, big, result, pending)]
    never = os.urandom(16) + b"\0\0\0\0"
    with acting_as(bob):
        for object_id in [*ids, never]:
            # The same ref bytes, forged: get, then the inline fetch of the protocol.
            with pytest.raises(UnknownObjectError) as info:
                fabric.get(ObjectRef(object_id, "node-1"), timeout=TIMEOUT)
            assert str(info.value) == unknown(object_id)
            with pytest.raises(UnknownObjectError) as info:
                bob.request(pb.ClientMessage(fetch=pb.FetchInline(object_id=object_id)), TIMEOUT)
            assert str(info.value) == unknown(object_id)
        # Claiming and releasing alice's objects changes nothing for her.
        bob.transport.send(pb.ClientMessage(refs=pb.RefUpdate(add=ids, release=ids)))
        round_trip(bob)
    files("release").touch()
    with acting_as(alice):
        assert fabric.get([stored, small, result, pending], timeout=60) == [
            SECRET,
            7,
            SECRET,
            SECRET,
        ]
        assert fabric.get(big, timeout=60) == SECRET * 20_000


def test_forged_ref_as_task_argument_fails_with_unknown_object(
    alice: CoreClient, bob: CoreClient
) -> None:
    with acting_as(alice):
        stored = fabric.put(SECRET)
        round_trip(alice)
    object_id = stored.binary()
    with acting_as(bob):
        for resources in ({"near": 1.0}, {"far": 1.0}):  # run on node-1, then on node-2
            ref = echo.options(resources=resources).remote(ObjectRef(object_id, "node-1"))
            with pytest.raises(UnknownObjectError) as info:
                fabric.get(ref, timeout=60)
            assert str(info.value) == unknown(object_id)
            # Inside a value, the ref reaches bob's task, which cannot read it either.
            ref = deref.options(resources=resources).remote([ObjectRef(object_id, "node-1")])
            with pytest.raises(UnknownObjectError):
                fabric.get(ref, timeout=60)
    with acting_as(alice):
        assert fabric.get(stored, timeout=60) == SECRET
        assert fabric.get(echo.remote(stored), timeout=60) == SECRET


def test_forged_task_argument_cannot_free_another_tenants_object(
    alice: CoreClient, bob: CoreClient
) -> None:
    """Alice's object kept alive only by the container holding it must survive bob naming
    it as an argument: a refused argument must not be unpinned as if it had been pinned."""

    def nest() -> tuple[ObjectRef, bytes]:
        inner = fabric.put(SECRET)
        outer = fabric.put([inner])
        inner_id = inner.binary()
        del inner  # only `outer` keeps it alive now
        round_trip(alice)
        return outer, inner_id

    with acting_as(alice):
        control, _ = nest()
        outer, inner_id = nest()
    with acting_as(bob), pytest.raises(UnknownObjectError):
        fabric.get(echo.remote(ObjectRef(inner_id, "node-1")), timeout=60)
    with acting_as(alice):
        (inner,) = fabric.get(control, timeout=60)
        assert fabric.get(inner, timeout=60) == SECRET
        (inner,) = fabric.get(outer, timeout=60)
        assert fabric.get(inner, timeout=60) == SECRET


def test_forged_argument_cannot_squat_another_tenants_object_on_another_node(
    tenants_cluster: LocalCluster, bob: CoreClient
) -> None:
    """Bob's forged ref, naming the node that holds alice's object, must not leave node-1
    believing the object is bob's: alice's own task there must still get it."""
    with session(tenants_cluster, "alice", node="node-2") as alice, acting_as(alice):
        control = fabric.put(SECRET)
        victim = fabric.put(SECRET)
        round_trip(alice)
        with acting_as(bob), pytest.raises(UnknownObjectError):
            fabric.get(echo.remote(ObjectRef(victim.binary(), "node-2")), timeout=60)
        near = echo.options(resources={"near": 1.0})  # runs on node-1
        assert fabric.get(near.remote(control), timeout=60) == SECRET
        assert fabric.get(near.remote(victim), timeout=60) == SECRET


def test_put_under_another_tenants_object_id_reveals_nothing(
    alice: CoreClient, bob: CoreClient
) -> None:
    """Whether an id is taken must not show: bob's put under alice's id must go exactly
    like a put under an id nobody uses."""
    with acting_as(alice):
        stored = fabric.put(SECRET)
        round_trip(alice)
    blob = serialize("bob's value").to_bytes()

    def put_then_get(object_id: bytes) -> tuple[str, str]:
        bob.transport.send(
            pb.ClientMessage(put=pb.PutObject(object_id=object_id, inline_blob=blob))
        )
        round_trip(bob)
        return outcome(
            lambda: fabric.get(ObjectRef(object_id, "node-1"), timeout=TIMEOUT), object_id
        )

    with acting_as(bob):
        taken = put_then_get(stored.binary())
        free = put_then_get(os.urandom(16) + b"\0\0\0\0")
    assert taken == free
    with acting_as(alice):
        assert fabric.get(stored, timeout=60) == SECRET


# ----------------------------------------------------------------------------- tasks


def test_bob_cannot_cancel_alices_task(
    alice: CoreClient, bob: CoreClient, files: Callable[[str], Path]
) -> None:
    with acting_as(alice):
        ref = gated.remote(str(files("started")), str(files("release")), SECRET)
    wait_for(files("started").exists, what="alice's task to start")
    with acting_as(bob):
        forged = ObjectRef(ref.binary(), "node-1")
        fabric.cancel(forged)
        fabric.cancel(forged, force=True)
        # With the tenant field forged too: the agent must take it from bob's certificate.
        bob.transport.send(
            pb.ClientMessage(
                cancel=pb.CancelTask(task_id=ref.task_id(), force=True, tenant="alice")
            )
        )
        round_trip(bob)
    files("release").touch()
    with acting_as(alice):
        assert fabric.get(ref, timeout=60) == SECRET


def test_task_id_collision_cannot_steal_another_tenants_result(
    alice: CoreClient, bob: CoreClient, files: Callable[[str], Path]
) -> None:
    """Bob submits a task under the id of alice's running task (the first 16 bytes of her
    result's ref). Her result must reach her and only her."""
    with acting_as(alice):
        mine = gated.remote(str(files("a-started")), str(files("a-release")), SECRET)
    wait_for(files("a-started").exists, what="alice's task to start")
    with acting_as(bob):
        spec = pb.TaskSpec(
            task_id=mine.task_id(),
            kind=pb.NORMAL_TASK,
            function_name="collide",
            num_returns=1,
            resources={"CPU": 1.0},
        )
        for value in (str(files("b-started")), str(files("b-release")), "bob's value"):
            spec.args.append(pb.Arg(inline_blob=serialize(value).to_bytes()))
        theirs = submit_raw(bob, spec, gated._function)
        round_trip(bob)
    files("a-release").touch()
    wait_for(
        lambda: arrived(alice, mine) or arrived(bob, theirs),
        timeout=60,
        what="a result to arrive",
    )
    if arrived(bob, theirs):
        with acting_as(bob):
            got = outcome(lambda: fabric.get(theirs, timeout=TIMEOUT))
        assert got != ("value", repr(SECRET)), "bob received alice's result"
    with acting_as(alice):
        assert fabric.get(mine, timeout=TIMEOUT) == SECRET
    files("b-release").touch()


def test_forged_tenant_field_is_overwritten_by_the_agent(bob: CoreClient) -> None:
    with acting_as(bob):
        for resources in ({"near": 1.0}, {"far": 1.0}):
            spec = pb.TaskSpec(
                task_id=new_task_id(),
                kind=pb.NORMAL_TASK,
                function_name="whoami",
                num_returns=1,
                resources=resources,
                # Fields only agents may set, all forged.
                tenant="alice",
                owner_node="node-2",
                job_id=b"\1\2\3\4",
                caller_id=b"\0" * 8,
            )
            me = fabric.get(submit_raw(bob, spec, whoami), timeout=60)
            assert me["tenant"] == "bob"
            assert Path(me["store"]).name == "bob"


# ----------------------------------------------------------------------------- actors


def test_bob_cannot_kill_alices_actor_via_a_forged_handle(
    alice: CoreClient, bob: CoreClient
) -> None:
    with acting_as(alice):
        vault = Vault.remote(SECRET)
        assert fabric.get(vault.incr.remote(), timeout=60) == 1
        pickled = pickle.dumps(vault)
    with acting_as(bob):
        stolen = pickle.loads(pickled)
        forged = ActorHandle(vault._actor_id, "node-1", "Vault", stolen._methods, 0)
        for handle in (stolen, forged):
            fabric.kill(handle)
            fabric.kill(handle, no_restart=False)
        bob.transport.send(
            pb.ClientMessage(
                kill=pb.KillActor(
                    actor_id=vault._actor_id, no_restart=True, actor_node="node-1", tenant="alice"
                )
            )
        )
        round_trip(bob)
    with acting_as(alice):
        # Same instance, state intact: the actor was neither killed nor restarted.
        assert fabric.get(vault.incr.remote(), timeout=60) == 2
        assert fabric.get(vault.read.remote(), timeout=60) == SECRET


def test_bob_cannot_call_alices_actor(alice: CoreClient, bob: CoreClient) -> None:
    with acting_as(alice):
        vault = Vault.remote(SECRET)
        assert fabric.get(vault.incr.remote(), timeout=60) == 1
        pickled = pickle.dumps(vault)
    with acting_as(bob):
        stolen = pickle.loads(pickled)
        for call in (stolen.read, stolen.incr):
            with pytest.raises(ActorDiedError):
                fabric.get(call.remote(), timeout=60)
    with acting_as(alice):
        assert fabric.get(vault.incr.remote(), timeout=60) == 2


def test_actor_call_error_does_not_reveal_that_the_actor_exists(
    alice: CoreClient, bob: CoreClient
) -> None:
    with acting_as(alice):
        vault = Vault.remote(SECRET)
        assert fabric.get(vault.read.remote(), timeout=60) == SECRET
        pickled = pickle.dumps(vault)
    with acting_as(bob):
        stolen = pickle.loads(pickled)
        never = ActorHandle(os.urandom(16), "node-1", "Vault", stolen._methods, 0)
        existing = outcome(lambda: fabric.get(stolen.read.remote(), timeout=60), stolen._actor_id)
        missing = outcome(lambda: fabric.get(never.read.remote(), timeout=60), never._actor_id)
    assert existing[0] == "ActorDiedError"
    assert existing == missing


def test_bob_cannot_find_alices_named_actor(alice: CoreClient, bob: CoreClient) -> None:
    with acting_as(alice):
        vault = Vault.options(name="vault").remote(SECRET)
        assert fabric.get(vault.read.remote(), timeout=60) == SECRET
        assert fabric.get_actor("vault")._actor_id == vault._actor_id
    with acting_as(bob):
        for namespace in (None, "default"):
            with pytest.raises(ActorNotFoundError) as info:
                fabric.get_actor("vault", namespace)
            assert str(info.value) == "no actor named 'vault' in namespace 'default'"
        with pytest.raises(ActorNotFoundError) as info:
            fabric.get_actor("no-such-actor")
        assert str(info.value) == "no actor named 'no-such-actor' in namespace 'default'"
        # Names are per tenant: bob may use the same one, and gets his own actor by it.
        own = Vault.options(name="vault").remote("bob's secret")
        assert fabric.get(fabric.get_actor("vault").read.remote(), timeout=60) == "bob's secret"
        assert fabric.get(own.whoami.remote(), timeout=60)["tenant"] == "bob"
    with acting_as(alice):
        assert fabric.get(fabric.get_actor("vault").read.remote(), timeout=60) == SECRET


def test_actor_id_collision_cannot_break_another_tenants_actor(
    alice: CoreClient, bob: CoreClient
) -> None:
    """Bob creates an actor under the id of alice's (read off her pickled handle); her
    actor must keep working and keep its state."""
    with acting_as(alice):
        vault = Vault.remote(SECRET)
        assert fabric.get(vault.incr.remote(), timeout=60) == 1
    with acting_as(bob):
        spec = pb.TaskSpec(
            task_id=new_task_id(),
            kind=pb.ACTOR_CREATION,
            function_name="Squatter.__init__",
            num_returns=1,
            actor_id=vault._actor_id,
            actor_options=pb.ActorOptions(class_name="Squatter"),
        )
        created = submit_raw(bob, spec, Squatter)
        wait_for(lambda: arrived(bob, created), timeout=60, what="bob's actor creation to finish")
    with acting_as(alice):
        assert fabric.get(vault.incr.remote(), timeout=60) == 2
        assert fabric.get(vault.read.remote(), timeout=60) == SECRET


# ----------------------------------------------------------------------------- refusals


def test_submit_with_forged_argument_answers_its_request(
    alice: CoreClient, bob: CoreClient
) -> None:
    """A submit refused for a foreign argument answers its request, like other refusals;
    otherwise a named actor created with such an argument blocks its creator for 60 s."""
    with acting_as(alice):
        stored = fabric.put(SECRET)
        round_trip(alice)
    with acting_as(bob):
        spec = pb.TaskSpec(
            task_id=new_task_id(),
            kind=pb.NORMAL_TASK,
            function_name="echo",
            num_returns=1,
            resources={"CPU": 1.0},
            args=[pb.Arg(object_id=stored.binary(), owner_node="node-1")],
        )
        blob = dumps_function(echo._function)
        spec.function_digest = hashlib.sha256(blob).digest()
        spec.function_blob = blob
        with pytest.raises(UnknownObjectError) as info:
            bob.request(pb.ClientMessage(submit=spec), timeout=TIMEOUT)
        assert str(info.value) == unknown(stored.binary())


# ----------------------------------------------------------------------------- workers


def test_workers_never_serve_two_tenants(tenants_cluster: LocalCluster) -> None:
    seen: dict[str, list[dict[str, Any]]] = {}
    with (
        session(tenants_cluster, "alice") as alice,
        session(tenants_cluster, "bob") as bob,
    ):
        refs: dict[str, list[ObjectRef]] = {}
        actors = {}
        for tenant, client in (("alice", alice), ("bob", bob)):
            with acting_as(client):
                refs[tenant] = [
                    identify.options(resources=resources).remote()
                    for resources in [{"near": 1.0}] * 4 + [{"far": 1.0}] * 4
                ]
                actors[tenant] = [
                    Vault.options(resources=r).remote("") for r in ({"near": 1.0}, {"far": 1.0})
                ]
        for tenant, client in (("alice", alice), ("bob", bob)):
            with acting_as(client):
                seen[tenant] = fabric.get(refs[tenant], timeout=60) + fabric.get(
                    [actor.whoami.remote() for actor in actors[tenant]], timeout=60
                )
                for me in seen[tenant]:
                    assert me["tenant"] == tenant
                    assert Path(me["store"]).name == tenant
                    assert me["mode"] == 0o700
                    assert_worker_of(tenants_cluster, me["pid"], tenant)
    pids = {tenant: {me["pid"] for me in records} for tenant, records in seen.items()}
    assert pids["alice"].isdisjoint(pids["bob"])
    # Both nodes served both tenants, each from its own directory in the node's store.
    for tenant, records in seen.items():
        assert len({Path(me["store"]).parent for me in records}) == 2, tenant


@fabric.remote
def read_file(path: str) -> str:
    """What a tenant's task sees when it opens `path`: its bytes, or the error."""
    try:
        with open(path, "rb") as fh:
            return f"read {len(fh.read())} bytes"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"


@pytest.fixture(scope="module")
def uid_cluster() -> Iterator[LocalCluster]:
    """Alice and bob on a cluster whose agent runs each tenant's workers under its own uid."""
    saved = os.environ.pop(DISABLE_ENV, None)
    try:
        reason = separate_uids_unavailable()
        if reason is not None:
            pytest.skip(f"per-tenant worker uids are unavailable here: {reason}")
        cluster = LocalCluster(NODES[:1], tenants=("alice", "bob"))
        cluster.start()
    finally:
        if saved is not None:
            os.environ[DISABLE_ENV] = saved
    try:
        yield cluster
    finally:
        cluster.stop()


def test_tenant_code_cannot_read_another_tenants_store_files(uid_cluster: LocalCluster) -> None:
    """Store directories are per tenant, 0700 and owned by the tenant's worker uid."""
    with session(uid_cluster, "alice") as alice, session(uid_cluster, "bob") as bob:
        with acting_as(alice):
            big = fabric.put(SECRET * 20_000)  # sealed into alice's store directory
            round_trip(alice)
            assert alice.store is not None
            path = alice.store.path(big.binary())
            assert path.is_file()
            # alice's own code can read it: the refusal below is about bob.
            assert fabric.get(read_file.remote(str(path)), timeout=60).startswith("read ")
        with acting_as(bob):
            got = fabric.get(read_file.remote(str(path)), timeout=60)
    assert got == "PermissionError: Permission denied"


def test_tenant_code_cannot_read_the_nodes_or_the_cas_private_key(
    uid_cluster: LocalCluster,
) -> None:
    """With the node's key, a tenant's code is a node: it may call Peer and FetchObject and
    name any tenant in them. With the CA's key, it is anyone. Bob knows where they are."""
    certs = uid_cluster.certs_dir
    keys = [f"{certs}/issued/node-node-1.key", f"{certs}/ca.key"]
    with session(uid_cluster, "bob") as bob, acting_as(bob):
        got = fabric.get([read_file.remote(k) for k in keys], timeout=60)
        uid = fabric.get(my_uid.remote(), timeout=60)
    assert got == ["PermissionError: Permission denied"] * 2
    assert uid == tenant_uid("bob")[0]


@fabric.remote
def my_uid() -> int:
    return os.getuid()
