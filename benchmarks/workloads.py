"""Benchmark workloads, written only against the Ray Core API surface.

Every function here receives the system under test as a module parameter
(``fabric`` or ``ray``) and touches nothing but ``init``, ``shutdown``,
``remote``, ``get``, ``put`` and ``wait`` on it.  That is deliberate: the
identical code runs on both systems, so a difference in the figures is a
difference in the systems and not in how the benchmark was written.

This module imports only the standard library and numpy, because it is also
imported by the Ray interpreter, which has neither Fabric nor its
dependencies installed.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

# The task and actor used by the workloads, decorated against the module under
# test.  They are built inside a function (not at module level) so that both
# systems ship them by value: a module-level function would be pickled by
# reference, and the worker processes would then have to import this module.
RemoteFns = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    """One reported number: how it is labelled and which direction is better."""

    key: str
    label: str
    benchmark: str
    lower_is_better: bool


# Order here is the order of the printed table.
FIGURES: tuple[Figure, ...] = (
    Figure("start_s", "start (s)", "start", True),
    Figure("task_sync_p50_us", "no-op task, submit and get, p50 (us)", "task_sync", True),
    Figure("task_sync_p99_us", "no-op task, submit and get, p99 (us)", "task_sync", True),
    Figure("task_batch_per_s", "no-op tasks, 10k submitted then all got (/s)", "task_batch", False),
    Figure("actor_sync_p50_us", "actor call, sync, p50 (us)", "actor_sync", True),
    Figure("actor_sync_p99_us", "actor call, sync, p99 (us)", "actor_sync", True),
    Figure(
        "actor_batch_per_s", "actor calls, 10k submitted then all got (/s)", "actor_batch", False
    ),
    Figure("put_get_small_per_s", "put then get of a small object (/s)", "put_get_small", False),
    Figure("put_large_gb_per_s", "put of a 100 MB numpy array (GB/s)", "put_large", False),
    Figure("task_large_ms", "task taking and returning that array (ms)", "task_large", True),
)

# Benchmark names accepted by --only, in run order.  The large-object ones run
# last so that their memory churn cannot disturb the latency figures.
BENCHMARKS: tuple[str, ...] = (
    "start",
    "task_sync",
    "task_batch",
    "actor_sync",
    "actor_batch",
    "put_get_small",
    "put_large",
    "task_large",
)


@dataclass(frozen=True)
class Counts:
    """Iteration counts; the quick set keeps a smoke run to a few seconds."""

    sync_warmup: int
    sync_calls: int
    batch: int
    small_puts: int
    large_bytes: int
    large_repeats: int


FULL = Counts(
    sync_warmup=100,
    sync_calls=1_000,
    batch=10_000,
    small_puts=10_000,
    large_bytes=100 * 1024 * 1024,
    large_repeats=10,
)
QUICK = Counts(
    sync_warmup=10,
    sync_calls=100,
    batch=500,
    small_puts=500,
    large_bytes=8 * 1024 * 1024,
    large_repeats=3,
)

# Called after each benchmark with (name, figures, error); lets the child
# stream partial results so a later hang does not lose the finished figures.
Reporter = Callable[[str, dict[str, float] | None, str | None], None]


def _define(ray: ModuleType) -> RemoteFns:
    @ray.remote
    def noop() -> None:
        return None

    @ray.remote
    def identity(x: Any) -> Any:
        return x

    @ray.remote
    class Echo:
        def noop(self) -> None:
            return None

    return {"noop": noop, "identity": identity, "Echo": Echo}


def _percentiles_us(samples_s: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_s) * 1e6
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _sync_latency(ray: ModuleType, call: Callable[[], Any], c: Counts) -> tuple[float, float]:
    # Warm-ups are not timed: they absorb worker start-up, function export and
    # first-use caches, which the "start" figure already accounts for.
    for _ in range(c.sync_warmup):
        ray.get(call())
    samples: list[float] = []
    for _ in range(c.sync_calls):
        t0 = time.perf_counter()
        ray.get(call())
        samples.append(time.perf_counter() - t0)
    return _percentiles_us(samples)


def _batch_rate(ray: ModuleType, call: Callable[[], Any], c: Counts) -> float:
    # A short untimed batch first, so the timed one measures steady-state
    # throughput rather than the pipeline filling up for the first time.
    ray.get([call() for _ in range(min(100, c.batch))])
    t0 = time.perf_counter()
    # Submission is inside the timed region on purpose: the figure is
    # "submitted then all got", the tenant-visible cost of the whole batch.
    ray.get([call() for _ in range(c.batch)])
    return c.batch / (time.perf_counter() - t0)


def _bench_task_sync(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    noop = fns["noop"]
    p50, p99 = _sync_latency(ray, lambda: noop.remote(), c)
    return {"task_sync_p50_us": p50, "task_sync_p99_us": p99}


def _bench_task_batch(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    noop = fns["noop"]
    return {"task_batch_per_s": _batch_rate(ray, lambda: noop.remote(), c)}


def _new_actor(ray: ModuleType, fns: RemoteFns) -> Any:
    actor = fns["Echo"].remote()
    # Wait for the actor to be up so that its creation is not charged to the
    # first timed call.
    ray.get(actor.noop.remote())
    return actor


def _bench_actor_sync(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    actor = _new_actor(ray, fns)
    p50, p99 = _sync_latency(ray, lambda: actor.noop.remote(), c)
    return {"actor_sync_p50_us": p50, "actor_sync_p99_us": p99}


def _bench_actor_batch(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    actor = _new_actor(ray, fns)
    return {"actor_batch_per_s": _batch_rate(ray, lambda: actor.noop.remote(), c)}


def _bench_put_get_small(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    t0 = time.perf_counter()
    for i in range(c.small_puts):
        ray.get(ray.put(i))
    return {"put_get_small_per_s": c.small_puts / (time.perf_counter() - t0)}


def _large_array(c: Counts) -> np.ndarray:
    return np.ones(c.large_bytes // 8)


def _bench_put_large(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    arr = _large_array(c)
    rates: list[float] = []
    for _ in range(c.large_repeats):
        t0 = time.perf_counter()
        ref = ray.put(arr)
        dt = time.perf_counter() - t0
        # Drop the reference before the next put so the object store holds
        # one copy at a time and eviction or spilling never enters the figure.
        del ref
        # Decimal GB (1e9 bytes), the convention of the reference table.
        rates.append(arr.nbytes / dt / 1e9)
    return {"put_large_gb_per_s": float(np.median(rates))}


def _bench_task_large(ray: ModuleType, fns: RemoteFns, c: Counts) -> dict[str, float]:
    identity = fns["identity"]
    ref = ray.put(_large_array(c))
    times: list[float] = []
    for _ in range(c.large_repeats):
        t0 = time.perf_counter()
        out = ray.get(identity.remote(ref))
        times.append(time.perf_counter() - t0)
        del out
    del ref
    return {"task_large_ms": float(np.median(times)) * 1e3}


_RUNNERS: dict[str, Callable[[ModuleType, RemoteFns, Counts], dict[str, float]]] = {
    "task_sync": _bench_task_sync,
    "task_batch": _bench_task_batch,
    "actor_sync": _bench_actor_sync,
    "actor_batch": _bench_actor_batch,
    "put_get_small": _bench_put_get_small,
    "put_large": _bench_put_large,
    "task_large": _bench_task_large,
}


def parse_names(spec: str | None) -> list[str]:
    """Turn an ``--only`` value into benchmark names, in canonical run order."""
    if not spec:
        return list(BENCHMARKS)
    wanted = {n.strip() for n in spec.split(",") if n.strip()}
    unknown = sorted(wanted - set(BENCHMARKS))
    if unknown:
        raise ValueError(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return [n for n in BENCHMARKS if n in wanted]


def run_all(
    ray: ModuleType,
    names: Iterable[str],
    quick: bool,
    *,
    init_kwargs: dict[str, Any] | None = None,
    report: Reporter | None = None,
) -> dict[str, float]:
    """Initialise ``ray``, run the named benchmarks, shut down, return figures.

    Initialisation always happens (every benchmark needs it) and is always
    timed, but ``start_s`` is only reported when ``"start"`` is selected.

    Without ``report`` a failing benchmark raises.  With it, the failure is
    reported and the remaining benchmarks still run: a half-working runtime
    then still yields the figures it can.
    """
    selected = list(names)
    counts = QUICK if quick else FULL
    results: dict[str, float] = {}
    fns = _define(ray)
    try:
        t0 = time.perf_counter()
        ray.init(**(init_kwargs or {}))
        ray.get(fns["noop"].remote())
        start_s = time.perf_counter() - t0
        if "start" in selected:
            results["start_s"] = start_s
            if report is not None:
                report("start", {"start_s": start_s}, None)
        for name in selected:
            if name == "start":
                continue
            try:
                figures = _RUNNERS[name](ray, fns, counts)
            except Exception:
                if report is None:
                    raise
                report(name, None, traceback.format_exc())
                continue
            results.update(figures)
            if report is not None:
                report(name, figures, None)
    finally:
        try:
            ray.shutdown()
        except Exception:
            # A failed shutdown must not mask the benchmark's own outcome;
            # the orchestrator cleans up the child's processes anyway.
            traceback.print_exc()
    return results
