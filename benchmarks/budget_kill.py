"""How fast a breaching worker dies, and what watching workers costs.

    python -m benchmarks.budget_kill [--n 50] [--modes cgroups,none] [--kinds busy,balloon]
                                     [--interval 0.05] [--idle 10] [--contend]

For each mode (cgroups where this machine has writable ones; none: rlimits and /proc)
it starts `--n` runaway processes one after another, each in its own group (or watched by
pid), next to `--idle` watched sleepers:

- busy: spins past a CPU-seconds budget, writing (CLOCK_MONOTONIC, its own CPU time) to
  its pipe about every millisecond of CPU. With what the monitor counted just before
  "go", that places the moment its CPU, as the monitor counts it, crossed the budget.
- balloon: allocates 1 MiB chunks at `--rate-mb` MiB/s past a memory budget, writing a
  timestamp before each allocation and its resident size after it. The breach is the
  first report above the budget, or, when it was killed mid-allocation (by the kernel,
  when a memory cgroup holds the budget itself), the start of the last allocation.

Latency is from that moment to waitpid() returning in this process. The table also
shows the monitor's own estimate (`elapsed_since_breach_estimate`) and who acted first.
Then it watches `--idle` sleepers for `--cost-seconds` and prints the monitor thread's CPU
time per watched worker per second and per sample. `--contend` keeps a Python thread busy
in this process meanwhile, as a CPU-bound agent event loop would (GIL contention).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fabric._agent import procfs
from fabric._agent.cgroup_setup import detect_kernel_limits
from fabric._agent.limits import (
    Budget,
    KernelLimits,
    WorkerGroup,
)
from fabric._agent.monitor import BudgetMonitor
from fabric._agent.rlimits import plan_rlimits

MiB = 1 << 20

# Says it is ready, waits for "go", then spins, writing (CLOCK_MONOTONIC, its own CPU
# time) about every millisecond of CPU: "G" when it starts, "H" after.
BUSY = """
import sys, time
print("R", flush=True)
sys.stdin.readline()
beat = time.process_time()
print("G", time.monotonic(), beat, flush=True)
while True:
    cpu = time.process_time()
    if cpu >= beat:
        print("H", time.monotonic(), cpu, flush=True)
        beat = cpu + 0.001
"""

# Waits for "go", then grows by 1 MiB chunks at the given rate: "S t" before a chunk,
# "D t rss" after it. Caps itself at 4x the budget so a broken monitor cannot eat the node.
BALLOON = """
import os, sys, time
print("R", flush=True)
sys.stdin.readline()
budget, rate = int(sys.argv[1]), int(sys.argv[2])
chunk, page = 1 << 20, os.sysconf("SC_PAGE_SIZE")
statm = os.open("/proc/self/statm", os.O_RDONLY)
held, step, start = [], chunk / rate, time.monotonic()
while len(held) * chunk < 4 * budget:
    print("S", time.monotonic(), flush=True)
    held.append(b"x" * chunk)
    rss = int(os.pread(statm, 100, 0).split()[1]) * page
    print("D", time.monotonic(), rss, flush=True)
    time.sleep(max(0.0, start + len(held) * step - time.monotonic()))
time.sleep(60)
"""

SLEEPER = "import sys; sys.stdin.readline()"


@dataclass
class Outcome:
    kind: str
    latency: float  # seconds from the breach to waitpid() returning
    estimate: float  # the monitor's elapsed_since_breach_estimate
    enforced_by: str


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-S", "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


def _counted_cpu(group: WorkerGroup | None, pid: int) -> float:
    if group is not None:
        return group.usage().cpu_seconds
    stat = procfs.read_stat(pid)
    return stat.cpu_ticks / procfs.CLOCK_TICKS if stat else 0.0


def run_one(
    kind: str,
    index: int,
    limits: KernelLimits,
    monitor: BudgetMonitor,
    args: argparse.Namespace,
) -> Outcome:
    key = f"{kind}-{index}"
    if kind == "busy":
        budget = Budget(cpu_seconds=args.cpu_seconds)
        process = _spawn(BUSY, str(args.cpu_seconds))
    else:
        budget = Budget(memory_bytes=args.memory_mb * MiB)
        process = _spawn(BALLOON, str(args.memory_mb * MiB), str(args.rate_mb * MiB))
    assert process.stdin is not None and process.stdout is not None
    group = limits.create_group(key, budget.kernel_limits()) if limits.available else None
    try:
        if group is not None:
            group.add(process.pid)
        plan_rlimits(budget, group=group).apply(process.pid)
        monitor.watch(key, group if group is not None else process.pid, budget)
        if process.stdout.readline() != b"R\n":
            raise RuntimeError(f"{key} did not start")
        # Read while the process is blocked: then the group's CPU counter is up to date
        # (during the interpreter's startup it can lag by a scheduler tick).
        counted = _counted_cpu(group, process.pid)
        process.stdin.write(b"go\n")
        process.stdin.flush()
        # A blocking waitpid (Popen.wait with a timeout polls, up to 50 ms late).
        watchdog = threading.Timer(60.0, process.kill)
        watchdog.start()
        process.wait()
        reaped = time.monotonic()
        watchdog.cancel()
        breach = monitor.unwatch(key, returncode=process.returncode)
        report = process.stdout.read().decode().split("\n")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if group is not None:
            group.kill()
            group.remove()
    if breach is None:
        raise RuntimeError(f"{key} exited ({process.returncode}) without a breach")
    by_cgroup = group is not None and group.holds("memory")
    try:
        moment = _breach_moment(kind, report, budget, by_cgroup, counted)
    except RuntimeError as e:
        raise RuntimeError(f"{key}: {e} (exit {process.returncode}, {breach})") from None
    return Outcome(kind, reaped - moment, breach.elapsed_since_breach_estimate, breach.enforced_by)


def _breach_moment(
    kind: str, report: list[str], budget: Budget, by_cgroup: bool, counted: float
) -> float:
    """When the runaway crossed its budget, from what it wrote to its pipe."""
    rows = [line.split() for line in report if line]
    if kind == "busy":
        # Its CPU as the monitor counts it: what was counted at "go", plus its own since.
        assert budget.cpu_seconds is not None
        start = float(next(r[2] for r in rows if r[0] == "G"))
        beats = [(float(r[1]), counted + float(r[2]) - start) for r in rows if r[0] == "H"]
        for (t0, u0), (t1, u1) in itertools.pairwise(beats):
            if u0 < budget.cpu_seconds <= u1:
                return t0 + (budget.cpu_seconds - u0) / (u1 - u0) * (t1 - t0)
        # Killed before its next beat: the crossing came after the last one, within a
        # millisecond of CPU, so taking that beat overstates the latency, never understates.
        last_time, last_used = beats[-1]
        if last_used < budget.cpu_seconds - 0.005:
            raise RuntimeError(f"the busy loop died at {last_used:.3f} s of CPU")
        return last_time
    assert budget.memory_bytes is not None
    above = [float(r[1]) for r in rows if r[0] == "D" and int(r[2]) > budget.memory_bytes]
    if above and not by_cgroup:
        return above[0]
    # Killed inside the allocation that crossed the limit, the last one it started: by the
    # kernel at the crossing (the cgroup counts what was charged since the balloon joined,
    # not its RSS, which includes the interpreter's pages from before), or by the monitor
    # sampling it mid-allocation.
    return [float(r[1]) for r in rows if r[0] == "S"][-1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _print_table(mode: str, outcomes: list[Outcome]) -> None:
    for kind in dict.fromkeys(o.kind for o in outcomes):
        ms = [o.latency * 1000 for o in outcomes if o.kind == kind]
        est = [o.estimate * 1000 for o in outcomes if o.kind == kind]
        who = Counter(o.enforced_by for o in outcomes if o.kind == kind)
        print(
            f"{mode:<8}{kind:<9}{len(ms):>4}"
            f"{_percentile(ms, 0.5):>9.1f}{_percentile(ms, 0.9):>9.1f}"
            f"{_percentile(ms, 0.99):>9.1f}{max(ms):>9.1f}"
            f"{statistics.median(est):>10.1f}{_percentile(est, 0.99):>9.1f}"
            f"   {', '.join(f'{k} x{n}' for k, n in who.items())}"
        )


def measure_cost(monitor: BudgetMonitor, watched: int, seconds: float) -> tuple[float, float]:
    """(CPU seconds per watched worker per second, CPU seconds per worker sample)."""
    before = monitor.stats()
    time.sleep(seconds)
    after = monitor.stats()
    cpu = after.cpu_seconds - before.cpu_seconds
    samples = after.worker_samples - before.worker_samples
    return cpu / watched / seconds, (cpu / samples if samples else 0.0)


def run_mode(mode: str, args: argparse.Namespace) -> tuple[list[Outcome], str]:
    """The runaways' outcomes and a line on the monitor's cost."""
    outcomes: list[Outcome] = []
    cost = ""
    limits = detect_kernel_limits(agent=f"bench{os.getpid()}", use_cgroups=mode != "none")
    print(f"# {mode}: {limits.describe()}", file=sys.stderr)
    idle: list[tuple[subprocess.Popen[bytes], WorkerGroup | None]] = []
    with limits, BudgetMonitor(lambda breach: None, interval=args.interval) as monitor:
        try:
            for i in range(args.idle):
                process = _spawn(SLEEPER)
                group = (
                    limits.create_group(f"idle-{i}", Budget().kernel_limits())
                    if limits.available
                    else None
                )
                if group is not None:
                    group.add(process.pid)
                monitor.watch(
                    f"idle-{i}",
                    group if group is not None else process.pid,
                    Budget(wall_seconds=3600),
                )
                idle.append((process, group))
            for kind in args.kinds:
                for i in range(args.n):
                    outcomes.append(run_one(kind, i, limits, monitor, args))
            if args.idle:
                per_second, per_sample = measure_cost(monitor, args.idle, args.cost_seconds)
                cost = (
                    f"{mode:<8}monitor cost, {args.idle} watched workers: "
                    f"{per_second * 1e6:.0f} µs CPU per worker per second, "
                    f"{per_sample * 1e6:.1f} µs per worker sample "
                    f"({monitor.interval * 1000:.0f} ms interval)"
                )
        finally:
            for process, _ in idle:
                process.kill()
                process.wait()
    return outcomes, cost


def _contend(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="runaways per kind and mode")
    parser.add_argument("--modes", default="cgroups,none")
    parser.add_argument("--kinds", default="busy,balloon")
    parser.add_argument("--interval", type=float, default=0.05, help="monitor interval, s")
    parser.add_argument("--idle", type=int, default=10, help="watched sleepers alongside")
    parser.add_argument("--cpu-seconds", type=float, default=0.2)
    parser.add_argument("--memory-mb", type=int, default=60)
    parser.add_argument("--rate-mb", type=int, default=100, help="balloon growth, MiB/s")
    parser.add_argument("--cost-seconds", type=float, default=2.0)
    parser.add_argument("--contend", action="store_true", help="a busy Python thread too")
    args = parser.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    stop = threading.Event()
    if args.contend:
        threading.Thread(target=_contend, args=(stop,), daemon=True).start()
    print(
        f"{'mode':<8}{'kind':<9}{'n':>4}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'est p50':>10}{'est p99':>9}   enforced by"
    )
    costs = []
    try:
        for mode in [m for m in args.modes.split(",") if m]:
            if mode == "cgroups":
                with detect_kernel_limits(use_cgroups=True) as probe:
                    if not probe.available:
                        print(f"{mode:<8}skipped: {probe.describe()}")
                        continue
            outcomes, cost = run_mode(mode, args)
            _print_table(mode, outcomes)
            costs.append(cost)
    finally:
        stop.set()
    print("\n".join(c for c in costs if c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
