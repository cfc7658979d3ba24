"""How long Fabric takes to recover: a chain of tasks lost with its node, and a head restart.

    python -m benchmarks.recovery [--rounds N] [--chain 10] [--only chain,open,restart]
                                  [--cold] [--json PATH]

Every round starts clusters of its own (real head and agent processes on loopback, mutual
TLS, the audit log on, workers under their tenant's uid when run as root), so no round
inherits another's state; the scenarios of a round run one after another, interleaved
with the other rounds'. Three scenarios:

- chain: a head, ``us-1`` (us-east) with the driver, and ``eu-1`` (eu-central), both with
  the ``work`` resource, under the residency policy of ``tests/test_lineage.py``: alice's
  data may live only in the EU, so a chain of ``--chain`` tasks, each taking the last one's
  512 KiB array, runs on ``eu-1`` (us-1 is idle and could run it: the policy decides), and
  its results exist only there, never on the driver's node. Only the last link's ref is
  held, as in a real chain; its lineage keeps the others. Only once the chain has finished
  does ``eu-2`` (eu-central, ``work`` too) join. Why late: a second EU node from the start
  would take some of the links, and one without ``work`` could not take the rebuild; joining
  late, it holds no copy of anything and is the only place the rebuild may go, and nothing
  steers placement but the policy and the order of events. (Its agent is started as
  ``LocalCluster`` starts its own, with a certificate from the cluster's CA.) Then ``eu-1``
  is killed (SIGKILL to its process group) and a ``check`` of the last link is submitted at
  once. The figure is the time from the kill until that check, which can run only once
  every link was rebuilt on ``eu-2``, has written "ok" to its report file (polled every
  5 ms). The data may not reach the driver, so the check reports in a file and the first
  run is waited for through the head's audit log, as the test does. From the audit log
  (entry times are the recorders' UTC clocks, this machine's, as ``time.time()``) come the
  parts: the head's ``node.loss`` entry, the owner's first ``object.rebuild``, and the last
  rebuilt link's ``task.finish``; and the chain's first run, submit to its last finish, as a
  yardstick for the rebuild.
- open: the same under the open default policy, ``us-1`` without ``work`` so that the
  chain still runs on ``eu-1``, and the driver getting the last link before the kill, so
  its owner ``us-1`` holds a copy of it: the check needs nothing rebuilt. The figures say
  how soon it is answered, and what is rebuilt anyway.
- restart: a head and two nodes, the driver on ``node-1``. The figures: how long
  ``LocalCluster.restart_head()`` takes (SIGKILL to the new head serving; the new
  interpreter is started before the kill, as the cluster does), when each node registered
  again with the new head (its ``node.join`` entry, from the kill), and how long a task
  submitted right after the restart takes on ``node-1`` and on ``node-2`` (forwarded there
  by ``node-1``), with the same tasks before the kill for comparison. A restarted head shows
  the nodes of its last run as alive before they reconnect (so that no agent fails over
  work meanwhile), and so do the agents' views: neither says when a node is back, the joins
  do.

Before the kill, two workers are started on each EU node (``--cold``: not), as a surviving
node in use has them: a worker's cold start (0.8 s to 2 s here, with other work on the
machine) is then not part of the figures. The table shows p50 and max over the rounds;
``--json`` writes every round's figures and the load average before the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from fabric.audit import Entry, decode

import fabric
from fabric._cluster import LocalCluster, NodeSpec, agent_command, spawn, terminate, wait_ready
from fabric._object_store import default_store_root
from fabric._pki import CertificateAuthority, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel

TIMEOUT = 60.0
POLL = 0.005  # seconds between looks at a report file
ELEMENTS = 64 * 1024  # float64: 512 KiB, stored on the node that made it, not inline
WORK: dict[str, float] = {"work": 1}

RESIDENCY_POLICY = Path(__file__).resolve().parent.parent / "configs" / "policy-eu-only.yaml"


# ----------------------------------------------------------------------------- remote code


@fabric.remote
def zeros(elements: int) -> np.ndarray:
    return np.zeros(elements)


@fabric.remote
def step(array: np.ndarray) -> np.ndarray:
    return array + 1


@fabric.remote
def check(array: np.ndarray, expected: float, report: str) -> None:
    with open(report, "w") as f:
        f.write("ok" if array.shape == (ELEMENTS,) and np.all(array == expected) else "wrong")


@fabric.remote
def one() -> int:
    return 1


@fabric.remote
def warm(seconds: float) -> None:
    time.sleep(seconds)


# ----------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll `condition` until it is truthy and return its value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def wall(entry: Entry) -> float:
    """An entry's time (RFC 3339, UTC) as seconds since the epoch, as `time.time()`."""
    return datetime.fromisoformat(entry.time.replace("Z", "+00:00")).timestamp()


def audit(cluster: LocalCluster, kind: str, after: int = -1) -> list[Entry]:
    """The head's entries of `kind` after seq `after`, read as the operator."""
    creds = Credentials.load(cluster.operator_credentials())
    request = pb.AuditQuery(kind=kind, after_seq=after)
    with secure_channel(cluster.head_address, creds) as channel:
        stream = rpc.HeadStub(channel).QueryAudit(request, timeout=TIMEOUT)
        return [decode(item.data) for item in stream]


def last_seq(cluster: LocalCluster) -> int:
    """The seq of the newest entry the head holds: what comes after it is a later step's."""
    return max((e.seq for e in audit(cluster, "")), default=-1)


def alive_nodes() -> set[str]:
    """The nodes alive in the view of the driver's agent."""
    return {n["NodeID"] for n in fabric.nodes() if n["Alive"]}


@contextlib.contextmanager
def driver(cluster: LocalCluster, node: str, tenant: str) -> Iterator[None]:
    fabric.init(
        address=cluster.agent_addresses[node], certs=cluster.certs_dir, identity=f"tenant/{tenant}"
    )
    try:
        yield
    finally:
        fabric.shutdown()


@contextlib.contextmanager
def late_agent(cluster: LocalCluster, spec: NodeSpec) -> Iterator[subprocess.Popen[bytes]]:
    """An agent for `spec` joining `cluster` now, with a certificate from the cluster's CA,
    started the way `LocalCluster` starts its own (without the prestart), stopped on exit."""
    CertificateAuthority.load(cluster.certs_dir).issue("node", spec.node_id)
    store = Path(tempfile.mkdtemp(prefix="fabric-bench-", dir=default_store_root()))
    os.chmod(store, 0o711)  # as the cluster's: workers under their tenant's uid reach it
    ready = cluster.base_dir / "run" / f"{spec.node_id}.json"
    cmd = agent_command(
        cluster.head_address,
        f"{cluster.host}:0",
        cluster.certs_dir,
        spec.node_id,
        spec.region,
        spec.resources,
        spec.labels,
        ready,
        store,
        state_dir=cluster.base_dir / spec.node_id,
    )
    launch = spawn(spec.node_id, cmd, ready, cluster.log_path(spec.node_id))
    try:
        wait_ready([launch], TIMEOUT)
        yield launch.process
    finally:
        terminate([launch.process])
        shutil.rmtree(store, ignore_errors=True)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A directory the tasks' workers can write to whatever uid they run under."""
    path = Path(tempfile.mkdtemp(prefix="fabric-bench-recovery-"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_report(report: Path, since: float) -> float:
    """Seconds from `since` (monotonic) until `report` says "ok"."""
    deadline = since + TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            text = report.read_text()
            if text == "ok":
                return time.monotonic() - since
            if text:
                raise RuntimeError(f"the check found {text!r}")
        time.sleep(POLL)
    raise RuntimeError(f"no report from the check within {TIMEOUT:g} s")


# ----------------------------------------------------------------------------- scenarios


def finished(cluster: LocalCluster, tasks: set[str], after: int = -1) -> list[Entry]:
    """The `task.finish` entries of `tasks` after seq `after` once every one has one, else
    [] (results that may not come to the driver say so only in the audit log)."""
    found = [e for e in audit(cluster, "task.finish", after) if e.task in tasks]
    return found if {e.task for e in found} == tasks else []


def warm_up(cluster: LocalCluster, node: str) -> None:
    """Start two workers on `node` (as many as the chain and its check use at once), so
    that the figures leave out a worker's cold start, which a surviving node in use has
    behind it."""
    pinned = warm.options(resources={f"node:{node}": 1})
    tasks = {pinned.remote(0.2).task_id().hex() for _ in range(2)}
    wait_for(lambda: finished(cluster, tasks), f"the workers of {node} to start")


def lost_chain(length: int, residency: bool, cold: bool) -> dict[str, float]:
    """One round of `chain` (residency) or `open`; figures in seconds, counts as floats."""
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(scratch())
        policy = None
        tenant = "default"
        if residency:
            policy = RESIDENCY_POLICY
            tenant = "alice"
        nodes = [
            NodeSpec("us-1", "us-east", {"CPU": 2.0, "work": 100.0} if residency else {"CPU": 2.0}),
            NodeSpec("eu-1", "eu-central", {"CPU": 2.0, "work": 100.0, "node:eu-1": 100.0}),
        ]
        cluster = stack.enter_context(LocalCluster(nodes, policy=policy, tenants=(tenant,)))
        late = stack.enter_context(contextlib.ExitStack())  # stopped after the driver
        stack.enter_context(driver(cluster, "us-1", tenant))
        wait_for(lambda: alive_nodes() == {"us-1", "eu-1"}, "us-1 to see eu-1")
        if not cold:
            warm_up(cluster, "eu-1")

        mark = last_seq(cluster)
        started = time.time()
        last = zeros.options(resources=WORK).remote(ELEMENTS)
        tasks = {last.task_id().hex()}
        for _ in range(1, length):
            last = step.options(resources=WORK).remote(last)
            tasks.add(last.task_id().hex())
        # Only the last link is held: the others are kept by its lineage, as in a real chain.
        if not residency:
            assert float(fabric.get(last, timeout=TIMEOUT)[0]) == length - 1  # a copy on us-1
        first = wait_for(lambda: finished(cluster, tasks, mark), "the chain to finish")
        if {e.node for e in first} != {"eu-1"}:
            raise RuntimeError(f"the chain ran on {sorted({e.node for e in first})}, not eu-1")
        first_run = max(wall(e) for e in first) - started

        eu_2 = NodeSpec("eu-2", "eu-central", {"CPU": 2.0, "work": 100.0, "node:eu-2": 100.0})
        late.enter_context(late_agent(cluster, eu_2))
        wait_for(lambda: "eu-2" in alive_nodes(), "us-1 to see eu-2")
        if not cold:
            warm_up(cluster, "eu-2")

        mark = last_seq(cluster)
        report = work / "report"
        killed = time.time()
        since = time.monotonic()
        cluster.kill_agent("eu-1")
        check.options(resources=WORK).remote(last, float(length - 1), str(report))
        recovered = wait_report(report, since)

        losses = wait_for(
            lambda: [e for e in audit(cluster, "node.loss", mark) if e.identity.endswith("/eu-1")],
            "the head's node.loss entry",
        )
        rebuilds = {e.task: e for e in audit(cluster, "object.rebuild", mark) if e.task in tasks}
        # Links rebuilt in the background may finish after the check.
        again = (
            wait_for(lambda: finished(cluster, set(rebuilds), mark), "the rebuilds to finish")
            if rebuilds
            else []
        )
        if rebuilds and {e.node for e in again} != {"eu-2"}:
            raise RuntimeError(f"links ran again on {sorted({e.node for e in again})}")
        figures = {
            "first_run_s": first_run,
            "recovered_s": recovered,
            "loss_declared_s": wall(losses[0]) - killed,
            "rebuilt_links": float(len(rebuilds)),
        }
        if rebuilds:
            figures["first_rebuild_s"] = min(wall(e) for e in rebuilds.values()) - killed
            figures["last_link_rebuilt_s"] = max(wall(e) for e in again) - killed
        return figures


def head_restart() -> dict[str, float]:
    """One round of `restart`; seconds, task latencies in milliseconds."""
    names = ("node-1", "node-2")
    nodes = [NodeSpec(n, "local", {"CPU": 2.0, f"node:{n}": 1000.0}) for n in names]
    on_node_2 = one.options(resources={"node:node-2": 1})
    with LocalCluster(nodes) as cluster, driver(cluster, "node-1", "default"):
        wait_for(lambda: alive_nodes() == set(names), "node-1 to see node-2")

        def timed(remote: Any) -> float:
            begin = time.monotonic()
            assert fabric.get(remote.remote(), timeout=TIMEOUT) == 1
            return (time.monotonic() - begin) * 1000

        for _ in range(3):  # workers started on both nodes
            timed(one)
            timed(on_node_2)
        # node-1 counts what it forwarded against node-2's free CPUs for half a second
        # (SENT_MEMORY), reports or not: a third forward within that wait for it. The task
        # after the restart comes at least that long after the last forward; so does this.
        time.sleep(1.0)
        before_local, before_remote = timed(one), timed(on_node_2)
        mark = last_seq(cluster)

        killed = time.time()
        begin = time.monotonic()
        cluster.restart_head()
        serving = time.monotonic() - begin
        after_local, after_remote = timed(one), timed(on_node_2)

        def rejoined() -> list[Entry]:
            joins = audit(cluster, "node.join", mark)
            return joins if {e.identity.rpartition("/")[2] for e in joins} >= set(names) else []

        joins = wait_for(rejoined, "both nodes to register with the new head")
        return {
            "serving_s": serving,
            "first_rejoin_s": min(wall(e) for e in joins) - killed,
            "all_rejoined_s": max(wall(e) for e in joins) - killed,
            "task_local_before_ms": before_local,
            "task_local_after_ms": after_local,
            "task_remote_before_ms": before_remote,
            "task_remote_after_ms": after_remote,
        }


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Figure:
    scenario: str
    key: str
    label: str
    unit: str


FIGURES = [
    Figure("chain", "first_run_s", "chain of N on eu-1, first run: submit to last finish", "s"),
    Figure("chain", "recovered_s", "lost chain: kill to check ok", "s"),
    Figure("chain", "loss_declared_s", "  kill to head's node.loss", "s"),
    Figure("chain", "first_rebuild_s", "  kill to owner's first object.rebuild", "s"),
    Figure("chain", "last_link_rebuilt_s", "  kill to last link finished again", "s"),
    Figure("chain", "rebuilt_links", "  links rebuilt", ""),
    Figure("open", "first_run_s", "open policy, first run: submit to last finish", "s"),
    Figure("open", "recovered_s", "open policy: kill to check ok", "s"),
    Figure("open", "loss_declared_s", "  kill to head's node.loss", "s"),
    Figure("open", "rebuilt_links", "  links rebuilt", ""),
    Figure("restart", "serving_s", "head restart: kill -9 to new head serving", "s"),
    Figure("restart", "first_rejoin_s", "  kill to first node registered again", "s"),
    Figure("restart", "all_rejoined_s", "  kill to both nodes registered again", "s"),
    Figure("restart", "task_local_before_ms", "task on node-1, before the kill", "ms"),
    Figure("restart", "task_local_after_ms", "task on node-1, right after the restart", "ms"),
    Figure("restart", "task_remote_before_ms", "task on node-2, before the kill", "ms"),
    Figure("restart", "task_remote_after_ms", "task on node-2, right after the restart", "ms"),
]


def print_table(rounds: dict[str, list[dict[str, float]]], chain: int) -> None:
    print(f"{'figure':<58}{'p50':>9}{'max':>9}{'rounds':>8}")
    for fig in FIGURES:
        values = [r[fig.key] for r in rounds.get(fig.scenario, []) if fig.key in r]
        if not values:
            continue
        label = fig.label.replace("chain of N", f"chain of {chain}")
        label = f"{label} ({fig.unit})" if fig.unit else label
        digits = 0 if not fig.unit else (1 if fig.unit == "ms" else 2)
        print(
            f"{label:<58}{statistics.median(values):>9.{digits}f}"
            f"{max(values):>9.{digits}f}{len(values):>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chain", type=int, default=10, help="tasks in the chain")
    parser.add_argument("--only", default="chain,open,restart")
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    parser.add_argument(
        "--cold", action="store_true", help="no warm-up: the EU nodes start workers on demand"
    )
    args = parser.parse_args(argv)
    scenarios: dict[str, Callable[[], dict[str, float]]] = {
        "chain": lambda: lost_chain(args.chain, residency=True, cold=args.cold),
        "open": lambda: lost_chain(args.chain, residency=False, cold=args.cold),
        "restart": head_restart,
    }
    chosen = [s for s in args.only.split(",") if s]
    unknown = sorted(set(chosen) - set(scenarios))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    load = os.getloadavg()
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load[0]:.1f} before the run: the figures will scatter",
            file=sys.stderr,
        )
    rounds: dict[str, list[dict[str, float]]] = {s: [] for s in chosen}
    errors: list[str] = []
    for round_no in range(1, args.rounds + 1):
        for name in chosen:  # interleaved, so drift on the machine is shared
            print(f"round {round_no}/{args.rounds}: {name} ...", file=sys.stderr)
            try:
                figures = scenarios[name]()
            except Exception as e:  # one failed round does not stop the run
                errors.append(f"round {round_no} {name}: {e}")
                print(f"  failed: {e}", file=sys.stderr)
                continue
            print("  " + json.dumps({k: round(v, 4) for k, v in figures.items()}), file=sys.stderr)
            rounds[name].append(figures)
    print_table(rounds, args.chain)
    if args.json is not None:
        raw = {
            "chain": args.chain,
            "cold": args.cold,
            "load_average_before": load,
            "rounds": rounds,
            "errors": errors,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
