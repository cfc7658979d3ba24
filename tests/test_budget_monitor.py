"""The budget monitor: the pure tracker against exact samples, then real runaways (a busy
loop, a memory balloon, a fork bomb, a sleeper) next to a well-behaved neighbour, with
cgroups where this machine has them and without (rlimits and /proc only)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric._agent import procfs
from fabric._agent.budget_errors import (
    AlreadyWatchedError,
    MonitorClosedError,
    NotWatchedError,
)
from fabric._agent.cgroup_setup import detect_kernel_limits
from fabric._agent.limits import (
    Budget,
    KernelEvents,
    KernelLimits,
    Limits,
    Usage,
)
from fabric._agent.monitor import (
    KERNEL_MEMORY,
    KERNEL_PIDS,
    KERNEL_RLIMIT_CPU,
    MONITOR,
    BudgetBreach,
    BudgetMonitor,
    BudgetTracker,
    Sample,
    Verdict,
)
from tests.budget_procs import (
    BALLOON,
    BUSY,
    NEIGHBOUR,
    SLEEPER,
    MiB,
    adopting_orphans,
    bomb_argv,
    bomb_cap,
    bomb_uid,
    hash_chain,
    launched,
    python,
    uid_processes,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _adopt_orphans() -> Iterator[None]:
    with adopting_orphans():
        yield


_agents = itertools.count()


def usage(cpu: float = 0.0, memory: int = 0, processes: int = 1) -> Usage:
    return Usage(cpu_seconds=cpu, memory_bytes=memory, pids=processes, processes=processes)


# -- the tracker, without processes ----------------------------------------------------


def test_cpu_breach_is_placed_between_the_samples_that_straddle_it() -> None:
    tracker = BudgetTracker(Budget(cpu_seconds=1.0), 10.0, Sample(10.0, usage(0.0)))
    assert tracker.observe(Sample(10.05, usage(0.8))) is None
    verdict = tracker.observe(Sample(10.10, usage(1.2)))
    assert verdict == Verdict("cpu_seconds", 1.0, 1.2, pytest.approx(10.075), MONITOR)


def test_kernel_oom_kill_is_a_memory_breach_dated_at_the_previous_sample() -> None:
    budget = Budget(memory_bytes=100 * MiB)
    tracker = BudgetTracker(budget, 0.0, Sample(0.0, usage(memory=10 * MiB)))
    assert tracker.observe(Sample(0.05, usage(memory=100 * MiB))) is None  # at, not above
    oom = KernelEvents(oom_kills=1, memory_peak=100 * MiB)
    verdict = tracker.observe(Sample(0.10, usage(memory=0), oom))
    assert verdict == Verdict("memory_bytes", 100 * MiB, 100 * MiB, 0.05, KERNEL_MEMORY)


def test_kernel_counters_count_from_the_watch_not_from_zero() -> None:
    earlier = KernelEvents(oom_kills=2, refused_forks=5)
    budget = Budget(memory_bytes=MiB, pids=10)
    tracker = BudgetTracker(budget, 0.0, Sample(0.0, usage(), earlier))
    assert tracker.observe(Sample(0.05, usage(), earlier)) is None
    later = KernelEvents(oom_kills=2, refused_forks=6)
    assert tracker.observe(Sample(0.1, usage(), later)) == Verdict(
        "pids", 10, 11, 0.05, KERNEL_PIDS
    )


def test_a_refused_task_names_the_kernels_task_ceiling() -> None:
    budget = Budget(pids=10)
    tracker = BudgetTracker(budget, 0.0, Sample(0.0, usage()), task_ceiling=160)
    refused = KernelEvents(refused_forks=1)
    assert tracker.observe(Sample(0.1, usage(processes=3), refused)) == Verdict(
        "pids", 160, 161, 0.0, KERNEL_PIDS
    )


def test_wall_deadline_is_exact_and_needs_a_live_process() -> None:
    tracker = BudgetTracker(Budget(wall_seconds=0.5), 100.0, Sample(100.0, usage()))
    assert tracker.wall_deadline() == 100.5
    assert tracker.observe(Sample(100.6, usage(), alive=False)) is None
    verdict = tracker.observe(Sample(100.7, usage()))
    assert verdict == Verdict("wall_seconds", 0.5, pytest.approx(0.7), 100.5, MONITOR)
    assert tracker.wall_deadline() is None


def test_the_earliest_of_several_breaches_wins_and_there_is_only_one() -> None:
    budget = Budget(cpu_seconds=1.0, memory_bytes=900, pids=6)
    tracker = BudgetTracker(budget, 0.0, Sample(0.0, usage(0.0, 0, 1)))
    # memory crossed at 0.09, cpu at 0.05, pids at 0.0625
    verdict = tracker.observe(Sample(0.1, usage(2.0, 1000, 9)))
    assert verdict is not None and verdict.budget_name == "cpu_seconds"
    assert tracker.observe(Sample(0.2, usage(3.0, 2000, 9))) is None
    assert tracker.final(Sample(0.3, usage(4.0), KernelEvents(oom_kills=1)), None) is None


def test_sigxcpu_at_exit_is_a_cpu_breach_by_the_rlimit() -> None:
    tracker = BudgetTracker(Budget(cpu_seconds=2.0), 0.0, Sample(0.0, usage(0.1)))
    tracker.observe(Sample(1.0, usage(1.9)))
    assert tracker.final(None, signal.SIGKILL) is None
    assert tracker.final(None, signal.SIGXCPU) == Verdict(
        "cpu_seconds", 2.0, 2.0, 1.0, KERNEL_RLIMIT_CPU
    )


def test_no_budget_never_breaches() -> None:
    tracker = BudgetTracker(Budget(), 0.0, Sample(0.0, usage()))
    big = Sample(1e6, usage(1e6, 1 << 40, 1 << 20), KernelEvents(9, 9, 9))
    assert tracker.observe(big) is None
    assert tracker.final(big, signal.SIGXCPU) is None


# -- real processes --------------------------------------------------------------------


@pytest.fixture(params=["cgroups", "no-cgroups"])
def limits(request: pytest.FixtureRequest) -> Iterator[KernelLimits]:
    """Kernel limits with cgroups (skipped where this machine has none writable) or
    without (rlimits and /proc), as the agent would detect them."""
    agent = f"t{os.getpid()}m{next(_agents)}"
    found = detect_kernel_limits(agent=agent, use_cgroups=request.param == "cgroups")
    if request.param == "cgroups" and not found.available:
        found.close()
        pytest.skip(found.describe())
    with found:
        yield found


@pytest.fixture
def reports() -> list[BudgetBreach]:
    return []


@pytest.fixture
def monitor(reports: list[BudgetBreach]) -> Iterator[BudgetMonitor]:
    with BudgetMonitor(reports.append, interval=0.05) as m:
        yield m


NEIGHBOUR_BUDGET = Budget(cpu_seconds=60, memory_bytes=512 * MiB, pids=64, wall_seconds=120)


def run_next_to_neighbour(
    limits: KernelLimits,
    monitor: BudgetMonitor,
    reports: list[BudgetBreach],
    argv: list[str],
    budget: Budget,
    uid: int | None = None,
    kernel: Limits | None = None,
) -> BudgetBreach:
    """Run a runaway and a neighbour side by side; the runaway's breach, after checking
    that it was reported once, that its processes are gone and that the neighbour kept
    running and computed the right result."""
    with (
        launched("neighbour", python(NEIGHBOUR), NEIGHBOUR_BUDGET, limits, monitor) as good,
        launched("runaway", argv, budget, limits, monitor, uid=uid, kernel=kernel) as bad,
    ):
        good.go()
        bad.go()
        wait_for(lambda: bad.process.poll() is not None, 20, "the runaway to be killed")
        breach = monitor.unwatch("runaway", returncode=bad.process.returncode)
        assert breach is not None
        if uid is not None:
            wait_for(lambda: not uid_processes(uid), 10, "the runaway's children to go")
        assert good.process.poll() is None
        assert good.state() in ("R", "S"), "the neighbour was stopped"
        rounds = monitor.stats().rounds
        wait_for(lambda: monitor.stats().rounds >= rounds + 3, 10, "three more rounds")
        out = good.finish()
        assert good.process.returncode == 0
        assert monitor.unwatch("neighbour") is None
    steps, digest = out.split()
    assert int(steps) > 0 and digest == hash_chain(int(steps))
    assert reports == [breach], "one report, for the runaway only"
    assert breach.key == "runaway"
    assert bad.process.returncode == -signal.SIGKILL
    # The target is 500 ms at p99 (benchmarks/budget_kill.py); one run on a loaded
    # machine gets twice that.
    assert breach.elapsed_since_breach_estimate < 1.0
    return breach


def test_busy_loop_is_stopped_past_its_cpu_seconds(
    limits: KernelLimits, monitor: BudgetMonitor, reports: list[BudgetBreach]
) -> None:
    budget = Budget(cpu_seconds=0.5)
    breach = run_next_to_neighbour(limits, monitor, reports, python(BUSY), budget)
    assert (breach.budget_name, breach.limit, breach.enforced_by) == ("cpu_seconds", 0.5, MONITOR)
    assert 0.5 < breach.measured < 1.0


def test_memory_balloon_is_stopped_past_its_memory(
    limits: KernelLimits, monitor: BudgetMonitor, reports: list[BudgetBreach]
) -> None:
    budget = Budget(memory_bytes=100 * MiB)
    argv = python(BALLOON, str(400 * MiB))
    breach = run_next_to_neighbour(limits, monitor, reports, argv, budget)
    assert (breach.budget_name, breach.limit) == ("memory_bytes", 100 * MiB)
    if limits.available:  # the memory cgroup holds the budget: the kernel acts first
        assert breach.enforced_by == KERNEL_MEMORY
        assert breach.measured == 100 * MiB
    else:  # 5 MiB every 100 ms, sampled every 50 ms (allow 0.5 s of lateness)
        assert breach.enforced_by == MONITOR
        assert 100 * MiB < breach.measured <= 125 * MiB


def test_fork_bomb_is_stopped_past_its_pids(
    limits: KernelLimits, monitor: BudgetMonitor, reports: list[BudgetBreach]
) -> None:
    uid = bomb_uid()
    budget = Budget(pids=20)
    argv = bomb_argv(bomb_cap(uid, 60), uid)
    breach = run_next_to_neighbour(limits, monitor, reports, argv, budget, uid=uid)
    assert (breach.budget_name, breach.limit, breach.enforced_by) == ("pids", 20, MONITOR)
    assert breach.measured > 20


def test_fork_bomb_against_a_tight_task_ceiling_is_refused_by_the_kernel(
    limits: KernelLimits, monitor: BudgetMonitor, reports: list[BudgetBreach]
) -> None:
    if not limits.available or "pids" not in limits.controllers:
        pytest.skip("needs a pids cgroup")
    uid = bomb_uid()
    budget = Budget(pids=20)
    argv = bomb_argv(bomb_cap(uid, 60), uid)
    breach = run_next_to_neighbour(
        limits, monitor, reports, argv, budget, uid=uid, kernel=Limits(pids=20)
    )
    assert (breach.budget_name, breach.limit, breach.measured) == ("pids", 20, 21)
    assert breach.enforced_by == KERNEL_PIDS


def test_sleeper_is_stopped_past_its_wall_time(
    limits: KernelLimits, monitor: BudgetMonitor, reports: list[BudgetBreach]
) -> None:
    budget = Budget(wall_seconds=0.5)
    breach = run_next_to_neighbour(limits, monitor, reports, python(SLEEPER), budget)
    assert (breach.budget_name, breach.limit, breach.enforced_by) == ("wall_seconds", 0.5, MONITOR)
    assert 0.5 <= breach.measured < 1.0


SPIN_THEN_WAIT = """
import sys, time
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("spun", flush=True)
sys.stdin.readline()
"""


def test_normal_exit_is_no_breach_and_cpu_deltas_add_up(
    limits: KernelLimits, monitor: BudgetMonitor, reports: list[BudgetBreach]
) -> None:
    budget = Budget(cpu_seconds=10, memory_bytes=256 * MiB, pids=16, wall_seconds=60)
    deltas: list[dict[object, float]] = []
    with launched("worker", python(SPIN_THEN_WAIT), budget, limits, monitor) as worker:
        assert worker.process.stdout is not None
        worker.go()
        assert worker.process.stdout.readline() == b"spun\n"
        rounds = monitor.stats().rounds
        wait_for(lambda: monitor.stats().rounds >= rounds + 2, 10, "two more rounds")
        deltas.append(monitor.take_cpu_deltas())
        # /proc counts CPU in clock ticks (10 ms): allow one tick less.
        assert monitor.usage("worker").cpu_seconds >= 0.29
        worker.finish()
        assert worker.process.returncode == 0
        assert monitor.unwatch("worker", returncode=0) is None
        deltas.append(monitor.take_cpu_deltas())
    assert reports == []
    assert set().union(*deltas) <= {"worker"}
    total = sum(d.get("worker", 0.0) for d in deltas)
    assert 0.29 <= total < 0.5
    assert monitor.take_cpu_deltas() == {}


def test_kernel_kill_between_samples_is_found_at_unwatch(
    limits: KernelLimits, reports: list[BudgetBreach]
) -> None:
    if not limits.available:
        pytest.skip("needs a memory cgroup: without one nothing else acts between samples")
    budget = Budget(memory_bytes=60 * MiB)
    # Sampling once at the start and then not for a minute: only the kernel acts.
    with (
        BudgetMonitor(reports.append, interval=60.0) as monitor,
        launched("balloon", python(BALLOON, str(400 * MiB)), budget, limits, monitor) as bad,
    ):
        bad.go()
        assert bad.process.wait(timeout=20) == -signal.SIGKILL
        assert reports == []
        breach = monitor.unwatch("balloon", returncode=bad.process.returncode)
    assert breach is not None
    assert (breach.budget_name, breach.enforced_by) == ("memory_bytes", KERNEL_MEMORY)
    assert reports == [breach]


def test_watch_errors_are_typed() -> None:
    with BudgetMonitor(lambda b: None) as monitor:
        with pytest.raises(ProcessLookupError, match=r"^no process 0 to watch$"):
            monitor.watch("a", 0, Budget())
        monitor.watch("self", os.getpid(), Budget())
        with pytest.raises(
            AlreadyWatchedError, match=r"^a worker is already watched under 'self'$"
        ):
            monitor.watch("self", os.getpid(), Budget())
        with pytest.raises(NotWatchedError, match=r"^no worker is watched under 'b'$"):
            monitor.unwatch("b")
        with pytest.raises(NotWatchedError):
            monitor.usage("b")
        assert monitor.unwatch("self") is None
    with pytest.raises(MonitorClosedError, match=r"^the budget monitor is closed$"):
        monitor.watch("c", os.getpid(), Budget())
    with pytest.raises(ValueError, match=r"^interval must be > 0$"):
        BudgetMonitor(lambda b: None, interval=0)


def test_monitor_thread_costs_little_per_worker() -> None:
    """Not a benchmark (benchmarks/budget_kill.py is): a guard against a sampling loop that
    spins or rereads everything, with a bound far above what is measured."""
    with BudgetMonitor(lambda b: None, interval=0.02) as monitor:
        monitor.watch("self", os.getpid(), Budget(wall_seconds=60))
        rounds = monitor.stats().rounds
        wait_for(lambda: monitor.stats().rounds >= rounds + 20, 10, "20 rounds")
        stats = monitor.stats()
    assert stats.cpu_per_worker_sample < 0.005


def test_rounds_keep_their_pace_next_to_a_cpu_bound_thread() -> None:
    """The agent's event loop is CPU-bound. Reads that released the GIL would each wait to
    get it back from that thread: a /proc scan of a hundred processes then takes ~50 ms
    instead of ~1 ms. The monitor's reads hold the GIL, so its rounds stay short."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin, daemon=True)
    with BudgetMonitor(lambda b: None, interval=0.02) as monitor:
        monitor.watch("self", os.getpid(), Budget(wall_seconds=60))
        spinner.start()
        try:
            before = monitor.stats()
            wait_for(lambda: monitor.stats().rounds >= before.rounds + 10, 30, "10 rounds")
            after = monitor.stats()
        finally:
            stop.set()
            spinner.join()
    assert after.scans >= before.scans + 10
    per_round = (after.round_seconds - before.round_seconds) / (after.rounds - before.rounds)
    assert per_round < 0.02, f"a round took {per_round * 1000:.0f} ms"


def test_reads_holding_the_gil_read_what_os_reads(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 40)  # more than one 4096-byte chunk
    assert procfs.held_gil.read(str(path)) == path.read_bytes()
    fd = procfs.held_gil.open(str(path))
    try:
        assert procfs.held_gil.pread(fd) == path.read_bytes()[:4096]
        assert procfs.held_gil.pread(fd) == path.read_bytes()[:4096]  # from offset 0 again
    finally:
        procfs.held_gil.close(fd)
    with pytest.raises(FileNotFoundError):
        procfs.held_gil.read(str(tmp_path / "missing"))
