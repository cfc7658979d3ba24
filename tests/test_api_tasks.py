"""Tasks on the embedded cluster: the Ray Core task API behaves as Ray's does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import fabric
from fabric import exceptions as fe

pytestmark = pytest.mark.usefixtures("cluster")


@fabric.remote
def square(x: int) -> int:
    return x * x


@fabric.remote
def add(a: int, b: int = 0) -> int:
    return a + b


@fabric.remote(num_returns=3)
def three() -> tuple[int, int, int]:
    return 1, 2, 3


@fabric.remote
def fan_out(n: int) -> list[int]:
    return fabric.get([square.remote(i) for i in range(n)])


@fabric.remote
def put_inside(value: int) -> list[fabric.ObjectRef]:
    return [fabric.put(value)]


@fabric.remote
def kinds(x: object, nested: list[object]) -> tuple[str, str]:
    return type(x).__name__, type(nested[0]).__name__


@fabric.remote
def total(a: np.ndarray) -> float:
    return float(a.sum())


@fabric.remote
def is_zero_copy(a: np.ndarray) -> bool:
    # Arrays arrive as read-only views of the node's shared memory, not as copies.
    return not a.flags.writeable and not a.flags.owndata


@fabric.remote
def pid() -> int:
    return os.getpid()


def test_get_list_of_task_results() -> None:
    assert fabric.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]


def test_get_single_ref_and_kwargs() -> None:
    assert fabric.get(add.remote(2, b=3)) == 5


def test_num_returns_gives_one_ref_per_value() -> None:
    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert fabric.get(refs) == [1, 2, 3]


def test_options_override_num_returns() -> None:
    a, b = three.options(num_returns=3).remote()[:2]
    assert fabric.get([a, b]) == [1, 2]


def test_tasks_submit_tasks() -> None:
    assert fabric.get(fan_out.remote(6)) == [i * i for i in range(6)]


def test_task_may_put_and_return_refs() -> None:
    [inner] = fabric.get(put_inside.remote(41))
    assert isinstance(inner, fabric.ObjectRef)
    assert fabric.get(inner) == 41


def test_top_level_refs_resolve_nested_refs_stay_refs() -> None:
    ref = fabric.put(7)
    assert fabric.get(kinds.remote(ref, [ref])) == ("int", "ObjectRef")


def test_results_chain_through_refs() -> None:
    assert fabric.get(add.remote(square.remote(3), b=square.remote(4))) == 25


def test_large_numpy_argument_resolves_zero_copy() -> None:
    big = fabric.put(np.ones(10**7))
    assert fabric.get(total.remote(big)) == 10**7
    assert fabric.get(is_zero_copy.remote(big)) is True


def test_large_return_value_comes_back_through_shared_memory() -> None:
    @fabric.remote
    def make(n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    value = fabric.get(make.remote(2_000_000))
    assert value.shape == (2_000_000,) and int(value[-1]) == 1_999_999
    assert not value.flags.writeable  # a view of the store, not a private copy


def test_large_argument_by_value_is_stored_not_inlined() -> None:
    array = np.full(1_000_000, 2.0)
    assert fabric.get(total.remote(array)) == 2_000_000.0


def test_wait_splits_ready_and_pending() -> None:
    @fabric.remote
    def block_until(path: str) -> int:
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return 1

    gate = f"/tmp/fabric-test-gate-{os.getpid()}"
    fast = [square.remote(i) for i in range(3)]
    slow = block_until.remote(gate)
    try:
        ready, rest = fabric.wait([*fast, slow], num_returns=3, timeout=30)
        assert sorted(fabric.get(ready)) == [0, 1, 4]
        assert rest == [slow]
        ready, rest = fabric.wait([slow], num_returns=1, timeout=0.2)
        assert ready == [] and rest == [slow]
    finally:
        open(gate, "w").close()
    assert fabric.get(slow) == 1
    os.unlink(gate)


def test_get_timeout_raises_typed_error() -> None:
    @fabric.remote
    def sleepy() -> None:
        import time

        time.sleep(30)

    ref = sleepy.remote()
    with pytest.raises(fe.GetTimeoutError, match=r"timed out after 0\.2 s"):
        fabric.get(ref, timeout=0.2)
    assert isinstance(fe.GetTimeoutError("x"), TimeoutError)
    fabric.cancel(ref, force=True)


def test_put_get_round_trip_of_many_kinds() -> None:
    import pyarrow as pa

    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    values = [1, "two", {"three": [3]}, None, b"bytes", np.arange(5), table]
    for value in values:
        got = fabric.get(fabric.put(value))
        if isinstance(value, np.ndarray):
            assert (got == value).all()
        elif isinstance(value, pa.Table):
            assert got.equals(value)
        else:
            assert got == value


def test_workers_are_reused() -> None:
    pids = set(fabric.get([pid.remote() for _ in range(20)]))
    assert 1 <= len(pids) <= 8


def test_cluster_introspection() -> None:
    nodes = fabric.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"] and nodes[0]["Resources"]["CPU"] == 2.0
    assert fabric.cluster_resources()["CPU"] == 2.0
    assert 0.0 <= fabric.available_resources().get("CPU", 0.0) <= 2.0


def test_runtime_context_in_driver_and_task() -> None:
    ctx = fabric.get_runtime_context()
    assert ctx.get_node_id() == "node-1" and ctx.tenant == "default" and ctx.get_task_id() is None

    @fabric.remote
    def where() -> tuple[str, str | None]:
        c = fabric.get_runtime_context()
        return c.get_node_id(), c.get_task_id()

    node, task = fabric.get(where.remote())
    assert node == "node-1" and task is not None and len(task) == 32


@fabric.remote
def tree(depth: int, fan: int) -> int:
    if depth == 0:
        return 1
    children = [tree.remote(depth - 1, fan) for _ in range(fan)]
    # Work between submitting and waiting: children may be queued behind this task on
    # its own worker meanwhile; they must be handed back when it blocks, not deadlock.
    sum(i * i for i in range(20_000))
    return sum(fabric.get(children))


def test_nested_task_trees_do_not_deadlock_a_small_node() -> None:
    assert fabric.get(tree.remote(3, 3), timeout=120) == 27
    assert fabric.get([tree.remote(2, 4) for _ in range(4)], timeout=120) == [16] * 4


def test_get_and_wait_on_one_ref_from_two_threads_both_wake(tmp_path: Path) -> None:
    import threading

    gate = tmp_path / "go"

    @fabric.remote
    def after(path: str) -> int:
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return 7

    ref = after.remote(str(gate))
    got: list[int] = []
    getter = threading.Thread(target=lambda: got.append(fabric.get(ref, timeout=60)))
    getter.start()
    ready, _ = fabric.wait([ref], timeout=0.2)  # registers its own waiter meanwhile
    assert ready == []
    gate.touch()
    ready, _ = fabric.wait([ref], timeout=60)
    # The getter must be woken by the same arrival, not by its own 60 s deadline.
    getter.join(timeout=10)
    assert ready == [ref] and got == [7]
