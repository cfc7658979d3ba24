"""Run the Fabric-versus-Ray microbenchmarks and print one table side by side.

    python -m benchmarks.run [--ray-python PATH] [--rounds N] [--only a,b]
                             [--quick] [--systems fabric,ray] [--json PATH]

Each (system, round) pair runs in a fresh subprocess, and rounds alternate
between the systems (fabric 1, ray 1, fabric 2, ray 2, ...) so that slow drift
on the machine (thermal, page cache, a noisy neighbour) lands on both sides
instead of on whichever ran second.  Each figure is the median across rounds.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):
    # Run as ``python benchmarks/run.py``: Python put benchmarks/ itself on the
    # path, not the repository root, so the package import below would fail.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import workloads

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEMS: tuple[str, ...] = ("fabric", "ray")
TITLES = {"fabric": "Fabric", "ray": "Ray"}
RAY_PYTHON_ENV = "FABRIC_BENCH_RAY_PYTHON"
STDERR_TAIL_LINES = 40
# Above this share of busy CPU before a child starts, its figures are flagged
# as taken on a machine that was not idle.
BUSY_WARNING = 0.25


@dataclass
class ChildRun:
    """What one subprocess produced; failures are data here, never exceptions."""

    system: str
    round: int
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)
    # benchmark name -> traceback text, for benchmarks that failed inside a
    # child that otherwise ran.
    errors: dict[str, str] = field(default_factory=dict)
    fatal: str | None = None
    version: str | None = None
    python: str | None = None
    stderr_tail: str = ""
    # Share of all CPUs busy in the second before the child started: the
    # figures are only comparable when the machine was otherwise idle, and
    # this is the cheapest evidence of whether it was.
    cpu_busy_before: float | None = None
    # Processes of the child's session still alive after the child exited.
    leftover: int = 0

    @property
    def ok(self) -> bool:
        return self.fatal is None and not self.errors and not self.timed_out

    def failed_benchmarks(self, selected: list[str]) -> set[str]:
        """Selected benchmarks that produced no figures in this run."""
        have = {f.benchmark for f in workloads.FIGURES if f.key in self.figures}
        return {n for n in selected if n not in have}

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "seconds": round(self.seconds, 3),
            "version": self.version,
            "python": self.python,
            "cpu_busy_before": self.cpu_busy_before,
            "leftover_processes": self.leftover,
            "figures": self.figures,
            "errors": self.errors,
            "fatal": self.fatal,
            "stderr_tail": None if self.ok else self.stderr_tail,
        }


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _child_env(system: str) -> dict[str, str]:
    env = dict(os.environ)
    root = str(REPO_ROOT)
    if system == "ray":
        # Only the repository root: the Ray interpreter must import
        # benchmarks._child, and nothing from this interpreter's path (which
        # may hold Fabric's dependencies in other versions) may leak into it.
        env["PYTHONPATH"] = root
        env["RAY_DISABLE_USAGE_STATS"] = "1"
    else:
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    # Children write JSON lines that the orchestrator reads as they come;
    # block buffering would hide the partial results of a child that hangs.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _session_members(sid: int) -> list[int]:
    """Pids of live processes in session ``sid``, read from /proc (Linux)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses, so
        # split after its closing parenthesis; session is then field 4.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[3] == str(sid):
            pids.append(int(entry.name))
    return pids


def _session_members_safe(sid: int) -> list[int]:
    try:
        return _session_members(sid)
    except OSError:
        return []


def _kill_tree(pid: int) -> None:
    # The child was started in its own session (sid == its pid), so the
    # session holds it and every runtime process it spawned.  Killing its
    # process group alone is not enough: runtimes move workers into process
    # groups of their own (Ray's workers do), but not out of the session.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        members = _session_members(pid)
    except OSError:
        # No /proc (not Linux): the process group kill above is all we have.
        return
    for member in members:
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _parse_output(run: ChildRun, stdout: str) -> None:
    done: dict[str, Any] | None = None
    for line in stdout.splitlines():
        line = line.strip()
        # Worker output forwarded to the driver can land on stdout too; only
        # lines of the child's own protocol are taken.
        if not line.startswith('{"event"'):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        event = obj.get("event")
        if event == "result":
            run.figures.update(obj.get("figures") or {})
        elif event == "error":
            run.errors[str(obj.get("benchmark"))] = str(obj.get("error"))
        elif event == "done":
            done = obj
    if done is not None:
        run.figures.update(done.get("figures") or {})
        run.errors.update(done.get("errors") or {})
        run.fatal = done.get("fatal")
        run.version = done.get("version")
        run.python = done.get("python")


def run_child(
    system: str,
    python: str,
    round_no: int,
    names: list[str],
    quick: bool,
    timeout: float,
    cpu_busy_before: float | None = None,
) -> ChildRun:
    """Run one system once in its own subprocess and collect its figures."""
    run = ChildRun(system=system, round=round_no, cpu_busy_before=cpu_busy_before)
    cmd = [python, "-m", "benchmarks._child", "--system", system, "--only", ",".join(names)]
    if quick:
        cmd.append("--quick")
    # Files rather than pipes: a runtime process that outlives the child and
    # inherited its stdout would keep a pipe open and stall the read forever.
    # errors="replace": a runtime that prints stray bytes must not turn the
    # whole child's output into a decoding error.
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out,
        tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err,
    ):
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=_child_env(system),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            run.fatal = f"could not start {python}: {exc}"
            return run
        try:
            run.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            _kill_tree(proc.pid)
            run.returncode = proc.wait()
        except BaseException:
            # Ctrl-C reaches only this process (the child has its own
            # session), so take the child's processes down with us.
            _kill_tree(proc.pid)
            raise
        run.seconds = time.perf_counter() - t0
        # Whatever the child left running (a crashed driver's daemons, or
        # workers a shutdown did not reap) would eat CPU during the next
        # child's run; record it, then end it.
        run.leftover = len(_session_members_safe(proc.pid))
        _kill_tree(proc.pid)
        stdout, stderr = _read(out), _read(err)
    _parse_output(run, stdout)
    run.stderr_tail = _tail(stderr)
    if run.timed_out:
        run.fatal = run.fatal or f"timed out after {timeout:.0f} s"
    elif run.returncode != 0 and run.fatal is None and not run.errors:
        run.fatal = f"exited with status {run.returncode}"
    return run


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # Fields: user nice system idle iowait irq softirq steal [guest...];
    # guest time is already inside user, so only the first eight count.
    values = values[:8]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _cpu_busy(window: float = 1.0) -> float | None:
    # Sampled over a short window right before a child, not the load average:
    # the 1-minute load average still carries the previous child's own work
    # and would blame it on the machine.
    try:
        busy0, total0 = _cpu_times()
        time.sleep(window)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0)


def _read(f: IO[str]) -> str:
    f.seek(0)
    return f.read()


def _median_figures(runs: list[ChildRun]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for fig in workloads.FIGURES:
        values = [r.figures[fig.key] for r in runs if fig.key in r.figures]
        if values:
            merged[fig.key] = statistics.median(values)
    return merged


def _fmt(value: float) -> str:
    # Enough digits to compare, no more: a microsecond of noise on a 400 us
    # latency is not information.
    mag = abs(value)
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if mag >= 1 else f"{value:.3f}"


def _cell(
    system: str,
    key: str,
    medians: dict[str, dict[str, float]],
    status: dict[str, str],
    partial: set[tuple[str, str]],
) -> str:
    if system not in medians:
        return status.get(system, "n/a")
    value = medians[system].get(key)
    if value is None:
        return "error"
    # A median over the surviving rounds only is still shown, but marked:
    # it may be the lucky round of a flaky benchmark.
    return _fmt(value) + ("*" if (system, key) in partial else "")


def _ratio(fig: workloads.Figure, medians: dict[str, dict[str, float]]) -> str:
    direction = "lower is better" if fig.lower_is_better else "higher is better"
    fab = medians.get("fabric", {}).get(fig.key)
    ray = medians.get("ray", {}).get(fig.key)
    if fab is None or ray is None or ray == 0:
        return f"- ({direction})"
    ratio = fab / ray
    arrow = "v" if fig.lower_is_better else "^"
    return f"{ratio:.2f} {arrow} ({direction})"


def render_table(
    names: list[str],
    medians: dict[str, dict[str, float]],
    status: dict[str, str],
    partial: set[tuple[str, str]] | None = None,
) -> str:
    """The side-by-side table: figure | Fabric | Ray | Fabric/Ray.

    ``partial`` holds (system, figure key) pairs measured in only some rounds.
    """
    partial = partial or set()
    header = ("figure", "Fabric", "Ray", "Fabric/Ray")
    rows = [
        (
            fig.label,
            _cell("fabric", fig.key, medians, status, partial),
            _cell("ray", fig.key, medians, status, partial),
            _ratio(fig, medians),
        )
        for fig in workloads.FIGURES
        if fig.benchmark in names
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, str, str, str]) -> str:
        # Labels left-aligned, numbers right-aligned so digits line up.
        return " | ".join(
            c.ljust(w) if i in (0, 3) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    sep = "-+-".join("-" * w for w in widths)
    out = [line(header), sep, *(line(r) for r in rows)]
    if partial:
        out.append("* median of the rounds that produced the figure; the others failed")
    return "\n".join(out)


def _log(msg: str) -> None:
    # Progress goes to stderr so that stdout carries only the table.
    print(msg, file=sys.stderr, flush=True)


def _report_failure(run: ChildRun, names: list[str]) -> None:
    what = run.fatal or "benchmark(s) failed: " + ", ".join(sorted(run.errors))
    _log(f"  {TITLES[run.system]} round {run.round} failed: {what.strip().splitlines()[-1]}")
    missing = sorted(run.failed_benchmarks(names))
    if missing:
        _log(f"  no figures for: {', '.join(missing)}")
    if run.stderr_tail:
        _log("  --- stderr tail ---")
        for ln in run.stderr_tail.splitlines():
            _log("  " + ln)
        _log("  -------------------")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Fabric versus Ray Core microbenchmarks, side by side.",
    )
    p.add_argument(
        "--ray-python",
        metavar="PATH",
        default=os.environ.get(RAY_PYTHON_ENV),
        help=f"Python interpreter with Ray installed (default: ${RAY_PYTHON_ENV}); "
        "without one, the Ray column is skipped",
    )
    p.add_argument(
        "--fabric-python",
        metavar="PATH",
        default=sys.executable,
        help="Python interpreter with Fabric installed (default: this one)",
    )
    p.add_argument(
        "--rounds", type=int, default=2, metavar="N", help="rounds per system (default: 2)"
    )
    p.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        default=None,
        help="comma-separated benchmarks to run: " + ",".join(workloads.BENCHMARKS),
    )
    p.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    p.add_argument(
        "--systems",
        metavar="SYSTEM[,SYSTEM]",
        default=",".join(SYSTEMS),
        help="comma-separated systems to run (default: fabric,ray)",
    )
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=600.0,
        help="seconds allowed for each child run (default: 600)",
    )
    p.add_argument("--json", metavar="PATH", default=None, help="write the raw figures here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    try:
        args.names = workloads.parse_names(args.only)
    except ValueError as exc:
        p.error(str(exc))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        p.error(f"--systems takes a subset of {','.join(SYSTEMS)}")
    # Canonical order keeps the interleaving fabric-first whatever was typed.
    args.system_list = [s for s in SYSTEMS if s in systems]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    names: list[str] = args.names
    status: dict[str, str] = {}
    interpreters: dict[str, str] = {}
    for system in args.system_list:
        if system == "ray":
            if not args.ray_python:
                status["ray"] = "skipped"
                _log(f"Ray skipped: no --ray-python given and ${RAY_PYTHON_ENV} is not set")
                continue
            interpreters["ray"] = args.ray_python
        else:
            interpreters["fabric"] = args.fabric_python
    for system in SYSTEMS:
        status.setdefault(system, "not run")

    runs: dict[str, list[ChildRun]] = {s: [] for s in interpreters}
    for round_no in range(1, args.rounds + 1):
        for system, python in interpreters.items():
            _log(f"round {round_no}/{args.rounds}: {TITLES[system]} ...")
            busy = _cpu_busy()
            if busy is not None and busy > BUSY_WARNING:
                _log(
                    f"  warning: CPUs {busy:.0%} busy before the start; "
                    "other work on this machine will skew the figures"
                )
            run = run_child(system, python, round_no, names, args.quick, args.timeout, busy)
            runs[system].append(run)
            if run.ok:
                _log(f"  done in {run.seconds:.1f} s")
            else:
                _report_failure(run, names)
            if run.leftover:
                _log(f"  note: {run.leftover} process(es) outlived the child; killed")

    medians = {s: _median_figures(rs) for s, rs in runs.items()}
    versions = {s: next((r.version for r in rs if r.version), None) for s, rs in runs.items()}
    title_bits = [f"{TITLES[s]} {v or '?'}" for s, v in versions.items()]
    print()
    print(
        f"{' vs '.join(title_bits) or 'nothing run'}; num_cpus=2; "
        f"median of {args.rounds} round(s){'; quick counts' if args.quick else ''}"
    )
    partial = {
        (s, key)
        for s, rs in runs.items()
        for key in medians[s]
        if sum(key in r.figures for r in rs) < len(rs)
    }
    print(render_table(names, medians, status, partial))

    if args.json:
        payload = {
            "quick": args.quick,
            "rounds": args.rounds,
            "benchmarks": names,
            "figures": {
                f.key: {"label": f.label, "lower_is_better": f.lower_is_better}
                for f in workloads.FIGURES
                if f.benchmark in names
            },
            "systems": {
                s: {
                    "python": interpreters[s],
                    "version": versions[s],
                    "median": medians[s],
                    "runs": [r.to_json() for r in runs[s]],
                }
                for s in runs
            },
            "skipped": [s for s in SYSTEMS if s not in runs],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        _log(f"raw figures written to {args.json}")

    # Non-zero when any selected figure of a system that ran is missing, so a
    # smoke test can rely on the exit status alone.
    wanted = [f.key for f in workloads.FIGURES if f.benchmark in names]
    incomplete = any(key not in medians[s] for s in runs for key in wanted)
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
