"""Traces: the W3C context a task carries from hop to hop, what an agent does with a context
a client sent, the exporters' configuration, and the span tree of a nested task that
crosses two nodes, collected from every process of a real cluster."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fabric
from fabric import _spans, _tracing
from fabric._agent import observe
from fabric._agent.state import TaskEntry
from fabric._client import CoreClient
from fabric._cluster import LocalCluster, NodeSpec
from fabric._proto import fabric_pb2 as pb
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session, wait_until_every_agent_sees_every_node

TIMEOUT = 60.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def tracing_off_after() -> Iterator[None]:
    """Whatever a test configures, this process traces no more after it."""
    yield
    _tracing.configure("off")


def spec_of(tenant: str = "acme", **fields: Any) -> pb.TaskSpec:
    return pb.TaskSpec(task_id=os.urandom(16), tenant=tenant, function_name="f", **fields)


class _Transport:
    def __init__(self) -> None:
        self.sent: list[pb.ClientMessage] = []

    def send(self, message: pb.ClientMessage) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def traceparent(carrier: Any) -> tuple[str, str, bool]:
    """(trace id, span id, sampled) of a W3C ``traceparent``."""
    version, trace_id, span_id, flags = carrier["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


def client(*, is_worker: bool = False) -> CoreClient:
    return CoreClient(_Transport(), pb.Welcome(node_id="n1", tenant="acme"), is_worker=is_worker)


# ----------------------------------------------------------------------------- configuration


def test_an_unknown_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(
        _tracing.TracingConfigError,
        match=r"^FABRIC_TRACES must be one of console, otlp, memory, file:DIR, off, got 'consol'$",
    ):
        _tracing.normalize("consol")
    with pytest.raises(_tracing.TracingConfigError, match="got 'file:'"):
        _tracing.normalize("file:")


def test_a_file_directory_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _tracing.normalize("file:spans") == f"file:{tmp_path / 'spans'}"
    assert _tracing.normalize(None) == "off"
    assert _tracing.normalize(" console ") == "console"


def test_otlp_without_its_exporter_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tracing_off_after: None
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    for module in (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        _tracing.TracingConfigError,
        match=r"^FABRIC_TRACES=otlp needs the OpenTelemetry OTLP exporter: "
        r"pip install opentelemetry-exporter-otlp$",
    ):
        _tracing.configure("otlp")
    assert not _tracing.ON


def test_memory_is_off_where_nobody_could_read_it(tracing_off_after: None) -> None:
    _tracing.configure("memory", role="agent", node="n1")
    assert not _tracing.ON


# ----------------------------------------------------------------------------- off


def test_off_makes_nothing(tracing_off_after: None) -> None:
    _tracing.configure("off")
    assert not _tracing.ON
    spec = spec_of()
    client().submit(spec, None)
    assert dict(spec.trace_context) == {}
    assert isinstance(_tracing.executing(spec), contextlib.nullcontext)
    assert _tracing.memory_spans() == ()


# ----------------------------------------------------------------------------- clients


def test_submit_continues_the_applications_span_and_the_spec_carries_its_own(
    tracing_off_after: None,
) -> None:
    _tracing.configure("memory")
    assert _spans._tracer is not None
    spec = spec_of(tenant="")
    with _spans._tracer.start_as_current_span("application") as application:
        client().submit(spec, None)
    [submit, app] = _tracing.memory_spans()
    assert submit.name == "fabric.submit" and app.name == "application"
    assert submit.parent is not None
    assert submit.parent.span_id == application.get_span_context().span_id
    assert submit.context is not None
    assert submit.context.trace_id == application.get_span_context().trace_id
    # The agent is told the submit span, in W3C form.
    assert traceparent(spec.trace_context) == (
        f"{submit.context.trace_id:032x}",
        f"{submit.context.span_id:016x}",
        True,
    )
    # The tenant comes from the session, and a driver's own span names the function.
    assert submit.attributes is not None
    assert submit.attributes["fabric.tenant"] == "acme"
    assert submit.attributes["fabric.function"] == "f"


def test_what_a_task_submits_is_a_child_of_its_execute_span(tracing_off_after: None) -> None:
    _tracing.configure("memory")
    dispatched = spec_of(trace_context={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    nested = spec_of(tenant="")
    worker = client(is_worker=True)
    with _tracing.executing(dispatched):
        worker.submit(nested, None)
    [submit, execute] = _tracing.memory_spans()
    assert execute.name == "fabric.execute"
    assert execute.parent is not None and f"{execute.parent.span_id:016x}" == PARENT_ID
    assert execute.context is not None and f"{execute.context.trace_id:032x}" == TRACE_ID
    assert submit.parent is not None and submit.parent.span_id == execute.context.span_id
    # Spans made in a worker (exported where the operator says) do not name the function.
    assert submit.attributes is not None and "fabric.function" not in submit.attributes


def test_a_task_that_raises_ends_its_span_as_an_error(tracing_off_after: None) -> None:
    _tracing.configure("memory")

    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        _tracing.traced_call(spec_of(), fail)
    [execute] = _tracing.memory_spans()
    assert execute.status.status_code.name == "ERROR"
    assert execute.status.description == "ValueError"


# ----------------------------------------------------------------------------- an agent's trust


def agent_spans(directory: Path) -> list[dict[str, Any]]:
    return list(_tracing.read_span_files(directory))


def test_an_agent_takes_only_the_ids_of_a_clients_context(
    tmp_path: Path, tracing_off_after: None
) -> None:
    _tracing.configure(f"file:{tmp_path}", role="agent", node="n1")
    spec = spec_of(
        trace_context={
            # Not sampled: the client would rather the operator did not see this work.
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00",
            "tracestate": "vendor=1",
            "x-other": "y" * 10_000,
        }
    )
    observe.submitted(spec, None, "n1")
    [admit] = agent_spans(tmp_path)
    assert admit["name"] == "fabric.admit"
    assert (admit["trace_id"], admit["parent_span_id"]) == (TRACE_ID, PARENT_ID)
    assert admit["attributes"]["fabric.tenant"] == "acme"
    assert admit["attributes"]["fabric.outcome"] == "admit"
    # What travels on is the agent's own span, sampled by the agent; nothing else of the map.
    assert sorted(spec.trace_context) == ["traceparent", "tracestate"]
    assert traceparent(spec.trace_context) == (TRACE_ID, admit["span_id"], True)
    assert spec.trace_context["tracestate"] == "vendor=1"


def test_a_malformed_context_starts_a_trace_of_its_own(
    tmp_path: Path, tracing_off_after: None
) -> None:
    _tracing.configure(f"file:{tmp_path}", role="agent", node="n1")
    spec = spec_of(trace_context={"traceparent": "00-not-a-context-01"})
    task = TaskEntry(spec)
    observe.finished(task, [pb.ObjectLocation(error=pb.ErrorInfo(message="x"))], "n1")
    [result] = agent_spans(tmp_path)
    assert result["name"] == "fabric.result" and result["parent_span_id"] is None
    assert result["status"] == "ERROR" and result["attributes"]["fabric.outcome"] == "error"
    assert traceparent(spec.trace_context) == (result["trace_id"], result["span_id"], True)


# ----------------------------------------------------------------------------- across a cluster


@fabric.remote(resources={"node:n1": 1})
def inner(x: int) -> int:
    return x + 1


@fabric.remote(resources={"node:n2": 1})
def outer(x: int) -> int:
    return fabric.get(inner.remote(x), timeout=TIMEOUT) * 2


def _one(
    spans: list[dict[str, Any]], parent: dict[str, Any], name: str, node: str
) -> dict[str, Any]:
    found = [
        s
        for s in spans
        if s["parent_span_id"] == parent["span_id"] and s["name"] == name and s["node"] == node
    ]
    assert len(found) == 1, f"{name} on {node} under {parent['name']}: {found}"
    return found[0]


def _tree(spans: list[dict[str, Any]], outer_id: str) -> list[dict[str, Any]]:
    """The span tree of `outer` (driver on n1, `outer` pinned to n2, `inner` to n1), in
    order; fails when a span is missing or has the wrong parent."""
    [submit] = [
        s
        for s in spans
        if s["name"] == "fabric.submit" and s["attributes"]["fabric.task_id"] == outer_id
    ]
    assert submit["service"] == "fabric-driver" and submit["parent_span_id"] is None
    admit = _one(spans, submit, "fabric.admit", "n1")
    place_a = _one(spans, admit, "fabric.place", "n1")
    assert place_a["attributes"]["fabric.target_node"] == "n2"
    place_b = _one(spans, place_a, "fabric.place", "n2")
    dispatch_b = _one(spans, place_b, "fabric.dispatch", "n2")
    execute_b = _one(spans, dispatch_b, "fabric.execute", "n2")
    assert execute_b["service"] == "fabric-worker"
    nested = _one(spans, execute_b, "fabric.submit", "n2")
    admit_nested = _one(spans, nested, "fabric.admit", "n2")
    place_nested = _one(spans, admit_nested, "fabric.place", "n2")
    assert place_nested["attributes"]["fabric.target_node"] == "n1"
    place_nested_a = _one(spans, place_nested, "fabric.place", "n1")
    dispatch_a = _one(spans, place_nested_a, "fabric.dispatch", "n1")
    execute_a = _one(spans, dispatch_a, "fabric.execute", "n1")
    result_inner = _one(spans, dispatch_a, "fabric.result", "n1")
    result_outer = _one(spans, dispatch_b, "fabric.result", "n2")
    return [
        submit,
        admit,
        place_a,
        place_b,
        dispatch_b,
        execute_b,
        nested,
        admit_nested,
        place_nested,
        place_nested_a,
        dispatch_a,
        execute_a,
        result_inner,
        result_outer,
    ]


def test_a_nested_task_across_two_nodes_is_one_trace(
    tmp_path: Path, tracing_off_after: None
) -> None:
    spans_dir = tmp_path / "spans"
    nodes = [NodeSpec(node, "local", {"CPU": 2, f"node:{node}": 100}, {}) for node in ("n1", "n2")]
    traces = f"file:{spans_dir}"
    with LocalCluster(nodes, base_dir=tmp_path / "cluster", traces=traces) as cluster:
        wait_until_every_agent_sees_every_node(cluster, "default")
        _tracing.configure(traces, role="driver")
        with tenant_session(cluster, "default", "n1") as driver, acting_as(driver):
            ref = outer.remote(20)
            assert fabric.get(ref, timeout=TIMEOUT) == 42
        outer_id = ref.task_id().hex()

        def assembled() -> bool:
            try:
                _tree(agent_spans(spans_dir), outer_id)
            except (AssertionError, ValueError):
                return False
            return True

        wait_for(assembled, timeout=30, what="every process to write the task's spans")
    tree = _tree(agent_spans(spans_dir), outer_id)
    assert {s["trace_id"] for s in tree} == {tree[0]["trace_id"]}
    # Every span an agent made names the session's tenant and ends well.
    for span in tree:
        if span["service"] == "fabric-agent":
            assert span["attributes"]["fabric.tenant"] == "default", span
        assert span["status"] == "UNSET", span
    # The driver, each agent and each worker wrote files of their own (ROLE-NODE-PID).
    writers = {path.stem.rsplit("-", 1)[0] for path in spans_dir.glob("*.jsonl")}
    assert writers >= {"driver", "agent-n1", "agent-n2", "worker-n1", "worker-n2"}
