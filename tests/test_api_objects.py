"""Object lifetimes on the embedded cluster: freed when nothing holds them, kept while
anything does (a driver, a pending task, a containing object)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest

import fabric
from fabric import _state
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("cluster")


def _store_path(ref: fabric.ObjectRef) -> Path:
    client = _state.client
    assert client is not None and client.store is not None
    return client.store.path(ref.binary())


def test_a_large_put_is_freed_when_its_last_ref_goes() -> None:
    ref = fabric.put(np.ones(1_000_000))
    path = _store_path(ref)
    assert path.is_file()
    del ref
    gc.collect()
    wait_for(lambda: not path.exists(), what="the object's store file to be removed")


def test_a_pending_task_keeps_its_argument_alive(tmp_path: Path) -> None:
    gate = tmp_path / "go"

    @fabric.remote
    def total_when(path: str, array: np.ndarray) -> float:
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return float(array.sum())

    ref = fabric.put(np.ones(500_000))
    path = _store_path(ref)
    result = total_when.remote(str(gate), ref)
    del ref
    gc.collect()
    gate.touch()
    assert fabric.get(result, timeout=60) == 500_000.0
    del result
    gc.collect()
    wait_for(lambda: not path.exists(), what="the argument to be freed after the task")


def test_a_containing_object_keeps_inner_refs_alive() -> None:
    inner = fabric.put(np.arange(300_000))
    inner_path = _store_path(inner)
    outer = fabric.put({"inner": inner})
    del inner
    gc.collect()
    [got] = [fabric.get(fabric.get(outer)["inner"])]
    assert int(got[-1]) == 299_999
    del got, outer
    gc.collect()
    wait_for(
        lambda: not inner_path.exists(), what="the inner object to be freed with its container"
    )


def test_results_of_dropped_tasks_are_freed() -> None:
    @fabric.remote
    def big() -> np.ndarray:
        return np.zeros(400_000)

    ref = big.remote()
    fabric.get(ref)
    path = _store_path(ref)
    assert path.is_file()
    del ref
    gc.collect()
    wait_for(lambda: not path.exists(), what="the task's result to be freed")
