"""Spans with OpenTelemetry's SDK: this process's tracer and exporter, a task's W3C context,
and the span of each hop. Loaded once tracing is on; what is traced, how the context
travels and what a span may carry: `fabric/_tracing.py`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
    SpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fabric._proto import fabric_pb2 as pb
from fabric._tracing import ENV, TracingConfigError

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
_memory: InMemorySpanExporter | None = None
_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_KEYS = ("traceparent", "tracestate")
_KINDS = {
    pb.NORMAL_TASK: "task",
    pb.ACTOR_CREATION: "actor_creation",
    pb.ACTOR_TASK: "actor_task",
}

# ----------------------------------------------------------------------------- the process's


def install(mode: str, role: str, node: str, tenant: str) -> None:
    """Trace into the exporter `mode` names (a mode `fabric._tracing.normalize` checked),
    in place of nothing (`uninstall` first)."""
    global _tracer, _provider
    processor = _processor(mode, role, node)
    attributes: dict[str, str] = {"service.name": f"fabric-{role}", "fabric.role": role}
    if node:
        attributes["fabric.node"] = node
    if tenant:
        attributes["fabric.tenant"] = tenant
    # A driver follows its application's sampling; the fabric's own processes decide by
    # their configuration alone, never by a flag a client set.
    sampler: Sampler = ParentBased(ALWAYS_ON) if role == "driver" else ALWAYS_ON
    provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes))
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("fabric")


def _processor(mode: str, role: str, node: str) -> SpanProcessor:
    global _memory
    if mode == "console":
        # Servers' stdout is their log too; a worker's stdout is its agent's.
        out = sys.stdout if role == "driver" else sys.stderr
        return SimpleSpanProcessor(ConsoleSpanExporter(out=out))
    if mode == "memory":
        _memory = InMemorySpanExporter()
        return SimpleSpanProcessor(_memory)
    if mode == "otlp":
        return BatchSpanProcessor(_otlp_exporter())
    directory = Path(mode[len("file:") :])
    name = "-".join(part for part in (role, node, str(os.getpid())) if part)
    return SimpleSpanProcessor(JsonLinesExporter(directory / f"{name}.jsonl"))


def _otlp_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            raise TracingConfigError(
                f"{ENV}=otlp needs the OpenTelemetry OTLP exporter: "
                "pip install opentelemetry-exporter-otlp"
            ) from None
    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


def uninstall() -> None:
    global _tracer, _provider, _memory
    provider = _provider
    _tracer, _provider, _memory = None, None, None
    if provider is not None:
        provider.shutdown()


def flush(timeout_millis: int) -> None:
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def memory_spans() -> tuple[ReadableSpan, ...]:
    return _memory.get_finished_spans() if _memory is not None else ()


# ----------------------------------------------------------------------------- propagation


def parent_of(carrier: Mapping[str, str]) -> Context:
    """The context a span continues: the ids in `carrier` (a task's ``trace_context``),
    nothing else of it. An absent or malformed context makes a root."""
    if not carrier:
        return Context()
    return _PROPAGATOR.extract({k: carrier[k] for k in _CONTEXT_KEYS if k in carrier})


def inject(span: Span, carrier: MutableMapping[str, str]) -> None:
    """Replace whatever `carrier` holds with `span`'s context."""
    carrier.clear()
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))


def start(name: str, parent: Context, kind: SpanKind, attributes: Mapping[str, Any]) -> Span:
    """A span with an explicit parent (never the current context, in an agent)."""
    assert _tracer is not None
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attributes)


def task_attributes(spec: pb.TaskSpec, node: str = "") -> dict[str, Any]:
    """What every span of a task carries: its tenant, ids and kind, and the node."""
    attributes: dict[str, Any] = {
        "fabric.task_id": spec.task_id.hex(),
        "fabric.kind": _KINDS.get(spec.kind, "task"),
    }
    if spec.tenant:  # set by agents; a worker's process names its one tenant instead
        attributes["fabric.tenant"] = spec.tenant
    if spec.actor_id:
        attributes["fabric.actor_id"] = spec.actor_id.hex()
    if node:
        attributes["fabric.node"] = node
    return attributes


def hop(
    name: str,
    spec: pb.TaskSpec,
    kind: SpanKind,
    attributes: Mapping[str, Any],
    error: str | None = None,
) -> None:
    """One step of a task on an agent: a span under the context `spec` carries, ended at
    once, whose own context the spec carries on."""
    span = start(name, parent_of(spec.trace_context), kind, attributes)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    inject(span, spec.trace_context)
    span.end()


# ----------------------------------------------------------------------------- clients


def submitted(spec: pb.TaskSpec, tenant: str, node: str, *, in_worker: bool) -> None:
    """A driver or worker submits `spec`: a ``fabric.submit`` span under the current one
    (the application's, or the running task's ``fabric.execute``), whose context the spec
    carries to the agent."""
    attributes = task_attributes(spec)
    attributes["fabric.tenant"] = tenant
    attributes["fabric.node"] = node
    if not in_worker:
        # A driver's spans go where its own configuration says: the function's name stays
        # with the tenant.
        attributes["fabric.function"] = spec.function_name
    span = start("fabric.submit", otel_context.get_current(), SpanKind.PRODUCER, attributes)
    inject(span, spec.trace_context)
    span.end()


class Executing:
    """``with Executing(spec):`` runs a task's code in a worker inside its
    ``fabric.execute`` span, the current span meanwhile."""

    __slots__ = ("_span", "_token")

    def __init__(self, spec: pb.TaskSpec) -> None:
        self._span = start(
            "fabric.execute",
            parent_of(spec.trace_context),
            SpanKind.CONSUMER,
            task_attributes(spec),
        )
        self._token: object = None

    def __enter__(self) -> Executing:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if exc is not None:
            self._span.record_exception(exc)
            self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self._span.end()


# ----------------------------------------------------------------------------- exporting


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines (:func:`span_record`) appended to `path`: one file per
    process, so writers never interleave."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), sort_keys=True) + "\n" for span in spans)
        with self._lock:
            if self._file is None:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as a JSON-able dict (what `fabric._tracing.read_span_files`
    reads back)."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "service": span.resource.attributes.get("service.name", ""),
        "node": span.resource.attributes.get("fabric.node", ""),
        "attributes": {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in (span.attributes or {}).items()
        },
    }
