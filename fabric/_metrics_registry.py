"""The registry of one head or agent process's metrics, and its HTTP endpoint.

What the metrics mean and where they are counted: `fabric/_metrics.py`. This module is
imported only by a process that turns metrics on (prometheus_client is not loaded
otherwise).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fabric._metrics import DEFAULT_HOST
from fabric.exceptions import FabricError

# Seconds: a task placed and dispatched on the loop turn it arrived takes tens of
# microseconds; one that waits for a worker to start, tens of milliseconds; one queued
# behind busy workers, up to minutes.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Seconds: one fdatasync of a journal commit or one SQLite transaction of the head's log.
AUDIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class MetricsError(FabricError):
    """The metrics endpoint could not be served (its port is taken, say)."""


class ProcessMetrics:
    """The registry of one head or agent process and the metrics in it."""

    def __init__(self, role: str, node: str = "", region: str = "") -> None:
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Every metric exists in every process; each is exposed where it is counted.
        agent = r if role == "agent" else None
        head = r if role == "head" else None
        Gauge(
            "fabric_process_info",
            "This process: its role, node id and region (always 1).",
            ["role", "node", "region"],
            registry=r,
        ).labels(role, node, region).set(1)
        self.tasks = Counter(
            "fabric_tasks",
            "Tasks by tenant and state: submitted or refused here, dispatched to a worker "
            "here (running), ended here (finished, failed).",
            ["tenant", "state"],
            registry=agent,
        )
        self.scheduling_latency = Histogram(
            "fabric_scheduling_latency_seconds",
            "From when this agent took a task to its first dispatch to a worker.",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=agent,
        )
        self.actors_created = Counter(
            "fabric_actors_created", "Actors started on this node.", ["tenant"], registry=agent
        )
        self.actors_died = Counter(
            "fabric_actors_died", "Actors that died on this node.", ["tenant"], registry=agent
        )
        self.actor_restarts = Counter(
            "fabric_actor_restarts", "Actor restarts on this node.", ["tenant"], registry=agent
        )
        self.object_hits = Counter(
            "fabric_object_local_hits",
            "Objects a task or client here needed that were already on this node.",
            ["tenant"],
            registry=agent,
        )
        self.object_fetches = Counter(
            "fabric_object_fetches", "Objects pulled from another node.", ["tenant"], registry=agent
        )
        self.object_fetched_bytes = Counter(
            "fabric_object_fetched_bytes",
            "Bytes of objects pulled from another node.",
            ["tenant"],
            registry=agent,
        )
        self.object_put_bytes = Counter(
            "fabric_object_put_bytes",
            "Bytes of put objects taken here.",
            ["tenant"],
            registry=agent,
        )
        self.budget_kills = Counter(
            "fabric_budget_kills",
            "Work stopped for breaking a budget, by tenant and budget.",
            ["tenant", "budget"],
            registry=agent,
        )
        self.invariant_violations = Counter(
            "fabric_invariant_violations",
            "Dispatches refused by a declared invariant, by tenant and invariant.",
            ["tenant", "invariant"],
            registry=agent,
        )
        self.residency_refusals = Counter(
            "fabric_residency_refusals",
            "Requests refused by a residency rule, by rule.",
            ["rule"],
            registry=agent,
        )
        self.audit_commit_seconds = Histogram(
            "fabric_audit_commit_seconds",
            "Writing and flushing one commit of the agent's audit journal.",
            buckets=AUDIT_BUCKETS,
            registry=agent,
        )
        self.audit_commit_records = Histogram(
            "fabric_audit_commit_records",
            "Records per commit of the agent's audit journal.",
            buckets=BATCH_BUCKETS,
            registry=agent,
        )
        self.audit_append_seconds = Histogram(
            "fabric_audit_append_seconds",
            "Appending one batch of entries to the head's audit log.",
            buckets=AUDIT_BUCKETS,
            registry=head,
        )
        self.audit_append_records = Histogram(
            "fabric_audit_append_records",
            "Entries per batch appended to the head's audit log.",
            buckets=BATCH_BUCKETS,
            registry=head,
        )
        self.endpoint: Endpoint | None = None  # where it is served, once it is
        # Label children by label values, made once: `.labels()` costs more than `.inc()`.
        self._children: dict[tuple[object, ...], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def child(self, family: Counter, *values: str) -> Counter:
        key = (family, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    def latency(self, tenant: str) -> Histogram:
        child = self._latency.get(tenant)
        if child is None:
            child = self._latency[tenant] = self.scheduling_latency.labels(tenant)
        return child

    def gauge_by_tenant(
        self, name: str, help_text: str, read: Callable[[], dict[str, int]]
    ) -> None:
        """A gauge read when scraped: `read` gives the value per tenant."""
        self.registry.register(_TenantGauge(name, help_text, read))

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge without labels, read when scraped."""
        Gauge(name, help_text, registry=self.registry).set_function(read)


class _TenantGauge(Collector):
    def __init__(self, name: str, help_text: str, read: Callable[[], dict[str, int]]) -> None:
        self.name = name
        self.help_text = help_text
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.help_text, labels=["tenant"])
        for tenant, value in sorted(_read_racing(self.read).items()):
            family.add_metric([tenant], value)
        return [family]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.help_text, labels=["tenant"])]


def _read_racing(read: Callable[[], dict[str, int]]) -> dict[str, int]:
    """`read()` on the scraping thread: the loop may add a tenant while it iterates."""
    for _ in range(3):
        try:
            return read()
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return {}


class Endpoint:
    """The HTTP server of a registry: ``http://{address}/metrics``."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"{name}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(metrics: ProcessMetrics, port: int, host: str = DEFAULT_HOST) -> Endpoint:
    """Serve `metrics` over plain HTTP on HOST:PORT (a thread of its own)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:
        raise MetricsError(f"cannot serve metrics on {host}:{port}: {e}") from e
    return Endpoint(server, thread)
