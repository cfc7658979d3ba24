"""Subprocess entry point: run the workloads on one system and print JSON.

    python -m benchmarks._child --system fabric|ray [--only a,b] [--quick]

Each system runs in its own process (started by ``benchmarks.run``) so the two
never share an interpreter, import state, threads or leftover workers.

Output protocol, on stdout, one JSON object per line:
  {"event": "result", "benchmark": ..., "figures": {...}}   after each benchmark
  {"event": "error", "benchmark": ..., "error": "..."}       a benchmark failed
  {"event": "done", "system": ..., "figures": {...}, ...}    always the last line
The per-benchmark lines let the orchestrator keep finished figures when the
child later hangs and is killed.  Anything else on stdout (such as worker log
lines forwarded to the driver) is ignored by the orchestrator.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import traceback
from typing import Any

# The workloads' import is the only package-relative one here; it works both
# as ``python -m benchmarks._child`` and from the Ray interpreter, which gets
# the repository root on PYTHONPATH.
from benchmarks import workloads

# Fabric as a tenant gets it out of the box, Fabric under a two-tenant policy, Fabric with
# its audit log off (a baseline only), and Ray.
VARIANTS = ("fabric", "fabric-policy", "fabric-budget", "fabric-noaudit", "ray")
# Both systems get the same two CPUs, so scheduling parallelism is equal.
NUM_CPUS = 2


def _emit(obj: dict[str, Any]) -> None:
    # Flushed per line: on a timeout the orchestrator reads whatever arrived.
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _init_kwargs(system: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_cpus": NUM_CPUS}
    if system == "ray":
        # The dashboard is an extra process and HTTP server that Fabric does
        # not start; leaving it on would charge Ray for something unrelated
        # to the figures.
        kwargs["include_dashboard"] = False
    # Fabric gets no address, so it runs embedded with its defaults (mTLS on):
    # the figures describe what a tenant gets out of the box.
    return kwargs


def _version(name: str, module: Any) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    # Fabric's package may not define __version__; its distribution metadata
    # (pyproject.toml) is the authoritative number anyway.
    dist = {"fabric": "fabric-compute"}.get(name, name)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the benchmark workloads on one system and print JSON lines."
    )
    parser.add_argument("--system", choices=VARIANTS, required=True)
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--quick", action="store_true", help="small counts, for smoke tests")
    args = parser.parse_args(argv)

    if args.system == "ray":
        # Keep Ray from phoning home; set here too so a direct run of this
        # module behaves like a run through the orchestrator.
        os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

    names = workloads.parse_names(args.only)
    errors: dict[str, str] = {}

    def report(name: str, figures: dict[str, float] | None, error: str | None) -> None:
        if error is not None:
            errors[name] = error
            sys.stderr.write(f"benchmark {name} failed:\n{error}")
            _emit({"event": "error", "benchmark": name, "error": error})
        else:
            _emit({"event": "result", "benchmark": name, "figures": figures})

    done: dict[str, Any] = {
        "event": "done",
        "system": args.system,
        "quick": args.quick,
        "python": platform.python_version(),
    }
    module = "ray" if args.system == "ray" else "fabric"
    governed = None
    try:
        if args.system == "fabric-policy":
            governed = _governed_cluster()
        elif args.system == "fabric-budget":
            governed = _governed_cluster(BUDGETS)
        elif args.system == "fabric-noaudit":
            governed = _unaudited_cluster()
        # importlib rather than ``import fabric as ray`` / ``import ray``: the
        # module is chosen at run time and only that one must be importable.
        system = importlib.import_module(module)
        done["version"] = _version(module, system)
        figures = workloads.run_all(
            system, names, args.quick, init_kwargs=_init_kwargs(module), report=report
        )
    except Exception:
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        done.update(figures={}, errors=errors, fatal=tb)
        _emit(done)
        return 1
    finally:
        if governed is not None:
            governed.stop()
    done.update(figures=figures, errors=errors)
    _emit(done)
    return 1 if errors else 0


def _unaudited_cluster() -> Any:
    """The embedded default's cluster (one node, two CPUs, tenant default), with agents
    that record no decisions: the baseline for what the audit log costs."""
    from fabric._cluster import LocalCluster, NodeSpec

    cluster = LocalCluster([NodeSpec("node-1", "local", {"CPU": float(NUM_CPUS)})], audit=False)
    cluster.start()
    os.environ["FABRIC_ADDRESS"] = cluster.agent_addresses["node-1"]
    os.environ["FABRIC_CERTS"] = str(cluster.certs_dir)
    os.environ["FABRIC_IDENTITY"] = "tenant/default"
    return cluster


POLICY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# Budgets for alice in the "fabric-budget" variant: every task runs under a budget the
# monitor arms and checks, and her CPU seconds and tasks are leased from the head.
BUDGETS = {
    "cpu_seconds": 100000,
    "window": "1h",
    "total_tasks": 10000000,
    "memory": "16GiB",
    "processes": 1000,
    "task": {"cpu_seconds": 60, "memory": "4GiB", "wall_seconds": 600, "processes": 64},
    "actor": {"memory": "4GiB"},
}


def _governed_cluster(budgets: dict[str, Any] | None = None) -> Any:
    """The same one-node, two-CPU cluster as the embedded default, but under the
    two-tenant, three-region policy, with the driver connected as tenant alice (whose
    data must stay in the EU): every submit, placement, put and get goes through the
    policy's admission, residency and region rules. `init()` then connects to it.
    With `budgets`, alice has those budgets too."""
    import tempfile

    import yaml

    from fabric._cluster import LocalCluster, NodeSpec

    policy = os.path.join(POLICY, "policy-two-tenants.yaml")
    if budgets is not None:
        with open(policy) as source:
            document = yaml.safe_load(source)
        document["tenants"]["alice"]["budgets"] = budgets
        handle, policy = tempfile.mkstemp(suffix=".yaml", prefix="fabric-bench-policy-")
        with os.fdopen(handle, "w") as out:
            yaml.safe_dump(document, out)
    cluster = LocalCluster(
        [NodeSpec("eu-west-1", "eu-west", {"CPU": float(NUM_CPUS)})],
        tenants=["alice", "bob"],
        policy=policy,
    )
    cluster.start()
    os.environ["FABRIC_ADDRESS"] = cluster.agent_addresses["eu-west-1"]
    os.environ["FABRIC_CERTS"] = str(cluster.certs_dir)
    os.environ["FABRIC_IDENTITY"] = "tenant/alice"
    return cluster


if __name__ == "__main__":
    sys.exit(main())
