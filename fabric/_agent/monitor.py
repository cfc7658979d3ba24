"""The budget monitor: watches workers' process trees and stops a breaching one fast.

`BudgetTracker` is pure state: successive samples of one worker in, the first breach out.
`BudgetMonitor` is the I/O shell around it: one thread samples every watched worker every
`interval` (cgroup files where the worker has a `WorkerGroup`, else one scan of /proc for
all the others), kills a breaching worker's whole tree and reports a `BudgetBreach`,
exactly once per worker, to a callback.

Why a thread and not an asyncio task: the agent's event loop is CPU-bound, so a task
scheduled every 50 ms is late by as long as the longest callback, and the kill path
(freezing a group, sweeping a tree) blocks for milliseconds. A thread shares the GIL with
that loop instead: every read that released the GIL would wait for the loop to hand it
back (measured next to a spinning thread: a /proc scan of 115 processes took 47 ms with
os.read, 0.9 ms with the GIL held), so the monitor reads /proc and cgroup files through
`procfs.held_gil`. Its cost is in `stats()`; benchmarks/budget_kill.py measures it.

A memory cgroup holds memory at the budget itself, so there a memory breach shows up as
the kernel's OOM kill (a counter) rather than as usage above the limit. Processes are
counted here, with the kernel's ceiling on tasks (threads included) behind them; a fork
or thread it refused is a breach too. CPU seconds and wall time have no kernel limit for
a tree: the monitor enforces them, with RLIMIT_CPU per process behind it (rlimits.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

from fabric._agent import procfs
from fabric._agent.budget_errors import (
    AlreadyWatchedError,
    BudgetError,
    MonitorClosedError,
    NotWatchedError,
)
from fabric._agent.limits import Budget, KernelEvents, Usage, WorkerGroup

log = logging.getLogger(__name__)

__all__ = [
    "Budget",
    "BudgetBreach",
    "BudgetMonitor",
    "BudgetTracker",
    "MonitorStats",
    "Sample",
    "Verdict",
]

DEFAULT_INTERVAL = 0.05

MONITOR = "monitor"
KERNEL_MEMORY = "kernel: cgroup memory limit"
KERNEL_PIDS = "kernel: cgroup pids limit"
KERNEL_RLIMIT_CPU = "kernel: RLIMIT_CPU"


@dataclass(frozen=True)
class Sample:
    """One look at a worker: when, what it used, the kernel's counters, whether any of its
    processes is still alive."""

    time: float  # time.monotonic()
    usage: Usage
    events: KernelEvents = field(default_factory=KernelEvents)
    alive: bool = True


@dataclass(frozen=True)
class Verdict:
    """A breach as the tracker sees it, before anything is killed."""

    budget_name: str  # "memory_bytes" | "pids" | "cpu_seconds" | "wall_seconds"
    limit: float
    measured: float
    breached_at: float  # time.monotonic() estimate of the moment usage crossed the limit
    enforced_by: str  # MONITOR, or which kernel limit acted first


@dataclass(frozen=True)
class BudgetBreach:
    """A worker broke its budget and was killed (report to the callback, once)."""

    key: Hashable
    budget_name: str
    limit: float
    measured: float
    elapsed_since_breach_estimate: float  # seconds from the estimated crossing to the kill
    enforced_by: str  # MONITOR, or the kernel limit that acted first
    usage: Usage  # the last sample's usage
    breached_at: float  # time.monotonic() estimate of the crossing
    # Where the current segment's budget counts from (see `BudgetMonitor.begin`): the CPU
    # seconds and the seconds since the watch began; both 0 without segments.
    origin_cpu: float = 0.0
    origin_wall: float = 0.0


def _crossing(t0: float, v0: float, t1: float, v1: float, limit: float) -> float:
    """When a quantity sampled as v0 at t0 and v1 at t1 crossed `limit`, assuming it grew
    linearly in between."""
    if v1 <= v0 or t1 <= t0:
        return t1
    t = t0 + (limit - v0) / (v1 - v0) * (t1 - t0)
    return min(max(t, t0), t1)


class BudgetTracker:
    """Decides from successive samples whether, and when, a worker broke its budget.

    Pure: no clock, no I/O. Invariant: at most one verdict in its lifetime.
    """

    def __init__(
        self, budget: Budget, started: float, first: Sample, task_ceiling: int | None = None
    ) -> None:
        self.budget = budget
        self.started = started
        self.origin_cpu = 0.0  # where the current segment counts from (BudgetMonitor.begin)
        self.origin_wall = 0.0
        # The kernel's limit on tasks (threads included) behind the budget's processes.
        self.task_ceiling = task_ceiling
        self.baseline = first.events
        self.last = first
        self.verdict: Verdict | None = None

    def wall_deadline(self) -> float | None:
        if self.budget.wall_seconds is None or self.verdict is not None:
            return None
        return self.started + self.budget.wall_seconds

    def observe(self, sample: Sample) -> Verdict | None:
        """The breach `sample` shows, if it is the first; the earliest if it shows several."""
        if self.verdict is not None:
            return None
        prev, self.last = self.last, sample
        found = self._breaches(prev, sample)
        if not found:
            return None
        self.verdict = min(found, key=lambda v: v.breached_at)
        return self.verdict

    def final(self, sample: Sample | None, exit_signal: int | None) -> Verdict | None:
        """The breach, if any, that ended a worker that is going away: a kernel counter the
        last samples missed, or RLIMIT_CPU's signal (SIGXCPU) as its cause of death."""
        if self.verdict is not None:
            return None
        if sample is not None:
            verdict = self.observe(replace(sample, alive=False))
            if verdict is not None:
                return verdict
        limit = self.budget.cpu_seconds
        if exit_signal == signal.SIGXCPU and limit is not None:
            cpu = max(self.last.usage.cpu_seconds, limit)
            self.verdict = Verdict("cpu_seconds", limit, cpu, self.last.time, KERNEL_RLIMIT_CPU)
            return self.verdict
        return None

    def _breaches(self, prev: Sample, now: Sample) -> list[Verdict]:
        b, found = self.budget, []
        u0, u1 = prev.usage, now.usage
        if b.memory_bytes is not None:
            limit = b.memory_bytes
            if now.events.oom_kills > self.baseline.oom_kills:
                measured = max(now.events.memory_peak, limit)
                found.append(Verdict("memory_bytes", limit, measured, prev.time, KERNEL_MEMORY))
            elif u1.memory_bytes > limit:
                t = _crossing(prev.time, u0.memory_bytes, now.time, u1.memory_bytes, limit)
                found.append(Verdict("memory_bytes", limit, u1.memory_bytes, t, MONITOR))
        if b.pids is not None:
            if u1.processes > b.pids:
                t = _crossing(prev.time, u0.processes, now.time, u1.processes, b.pids)
                found.append(Verdict("pids", b.pids, u1.processes, t, MONITOR))
            elif now.events.refused_forks > self.baseline.refused_forks:
                # The kernel refused the fork or thread that would have made one task too
                # many: a thread bomb, or a fork bomb faster than the sampling.
                ceiling = self.task_ceiling or b.pids
                found.append(Verdict("pids", ceiling, ceiling + 1, prev.time, KERNEL_PIDS))
        if b.cpu_seconds is not None and u1.cpu_seconds > b.cpu_seconds:
            t = _crossing(prev.time, u0.cpu_seconds, now.time, u1.cpu_seconds, b.cpu_seconds)
            found.append(Verdict("cpu_seconds", b.cpu_seconds, u1.cpu_seconds, t, MONITOR))
        deadline = self.wall_deadline()
        if deadline is not None and now.alive and now.time >= deadline:
            wall = b.wall_seconds
            assert wall is not None
            found.append(Verdict("wall_seconds", wall, now.time - self.started, deadline, MONITOR))
        return found


@dataclass(frozen=True)
class MonitorStats:
    """What the monitor's sampling has cost so far (its thread's CPU time, kills aside)."""

    rounds: int
    worker_samples: int
    cpu_seconds: float
    scans: int  # /proc scans (rounds with at least one worker without a group)
    round_seconds: float  # wall time the rounds took (GIL waits included)

    @property
    def cpu_per_worker_sample(self) -> float:
        return self.cpu_seconds / self.worker_samples if self.worker_samples else 0.0


_WATCHING, _KILLING, _DONE, _CLOSED = "watching", "killing", "done", "closed"


class _Watch:
    """One watched worker. Its lock guards the tracker, the state and reads of its group
    (the agent may remove the group right after `unwatch`)."""

    def __init__(
        self,
        key: Hashable,
        group: WorkerGroup | None,
        root: procfs.ProcStat | None,
        tracker: BudgetTracker,
    ) -> None:
        self.key = key
        self.group = group
        self.root = root
        self.tracker = tracker
        self.lock = threading.Lock()
        self.state = _WATCHING
        self.done = threading.Event()
        self.breach: BudgetBreach | None = None
        self.charged_cpu = 0.0
        # A segment the agent began and no round has applied yet: (when, relative budget).
        self.pending: tuple[float, Budget] | None = None
        # Without a group: the tree as last seen, and CPU of members that left it.
        self.members: dict[int, procfs.ProcStat] = {root.pid: root} if root else {}
        self.departed_ticks = 0
        self.unreadable = False

    @property
    def session(self) -> int | None:
        """The worker's session, while its leader (the worker) lives: a session id is the
        leader's pid, which a new process may take once the leader is reaped."""
        root = self.root
        if root is None or root.session != root.pid or root.pid not in self.members:
            return None
        return root.session


class BudgetMonitor:
    """Watches workers and kills a breaching one's whole tree; see the module docstring.

    `on_breach` runs on the monitor's thread (or on the thread that calls `unwatch`, for a
    breach only found then), after the kill; from asyncio, hand it over with
    `loop.call_soon_threadsafe`.
    """

    def __init__(
        self,
        on_breach: Callable[[BudgetBreach], None],
        *,
        interval: float = DEFAULT_INTERVAL,
        kill_timeout: float = 5.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.on_breach = on_breach
        self.interval = interval
        self.kill_timeout = kill_timeout
        self._lock = threading.Lock()
        self._watches: dict[Hashable, _Watch] = {}
        self._pending_cpu: dict[Hashable, float] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._rounds = self._samples = self._scans = 0
        self._cpu = self._wall = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._closed:
            raise MonitorClosedError()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="budget-monitor", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop watching (nothing is killed) and join the thread."""
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> BudgetMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the agent's calls -------------------------------------------------------------

    def watch(
        self,
        key: Hashable,
        target: int | WorkerGroup,
        budget: Budget,
        *,
        started: float | None = None,
    ) -> None:
        """Watch the worker `key`: a WorkerGroup, or the pid of its root process (then its
        tree is found in /proc). Wall time counts from `started` (time.monotonic(),
        default now). Raises ProcessLookupError if the pid is gone."""
        if self._closed:
            raise MonitorClosedError()
        now = time.monotonic()
        started = now if started is None else started
        if isinstance(target, WorkerGroup):
            group, root = target, None
            first = self._group_sample(target, budget, now)
            ceiling = target.limits.pids if target.holds("pids") else None
        else:
            group, root = None, procfs.read_stat(target)
            if root is None or root.zombie:
                raise ProcessLookupError(f"no process {target} to watch")
            first = Sample(now, _tree_usage([root], 0))
            ceiling = None
        watch = _Watch(key, group, root, BudgetTracker(budget, started, first, ceiling))
        with self._lock:
            if key in self._watches:
                raise AlreadyWatchedError(key)
            self._watches[key] = watch
        self._wake.set()

    def unwatch(self, key: Hashable, *, returncode: int | None = None) -> BudgetBreach | None:
        """Stop watching `key` (its worker exited, or the agent stops it) and return its
        breach, if it had one: the one already reported, or one found now from the kernel's
        counters or from `returncode` (Popen's: -SIGXCPU means RLIMIT_CPU killed it); a
        breach found now is reported to `on_breach` too, and the tree is killed. Call it
        before removing the worker's group. If the monitor is killing the worker right
        then, it waits for that (milliseconds; `kill_timeout` at most)."""
        with self._lock:
            watch = self._watches.pop(key, None)
        if watch is None:
            raise NotWatchedError(key)
        verdict = None
        with watch.lock:
            state = watch.state
            if state == _WATCHING:
                watch.state = _CLOSED
                sample = self._final_sample(watch)
                exit_signal = -returncode if returncode is not None and returncode < 0 else None
                verdict = watch.tracker.final(sample, exit_signal)
                if sample is not None:
                    watch.tracker.last = sample
        if state == _KILLING:
            watch.done.wait(self.kill_timeout + 1.0)
        elif verdict is not None:
            self._kill(watch)
            self._report(watch, verdict, time.monotonic())
        self._charge_final(watch)
        return watch.breach

    def begin(self, key: Hashable, budget: Budget) -> None:
        """Begin a new segment of `key`'s life (a pooled worker's next task) under `budget`,
        whose CPU seconds and wall time count from the segment's start. One assignment, no
        lock and no wake-up, so that an agent may call it for every task: the next round
        applies it, and CPU counts from that round's sample (what the task used before it,
        at most one interval, is not counted); wall time counts from now."""
        watch = self._watches.get(key)
        if watch is None:
            raise NotWatchedError(key)
        # Until then the last segment's CPU and wall limits must not hold the new one.
        watch.tracker.budget = _timeless(budget)
        watch.pending = (time.monotonic(), budget)

    def usage(self, key: Hashable) -> Usage:
        """The last sampled usage of `key`."""
        watch = self._get(key)
        with watch.lock:
            return watch.tracker.last.usage

    def take_cpu_deltas(self) -> dict[Hashable, float]:
        """CPU seconds each worker used since the previous call (unwatched workers' last
        share included), for charging tenants' windows. The sum over calls is each
        worker's total, as sampled."""
        with self._lock:
            deltas, self._pending_cpu = self._pending_cpu, {}
            watches = list(self._watches.values())
        for watch in watches:
            with watch.lock:
                cpu = watch.tracker.last.usage.cpu_seconds
                delta, watch.charged_cpu = cpu - watch.charged_cpu, cpu
            if delta > 0:
                deltas[watch.key] = deltas.get(watch.key, 0.0) + delta
        return deltas

    def watched(self) -> list[Hashable]:
        with self._lock:
            return list(self._watches)

    def stats(self) -> MonitorStats:
        return MonitorStats(self._rounds, self._samples, self._cpu, self._scans, self._wall)

    def _get(self, key: Hashable) -> _Watch:
        with self._lock:
            watch = self._watches.get(key)
        if watch is None:
            raise NotWatchedError(key)
        return watch

    def _charge_final(self, watch: _Watch) -> None:
        delta = watch.tracker.last.usage.cpu_seconds - watch.charged_cpu
        watch.charged_cpu += delta
        if delta > 0:
            with self._lock:
                self._pending_cpu[watch.key] = self._pending_cpu.get(watch.key, 0.0) + delta

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            deadline = self._next_wall_deadline()
            if now >= next_round or (deadline is not None and now >= deadline):
                try:
                    self._round()
                except Exception:  # the monitor must outlive any one bad read
                    log.exception("budget monitor round failed")
                next_round = max(next_round + self.interval, time.monotonic())
            wake = next_round if deadline is None else min(next_round, deadline)
            self._wake.wait(max(0.0, wake - time.monotonic()))
            self._wake.clear()

    def _next_wall_deadline(self) -> float | None:
        """The next wall deadline no round has checked yet (one a round passed without a
        verdict, its worker already gone, must not make the loop spin)."""
        with self._lock:
            watches = list(self._watches.values())
        deadlines = [
            d
            for w in watches
            if (d := w.tracker.wall_deadline()) is not None and d > w.tracker.last.time
        ]
        return min(deadlines, default=None)

    def _round(self) -> None:
        cpu_before, wall_before = time.thread_time(), time.monotonic()
        with self._lock:
            watches = [w for w in self._watches.values() if w.state == _WATCHING]
        table: dict[int, procfs.ProcStat] = {}
        children: dict[int, list[int]] = {}
        if any(w.group is None for w in watches):
            table = procfs.scan()
            children = procfs.children_map(table)
            self._scans += 1
        scanned_at = time.monotonic()
        breaches = []
        for watch in watches:
            with watch.lock:
                if watch.state != _WATCHING:
                    continue
                try:
                    sample = self._sample(watch, table, children, scanned_at)
                except (OSError, ValueError) as e:
                    # Its group was removed before `unwatch`, say: say so once.
                    if not watch.unreadable:
                        log.warning("cannot sample worker %r: %s", watch.key, e)
                    watch.unreadable = True
                    continue
                if watch.pending is not None:
                    _begin_segment(watch.tracker, watch.pending, sample)
                    watch.pending = None
                verdict = watch.tracker.observe(sample)
                if verdict is not None:
                    watch.state = _KILLING
                    breaches.append((watch, verdict))
            self._samples += 1
        self._rounds += 1
        self._cpu += time.thread_time() - cpu_before
        self._wall += time.monotonic() - wall_before
        for watch, verdict in breaches:
            self._kill(watch)
            killed_at = time.monotonic()
            with watch.lock, contextlib.suppress(OSError, ValueError):
                if watch.group is not None:
                    last = self._group_sample(watch.group, watch.tracker.budget, killed_at)
                    watch.tracker.last = last
            self._report(watch, verdict, killed_at)

    def _sample(
        self,
        watch: _Watch,
        table: dict[int, procfs.ProcStat],
        children: dict[int, list[int]],
        scanned_at: float,
    ) -> Sample:
        if watch.group is not None:
            return self._group_sample(watch.group, watch.tracker.budget, time.monotonic())
        roots = [(s.pid, s.starttime) for s in watch.members.values()]
        tree = procfs.members(table, children, roots, watch.session)
        for pid, stat in watch.members.items():
            # A member that left the tree took its CPU time along; it stays counted unless
            # a member reaped it (then that member's children's time holds it).
            if pid not in tree and stat.ppid not in tree:
                watch.departed_ticks += stat.cpu_ticks + stat.reaped_children_ticks
        watch.members = tree
        usage = _tree_usage(list(tree.values()), watch.departed_ticks)
        last = watch.tracker.last.usage.cpu_seconds
        if usage.cpu_seconds < last:  # a member reaped outside the tree between two scans
            usage = replace(usage, cpu_seconds=last)
        alive = any(not s.zombie for s in tree.values())
        return Sample(scanned_at, usage, alive=alive)

    def _group_sample(self, group: WorkerGroup, budget: Budget, now: float) -> Sample:
        usage = group.usage()
        events = KernelEvents()
        if (budget.memory_bytes is not None and group.holds("memory")) or (
            budget.pids is not None and group.holds("pids")
        ):
            events = group.events()
        return Sample(now, usage, events, alive=usage.processes > 0)

    def _final_sample(self, watch: _Watch) -> Sample | None:
        if watch.group is None or watch.group.removed:
            return None
        try:
            return self._group_sample(watch.group, watch.tracker.budget, time.monotonic())
        except (OSError, ValueError):
            return None

    def _kill(self, watch: _Watch) -> None:
        try:
            if watch.group is not None:
                watch.group.kill(self.kill_timeout)
            elif watch.root is not None:
                root = (watch.root.pid, watch.root.starttime)
                survivors = procfs.stop_and_kill_tree(
                    root, watch.session, dict(watch.members), self.kill_timeout
                )
                if survivors:
                    log.error("worker %r: processes %s survived the kill", watch.key, survivors)
        except BudgetError:
            log.exception("cannot kill worker %r", watch.key)

    def _report(self, watch: _Watch, verdict: Verdict, killed_at: float) -> None:
        breach = BudgetBreach(
            key=watch.key,
            budget_name=verdict.budget_name,
            limit=verdict.limit,
            measured=verdict.measured,
            elapsed_since_breach_estimate=max(0.0, killed_at - verdict.breached_at),
            enforced_by=verdict.enforced_by,
            usage=watch.tracker.last.usage,
            breached_at=verdict.breached_at,
            origin_cpu=watch.tracker.origin_cpu,
            origin_wall=watch.tracker.origin_wall,
        )
        with watch.lock:
            watch.breach = breach
            watch.state = _DONE
        watch.done.set()
        try:
            self.on_breach(breach)
        except Exception:
            log.exception("budget breach callback failed for %r", watch.key)


@functools.lru_cache(maxsize=256)
def _timeless(budget: Budget) -> Budget:
    """`budget` without its CPU and wall limits, which count from a segment's start."""
    return Budget(memory_bytes=budget.memory_bytes, pids=budget.pids)


def _begin_segment(tracker: BudgetTracker, pending: tuple[float, Budget], sample: Sample) -> None:
    """Make `tracker`'s budget the segment's `pending` relative budget, counted from the
    segment's start: CPU from `sample`, wall time from when it began."""
    began, budget = pending
    tracker.origin_cpu = sample.usage.cpu_seconds
    tracker.origin_wall = began - tracker.started
    tracker.budget = Budget(
        cpu_seconds=None if budget.cpu_seconds is None else tracker.origin_cpu + budget.cpu_seconds,
        memory_bytes=budget.memory_bytes,
        pids=budget.pids,
        wall_seconds=None
        if budget.wall_seconds is None
        else tracker.origin_wall + budget.wall_seconds,
    )


def _tree_usage(stats: list[procfs.ProcStat], departed_ticks: int) -> Usage:
    """Usage of a process tree from its members' stat: CPU of the live members and of the
    children they reaped, resident memory (RSS: it counts pages shared between members,
    e.g. after a fork, once per member, so it errs high; PSS would not, but reading
    smaps_rollup costs ~90 µs a process against ~4 µs for stat), tasks and processes."""
    ticks = departed_ticks + sum(s.cpu_ticks + s.reaped_children_ticks for s in stats)
    return Usage(
        cpu_seconds=ticks / procfs.CLOCK_TICKS,
        memory_bytes=sum(s.rss_pages for s in stats) * procfs.PAGE_SIZE,
        pids=sum(s.threads for s in stats),
        processes=sum(1 for s in stats if not s.zombie),
    )
