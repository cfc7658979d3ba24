"""OpenTelemetry traces of a task's path: submit, admit, place, dispatch, execute, result.

**How the context travels.** A driver's session is one batched bidirectional gRPC stream
(or TLS on the agent's Unix socket), agents talk to each other over batched peer streams, and
a worker talks to its agent over a private socket pair: there is no per-call gRPC metadata
that could carry one task's context. So every ``TaskSpec`` carries it itself, in its
``trace_context`` field: the W3C ``traceparent`` (and ``tracestate``) of the span the task's
next span follows from, written and read with OpenTelemetry's W3C propagator
(``TraceContextTextMapPropagator``), so that any W3C-compatible tool reads the same ids. Each
hop replaces it with the context of its own latest span: the driver's ``fabric.submit``, the
admitting agent's ``fabric.admit`` and ``fabric.place``, the ``fabric.place`` of an agent the
task was forwarded to, its ``fabric.dispatch``, the worker's ``fabric.execute`` (the current
span while the task's code runs, so a task submitted from inside it is its child), and the
agent's ``fabric.result``.

**Trust.** A trace context that came from a client is ids, and is used for nothing but
parenting spans: a span's tenant comes from the session, never from the context; agents and
workers sample by their own configuration, never by the caller's ``sampled`` flag (a tenant
cannot hide its work from the operator's traces); agents never make a context current (no
context variables), so no span of one tenant's work can become the parent of another's; and
what an agent passes on is its own span's context, never the map the client sent (which is
read for two keys and dropped). Spans made by agents and workers carry ids, the tenant, node
names, outcomes and rule ids, as the audit log does; only a driver's own ``fabric.submit``
names the function.

**Configuration.** ``FABRIC_TRACES`` (or ``fabric.init(tracing=...)``, or ``--traces`` of
``fabric start`` and of the head and agent processes, which pass it on to their workers):

- ``off`` (the default): nothing is made. Every hook in the runtime sits behind the
  module-level flag :data:`ON`, so the task path pays one attribute check per hop.
- ``console``: finished spans as JSON, by the SDK's ``ConsoleSpanExporter`` (a driver prints
  them to stdout; the head, agents and workers to their logs).
- ``otlp``: to an OpenTelemetry collector, configured by the standard ``OTEL_EXPORTER_OTLP_*``
  variables; needs the ``opentelemetry-exporter-otlp`` package.
- ``memory``: kept in this process for tests (:func:`memory_spans`); in a head, agent or
  worker, where nobody could read them, it means off.
- ``file:DIR``: every process appends its finished spans as JSON lines to a file of its own
  in ``DIR``, for tests and offline use (:func:`read_span_files`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fabric._proto import fabric_pb2 as pb
from fabric.exceptions import FabricError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger(__name__)

ENV = "FABRIC_TRACES"
MODES = ("console", "otlp", "memory", "file:DIR", "off")
ROLES = ("driver", "worker", "agent", "head")

# Whether this process makes spans. Call sites check it before calling anything here; the
# OpenTelemetry SDK is loaded (`fabric._spans`) only once it is set.
ON = False

_T = TypeVar("_T")
_NO_SPAN = contextlib.nullcontext()


class TracingConfigError(FabricError, ValueError):
    """``FABRIC_TRACES`` (or ``tracing=``, ``--traces``) names no usable exporter."""


def normalize(mode: str | None) -> str:
    """`mode` checked and in canonical form ("off" for none; a ``file:`` directory made
    absolute, since processes started with it may run elsewhere)."""
    text = (mode or "off").strip()
    if text in ("off", "console", "otlp", "memory"):
        return text
    if text.startswith("file:") and text[len("file:") :]:
        return "file:" + str(Path(text[len("file:") :]).expanduser().resolve())
    raise TracingConfigError(f"{ENV} must be one of {', '.join(MODES)}, got {text!r}")


def configure(mode: str | None, *, role: str = "driver", node: str = "", tenant: str = "") -> None:
    """Make this process trace as `mode` says (see above), replacing any earlier
    configuration (whose spans are flushed first)."""
    global ON
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    mode = normalize(mode)
    if mode == "memory" and role != "driver":
        log.warning("%s=memory keeps spans where nobody reads them in a %s: off", ENV, role)
        mode = "off"
    shutdown()
    if mode == "off":
        return
    from fabric import _spans

    _spans.install(mode, role, node, tenant)
    ON = True


def flush(timeout_millis: int = 2000) -> None:
    """Export what is still buffered (before a process ends without running atexit)."""
    if ON:
        from fabric import _spans

        _spans.flush(timeout_millis)


def shutdown() -> None:
    """Flush and stop tracing in this process."""
    global ON
    if ON:
        from fabric import _spans

        ON = False
        _spans.uninstall()


def memory_spans() -> tuple[ReadableSpan, ...]:
    """The finished spans of this process, under ``memory`` (empty otherwise)."""
    if not ON:
        return ()
    from fabric import _spans

    return _spans.memory_spans()


# ----------------------------------------------------------------------------- hooks


def submitted(spec: pb.TaskSpec, tenant: str, node: str, *, in_worker: bool) -> None:
    """A driver or worker submits `spec` (see `fabric._spans.submitted`). Only while ON."""
    from fabric import _spans

    _spans.submitted(spec, tenant, node, in_worker=in_worker)


def traced_call(spec: pb.TaskSpec, call: Callable[..., _T], *args: Any) -> _T:
    """Run a task's code inside its ``fabric.execute`` span (the current span meanwhile,
    so what it submits is its child). Only while ON."""
    from fabric import _spans

    with _spans.Executing(spec):
        return call(*args)


def executing(spec: pb.TaskSpec) -> contextlib.AbstractContextManager[object]:
    """``with executing(spec):`` runs a task's code inside its ``fabric.execute`` span
    while tracing is on, and is a no-op otherwise."""
    if not ON:
        return _NO_SPAN
    from fabric import _spans

    return _spans.Executing(spec)


# ----------------------------------------------------------------------------- reading spans


def read_span_files(directory: Path) -> Iterator[dict[str, Any]]:
    """Every span the processes wrote under ``file:DIR`` so far, as dicts with ``name``,
    ``trace_id``, ``span_id``, ``parent_span_id``, ``kind``, ``start``, ``end``,
    ``status``, ``service`` (``fabric-agent``, ...), ``node`` and ``attributes`` (a line
    still being written is skipped)."""
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue
