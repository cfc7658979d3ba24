"""Placement groups on real clusters: strategies, capacity, removal, regions and tenants.

The main cluster runs under `configs/policy-two-tenants.yaml` with one agent per region
(``eu-west-1``, ``eu-central-1``, ``us-east-1``, 2 CPUs each). ``bob`` may run and keep data
anywhere, so his groups show the strategies; ``alice`` is the victim of the attacker tests.
Both drive through raw sessions with the agent of ``eu-west-1`` (see `tests.sessions`), so
this module never starts or stops an embedded cluster. A second, smaller cluster runs under
`configs/policy-three-tenants.yaml`, where ``research`` may run only in the US and India.

Where work ran is what the runtime context of a task in each bundle says.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fabric
import fabric.util
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import dumps_function
from fabric.exceptions import ActorDiedError, InvalidRequestError, PlacementRefusedError
from fabric.util import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    remove_placement_group,
)
from fabric.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session, wait_until_every_agent_sees_every_node

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NODES = {"eu-west-1": "eu-west", "eu-central-1": "eu-central", "us-east-1": "us-east"}
CPUS = 2
TIMEOUT = 30.0
# How long a negative check watches work that must not start.
STILL = 1.0
ENTRY = "eu-west-1"  # the agent both tenants' drivers are connected to


# ----------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def policy_cluster(
    nodes: dict[str, str], tenants: tuple[str, ...], policy: str, base_dir: Path
) -> Iterator[LocalCluster]:
    """A cluster under `policy` whose agents all see every node. Its directory
    (certificates, logs) is kept with pytest's temporary directories."""
    cluster = LocalCluster(
        [NodeSpec(node_id, region, {"CPU": CPUS}) for node_id, region in nodes.items()],
        tenants=tenants,
        policy=CONFIGS / policy,
        base_dir=base_dir,
    )
    cluster.start()
    try:
        wait_until_every_agent_sees_every_node(cluster, tenants[0])
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("regions")
    with policy_cluster(NODES, ("alice", "bob"), "policy-two-tenants.yaml", base) as cluster:
        yield cluster


def idle() -> bool:
    """Whether the driver's agent sees every CPU free and no reservation: what earlier
    tests reserved is given back asynchronously, and the view lags by a report."""
    free = fabric.available_resources()
    return abs(free.get("CPU", 0.0) - CPUS * len(NODES)) < 1e-6 and not any(
        name.startswith("pg:") for name in free
    )


@pytest.fixture
def bob(regions: LocalCluster) -> Iterator[CoreClient]:
    """Bob's driver, acting for the public API during the test, on an idle cluster."""
    with tenant_session(regions, "bob", ENTRY) as client, acting_as(client):
        wait_for(idle, what="the cluster to be idle")
        yield client


@pytest.fixture
def alice(regions: LocalCluster) -> Iterator[CoreClient]:
    with tenant_session(regions, "alice", ENTRY) as client:
        yield client


# ----------------------------------------------------------------------------- helpers


@fabric.remote
def where() -> str:
    return fabric.get_runtime_context().get_node_id()


@fabric.remote(num_cpus=1)
def hold(started: str, release: str) -> str:
    """Say it started, then wait (up to a minute) for the test to release it."""
    Path(started, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.01)
    return fabric.get_runtime_context().get_node_id()


@fabric.remote
def use_then_remove(pg: PlacementGroup) -> tuple[str, str]:
    """From wherever this runs: run a task in bundle 0 of `pg`, then remove the group."""
    inside = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    ran = fabric.get(inside, timeout=TIMEOUT)
    remove_placement_group(pg)
    return fabric.get_runtime_context().get_node_id(), ran


class _Where:
    def node(self) -> str:
        return fabric.get_runtime_context().get_node_id()


Where = fabric.remote(_Where)


def in_bundle(pg: PlacementGroup, index: int = -1) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, index)


def bundle_nodes(pg: PlacementGroup, cpus: float = 1.0) -> list[str]:
    """Where a task (of `cpus` CPUs) scheduled into each bundle of `pg` runs, in order."""
    refs = [
        where.options(num_cpus=cpus, scheduling_strategy=in_bundle(pg, i)).remote()
        for i in range(pg.bundle_count)
    ]
    return fabric.get(refs, timeout=TIMEOUT)


def names_of(pg: PlacementGroup, tenant: str) -> dict[str, float]:
    """The bundle resources of `pg` in the cluster as the current driver sees it."""
    prefix = f"pg:{tenant}:{pg.id.hex()}:"
    return {k: v for k, v in fabric.cluster_resources().items() if k.startswith(prefix)}


def submit_raw(client: CoreClient, spec: pb.TaskSpec) -> None:
    """Send a hand-made TaskSpec running `where`, and wait for the agent's answer."""
    blob = dumps_function(where)
    spec.function_digest = hashlib.sha256(blob).digest()
    client.submit(spec, lambda: blob, wait=True)


# ----------------------------------------------------------------------------- strategies


@pytest.mark.usefixtures("bob")
def test_strict_pack_reserves_every_bundle_on_one_node() -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(TIMEOUT)
    assert fabric.get(pg.ready(), timeout=TIMEOUT) == pg  # as Ray: the value is the group
    (node,) = set(bundle_nodes(pg))
    assert node in NODES
    assert (pg.bundle_count, pg.bundle_specs) == (2, [{"CPU": 1.0}, {"CPU": 1.0}])


@pytest.mark.usefixtures("bob")
def test_strict_spread_reserves_each_bundle_on_a_node_of_its_own() -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(TIMEOUT)
    assert sorted(bundle_nodes(pg)) == sorted(NODES)


@pytest.mark.usefixtures("bob")
def test_pack_uses_one_node_and_spread_uses_distinct_nodes_when_they_can() -> None:
    # Half a CPU each, so that the packed group leaves room on its node for the spread one.
    packed = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="PACK")
    spread = placement_group([{"CPU": 0.5}] * 3, strategy="SPREAD")
    assert packed.wait(TIMEOUT) and spread.wait(TIMEOUT)
    assert len(set(bundle_nodes(packed, 0.5))) == 1
    assert sorted(bundle_nodes(spread, 0.5)) == sorted(NODES)
    # Work that asks for no resource still goes to its bundle's node.
    assert bundle_nodes(spread, 0) == bundle_nodes(spread, 0.5)


@pytest.mark.usefixtures("bob")
def test_strict_spread_over_more_nodes_than_the_cluster_has_is_refused() -> None:
    started = time.monotonic()
    # Refused by the create itself, or (while nodes may still be joining) by its ready().
    with pytest.raises(PlacementRefusedError, match=r"rule pg\.strict-spread-infeasible"):
        pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")
        pg.wait(TIMEOUT)
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("bob")
def test_work_in_any_bundle_and_an_actor_in_a_bundle() -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(TIMEOUT)
    first, second = bundle_nodes(pg)
    anywhere = fabric.get(
        [where.options(scheduling_strategy=in_bundle(pg)).remote() for _ in range(4)],
        timeout=TIMEOUT,
    )
    assert set(anywhere) <= {first, second}
    actor = Where.options(scheduling_strategy=in_bundle(pg, 1)).remote()
    assert fabric.get(actor.node.remote(), timeout=TIMEOUT) == second
    # Removing the group stops what runs in it.
    remove_placement_group(pg)
    with pytest.raises(ActorDiedError, match="placement group"):
        fabric.get(actor.node.remote(), timeout=TIMEOUT)


@pytest.mark.usefixtures("bob")
def test_a_task_on_another_node_uses_the_group_and_removes_it_through_its_coordinator() -> None:
    pg = placement_group([{"CPU": 1}], region="eu-central")
    assert pg.wait(TIMEOUT)
    ref = use_then_remove.options(region="us-east").remote(pg)
    assert fabric.get(ref, timeout=TIMEOUT) == ("us-east-1", "eu-central-1")
    wait_for(lambda: not names_of(pg, "bob"), what="the group to be removed")


# ----------------------------------------------------------------------------- capacity


@pytest.mark.usefixtures("bob")
def test_a_group_bigger_than_what_is_free_waits_until_capacity_frees(tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    release = tmp_path / "release"
    holds = [hold.options(region="us-east").remote(str(started), str(release)) for _ in range(CPUS)]
    try:
        wait_for(lambda: len(list(started.iterdir())) == CPUS, what="us-east-1 to be busy")
        pg = placement_group([{"CPU": CPUS}], strategy="STRICT_PACK", region="us-east")
        assert not pg.wait(STILL)  # it fits us-east-1's total, not what is free there now
        inside = where.options(scheduling_strategy=in_bundle(pg, 0)).remote()
    finally:
        release.touch()
    assert fabric.get(holds, timeout=TIMEOUT) == ["us-east-1"] * CPUS
    assert pg.wait(TIMEOUT)
    # Work sent into the group before it was ready ran once it was.
    assert fabric.get(inside, timeout=TIMEOUT) == "us-east-1"


@pytest.mark.usefixtures("bob")
def test_reserved_capacity_is_not_used_by_other_work_and_removal_frees_it() -> None:
    pg = placement_group([{"CPU": CPUS}], strategy="STRICT_PACK", region="us-east")
    assert pg.wait(TIMEOUT)
    # Reserved: shown under the bundle's names, out of the node's plain free CPUs.
    prefix = f"pg:bob:{pg.id.hex()}:"
    wait_for(
        lambda: (
            names_of(pg, "bob")
            == {
                f"{prefix}0": 1000.0,
                f"{prefix}*": 1000.0,
                f"{prefix}0:CPU": float(CPUS),
                f"{prefix}*:CPU": float(CPUS),
            }
        ),
        what="the bundle's resources in the cluster's",
    )
    wait_for(
        lambda: fabric.available_resources().get("CPU") == CPUS * (len(NODES) - 1),
        what="us-east-1's CPUs to be reserved",
    )
    plain = where.options(region="us-east").remote()
    ready, _ = fabric.wait([plain], timeout=STILL)
    assert not ready  # a plain task cannot take the reserved CPUs
    remove_placement_group(pg)
    assert fabric.get(plain, timeout=TIMEOUT) == "us-east-1"
    wait_for(lambda: not names_of(pg, "bob"), what="the bundle's resources to be gone")
    # Work sent into a removed group is refused: its resources exist nowhere.
    late = where.options(scheduling_strategy=in_bundle(pg, 0)).remote()
    with pytest.raises(PlacementRefusedError, match=r"was removed.*rule pg\.removed"):
        fabric.get(late, timeout=TIMEOUT)


# ----------------------------------------------------------------------------- regions


@pytest.mark.usefixtures("bob")
def test_region_and_label_selector_constrain_the_group() -> None:
    # Half a CPU each: eu-central-1 keeps a CPU free for the next group.
    central = placement_group([{"CPU": 0.5}] * 2, strategy="SPREAD", region="eu-central")
    assert central.wait(TIMEOUT)
    assert bundle_nodes(central, 0.5) == ["eu-central-1", "eu-central-1"]
    eu = {"region": "in(eu-west,eu-central)"}
    spread = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD", label_selector=eu)
    assert spread.wait(TIMEOUT)
    assert sorted(bundle_nodes(spread)) == ["eu-central-1", "eu-west-1"]
    with pytest.raises(PlacementRefusedError, match="of the 2 nodes it may use"):
        too_wide = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD", label_selector=eu)
        too_wide.wait(TIMEOUT)


@pytest.mark.usefixtures("bob")
def test_a_region_the_policy_does_not_declare_is_refused_at_once() -> None:
    with pytest.raises(PlacementRefusedError, match=r"rule tenant\.run-regions"):
        placement_group([{"CPU": 1}], region="ap-south")


def test_a_region_the_tenants_policy_forbids_is_refused_at_once(tmp_path: Path) -> None:
    """research may run only in the US and India: a group in eu-west is refused by the
    policy, and one without a region goes only where research may run."""
    nodes = {"eu-west-1": "eu-west", "us-east-1": "us-east"}
    with (
        policy_cluster(nodes, ("research",), "policy-three-tenants.yaml", tmp_path) as cluster,
        tenant_session(cluster, "research", "eu-west-1") as client,
        acting_as(client),
    ):
        with pytest.raises(
            PlacementRefusedError, match=r"tenant 'research' may run only in .*rule tenant\.run"
        ):
            placement_group([{"CPU": 1}], region="eu-west")
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
        assert pg.wait(TIMEOUT)
        assert bundle_nodes(pg) == ["us-east-1", "us-east-1"]
        with pytest.raises(PlacementRefusedError, match=r"rule pg\.strict-spread-infeasible"):
            spread = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
            spread.wait(TIMEOUT)


# ----------------------------------------------------------------------------- tenants


def test_bob_cannot_schedule_into_alices_group(alice: CoreClient, bob: CoreClient) -> None:
    with acting_as(alice):
        pg = placement_group(
            [{"CPU": 1}], strategy="STRICT_PACK", name="alices", region="eu-central"
        )
        assert pg.wait(TIMEOUT)
        wait_for(lambda: len(names_of(pg, "alice")) == 4, what="alice's bundle in her view")
        mine = names_of(pg, "alice")

    # Forged resource names: the agent refuses any name of another tenant's group.
    prefix = f"pg:alice:{pg.id.hex()}:"
    for forged in ({f"{prefix}0:CPU": 1.0}, {f"{prefix}*": 0.001}, {f"{prefix}0": 0.001}):
        spec = pb.TaskSpec(
            task_id=os.urandom(16),
            kind=pb.NORMAL_TASK,
            function_name="where",
            num_returns=1,
            resources=forged,
        )
        with pytest.raises(InvalidRequestError, match="not one of this tenant's placement"):
            submit_raw(bob, spec)
    # The public API refuses such names before they leave the process.
    with pytest.raises(ValueError, match="reserved for placement groups"):
        where.options(resources={f"{prefix}0:CPU": 1})
    # A stolen handle names bob's own (nonexistent) group: nothing to run in.
    stolen = pickle.loads(pickle.dumps(pg))
    assert stolen == pg and stolen.bundle_specs == pg.bundle_specs
    ref = where.options(scheduling_strategy=in_bundle(stolen, 0)).remote()
    with pytest.raises(PlacementRefusedError, match=f"pg:bob:{pg.id.hex()}"):
        fabric.get(ref, timeout=TIMEOUT)
    remove_placement_group(stolen)  # nothing of bob's: no effect, and no error to learn from
    with pytest.raises(ValueError, match="no placement group named 'alices'"):
        get_placement_group("alices")
    # Bob sees nothing of alice's group in the cluster's resources.
    assert not [k for k in fabric.cluster_resources() if k.startswith("pg:alice")]
    assert not [k for n in fabric.nodes() for k in n["Resources"] if k.startswith("pg:alice")]

    # Alice's reservation is untouched and serves her.
    with acting_as(alice):
        assert names_of(pg, "alice") == mine
        assert bundle_nodes(pg) == ["eu-central-1"]
        assert get_placement_group("alices") == pg


def test_a_drivers_exit_removes_its_groups_unless_detached(
    regions: LocalCluster, bob: CoreClient
) -> None:
    with tenant_session(regions, "bob", ENTRY) as leaving, acting_as(leaving):
        attached = placement_group([{"CPU": 1}], region="eu-west")
        detached = placement_group(
            [{"CPU": 1}], name="keeper", lifetime="detached", region="eu-west"
        )
        assert attached.wait(TIMEOUT) and detached.wait(TIMEOUT)
    # `bob` is another session of the same tenant, on the same agent.
    wait_for(lambda: not names_of(attached, "bob"), what="the attached group to be removed")
    assert len(names_of(detached, "bob")) == 4
    kept = get_placement_group("keeper")
    assert kept == detached
    assert kept.bundle_specs == [{"CPU": 1.0}] and kept.strategy == "PACK"
    assert bundle_nodes(kept) == ["eu-west-1"]
    remove_placement_group(kept)
    wait_for(lambda: not names_of(detached, "bob"), what="the detached group to be removed")


# ----------------------------------------------------------------------------- API


def test_fabric_util_exports_exactly_this() -> None:
    assert sorted(fabric.util.__all__) == [
        "PlacementGroup",
        "get_placement_group",
        "placement_group",
        "remove_placement_group",
        "scheduling_strategies",
    ]


@pytest.mark.usefixtures("bob")
def test_a_bad_bundle_index_or_a_request_bigger_than_its_bundle_is_a_value_error() -> None:
    pg = PlacementGroup(os.urandom(16), [{"CPU": 1.0}, {"CPU": 2.0}])
    with pytest.raises(ValueError, match=r"index of one of the group's 2 bundles .* got 2$"):
        where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 2))
    with pytest.raises(ValueError, match="got -2"):
        where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, -2))
    strategy = PlacementGroupSchedulingStrategy(pg, 0)
    strategy.placement_group_bundle_index = 5  # changed after the fact: caught at .remote
    with pytest.raises(ValueError, match="got 5"):
        where.options(scheduling_strategy=strategy).remote()
    with pytest.raises(ValueError, match=r"CPU=2\) does not fit in bundle 0"):
        where.options(num_cpus=2, scheduling_strategy=in_bundle(pg, 0)).remote()
    with pytest.raises(ValueError, match="scheduling_strategy must be"):
        where.options(scheduling_strategy="SOMEWHERE")


@pytest.mark.parametrize(
    ("bundles", "strategy", "message"),
    [
        ([], "PACK", "bundles must be a non-empty list"),
        ([{}], "PACK", "bundle 0 must be a non-empty dict"),
        ([{"CPU": 0}], "PACK", "bundle 0 asks for no resources"),
        ([{"CPU": -1}], "PACK", "CPU must be a non-negative number"),
        ([{"pg:x": 1}], "PACK", "reserved"),
        ([{"CPU": 1}], "PACKED", "strategy must be one of PACK, SPREAD"),
    ],
)
def test_invalid_groups_are_value_errors(
    bundles: list[dict[str, float]], strategy: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        placement_group(bundles, strategy=strategy)
