"""Real processes for the budget tests: well-behaved neighbours, runaways that wait for a
"go" (as a worker waits for its first task), and a fork bomb that can never take the
machine down.

The fork bomb always runs under RLIMIT_NPROC, set by the shell before it forks anything:
as root, under a uid of its own (so the limit counts the bomb alone and killing that uid
kills nothing else); otherwise under our own uid, capped a few dozen tasks above what the
uid already runs. `cleanup` kills whatever is left, whatever the code under test did.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fabric._agent import procfs
from fabric._agent.limits import Budget, KernelLimits, Limits, WorkerGroup
from fabric._agent.monitor import BudgetMonitor
from fabric._agent.rlimits import plan_rlimits

MiB = 1 << 20

# Works until told to finish, then prints how many hash steps it took and the last hash.
NEIGHBOUR = """
import hashlib, select, sys
sys.stdin.readline()
h, n = b"", 0
while not select.select([sys.stdin], [], [], 0.01)[0]:
    for _ in range(200):
        h = hashlib.sha256(h).digest()
    n += 200
print(n, h.hex(), flush=True)
"""

BUSY = """
import sys
sys.stdin.readline()
while True:
    pass
"""

# 50 MiB/s in 5 MiB chunks, written to so they are resident; stops growing at `cap`.
BALLOON = """
import sys, time
sys.stdin.readline()
cap, held, start = int(sys.argv[1]), [], time.monotonic()
while len(held) * 5 * 2**20 < cap:
    held.append(b"x" * (5 * 2**20))
    time.sleep(max(0.0, start + len(held) * 0.1 - time.monotonic()))
time.sleep(120)
"""

SLEEPER = """
import sys, time
sys.stdin.readline()
time.sleep(120)
"""

# A worker that starts a shell which forks sleepers in a loop, under RLIMIT_NPROC (and, as
# root, under a uid of its own): the tree grows by one task per fork until something stops
# it. The shell exits at its first failed fork; the worker and the sleepers stay.
BOMB = """
import subprocess, sys, time
sys.stdin.readline()
uid = int(sys.argv[2]) if len(sys.argv) > 2 else None
loop = "ulimit -p %s || exit 3; while :; do sleep 60 & done" % sys.argv[1]
subprocess.Popen(
    ["/bin/sh", "-c", loop], cwd="/", stderr=subprocess.DEVNULL,
    user=uid, group=uid, extra_groups=None if uid is None else [],
)
time.sleep(120)
"""

BOMB_UID_BASE = 1_999_000_000  # below isolation.TENANT_UID_BASE, above any real account


def hash_chain(n: int) -> str:
    h = b""
    for _ in range(n):
        h = hashlib.sha256(h).digest()
    return h.hex()


def bomb_uid() -> int | None:
    """A uid only this test process's fork bombs use, when we may switch to one."""
    if os.geteuid() != 0:
        return None
    return BOMB_UID_BASE + os.getpid() % 100_000


def uid_processes(uid: int) -> list[int]:
    """Pids of the live (not zombie) processes owned by `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    stat = procfs.read_stat(int(name))
                    if stat is not None and not stat.zombie:
                        found.append(stat.pid)
    return found


def kill_uid(uid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of `uid` until none is left."""
    deadline = time.monotonic() + timeout
    while pids := uid_processes(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"uid {uid} still runs {pids}")
        time.sleep(0.01)


def kill_session(session: int, timeout: float = 10.0) -> None:
    """SIGKILL every live process of `session` until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [s for s in procfs.scan().values() if s.session == session and not s.zombie]
        if not alive:
            return
        for stat in alive:
            procfs.signal_exact(stat.pid, stat.starttime, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"session {session} still runs {[s.pid for s in alive]}")
        time.sleep(0.01)


PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Make this process the reaper of its descendants' orphans for the block.

    Some sandboxes run a pid 1 that never reaps: a fork bomb's orphaned children would stay
    zombies there, still counted against their uid's RLIMIT_NPROC. `launched` reaps them.
    """
    _set_subreaper(True)
    try:
        yield
    finally:
        _set_subreaper(False)


def reap_orphans(session: int) -> None:
    """Reap the zombie children of this process that belong to `session` (orphans of a
    tree the test started and killed), never a child a Popen still has to wait for."""
    me = os.getpid()
    for stat in procfs.scan().values():
        if stat.ppid == me and stat.session == session and stat.pid != session and stat.zombie:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(stat.pid, 0)


@dataclass
class Launched:
    """A process the test started the way the agent starts a worker: its group (if the
    machine has cgroups), its rlimits and its watch set up before it is told to go."""

    key: str
    process: subprocess.Popen[bytes]
    group: WorkerGroup | None
    budget: Budget
    uid: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 20.0) -> str:
        """Tell a neighbour to finish; its output."""
        out, _ = self.process.communicate(b"finish\n", timeout=timeout)
        return out.decode()

    def state(self) -> str:
        stat = procfs.read_stat(self.process.pid)
        return "gone" if stat is None else stat.state


@contextlib.contextmanager
def launched(
    key: str,
    argv: list[str],
    budget: Budget,
    limits: KernelLimits,
    monitor: BudgetMonitor | None,
    *,
    uid: int | None = None,
    kernel: Limits | None = None,
) -> Iterator[Launched]:
    """Start `argv` as a watched worker, its group holding `kernel` (default: what
    `budget.kernel_limits()` says); afterwards kill whatever is left of it (and every
    process of `uid`, which it may have started)."""
    group = None
    if limits.available:
        group = limits.create_group(key, kernel or budget.kernel_limits())
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",
    )
    worker = Launched(key, process, group, budget, uid)
    try:
        if group is not None:
            group.add(process.pid)
        plan_rlimits(budget, group=group).apply(process.pid)
        if monitor is not None:
            monitor.watch(key, group if group is not None else process.pid, budget)
        yield worker
    finally:
        if monitor is not None:
            with contextlib.suppress(KeyError):
                monitor.unwatch(key)
        if group is not None:
            group.kill()
        kill_session(process.pid)
        if uid is not None:
            kill_uid(uid)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        reap_orphans(process.pid)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        if group is not None:
            group.remove()


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-S", "-c", code, *args]


def bomb_argv(cap: int, uid: int | None) -> list[str]:
    return python(BOMB, str(cap), *([] if uid is None else [str(uid)]))


def bomb_cap(uid: int | None, tasks: int) -> int:
    """RLIMIT_NPROC for a bomb that may reach `tasks` tasks: under its own uid just that;
    under ours, the tasks the uid already runs plus that."""
    if uid is not None:
        return tasks
    running = 0
    for pid in uid_processes(os.getuid()):
        stat = procfs.read_stat(pid)
        running += stat.threads if stat is not None else 1
    return running + tasks + 50


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
