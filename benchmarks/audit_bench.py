"""What the audit log costs: durable appends per second, query latency at scale, verify time.

    python -m benchmarks.audit_bench [--entries N] [--dir /tmp] [--keep]

1. Appends with durability on (SQLite WAL, synchronous=FULL, one transaction per batch) to a
   fresh file, in batches of 100 and of 1000, and in batches of 100 each followed by a signed
   checkpoint; entries are built before the clock starts.
2. A store of N entries (default 1,000,000) built in batches of 5,000, about three entries per
   task (admit, place, finish), a tenth of them nested under another task.
3. Query by task id and explain() of a task on that store: p50 / p99 over 1,000 random tasks;
   prove() plus the offline check_proof() of a bundle likewise.
4. verify_log() of the whole store: every entry decoded, the tree recomputed, checkpoints
   checked.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric.audit import AuditLog, Entry, Query, SqliteAuditStore, check_proof, verify_log

ORIGIN = "fabric.local/audit"
KINDS = ("admit", "place", "task.finish")
T0 = datetime(2026, 11, 26, tzinfo=UTC)


def filesystem_of(path: Path) -> str:
    """The type and mount point of the filesystem holding `path`, from /proc/self/mounts."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                _, mount, fstype, *_ = line.split()
                if (real + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return f"{kind} (mounted at {best or '?'})"


def entries(start: int, count: int) -> Iterator[Entry]:
    """Entry `i` is step i % 3 of task i // 3; a tenth of the tasks are nested, their
    admission naming the place entry of an earlier task."""
    for i in range(start, start + count):
        task, step = divmod(i, 3)
        tenant = f"tenant-{task % 10}"
        parent = ""
        if step == 0 and task % 10 == 9 and task > 10:
            parent = f"node-{(task - 7) % 4}/boot-1/{(task - 7) * 3 + 1}"
        yield Entry(
            id=f"node-{task % 4}/boot-1/{i}",
            time=(T0 + timedelta(microseconds=i * 250)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            kind=KINDS[step],
            tenant=tenant,
            identity=f"spiffe://fabric/tenant/{tenant}",
            fingerprint=f"{task % 10:064x}",
            job=f"{task // 100:016x}",
            task=f"{task:016x}",
            objects=(f"{task:016x}{step:016x}",) if step == 2 else (),
            function=f"{task % 50:064x}",
            outcome=("place", "queue", "refuse")[step if task % 20 else 2],
            rules=(("tenant.admit", "place.local-fits", "task.finished")[step],),
            reasons=(f"step {step} of task {task}",),
            inputs=f"{i:064x}",
            policy="3f2a9c0d11b2e4f5",
            node=f"node-{task % 4}",
            parent=parent,
        )


def fresh_log(directory: Path, name: str, key: Ed25519PrivateKey) -> AuditLog:
    path = directory / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return AuditLog(SqliteAuditStore(path), ORIGIN, key, "fabric.local")


def append_rate(
    directory: Path,
    key: Ed25519PrivateKey,
    batch: int,
    total: int,
    sign: bool = False,
    index: bool = False,
) -> float:
    """Entries per second appended in batches of `batch`; with `sign`, a checkpoint is signed
    and stored after every batch; with `index`, the query indexes are built too (the head
    builds them when appends pause, so a sustained rate pays for both)."""
    batches = [list(entries(start, batch)) for start in range(0, total, batch)]
    with fresh_log(directory, f"append-{batch}-{sign}.db", key) as log:
        started = time.perf_counter()
        for chunk in batches:
            log.append(chunk)
            if sign:
                log.checkpoint()
        if index:
            log.index()
        elapsed = time.perf_counter() - started
    return total / elapsed


def latencies(operation: Callable[[], object], samples: int) -> tuple[float, float]:
    """p50 and p99 of `operation`, in milliseconds."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        operation()
        times.append((time.perf_counter() - started) * 1e3)
    cuts = statistics.quantiles(times, n=100)
    return cuts[49], cuts[98]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the database files")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    key = Ed25519PrivateKey.generate()
    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir))
    print(f"files in {directory}, filesystem {filesystem_of(directory)}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    try:
        for batch, total, sign, index in (
            (100, 50_000, False, False),
            (1000, 100_000, False, False),
            (100, 50_000, True, False),
            (1000, 100_000, False, True),
        ):
            rate = append_rate(directory, key, batch, total, sign, index)
            then = ", each then checkpointed" if sign else ", then indexed" if index else ""
            print(
                f"append, durable, batches of {batch:>4}{then}: {rate:>9,.0f} entries/s ({total:,})"
            )

        n = args.entries
        print(f"building a store of {n:,} entries in batches of 5,000 ...", flush=True)
        log = fresh_log(directory, "large.db", key)
        started = time.perf_counter()
        for start in range(0, n, 5000):
            log.append(list(entries(start, min(5000, n - start))))
            if start % 100_000 == 0:
                log.checkpoint()
        log.checkpoint()
        built = time.perf_counter() - started
        started = time.perf_counter()
        log.index()
        indexed = time.perf_counter() - started
        size = os.path.getsize(directory / "large.db")
        print(f"  built in {built:.1f} s ({n / built:,.0f} entries/s), {size / 1e6:,.0f} MB")
        print(f"  indexed for queries in {indexed:.1f} s ({n / indexed:,.0f} entries/s)")

        tasks = [f"{rng.randrange(n // 3):016x}" for _ in range(1000)]
        picks = iter(tasks * 2)
        p50, p99 = latencies(lambda: list(log.query(Query(task=next(picks)))), 1000)
        print(f"query by task at {n:,} entries: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        picks = iter(tasks)
        p50, p99 = latencies(lambda: log.explain(next(picks)), 1000)
        print(f"explain a task at {n:,} entries: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        seqs = iter(rng.randrange(n) for _ in range(1000))
        vkey = log.vkey
        p50, p99 = latencies(lambda: check_proof(log.prove(next(seqs)), vkey), 1000)
        print(f"prove + check_proof at {n:,} entries: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        log.close()

        store = SqliteAuditStore(directory / "large.db")
        started = time.perf_counter()
        report = verify_log(store, vkey)
        elapsed = time.perf_counter() - started
        store.close()
        print(f"verify_log of {n:,} entries: {elapsed:.1f} s, {'ok' if report.ok else 'FAILED'}")
        if not report.ok:
            print(report.diagnostics())
            return 1
        return 0
    finally:
        if not args.keep:
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()


if __name__ == "__main__":
    sys.exit(main())
