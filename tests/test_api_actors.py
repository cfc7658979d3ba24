"""Actors on the embedded cluster: state, ordering, concurrency, restarts, kill, names."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import fabric
from fabric import exceptions as fe

pytestmark = pytest.mark.usefixtures("cluster")


@fabric.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def pid(self) -> int:
        return os.getpid()

    @fabric.method(num_returns=2)
    def pair(self) -> tuple[int, int]:
        return self.n, -self.n


@fabric.remote
def bump(counter: fabric.ActorHandle, times: int) -> int:
    return fabric.get([counter.incr.remote() for _ in range(times)])[-1]


def test_actor_keeps_state() -> None:
    c = Counter.remote()
    assert fabric.get(c.incr.remote()) == 1
    assert fabric.get(c.incr.remote(5)) == 6


def test_calls_from_one_caller_run_in_order() -> None:
    c = Counter.remote()
    assert fabric.get([c.incr.remote() for _ in range(200)]) == list(range(1, 201))


def test_constructor_arguments_and_method_num_returns() -> None:
    c = Counter.remote(10)
    assert fabric.get(list(c.pair.remote())) == [10, -10]


def test_handle_passed_to_task() -> None:
    c = Counter.remote()
    assert fabric.get(bump.remote(c, 5)) == 5
    assert fabric.get(c.incr.remote()) == 6


def test_async_methods_overlap_up_to_max_concurrency() -> None:
    @fabric.remote
    class Gate:
        def __init__(self) -> None:
            self.inside = 0
            self.peak = 0

        async def enter(self, hold: float) -> int:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            await asyncio.sleep(hold)
            self.inside -= 1
            return self.peak

        async def peak_seen(self) -> int:
            return self.peak

    gate = Gate.options(max_concurrency=4).remote()
    fabric.get([gate.enter.remote(0.3) for _ in range(8)])
    assert fabric.get(gate.peak_seen.remote()) == 4


def test_threaded_actor_runs_sync_methods_concurrently() -> None:
    @fabric.remote
    class Threads:
        def __init__(self) -> None:
            self.barrier = threading.Barrier(3, timeout=20)

        def meet(self) -> bool:
            self.barrier.wait()  # only returns if 3 calls are inside at once
            return True

    t = Threads.options(max_concurrency=3).remote()
    assert fabric.get([t.meet.remote() for _ in range(3)], timeout=60) == [True] * 3


def test_kill_gives_actor_died_error() -> None:
    c = Counter.remote()
    assert fabric.get(c.incr.remote()) == 1
    fabric.kill(c)
    with pytest.raises(fe.ActorDiedError, match="killed"):
        fabric.get(c.incr.remote(), timeout=30)


def test_crashed_actor_restarts_and_reruns_constructor() -> None:
    c = Counter.options(max_restarts=1).remote(100)
    first_pid = fabric.get(c.pid.remote())
    assert fabric.get(c.incr.remote()) == 101
    os.kill(first_pid, 9)
    deadline = time.monotonic() + 30
    while True:  # calls racing the restart may fail; the actor must come back
        try:
            value = fabric.get(c.incr.remote(), timeout=30)
            break
        except fe.ActorDiedError:
            assert time.monotonic() < deadline, "actor did not restart"
    assert value == 101  # constructor ran again: state is fresh
    assert fabric.get(c.pid.remote()) != first_pid


def test_actor_without_restarts_stays_dead_after_crash() -> None:
    c = Counter.remote()
    os.kill(fabric.get(c.pid.remote()), 9)
    with pytest.raises(fe.ActorDiedError):
        fabric.get(c.incr.remote(), timeout=30)
    with pytest.raises(fe.ActorDiedError):
        fabric.get(c.incr.remote(), timeout=30)


def test_constructor_error_kills_actor_with_cause() -> None:
    @fabric.remote
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("no config")

        def f(self) -> int:
            return 1

    b = Broken.remote()
    with pytest.raises(fe.ActorDiedError, match="no config"):
        fabric.get(b.f.remote(), timeout=30)


def test_named_actor_lookup_and_uniqueness() -> None:
    c = Counter.options(name="shared-counter").remote()
    fabric.get(c.incr.remote())
    same = fabric.get_actor("shared-counter")
    assert fabric.get(same.incr.remote()) == 2
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared-counter").remote()
    with pytest.raises(ValueError, match="no actor named 'missing'"):
        fabric.get_actor("missing")
    other = Counter.options(name="shared-counter", namespace="elsewhere").remote()
    assert fabric.get(other.incr.remote()) == 1
    assert fabric.get(fabric.get_actor("shared-counter", namespace="elsewhere").incr.remote()) == 2
    fabric.kill(c)
    deadline = time.monotonic() + 30
    while True:
        try:
            fabric.get_actor("shared-counter")
        except ValueError:
            break
        assert time.monotonic() < deadline, "a killed actor's name was never released"


def test_get_if_exists_returns_the_live_actor() -> None:
    a = Counter.options(name="singleton", get_if_exists=True).remote()
    fabric.get(a.incr.remote())
    b = Counter.options(name="singleton", get_if_exists=True).remote()
    assert fabric.get(b.incr.remote()) == 2


def test_actor_method_errors_reraise_as_both_types() -> None:
    @fabric.remote
    class Raiser:
        def fail(self) -> None:
            raise KeyError("missing key")

    r = Raiser.remote()
    with pytest.raises(KeyError) as info:
        fabric.get(r.fail.remote())
    assert isinstance(info.value, fe.TaskError)
    assert "Raiser.fail" in str(info.value) and "missing key" in str(info.value)


@fabric.remote
class Nested:
    def depth(self, level: int) -> int:
        if level == 0:
            return 0
        child = Nested.remote()  # an actor of its own class, made inside a method
        return 1 + fabric.get(child.depth.remote(level - 1))


def test_an_actor_method_creates_actors_of_its_own_class() -> None:
    assert fabric.get(Nested.remote().depth.remote(2), timeout=60) == 2
