"""Metrics: what the counting functions do with metrics on and off, a live cluster's head and
agents scraped over HTTP before and after real work, the flags of `fabric start`, and the
README's scrape configuration."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import fabric
from fabric import _metrics
from fabric._cluster import LocalCluster, NodeSpec
from fabric._metrics_registry import MetricsError, ProcessMetrics, serve
from fabric._pki import CertificateAuthority
from fabric.exceptions import BudgetExceededError, ResidencyError, TaskError
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session, wait_until_every_agent_sees_every_node

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0
POLICY = """\
apiVersion: fabric/v1
kind: Policy
regions:
  eu-west: {jurisdiction: EU}
  us-east: {jurisdiction: US}
nodes:
  - {identity: "node/eu-*", regions: [eu-west]}
  - {identity: "node/us-*", regions: [us-east]}
tenants:
  alice:
    identities: [tenant/alice]
    residency: {default: any}
roles:
  operators: [operator/admin]
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def metrics_off_after() -> Iterator[None]:
    yield
    _metrics.disable()


# ----------------------------------------------------------------------------- counting


def test_counting_with_metrics_off_does_nothing(metrics_off_after: None) -> None:
    _metrics.disable()
    _metrics.task_state("acme", "submitted")
    _metrics.invariant_violation("acme", "eu-only")
    assert _metrics.current() is None


def test_each_registry_counts_for_itself(metrics_off_after: None) -> None:
    first = _metrics.enable("agent", "n1", "eu-west")
    _metrics.task_state("acme", "submitted")
    _metrics.task_state("acme", "submitted")
    second = _metrics.enable("agent", "n2", "eu-west")
    _metrics.task_state("acme", "submitted")
    _metrics.invariant_violation("acme", "eu-only")
    _metrics.residency_refused(("residency.store-outside", "quota.tasks"))
    _metrics.task_dispatched("acme", 0.002)
    _metrics.task_dispatched("acme", None)  # a later dispatch: no latency
    _metrics.audit_committed(0.001, 0)  # nothing written: no commit

    def samples(metrics: ProcessMetrics) -> Samples:
        from prometheus_client import generate_latest

        return parse(generate_latest(metrics.registry).decode())

    one, two = samples(first), samples(second)
    tasks = {"tenant": "acme", "state": "submitted"}
    assert value(one, "fabric_tasks_total", **tasks) == 2
    assert value(two, "fabric_tasks_total", **tasks) == 1
    assert value(one, "fabric_invariant_violations_total", tenant="acme", invariant="eu-only") == 0
    assert value(two, "fabric_invariant_violations_total", tenant="acme", invariant="eu-only") == 1
    assert value(two, "fabric_residency_refusals_total", rule="residency.store-outside") == 1
    assert value(two, "fabric_residency_refusals_total", rule="quota.tasks") == 0
    assert value(two, "fabric_tasks_total", tenant="acme", state="running") == 2
    assert value(two, "fabric_scheduling_latency_seconds_count", tenant="acme") == 1
    assert value(two, "fabric_audit_commit_records_count") == 0
    assert value(two, "fabric_process_info", role="agent", node="n2", region="eu-west") == 1
    # The head's metrics are not an agent's.
    assert not any(name.startswith("fabric_audit_append") for name, _ in two)


def test_an_endpoint_serves_its_registry_and_a_taken_port_is_an_error() -> None:
    metrics = ProcessMetrics("head", "head")
    endpoint = serve(metrics, 0)
    try:
        samples = scrape(endpoint.address)
        assert value(samples, "fabric_process_info", role="head", node="head", region="") == 1
        port = int(endpoint.address.rpartition(":")[2])
        with pytest.raises(MetricsError, match=rf"^cannot serve metrics on 127\.0\.0\.1:{port}: "):
            serve(ProcessMetrics("head"), port)
    finally:
        endpoint.close()


# ----------------------------------------------------------------------------- a live cluster


@fabric.remote(resources={"node:eu-1": 1})
def add(x: int, y: int) -> int:
    return x + y


@fabric.remote(resources={"node:eu-1": 1})
def size(data: bytes) -> int:
    return len(data)


@fabric.remote(resources={"node:eu-1": 1})
def fail() -> None:
    raise ValueError("meant to fail")


@fabric.remote(resources={"node:eu-1": 1})
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@fabric.remote(resources={"node:us-1": 1})
def big() -> bytes:
    return b"x" * 300_000  # stored, not inline: fetched by the node that asks for it


@fabric.remote(resources={"node:eu-1": 1})
class Tally:
    def __init__(self) -> None:
        self.total = 0

    def add(self, value: int) -> int:
        self.total += value
        return self.total


def test_a_cluster_counts_what_it_does(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    nodes = [
        NodeSpec("eu-1", "eu-west", {"CPU": 2, "node:eu-1": 100}),
        NodeSpec("us-1", "us-east", {"CPU": 2, "node:us-1": 100}),
    ]
    cluster = LocalCluster(
        nodes,
        base_dir=tmp_path / "cluster",
        tenants=("alice",),
        policy=tmp_path / "policy.yaml",
        metrics=True,
    )
    with cluster:
        assert set(cluster.metrics_addresses) == {"head", "eu-1", "us-1"}
        wait_until_every_agent_sees_every_node(cluster, "alice")
        head, eu, us = (cluster.metrics_addresses[n] for n in ("head", "eu-1", "us-1"))
        before = {name: scrape(address) for name, address in cluster.metrics_addresses.items()}
        assert value(before["head"], "fabric_nodes") == 2
        assert value(before["eu-1"], "fabric_process_info", role="agent", node="eu-1",
                     region="eu-west") == 1  # fmt: skip

        with tenant_session(cluster, "alice", "eu-1") as driver, acting_as(driver):
            assert fabric.get([add.remote(i, 1) for i in range(10)], timeout=TIMEOUT) == list(
                range(1, 11)
            )
            with pytest.raises(TaskError, match="meant to fail"):
                fabric.get(fail.remote(), timeout=TIMEOUT)
            tally = Tally.remote()
            assert fabric.get(tally.add.remote(5), timeout=TIMEOUT) == 5
            fabric.kill(tally)
            data = fabric.put(b"y" * 1000)
            assert fabric.get(size.remote(data), timeout=TIMEOUT) == 1000
            with pytest.raises(ResidencyError, match=r"residency\.store-outside"):
                fabric.put(1, residency="us-east")
            blob = big.remote()  # held: its bytes stay in us-1's store meanwhile
            assert len(fabric.get(blob, timeout=TIMEOUT)) == 300_000
            with pytest.raises(BudgetExceededError) as stopped:
                fabric.get(sleep.options(budget={"wall_seconds": 0.5}).remote(30), timeout=TIMEOUT)
            assert stopped.value.budget == "task.wall_seconds"

            def delta(address: str, name: str, **labels: str) -> float:
                return value(scrape(address), name, **labels) - value(
                    before[_name_of(cluster, address)], name, **labels
                )

            alice = {"tenant": "alice"}
            # The actor's death is counted when its worker is gone.
            wait_for(lambda: delta(eu, "fabric_actors_died_total", **alice) == 1, what="death")
            after = scrape(eu)
            was = before["eu-1"]

            def grew(name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(was, name, **labels)

            # Submitted here: 10 adds, the failure, the size, the sleeper, the actor, its
            # call, and `big`, which runs on us-1; the failure and the sleeper failed.
            assert grew("fabric_tasks_total", state="submitted", **alice) == 16
            assert grew("fabric_tasks_total", state="running", **alice) == 15
            assert grew("fabric_tasks_total", state="finished", **alice) == 13
            assert grew("fabric_tasks_total", state="failed", **alice) == 2
            assert grew("fabric_tasks_total", state="refused", **alice) == 0
            assert grew("fabric_scheduling_latency_seconds_count", **alice) == 15
            assert grew("fabric_actors_created_total", **alice) == 1
            assert grew("fabric_actors_died_total", **alice) == 1
            assert grew("fabric_object_local_hits_total", **alice) == 1
            assert grew("fabric_object_put_bytes_total", **alice) > 1000
            assert grew("fabric_object_fetches_total", **alice) == 1
            assert grew("fabric_object_fetched_bytes_total", **alice) > 300_000
            assert grew("fabric_residency_refusals_total", rule="residency.store-outside") == 1
            assert grew("fabric_budget_kills_total", budget="task.wall_seconds", **alice) == 1
            assert grew("fabric_audit_commit_records_count") > 0
            # `big` ran on us-1, and its result is stored there while it is held.
            assert delta(us, "fabric_tasks_total", state="finished", **alice) == 1
            assert value(scrape(us), "fabric_object_store_bytes", **alice) > 300_000
            # The agents forward their journals to the head's log.
            wait_for(
                lambda: delta(head, "fabric_audit_append_records_count") > 0,
                what="the head to append the agents' records",
            )


def _name_of(cluster: LocalCluster, address: str) -> str:
    return next(name for name, a in cluster.metrics_addresses.items() if a == address)


# ----------------------------------------------------------------------------- fabric start


def test_fabric_start_serves_metrics_where_told(tmp_path: Path) -> None:
    certs, state = tmp_path / "certs", tmp_path / "state"
    CertificateAuthority.create(certs).issue("node", "head")
    port = _free_port()
    start = [sys.executable, "-m", "fabric.cli.main", "start", "--head", "--certs", str(certs)]
    start += ["--listen", "127.0.0.1:0", "--state-dir", str(state)]
    bad = subprocess.run([*start, "--traces", "consol"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "FABRIC_TRACES must be one of console, otlp, memory, file:DIR, off" in bad.stderr
    started = subprocess.run(
        [*start, "--metrics-port", str(port), "--traces", "off"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stderr
        samples = scrape(f"127.0.0.1:{port}")
        assert value(samples, "fabric_process_info", role="head", node="head", region="") == 1
        assert value(samples, "fabric_nodes") == 0
    finally:
        subprocess.run(
            [sys.executable, "-m", "fabric.cli.main", "stop", "--state-dir", str(state)],
            capture_output=True,
            timeout=60,
        )


# ----------------------------------------------------------------------------- the README


def test_the_readme_scrape_config_names_the_documented_ports() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics and traces", 1)[1].split("\n## ", 1)[0]
    [config] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    jobs = {job["job_name"]: job for job in yaml.safe_load(config)["scrape_configs"]}
    targets = {
        name: [t for group in job["static_configs"] for t in group["targets"]]
        for name, job in jobs.items()
    }
    # The ports of the `fabric start` commands the section shows, in order: head first.
    ports = re.findall(r"--metrics-port (\d+)", section)
    assert ports and targets["fabric-head"] == [f"127.0.0.1:{ports[0]}"]
    assert targets["fabric-agents"] == [f"127.0.0.1:{p}" for p in ports[1:]]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
