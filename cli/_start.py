"""``fabric start`` and ``fabric stop``: run a head or a node agent on this host.

A started process runs detached (its own session, output in ``STATE_DIR/logs``) and is
recorded in ``STATE_DIR/processes/<name>.json`` so that ``fabric stop`` can find it again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fabric.cli._common import (
    CommandError,
    add_command,
    credential_paths,
    parse_labels,
    parse_resources,
)

from fabric import _reporting as reporting

if TYPE_CHECKING:
    import psutil

DEFAULT_HEAD_LISTEN = "127.0.0.1:6380"
DEFAULT_AGENT_LISTEN = "127.0.0.1:0"
DEFAULT_STATE_DIR = Path("~/.fabric")
_POLL_INTERVAL = 0.01

_START_DESCRIPTION = """\
Start a head or a node agent on this host and return once it is serving.

  fabric start --head --certs DIR                       the head of a new fabric
  fabric start --address HEAD --region R --certs DIR    a node agent joining it

DIR is laid out like a CA directory: DIR/ca.pem, DIR/crl.pem and
DIR/issued/node-<id>.pem|.key (node-head for the head); `fabric certs issue --out`
writes one. The process runs detached, logs to STATE_DIR/logs and is recorded for
`fabric stop`. With --foreground it replaces this command instead."""


@dataclass(frozen=True)
class ProcessRecord:
    """What ``fabric start`` remembers about a process it started."""

    name: str
    role: str  # "head" or "agent"
    pid: int
    address: str
    # The process's start time as the OS reports it: a pid alone may have been reused by
    # the time `fabric stop` runs, and signalling a stranger must never happen.
    create_time: float
    log: str


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    start = add_command(
        subparsers,
        "start",
        help="start a head or a node agent on this host",
        description=_START_DESCRIPTION,
        handler=_start,
    )
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head")
    role.add_argument("--address", metavar="HEAD", help="start an agent joining the head at HEAD")
    start.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"where to serve (head default {DEFAULT_HEAD_LISTEN}, agent default "
        f"{DEFAULT_AGENT_LISTEN}: any free port)",
    )
    start.add_argument(
        "--certs", type=Path, required=True, metavar="DIR", help="certificate directory (see above)"
    )
    start.add_argument("--region", help="agent: the node's region (required for an agent)")
    start.add_argument(
        "--resources",
        help='agent: JSON or KEY=N,KEY=N, e.g. "CPU=4,GPU=1" (default: CPU=<cores>)',
    )
    start.add_argument("--labels", help='agent: JSON or KEY=VALUE,..., e.g. "zone=a"')
    start.add_argument("--node-id", metavar="ID", help="agent: node id (default: the hostname)")
    start.add_argument(
        "--node-timeout",
        type=float,
        metavar="SECONDS",
        help="head: declare a node lost when it has not reported for this long, and give "
        "the nodes of its last run this long to reconnect after a restart (default: 5)",
    )
    reporting.add_args(start)
    _state_dir_option(start)
    start.add_argument(
        "--foreground", action="store_true", help="run in the foreground (exec) instead"
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the process to serve (default: %(default)s)",
    )

    stop = add_command(
        subparsers,
        "stop",
        help="stop the processes `fabric start` started",
        description=(
            "Send SIGTERM to every process recorded in STATE_DIR/processes, wait for them "
            "to exit, SIGKILL any that do not, and forget them."
        ),
        handler=_stop,
    )
    _state_dir_option(stop)
    stop.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait before killing (default: %(default)s)",
    )


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help="where logs and process records are kept (default: %(default)s)",
    )


# ----------------------------------------------------------------------------- start


def _start(args: argparse.Namespace) -> int:
    from fabric._cluster import HEAD_NAME, Observability, agent_command, head_command
    from fabric._tracing import TracingConfigError, normalize

    state_dir: Path = args.state_dir.expanduser().resolve()
    if args.head:
        for option in ("region", "resources", "labels", "node_id"):
            if getattr(args, option) is not None:
                flag = "--" + option.replace("_", "-")
                raise CommandError(f"{flag} applies to an agent (--address), not to the head")
        name, role, node_id = HEAD_NAME, "head", HEAD_NAME
    else:
        if args.node_timeout is not None:
            raise CommandError("--node-timeout applies to the head (--head), not to an agent")
        if args.region is None:
            raise CommandError("an agent needs --region")
        resources = (
            parse_resources(args.resources)
            if args.resources is not None
            else {"CPU": float(os.cpu_count() or 1)}
        )
        labels = parse_labels(args.labels) if args.labels is not None else {}
        node_id = args.node_id or socket.gethostname()
        name, role = f"agent-{node_id}", "agent"
    _check_credentials(args.certs, node_id)

    # The process outlives this command and keeps no notion of its working directory.
    certs = args.certs.resolve()
    try:
        traces = normalize(args.traces) if args.traces is not None else None
    except TracingConfigError as e:
        raise CommandError(str(e)) from None
    observability = Observability(args.metrics_port, args.metrics_host, traces)
    ready_file = state_dir / "run" / f"{name}.ready.json"
    if args.head:
        listen = args.listen or DEFAULT_HEAD_LISTEN
        cmd = head_command(
            listen,
            certs,
            ready_file,
            state_dir=state_dir / "head",
            observability=observability,
            node_timeout=args.node_timeout,
        )
    else:
        listen = args.listen or DEFAULT_AGENT_LISTEN
        cmd = agent_command(
            args.address,
            listen,
            certs,
            node_id,
            args.region,
            resources,
            labels,
            ready_file,
            observability=observability,
        )

    if args.foreground:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)

    running = _live_record(state_dir, name)
    if running is not None:
        raise CommandError(
            f"{name} is already running (pid {running.pid}, {running.address}); "
            f"stop it first with: fabric stop --state-dir {state_dir}"
        )
    record = _launch(name, role, cmd, ready_file, state_dir, args.timeout)
    print(record.address)
    return 0


def _check_credentials(certs: Path, node_id: str) -> None:
    """Fail here, with the path or the problem named, rather than in the child."""
    from fabric._pki import Credentials, Identity

    Identity("node", node_id)  # a bad --node-id is reported as such
    Credentials.load(credential_paths(certs, "node", node_id))


def _launch(
    name: str, role: str, cmd: list[str], ready_file: Path, state_dir: Path, timeout: float
) -> ProcessRecord:
    import psutil

    from fabric._cluster import ClusterStartError, spawn, terminate, wait_ready

    log_path = state_dir / "logs" / f"{name}.log"
    launch = spawn(name, cmd, ready_file, log_path)
    try:
        ready = wait_ready([launch], timeout)[name]
        create_time = psutil.Process(launch.process.pid).create_time()
    except ClusterStartError as exc:
        terminate([launch.process])
        raise CommandError(f"{exc.summary} (log: {log_path})") from exc
    except BaseException:
        terminate([launch.process])
        raise
    record = ProcessRecord(
        name=name,
        role=role,
        pid=launch.process.pid,
        address=ready.address,
        create_time=create_time,
        log=str(log_path),
    )
    _write_record(state_dir, record)
    return record


# ----------------------------------------------------------------------------- records


def _records_dir(state_dir: Path) -> Path:
    return state_dir / "processes"


def _write_record(state_dir: Path, record: ProcessRecord) -> None:
    directory = _records_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(path)


def _read_records(state_dir: Path) -> list[tuple[Path, ProcessRecord | None]]:
    """Every record file with its contents (None for an unreadable one)."""
    records: list[tuple[Path, ProcessRecord | None]] = []
    for path in sorted(_records_dir(state_dir).glob("*.json")):
        try:
            records.append((path, ProcessRecord(**json.loads(path.read_text()))))
        except (OSError, ValueError, TypeError):
            records.append((path, None))
    return records


def _is_running(record: ProcessRecord) -> bool:
    import psutil

    try:
        proc = psutil.Process(record.pid)
        # Same process only if it started when the recorded one did.
        same = abs(proc.create_time() - record.create_time) < 0.05
    except psutil.Error:
        return False
    return same and not _exited(proc)


def _exited(proc: psutil.Process) -> bool:
    """Whether ``proc`` is gone. A process `fabric start` launched is not our child, so
    once it exits it may stay a zombie until whoever adopted it reaps it; that counts."""
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited or ``timeout`` passed; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while True:
        alive = [proc for proc in alive if not _exited(proc)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(_POLL_INTERVAL)


def _live_record(state_dir: Path, name: str) -> ProcessRecord | None:
    for path, record in _read_records(state_dir):
        if path.stem == name and record is not None and _is_running(record):
            return record
    return None


# ----------------------------------------------------------------------------- stop


def _stop(args: argparse.Namespace) -> int:
    import psutil

    state_dir: Path = args.state_dir.expanduser().resolve()
    records = _read_records(state_dir)
    if not records:
        print(f"nothing to stop: no processes recorded in {_records_dir(state_dir)}")
        return 0
    # Agents are signalled before the head, so they can still reach it as they shut down.
    records.sort(key=lambda item: item[1] is not None and item[1].role == "head")
    live: dict[int, tuple[ProcessRecord, psutil.Process]] = {}
    for path, record in records:
        if record is None:
            print(f"removed unreadable record {path}")
        elif _is_running(record):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(record.pid)
                proc.send_signal(signal.SIGTERM)
                live[record.pid] = (record, proc)
                continue
            print(f"{record.name} (pid {record.pid}) was not running")
        else:
            print(f"{record.name} (pid {record.pid}) was not running")

    alive = _wait_exited([proc for _, proc in live.values()], args.timeout)
    killed = {proc.pid for proc in alive}
    for pid in killed:
        _kill_group(pid)
    _wait_exited(alive, args.timeout)
    for pid, (record, _) in live.items():
        # Anything the process left behind in its process group goes too.
        _kill_group(pid)
        what = f"{record.name} (pid {record.pid}, {record.address})"
        if pid in killed:
            print(f"killed {what}: it did not stop within {args.timeout:g} s")
        else:
            print(f"stopped {what}")
    for path, record in records:
        path.unlink(missing_ok=True)
        if record is not None:
            (state_dir / "run" / f"{record.name}.ready.json").unlink(missing_ok=True)
    return 0


def _kill_group(pid: int) -> None:
    # `fabric start` made each process the leader of its own process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
