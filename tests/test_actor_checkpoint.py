"""Actors that restart from their last checkpoint: a class with `checkpoint()` and
`restore(state)` is checkpointed after every call that returns, and a restarted actor runs
its constructor, then `restore()`, before it takes a call. Real worker processes are killed
with SIGKILL; every restart is in the audit log."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fabric.audit import Entry, decode

import fabric
from fabric import _api
from fabric._agent.state import MAX_CHECKPOINT_BYTES
from fabric._pki import Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from fabric.exceptions import ActorDiedError, InvalidRequestError
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("cluster")

TIMEOUT = 60.0


@fabric.remote
class Ledger:
    """A counter that is checkpointed; `label` comes from the constructor only."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.n = 0
        self.restores = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def describe(self) -> tuple[str, int, int]:
        return self.label, self.n, self.restores

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> dict[str, int]:
        return {"n": self.n}

    def restore(self, state: dict[str, int]) -> None:
        self.n = state["n"]
        self.restores += 1


@fabric.remote
class Plain:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()


def kill_worker(actor: Any) -> int:
    """SIGKILL the actor's worker process; returns its pid."""
    pid: int = fabric.get(actor.pid.remote(), timeout=TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    return pid


def one_restart_of(actor: Any) -> Entry:
    """The one `actor.restart` entry of `actor`, once the head has it."""
    entries = wait_for(lambda: restarts_of(actor), TIMEOUT, "the restart in the audit log")
    assert isinstance(entries, list) and len(entries) == 1, entries
    entry: Entry = entries[0]
    return entry


def restarts_of(actor: Any) -> list[Entry]:
    """The `actor.restart` entries of `actor` in the embedded cluster's audit log."""
    cluster = _api._cluster
    assert cluster is not None
    creds = Credentials.load(cluster.tenant_credentials("default"))
    query = pb.AuditQuery(kind="actor.restart", actor=actor._actor_id.hex())
    with secure_channel(cluster.head_address, creds) as channel:
        stream = rpc.HeadStub(channel).QueryAudit(query, timeout=TIMEOUT)
        return [decode(item.data) for item in stream]


def agent_log() -> str:
    cluster = _api._cluster
    assert cluster is not None
    return cluster.log_path("node-1").read_text()


def test_a_killed_actor_restarts_from_its_last_checkpoint() -> None:
    ledger = Ledger.options(max_restarts=1, max_task_retries=1).remote("books")
    assert fabric.get([ledger.incr.remote() for _ in range(5)], timeout=TIMEOUT) == [1, 2, 3, 4, 5]
    first_pid = kill_worker(ledger)  # call 6: its checkpoint still holds n == 5
    assert fabric.get(ledger.incr.remote(), timeout=TIMEOUT) == 6  # not 1: restored
    # The constructor ran again with its original argument, then restore() once.
    assert fabric.get(ledger.describe.remote(), timeout=TIMEOUT) == ("books", 6, 1)
    assert fabric.get(ledger.pid.remote(), timeout=TIMEOUT) != first_pid

    entry = one_restart_of(ledger)
    assert (entry.tenant, entry.outcome, list(entry.rules)) == (
        "default",
        "restart",
        ["actor.max-restarts"],
    )
    assert entry.reasons[0] == f"worker process {first_pid} died (signal {signal.SIGKILL})"
    assert entry.reasons[1] == "restores the checkpoint taken after call 6"


def test_an_actor_without_checkpoint_methods_reruns_its_constructor() -> None:
    plain = Plain.options(max_restarts=1, max_task_retries=1).remote()
    assert fabric.get([plain.incr.remote() for _ in range(3)], timeout=TIMEOUT) == [1, 2, 3]
    kill_worker(plain)
    assert fabric.get(plain.incr.remote(), timeout=TIMEOUT) == 1
    entry = one_restart_of(plain)
    assert entry.outcome == "restart"
    assert entry.reasons[1] == "re-runs its constructor (no checkpoint)"


@fabric.remote
class Gated:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def incr_when(self, entered: str, release: str) -> int:
        """Say it is running (a line in `entered` per run), wait for `release`, count."""
        with open(entered, "a") as runs:
            runs.write("run\n")
        deadline = time.monotonic() + TIMEOUT
        while not Path(release).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} never appeared")
            time.sleep(0.01)
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> int:
        return self.n

    def restore(self, n: int) -> None:
        self.n = n


def test_a_call_in_flight_when_the_worker_dies_is_resent(tmp_path: Path) -> None:
    gated = Gated.options(max_restarts=1, max_task_retries=1).remote()
    assert fabric.get([gated.incr.remote() for _ in range(3)], timeout=TIMEOUT) == [1, 2, 3]
    pid = fabric.get(gated.pid.remote(), timeout=TIMEOUT)
    entered, release = tmp_path / "entered", tmp_path / "release"
    ref = gated.incr_when.remote(str(entered), str(release))

    def runs() -> int:
        return entered.read_text().count("run\n") if entered.exists() else 0

    wait_for(lambda: runs() == 1, TIMEOUT, "the call to start")
    os.kill(pid, signal.SIGKILL)  # in the middle of the call: it never counted
    wait_for(lambda: runs() == 2, TIMEOUT, "the call to run again on the restarted actor")
    release.touch()
    assert fabric.get(ref, timeout=TIMEOUT) == 4
    assert fabric.get(gated.incr.remote(), timeout=TIMEOUT) == 5


@fabric.remote
class Crashing:
    """Kills its own worker in the middle of its `crash_at`-th count, once."""

    def __init__(self, crash_at: int, marker: str) -> None:
        self.n = 0
        self.crash_at = crash_at
        self.marker = marker

    def incr(self) -> int:
        self.n += 1
        if self.n == self.crash_at and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.n

    def checkpoint(self) -> int:
        return self.n

    def restore(self, n: int) -> None:
        self.n = n


def test_every_result_delivered_is_covered_by_the_restored_checkpoint(tmp_path: Path) -> None:
    """50 calls sent at once; the worker dies in the middle of the 20th. Each result came with
    the checkpoint taken after it, so the calls re-sent after the restart count on from 19:
    no result is repeated, none is skipped."""
    marker = tmp_path / "crashed"
    actor = Crashing.options(max_restarts=1, max_task_retries=1).remote(20, str(marker))
    refs = [actor.incr.remote() for _ in range(50)]
    assert fabric.get(refs, timeout=TIMEOUT) == list(range(1, 51))
    assert marker.exists()
    assert fabric.get(actor.incr.remote(), timeout=TIMEOUT) == 51


@fabric.remote
class Fragile:
    """Checkpoints fail once `failing` is set: by raising, with a state pickle refuses, one
    too big to keep, or one holding an object ref."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.n = 0
        self.failing = False

    def incr(self) -> int:
        self.n += 1
        return self.n

    def start_failing(self) -> None:
        self.failing = True

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> object:
        if not self.failing:
            return self.n
        if self.how == "raise":
            raise OSError("the disk is full")
        if self.how == "holds a ref":
            return [fabric.put(self.n)]  # nothing would keep the object for a restart
        if self.how == "too big":
            return bytes(MAX_CHECKPOINT_BYTES)  # with its header, one blob over the limit
        return threading.Lock()  # cannot be pickled

    def restore(self, n: int) -> None:
        self.n = n


@pytest.mark.parametrize(
    ("how", "logged"),
    [
        ("raise", "checkpoint() failed: OSError: the disk is full"),
        ("unpicklable", "cannot serialize a value of type _thread.lock"),
        ("too big", f"bytes is over the limit of {MAX_CHECKPOINT_BYTES} bytes"),
        ("holds a ref", "the checkpoint holds object refs, which a checkpoint cannot keep"),
    ],
)
def test_a_failed_checkpoint_keeps_the_previous_one(how: str, logged: str) -> None:
    fragile = Fragile.options(max_restarts=1, max_task_retries=1).remote(how)
    assert fabric.get([fragile.incr.remote() for _ in range(2)], timeout=TIMEOUT) == [1, 2]
    fabric.get(fragile.start_failing.remote(), timeout=TIMEOUT)  # call 3: its checkpoint fails
    # Results are delivered while checkpoints fail; the actor lives on.
    assert fabric.get([fragile.incr.remote() for _ in range(3)], timeout=TIMEOUT) == [3, 4, 5]
    actor_id = fragile._actor_id.hex()
    # The agent logs the first failure of this actor's checkpoints, and only that one. It
    # logs before it delivers the result, so the log is complete by now.
    lines = [line for line in agent_log().splitlines() if actor_id in line]
    assert len(lines) == 1, lines
    assert "no checkpoint after call 3" in lines[0] and logged in lines[0]
    assert "start from the checkpoint taken after call 2" in lines[0]

    kill_worker(fragile)
    assert fabric.get(fragile.incr.remote(), timeout=TIMEOUT) == 3  # from call 2's n == 2
    entry = one_restart_of(fragile)
    assert entry.reasons[1] == "restores the checkpoint taken after call 2"


@fabric.remote
class Unrestorable:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def checkpoint(self) -> int:
        return self.n

    def restore(self, n: int) -> None:
        raise ValueError(f"cannot restore {n}")


def test_a_restore_that_raises_kills_the_actor() -> None:
    actor = Unrestorable.options(max_restarts=3, max_task_retries=1).remote()
    assert fabric.get([actor.incr.remote() for _ in range(2)], timeout=TIMEOUT) == [1, 2]
    kill_worker(actor)  # call 3, its checkpoint holds 2
    expected = (
        r"^the actor's restore\(\) of the checkpoint taken after call 3 raised "
        r".*ValueError in Unrestorable\.restore\n"
    )
    with pytest.raises(ActorDiedError, match=expected) as info:
        fabric.get(actor.incr.remote(), timeout=TIMEOUT)
    assert "ValueError: cannot restore 2" in str(info.value)
    # Dead for good, though restarts were left: a restore that failed would fail again.
    with pytest.raises(ActorDiedError, match=r"restore\(\)"):
        fabric.get(actor.incr.remote(), timeout=TIMEOUT)


def test_a_class_with_only_one_of_the_two_methods_is_refused() -> None:
    @fabric.remote
    class OnlyCheckpoint:
        def checkpoint(self) -> int:
            return 0

    @fabric.remote
    class OnlyRestore:
        def restore(self, state: int) -> None:
            pass

    with pytest.raises(
        InvalidRequestError,
        match=r"^actor class OnlyCheckpoint defines checkpoint\(\) but not restore\(\): "
        r"a checkpointed actor needs both$",
    ):
        OnlyCheckpoint.remote()
    with pytest.raises(
        ValueError,
        match=r"^actor class OnlyRestore defines restore\(\) but not checkpoint\(\): "
        r"a checkpointed actor needs both$",
    ):
        OnlyRestore.remote()


def test_async_checkpoint_methods_are_refused() -> None:
    @fabric.remote
    class AsyncCheckpoint:
        async def checkpoint(self) -> int:
            return 0

        def restore(self, state: int) -> None:
            pass

    with pytest.raises(
        InvalidRequestError,
        match=r"^actor class AsyncCheckpoint: checkpoint\(\) must be a plain method, not async$",
    ):
        AsyncCheckpoint.remote()
