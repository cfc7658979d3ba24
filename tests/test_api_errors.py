"""Errors: remote exceptions, crashed workers, retries, cancellation, and bad input."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import fabric
from fabric import exceptions as fe
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("cluster")


class CustomError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


@fabric.remote
def raise_custom(code: int) -> None:
    raise CustomError(code)


@fabric.remote(max_retries=0)
def die() -> None:
    os._exit(3)


@fabric.remote
def noop() -> None:
    return None


def test_remote_exception_is_task_error_and_original_type() -> None:
    with pytest.raises(CustomError) as info:
        fabric.get(raise_custom.remote(7))
    err = info.value
    assert isinstance(err, fe.TaskError) and isinstance(err, fe.FabricError)
    assert err.code == 7
    assert "raise_custom" in err.traceback_str and "CustomError" in err.traceback_str


def test_error_propagates_through_dependent_tasks() -> None:
    @fabric.remote
    def plus_one(x: int) -> int:
        return x + 1

    with pytest.raises(CustomError):
        fabric.get(plus_one.remote(raise_custom.remote(1)))


def test_crashed_worker_gives_worker_crashed_error() -> None:
    with pytest.raises(fe.WorkerCrashedError, match="exited with code 3"):
        fabric.get(die.remote(), timeout=60)
    assert fabric.get(noop.remote()) is None  # the node is healthy afterwards


def test_max_retries_retries_a_task_whose_worker_died(tmp_path: Path) -> None:
    marker = tmp_path / "attempts"

    @fabric.remote(max_retries=2)
    def flaky(path: str) -> int:
        attempts = Path(path)
        count = int(attempts.read_text()) if attempts.exists() else 0
        attempts.write_text(str(count + 1))
        if count < 2:
            os._exit(1)
        return count + 1

    assert fabric.get(flaky.remote(str(marker)), timeout=60) == 3


def test_exceptions_are_not_retried_by_default(tmp_path: Path) -> None:
    marker = tmp_path / "runs"

    @fabric.remote(max_retries=3)
    def fails(path: str) -> None:
        with open(path, "a") as f:
            f.write("x")
        raise ValueError("deterministic")

    with pytest.raises(ValueError):
        fabric.get(fails.remote(str(marker)))
    assert marker.read_text() == "x"


def test_cancel_queued_and_running_tasks(tmp_path: Path) -> None:
    started = tmp_path / "started"

    @fabric.remote
    def spin(path: str) -> None:
        Path(path).touch()
        while True:
            time.sleep(0.01)

    running = spin.remote(str(started))
    wait_for(started.exists, what="the task to start")
    fabric.cancel(running)
    with pytest.raises(fe.TaskCancelledError):
        fabric.get(running, timeout=30)


def test_force_cancel_kills_the_worker(tmp_path: Path) -> None:
    started = tmp_path / "started"

    @fabric.remote
    def stubborn(path: str) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        Path(path).touch()
        while True:
            try:
                time.sleep(0.01)
            except KeyboardInterrupt:
                pass

    ref = stubborn.remote(str(started))
    wait_for(started.exists, what="the task to start")
    fabric.cancel(ref, force=True)
    with pytest.raises(fe.TaskCancelledError):
        fabric.get(ref, timeout=30)


def test_cancel_before_it_runs() -> None:
    gate = threading.Event()

    @fabric.remote(num_cpus=2)
    def hog() -> None:
        time.sleep(2)

    hogs = [hog.remote() for _ in range(2)]
    queued = noop.options(num_cpus=2).remote()
    fabric.cancel(queued)
    with pytest.raises(fe.TaskCancelledError):
        fabric.get(queued, timeout=30)
    gate.set()
    fabric.get(hogs, timeout=60)


# ------------------------------------------------------------------------- bad input


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'num_cpu'"):
        fabric.remote(num_cpu=1)(lambda: None)
    with pytest.raises(TypeError, match="'max_restart'"):
        noop.options(max_restart=1)


def test_bad_option_values_are_refused() -> None:
    with pytest.raises(ValueError, match="num_cpus must be a non-negative number"):
        noop.options(num_cpus=-1)
    with pytest.raises(ValueError, match="lifetime must be"):

        @fabric.remote(lifetime="forever")
        class A:
            pass


def test_unserializable_argument_fails_at_submit_naming_it() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 0 of .*noop"):
        noop.remote(lock)
    with pytest.raises(TypeError, match="argument 'flag'"):
        noop.options().remote(flag=lock)


def test_calling_remote_objects_directly_says_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"use noop.remote\(...\)"):
        noop()

    @fabric.remote
    class Thing:
        def f(self) -> None:
            return None

    with pytest.raises(TypeError, match=r"use Thing.remote\(...\)"):
        Thing()
    with pytest.raises(TypeError, match=r"use .f.remote\(...\)"):
        Thing.remote().f()


def test_get_of_foreign_or_forged_ref_is_a_clear_error() -> None:
    forged = fabric.ObjectRef(os.urandom(20))
    with pytest.raises(fe.UnknownObjectError, match="unknown"):
        fabric.get(forged, timeout=30)


def test_get_and_wait_reject_non_refs() -> None:
    with pytest.raises(TypeError, match="ObjectRef"):
        fabric.get(42)
    with pytest.raises(TypeError, match="ObjectRefs"):
        fabric.wait([1, 2])
    ref = fabric.put(1)
    with pytest.raises(ValueError, match="duplicate"):
        fabric.wait([ref, ref])
    with pytest.raises(ValueError, match="exceeds"):
        fabric.wait([ref], num_returns=2)


def test_put_of_a_ref_is_refused() -> None:
    with pytest.raises(TypeError, match="put\\(\\) of an ObjectRef"):
        fabric.put(fabric.put(1))
