"""What a head or agent process reports, and where: its metrics endpoint and its traces.

The flags (:func:`add_args`), shared by ``python -m fabric._head``, ``python -m
fabric._agent`` and ``fabric start``:

- ``--metrics-port PORT``: serve Prometheus metrics over plain HTTP on this port (0, the
  default: none); ``--metrics-host HOST`` (default 127.0.0.1). What is exposed, and why it
  is only counts: `fabric/_metrics.py`.
- ``--traces MODE``: export OpenTelemetry spans (``console``, ``otlp``, ``memory``,
  ``file:DIR`` or ``off``; default: ``$FABRIC_TRACES``, else off). An agent hands the mode
  to its workers through the same variable. See `fabric/_tracing.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from fabric import _metrics, _tracing

if TYPE_CHECKING:
    from fabric._metrics_registry import ProcessMetrics

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on PORT (default 0: off)",
    )
    parser.add_argument(
        "--metrics-host",
        default=_metrics.DEFAULT_HOST,
        metavar="HOST",
        help="the address the metrics endpoint listens on (default: %(default)s)",
    )
    parser.add_argument(
        "--traces",
        default=None,
        metavar="MODE",
        help=f"export traces: {', '.join(_tracing.MODES)} (default: ${_tracing.ENV}, else off)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {port}")
    return port


def start_tracing(args: argparse.Namespace, role: str, node: str) -> None:
    """Trace as ``--traces`` (else ``$FABRIC_TRACES``) says; the mode is left in this
    process's environment for the workers it starts. Raises `TracingConfigError`."""
    mode = _tracing.normalize(
        args.traces if args.traces is not None else os.environ.get(_tracing.ENV)
    )
    os.environ[_tracing.ENV] = mode
    _tracing.configure(mode, role=role, node=node)
    if _tracing.ON:
        log.info("traces are exported (%s)", mode)


def start_metrics(
    args: argparse.Namespace, role: str, node: str, region: str = ""
) -> ProcessMetrics | None:
    """Count, and serve the counts on ``--metrics-port`` (None when it is 0). Raises
    `MetricsError` when the port cannot be served."""
    if not args.metrics_port:
        return None
    from fabric._metrics_registry import serve

    metrics = _metrics.enable(role, node, region)
    endpoint = serve(metrics, args.metrics_port, args.metrics_host)
    metrics.endpoint = endpoint
    log.info("metrics served on http://%s/metrics", endpoint.address)
    return metrics
