"""Prometheus metrics of a head or node agent process: counts, durations and byte totals.

A process that runs with ``--metrics-port PORT`` (0, the default, is off) serves them over
plain HTTP at ``http://HOST:PORT/metrics``, HOST being ``--metrics-host`` (default
127.0.0.1). They are counts only: labels are tenant names, task states, budget and invariant
names, rule ids, the node's id and region; never a task, object or actor id, a function's
name, an argument or a payload. Tenant names are visible to whoever reaches the port: keep
it on loopback or behind the operator's own network controls.

Each process has one registry of its own (not prometheus_client's global default registry,
so tests can hold several). The runtime reports through the functions at the bottom of
this module: each is a check of the module-level :data:`_current` (None while metrics are
off) and, when on, the increment of a child counter cached per label values, so the task
path pays next to nothing.

The metrics (``*_total`` are counters; histograms have ``_bucket``, ``_sum`` and ``_count``):

- ``fabric_tasks_total{tenant,state}`` (agent): submissions taken (``submitted``) or refused
  (``refused``) here, dispatches to a worker here (``running``), tasks that ended here
  (``finished``, ``failed``). A forwarded task is submitted on one node, runs and ends on
  another: sum over the agents for the cluster.
- ``fabric_scheduling_latency_seconds{tenant}`` (agent): from when this agent took a task
  (submitted here or forwarded to it) to its first dispatch to a worker.
- ``fabric_actors_created_total``, ``fabric_actors_died_total``, ``fabric_actor_restarts_total``
  ``{tenant}`` (agent): actors started, dead (killed, crashed past their restarts, failed to
  construct) and restarted on this node.
- ``fabric_object_local_hits_total{tenant}`` (agent): an object a task or client here needed
  was already here; ``fabric_object_fetches_total{tenant}`` and
  ``fabric_object_fetched_bytes_total{tenant}``: objects pulled from another node. The local
  hit ratio is hits / (hits + fetches).
- ``fabric_object_put_bytes_total{tenant}`` (agent): bytes of ``put`` objects taken here;
  ``fabric_object_store_bytes{tenant}``: bytes in this node's object store now.
- ``fabric_budget_kills_total{tenant,budget}`` (agent): work stopped for a budget
  (``task.memory``, ``tenant.cpu_seconds``, ...).
- ``fabric_invariant_violations_total{tenant,invariant}`` (agent): dispatches an invariant
  refused.
- ``fabric_residency_refusals_total{rule}`` (agent): requests refused by a residency rule.
- ``fabric_audit_commit_seconds``, ``fabric_audit_commit_records`` (agent): the time to write
  and flush one commit of the audit journal, and its records.
- ``fabric_audit_append_seconds``, ``fabric_audit_append_records`` (head): the time to append
  one batch to the audit log, and its entries.
- ``fabric_nodes`` (head): nodes registered now.
- ``fabric_process_info{role,node,region}`` (both): always 1, for joins and relabelling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabric._metrics_registry import ProcessMetrics

DEFAULT_HOST = "127.0.0.1"  # where a metrics endpoint listens unless told otherwise

# ----------------------------------------------------------------------------- the process's

_current: ProcessMetrics | None = None


def enable(role: str, node: str = "", region: str = "") -> ProcessMetrics:
    """Make this process count, into a fresh registry; returns it (serve it with
    `fabric._metrics_registry.serve`)."""
    from fabric._metrics_registry import ProcessMetrics

    global _current
    _current = ProcessMetrics(role, node, region)
    return _current


def disable() -> None:
    global _current
    _current = None


def current() -> ProcessMetrics | None:
    return _current


# ----------------------------------------------------------------------------- what is counted


def task_state(tenant: str, state: str) -> None:
    """A task of `tenant` went through `state` (submitted, refused, running, finished,
    failed) on this node."""
    m = _current
    if m is not None:
        m.child(m.tasks, tenant, state).inc()


def task_dispatched(tenant: str, waited: float | None) -> None:
    """A task went to a worker; `waited` seconds since this agent took it (None for a
    later dispatch of the same task, which is not scheduling latency)."""
    m = _current
    if m is not None:
        m.child(m.tasks, tenant, "running").inc()
        if waited is not None:
            m.latency(tenant).observe(waited)


def actor_created(tenant: str) -> None:
    m = _current
    if m is not None:
        m.child(m.actors_created, tenant).inc()


def actor_died(tenant: str) -> None:
    m = _current
    if m is not None:
        m.child(m.actors_died, tenant).inc()


def actor_restarted(tenant: str) -> None:
    m = _current
    if m is not None:
        m.child(m.actor_restarts, tenant).inc()


def object_hit(tenant: str) -> None:
    """An object needed here (a task's argument, a client's subscription) was here."""
    m = _current
    if m is not None:
        m.child(m.object_hits, tenant).inc()


def object_fetched(tenant: str, nbytes: int) -> None:
    """An object of `nbytes` was pulled from another node."""
    m = _current
    if m is not None:
        m.child(m.object_fetches, tenant).inc()
        m.child(m.object_fetched_bytes, tenant).inc(nbytes)


def object_put(tenant: str, nbytes: int) -> None:
    m = _current
    if m is not None:
        m.child(m.object_put_bytes, tenant).inc(nbytes)


def budget_kill(tenant: str, budget: str) -> None:
    """Work of `tenant` was stopped for its `budget` ("task.memory", "tenant.cpu_seconds")."""
    m = _current
    if m is not None:
        m.child(m.budget_kills, tenant, budget).inc()


def invariant_violation(tenant: str, invariant: str) -> None:
    """A dispatch of `tenant`'s work was refused by the invariant (or hook) named
    `invariant`. Call it once per refusal, where the refusal is decided."""
    m = _current
    if m is not None:
        m.child(m.invariant_violations, tenant, invariant).inc()


def residency_refused(rule_ids: Iterable[str]) -> None:
    """A request was refused; counted under each of its rules that is a residency rule."""
    m = _current
    if m is not None:
        for rule in rule_ids:
            if rule.startswith("residency."):
                m.child(m.residency_refusals, rule).inc()


def audit_committed(seconds: float, records: int) -> None:
    """The agent's journal wrote and flushed `records` records in `seconds` (a commit with
    nothing to write is none)."""
    m = _current
    if m is not None and records:
        m.audit_commit_seconds.observe(seconds)
        m.audit_commit_records.observe(records)


def audit_appended(seconds: float, records: int) -> None:
    """The head appended a batch of `records` entries to its log in `seconds`."""
    m = _current
    if m is not None:
        m.audit_append_seconds.observe(seconds)
        m.audit_append_records.observe(records)
