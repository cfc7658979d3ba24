"""What the node agent reports about a task's path, to its metrics and its traces.

One call per event, where the event happens: a submission admitted or refused
(:func:`submitted`), a placement decided (:func:`placed`), a dispatch to a worker
(:func:`dispatched`), a task ended here (:func:`finished`). Each checks whether metrics
(`fabric._metrics`) or traces (`fabric._tracing.ON`) are on before doing anything else.

Spans follow `fabric/_tracing.py`: a task's context lives in its spec's ``trace_context``,
which each span made here replaces with its own, so what a forward or a dispatch carries is
this agent's latest span, never what the client sent. Spans have explicit parents; nothing
here makes a context current.
"""

from __future__ import annotations

import time

from fabric import _metrics, _tracing
from fabric._agent.state import TaskEntry
from fabric._agent.workers import Worker
from fabric._proto import fabric_pb2 as pb
from fabric._serialization import KIND_ERROR, peek_kind
from fabric.policy import Decision, Outcome


def submitted(spec: pb.TaskSpec, error: pb.ErrorInfo | None, node: str) -> None:
    """A submission from a session was admitted (`error` None) or refused."""
    _metrics.task_state(spec.tenant, "refused" if error is not None else "submitted")
    if not _tracing.ON:
        return
    from fabric import _spans

    attributes = _spans.task_attributes(spec, node)
    attributes["fabric.outcome"] = "refuse" if error is not None else "admit"
    refused = pb.ErrorInfo.Kind.Name(error.kind) if error is not None else None
    _spans.hop("fabric.admit", spec, _spans.SpanKind.CONSUMER, attributes, refused)


def placed(task: TaskEntry, decision: Decision, node: str) -> None:
    """A placement was decided for `task`. A decision to wait for capacity elsewhere is
    taken again soon, so only one that places, queues here or refuses makes a span."""
    if not _tracing.ON:
        return
    spec = task.spec
    if decision.outcome is Outcome.QUEUE and (
        decision.node_id != node or spec.kind == pb.ACTOR_CREATION
    ):
        return
    from fabric import _spans

    attributes = _spans.task_attributes(spec, node)
    attributes["fabric.outcome"] = decision.outcome.value
    attributes["fabric.target_node"] = decision.node_id or ""
    attributes["fabric.rules"] = list(decision.rule_ids)
    refused = "refused" if decision.outcome is Outcome.REFUSE else None
    _spans.hop("fabric.place", spec, _spans.SpanKind.INTERNAL, attributes, refused)


def dispatched(task: TaskEntry, execute: pb.ExecuteTask, worker: Worker, node: str) -> None:
    """`task` goes to `worker` as `execute`, which then carries the dispatch's context."""
    spec = task.spec
    if _metrics.current() is not None:
        taken, task.taken = task.taken, 0.0
        _metrics.task_dispatched(spec.tenant, time.monotonic() - taken if taken else None)
    if not _tracing.ON:
        return
    from fabric import _spans

    attributes = _spans.task_attributes(spec, node)
    attributes["fabric.worker_pid"] = worker.pid
    _spans.hop("fabric.dispatch", spec, _spans.SpanKind.PRODUCER, attributes)
    execute.spec.trace_context.update(spec.trace_context)


def finished(task: TaskEntry, locations: list[pb.ObjectLocation], node: str) -> None:
    """`task` ended here with `locations` as its results (errors among them, or not)."""
    if _metrics.current() is None and not _tracing.ON:
        return
    spec = task.spec
    failed = any(
        location.HasField("error")
        or (location.inline_blob and peek_kind(location.inline_blob) == KIND_ERROR)
        for location in locations
    )
    _metrics.task_state(spec.tenant, "failed" if failed else "finished")
    if not _tracing.ON:
        return
    from fabric import _spans

    attributes = _spans.task_attributes(spec, node)
    attributes["fabric.outcome"] = "error" if failed else "ok"
    error = "the task failed" if failed else None
    _spans.hop("fabric.result", spec, _spans.SpanKind.INTERNAL, attributes, error)
