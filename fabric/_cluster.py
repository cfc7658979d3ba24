"""A whole fabric on one machine: a head and N node agents as real processes on loopback.

:class:`LocalCluster` is what ``fabric.init()`` without an address, ``fabric demo`` and the
integration tests run on. It creates its own certificate authority, issues every identity
the cluster needs (``node/head``, ``node/<id>`` per agent, ``tenant/<name>`` per tenant and
``operator/admin``), starts the processes and waits until each one has written its ready
file. Nothing is shared with any other cluster: a fresh CA per cluster means certificates
of one cluster are refused by every other.

The lower-level pieces (:func:`head_command`, :func:`agent_command`, :func:`spawn`,
:func:`wait_ready` and :func:`terminate`) are shared with ``fabric start``, which launches
one process at a time. :func:`prestart` and :func:`release` let a cluster start its agents'
interpreters while the head is still starting (start time is benchmarked).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fabric._object_store import default_store_root
from fabric._pki import CertificateAuthority, CredentialPaths
from fabric.exceptions import FabricError

__all__ = [
    "ClusterStartError",
    "Launch",
    "LocalCluster",
    "NodeSpec",
    "Observability",
    "Ready",
    "agent_command",
    "head_command",
    "prestart",
    "release",
    "spawn",
    "terminate",
    "wait_ready",
]

# How often ready files and exit statuses are checked while waiting. Start time is
# measured, so this is short; each check is a stat() per process still starting.
POLL_INTERVAL = 0.01
# How long stop() lets processes shut down cleanly before it kills them.
STOP_GRACE = 5.0
# How much of a failed process's log an error message quotes.
LOG_TAIL_LINES = 20

HEAD_NAME = "head"
OPERATOR_NAME = "admin"

_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class ClusterStartError(FabricError):
    """A head or agent process failed to start, or did not become ready in time.

    The first line of the message says which process and why (the CLI prints only that
    line); the rest is the tail of the process's log.
    """

    def __init__(self, summary: str, log_path: Path | None = None, log_tail: str = "") -> None:
        self.summary = summary
        self.log_path = log_path
        self.log_tail = log_tail
        super().__init__(summary)

    def __str__(self) -> str:
        if not self.log_tail:
            return self.summary
        where = f" ({self.log_path})" if self.log_path is not None else ""
        return f"{self.summary}\nlast lines of the log{where}:\n{self.log_tail}"

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True)
class NodeSpec:
    """One node agent of a :class:`LocalCluster`."""

    node_id: str
    region: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    """What a process wrote to its ready file once it was serving."""

    address: str
    pid: int
    node_id: str


@dataclass(frozen=True)
class Observability:
    """How a head or agent process reports: a metrics endpoint (port 0: none) and the
    traces it (and an agent's workers) exports (``fabric._tracing.MODES``; None: as
    ``FABRIC_TRACES`` says)."""

    metrics_port: int = 0
    metrics_host: str | None = None
    traces: str | None = None

    def flags(self) -> list[str]:
        flags = []
        if self.metrics_port:
            flags += ["--metrics-port", str(self.metrics_port)]
            if self.metrics_host is not None:
                flags += ["--metrics-host", self.metrics_host]
        if self.traces is not None:
            flags += ["--traces", self.traces]
        return flags


@dataclass
class Launch:
    """A started process whose ready file has not necessarily appeared yet."""

    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    # Where this launch's output starts in the log (logs are appended to across runs).
    log_offset: int = 0


# ----------------------------------------------------------------------------- launching


def head_command(
    listen: str,
    certs: Path,
    ready_file: Path,
    state_dir: Path | None = None,
    policy: Path | None = None,
    observability: Observability | None = None,
    *,
    node_timeout: float | None = None,
) -> list[str]:
    """The command line of a head process (``python -m fabric._head ...``); `node_timeout`
    is its node-loss deadline in seconds (None: the head's default)."""
    cmd = [
        sys.executable,
        "-m",
        "fabric._head",
        "--listen",
        listen,
        "--certs",
        str(certs),
        "--identity",
        f"node/{HEAD_NAME}",
        "--ready-file",
        str(ready_file),
    ]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    if policy is not None:
        cmd += ["--policy", str(policy)]
    if node_timeout is not None:
        cmd += ["--node-timeout", repr(float(node_timeout))]
    if observability is not None:
        cmd += observability.flags()
    return cmd


def agent_command(
    head: str,
    listen: str,
    certs: Path,
    node_id: str,
    region: str,
    resources: Mapping[str, float],
    labels: Mapping[str, str],
    ready_file: Path,
    store_root: Path | None = None,
    state_dir: Path | None = None,
    audit: bool = True,
    observability: Observability | None = None,
) -> list[str]:
    """The command line of a node agent process (``python -m fabric._agent ...``)."""
    extra = ["--store-root", str(store_root)] if store_root is not None else []
    if state_dir is not None:
        extra += ["--state-dir", str(state_dir)]
    if not audit:
        extra.append("--no-audit")
    if observability is not None:
        extra += observability.flags()
    return [
        sys.executable,
        "-m",
        "fabric._agent",
        "--head",
        head,
        "--listen",
        listen,
        "--certs",
        str(certs),
        "--identity",
        f"node/{node_id}",
        "--region",
        region,
        "--resources",
        json.dumps(dict(resources), sort_keys=True),
        "--labels",
        json.dumps(dict(labels), sort_keys=True),
        "--ready-file",
        str(ready_file),
        *extra,
    ]


def spawn(name: str, cmd: Sequence[str], ready_file: Path, log_path: Path) -> Launch:
    """Start ``cmd`` in its own session with stdout and stderr appended to ``log_path``.

    A session of its own keeps a terminal's Ctrl-C away from the process (its owner
    decides when it stops) and makes it the leader of a process group, so
    :func:`terminate` can take down whatever it left behind in that group too.
    """
    return _popen(name, cmd, ready_file, log_path, stdin=subprocess.DEVNULL)


def prestart(name: str, module: str, ready_file: Path, log_path: Path) -> Launch:
    """Start an interpreter that imports ``module`` now and runs it (as ``python -m
    module``) once :func:`release` hands it its arguments.

    An agent's command line needs the head's address, known only once the head serves;
    its imports (grpc, the runtime) do not. Prestarting overlaps them with the head's
    start-up, which is most of an agent's start time. ``module`` must keep its main code
    under ``if __name__ == "__main__"`` (for a package: in ``__main__.py``, likewise
    guarded), since it is imported before it is run.
    """
    cmd = [sys.executable, "-m", __name__, _PRESTART_FLAG, module]
    return _popen(name, cmd, ready_file, log_path, stdin=subprocess.PIPE)


def release(launch: Launch, cmd: Sequence[str], *, lifeline: bool = False) -> None:
    """Run a :func:`prestart`-ed process as ``cmd`` (``python -m <its module> ARGS...``).

    With ``lifeline``, the pipe the arguments went through stays open for as long as
    the launcher lives (:func:`terminate` closes it). When it closes, however the
    launcher ended, even by SIGKILL, the process gets SIGTERM, and SIGKILL
    :data:`STOP_GRACE` seconds later: an embedded cluster never outlives its owner.
    """
    if list(cmd[:2]) != [sys.executable, "-m"]:
        raise ValueError(f"not a `python -m MODULE` command: {cmd!r}")
    stdin = launch.process.stdin
    if stdin is None:
        raise ValueError(f"{launch.name} was not prestarted")
    message = json.dumps({"argv": list(cmd[2:]), "lifeline": lifeline}).encode() + b"\n"
    # A process that already died is reported by wait_ready, with its log.
    with contextlib.suppress(BrokenPipeError):
        stdin.write(message)
        stdin.flush()
    if not lifeline:
        with contextlib.suppress(BrokenPipeError):
            stdin.close()


def _popen(name: str, cmd: Sequence[str], ready_file: Path, log_path: Path, stdin: int) -> Launch:
    with contextlib.suppress(FileNotFoundError):
        ready_file.unlink()
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            list(cmd),
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    return Launch(name, process, ready_file, log_path, offset)


_PRESTART_FLAG = "--prestarted"


def _run_prestarted(module: str) -> None:
    """The child side of :func:`prestart` and :func:`release`."""
    import importlib.util
    import runpy

    spec = importlib.util.find_spec(module)
    is_package = spec is not None and spec.submodule_search_locations is not None
    importlib.import_module(f"{module}.__main__" if is_package else module)
    line = sys.stdin.readline()
    if not line:
        return  # the launcher gave up on us before releasing
    message = json.loads(line)
    if message["lifeline"]:
        threading.Thread(target=_watch_lifeline, name="fabric-lifeline", daemon=True).start()
    sys.argv = [module, *message["argv"][1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _watch_lifeline() -> None:
    sys.stdin.read()  # returns at end of file: the launcher closed the pipe or is gone
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE)  # the grace period a clean shutdown gets, as in terminate()
    os.kill(os.getpid(), signal.SIGKILL)


def read_ready(path: Path) -> Ready | None:
    """The ready file's contents, or None while it does not exist yet.

    Processes write it with write-to-temporary and rename, so a file that exists is
    complete.
    """
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Ready(
            address=str(data["address"]), pid=int(data["pid"]), node_id=str(data.get("node_id", ""))
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterStartError(f"ready file {path} is malformed: {exc}") from None


def log_tail(launch: Launch, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines this launch wrote to its log."""
    try:
        with open(launch.log_path, "rb") as fh:
            fh.seek(launch.log_offset)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line:
            # The processes report a failure as "fabric: error: ..."; the caller adds
            # its own prefix.
            return line.removeprefix("fabric: error: ")
    return ""


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def wait_ready(
    launches: Iterable[Launch], timeout: float, *, since: float | None = None
) -> dict[str, Ready]:
    """Wait until every launch has written its ready file; return what each wrote.

    Raises :class:`ClusterStartError` as soon as one process exits before it is ready
    (quoting its log), or when ``timeout`` seconds have passed since ``since`` (a
    ``time.monotonic()`` value; default: now). The processes are left running either
    way: the caller owns them and decides what to stop.
    """
    pending = {launch.name: launch for launch in launches}
    ready: dict[str, Ready] = {}
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        for name, launch in list(pending.items()):
            info = read_ready(launch.ready_file)
            if info is not None:
                ready[name] = info
                del pending[name]
                continue
            returncode = launch.process.poll()
            if returncode is not None:
                # A process may write its ready file and then exit at once; the file
                # decides, so look once more now that the process is gone.
                info = read_ready(launch.ready_file)
                if info is not None:
                    ready[name] = info
                    del pending[name]
                    continue
                tail = log_tail(launch)
                reason = _last_line(tail)
                summary = f"{name} {_exit_description(returncode)} before it was ready"
                raise ClusterStartError(
                    f"{summary}: {reason}" if reason else summary, launch.log_path, tail
                )
        if not pending:
            return ready
        if time.monotonic() >= deadline:
            launch = next(iter(pending.values()))
            names = ", ".join(sorted(pending))
            raise ClusterStartError(
                f"{names} not ready within {timeout:g} s", launch.log_path, log_tail(launch)
            )
        time.sleep(POLL_INTERVAL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate(processes: Iterable[subprocess.Popen[bytes]], grace: float = STOP_GRACE) -> None:
    """SIGTERM every process, wait up to ``grace`` seconds, then SIGKILL what is left.

    Each process was started as the leader of its own process group (see :func:`spawn`);
    once the leaders are gone, anything left in their groups is killed too.
    """
    procs = list(processes)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc in procs:
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:  # a prestarted process's pipe
            with contextlib.suppress(OSError):
                proc.stdin.close()


# ----------------------------------------------------------------------------- the cluster


def _free_port(host: str) -> int:
    """A port of `host` free now (the process it is handed to binds it moments later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _default_nodes() -> list[NodeSpec]:
    return [NodeSpec("node-1", "local", {"CPU": float(os.cpu_count() or 1)})]


class LocalCluster:
    """A head and N agents as real processes on loopback, with their own CA and certificates.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`; a cluster that is
    still running when the interpreter exits is stopped then, and one whose owner dies
    outright stops itself (see :func:`release`). Layout of ``base_dir``::

        certs/            the CA (ca.pem, ca.key, crl.pem) and certs/issued/<kind>-<name>.*
        logs/<name>.log   stdout and stderr of the head and of each agent
        run/<name>.json   ready files
        head/             the head's state directory
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec] | None = None,
        *,
        base_dir: Path | None = None,
        tenants: Sequence[str] = ("default",),
        host: str = "127.0.0.1",
        policy: Path | str | None = None,
        audit: bool = True,
        metrics: bool = False,
        traces: str | None = None,
        node_timeout: float | None = None,
    ) -> None:
        # False only to measure what recording decisions costs: agents then record nothing.
        self.audit = audit
        # The head's node-loss deadline in seconds (None: the head's default).
        self.node_timeout = node_timeout
        # With metrics, the head and every agent serve them on a free port of `host`
        # (`metrics_addresses`); `traces` is each process's FABRIC_TRACES (None: inherited).
        self.metrics = metrics
        self.traces = traces
        self.metrics_addresses: dict[str, str] = {}
        # A tenancy policy YAML the head starts under; None: the open default policy.
        self.policy = Path(policy) if policy is not None else None
        self._store_root: Path | None = None
        self.nodes: tuple[NodeSpec, ...] = (
            tuple(nodes) if nodes is not None else tuple(_default_nodes())
        )
        if not self.nodes:
            raise ValueError("a LocalCluster needs at least one node")
        seen: set[str] = set()
        for spec in self.nodes:
            if _NODE_ID_RE.fullmatch(spec.node_id) is None:
                raise ValueError(
                    f"invalid node id {spec.node_id!r}: expected 1-63 characters of "
                    "[A-Za-z0-9._-] starting with a letter or digit"
                )
            if spec.node_id == HEAD_NAME:
                raise ValueError(f"node id {HEAD_NAME!r} is reserved for the head")
            if spec.node_id in seen:
                raise ValueError(f"duplicate node id {spec.node_id!r}")
            seen.add(spec.node_id)
        self.tenants: tuple[str, ...] = tuple(dict.fromkeys(tenants))
        self.host = host
        self._owns_base_dir = base_dir is None
        self._base_dir: Path | None = Path(base_dir) if base_dir is not None else None

        self.head_address = ""
        self.agent_addresses: dict[str, str] = {}
        # "head" and each node id -> its process. Stopped or killed processes stay here
        # (with their returncode set) so tests can inspect them.
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._credentials: dict[tuple[str, str], CredentialPaths] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._owner_pid = os.getpid()

    # -- layout -----------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            raise FabricError("the cluster has not been started")
        return self._base_dir

    @property
    def certs_dir(self) -> Path:
        return self.base_dir / "certs"

    @property
    def logs_dir(self) -> Path:
        return self.base_dir / "logs"

    def log_path(self, name: str) -> Path:
        """The log of ``"head"`` or of the agent of node ``name``."""
        return self.logs_dir / f"{name}.log"

    def _ready_path(self, name: str) -> Path:
        return self.base_dir / "run" / f"{name}.json"

    # -- credentials ------------------------------------------------------------------

    def credentials(self, kind: str, name: str) -> CredentialPaths:
        """The credentials this cluster issued to ``kind/name``."""
        try:
            return self._credentials[(kind, name)]
        except KeyError:
            issued = ", ".join(f"{k}/{n}" for k, n in sorted(self._credentials)) or "none yet"
            raise FabricError(
                f"this cluster issued no certificate to {kind}/{name} (issued: {issued})"
            ) from None

    def tenant_credentials(self, tenant: str) -> CredentialPaths:
        """The certificate, key, CA and CRL paths of one of the cluster's tenants."""
        return self.credentials("tenant", tenant)

    def operator_credentials(self) -> CredentialPaths:
        """The credentials of the cluster's operator (``operator/admin``)."""
        return self.credentials("operator", OPERATOR_NAME)

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Create the CA and certificates, start the head, then all agents in parallel,
        and return once every process is serving. On failure everything started so far
        is stopped and :class:`ClusterStartError` is raised."""
        with self._lock:
            if self._started:
                raise FabricError("this LocalCluster has already been started")
            self._started = True
            self._owner_pid = os.getpid()
        since = time.monotonic()
        atexit.register(self.stop)
        try:
            self._start(since, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, since: float, timeout: float) -> None:
        if self._base_dir is None:
            # mkdtemp creates the directory 0700: it will hold the CA key.
            self._base_dir = Path(tempfile.mkdtemp(prefix="fabric-cluster-"))
        else:
            self._base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)

        if (self.certs_dir / "ca.pem").exists():
            ca = CertificateAuthority.load(self.certs_dir)
        else:
            ca = CertificateAuthority.create(self.certs_dir)
        self._issue(ca, "node", HEAD_NAME)
        # Every process is started through prestart() so that it gets a lifeline (see
        # release()); the head is released at once, since its command line is known.
        head = prestart(
            HEAD_NAME, "fabric._head", self._ready_path(HEAD_NAME), self.log_path(HEAD_NAME)
        )
        release(
            head,
            head_command(
                f"{self.host}:0",
                self.certs_dir,
                self._ready_path(HEAD_NAME),
                state_dir=self.base_dir / HEAD_NAME,
                policy=self.policy,
                observability=self._observability(HEAD_NAME),
                node_timeout=self.node_timeout,
            ),
            lifeline=True,
        )
        self.processes[HEAD_NAME] = head.process
        # Agents import the runtime while the head starts; they get their command line
        # (which names the head's address) once the head serves.
        agents = {
            spec.node_id: prestart(
                spec.node_id,
                "fabric._agent",
                self._ready_path(spec.node_id),
                self.log_path(spec.node_id),
            )
            for spec in self.nodes
        }
        for node_id, launch in agents.items():
            self.processes[node_id] = launch.process

        # The rest of the certificates are issued while the interpreters boot.
        for spec in self.nodes:
            self._issue(ca, "node", spec.node_id)
        for tenant in self.tenants:
            self._issue(ca, "tenant", tenant)
        self._issue(ca, "operator", OPERATOR_NAME)

        self.head_address = wait_ready([head], timeout, since=since)[HEAD_NAME].address
        # The agents' stores live under one shared-memory directory of ours, so that stop()
        # reclaims them even from agents that were killed and could not clean up.
        root = tempfile.mkdtemp(prefix="fabric-cluster-", dir=default_store_root())
        os.chmod(root, 0o711)  # workers under their tenant's uid reach their own store by name
        self._store_root = Path(root)
        for spec in self.nodes:
            cmd = agent_command(
                self.head_address,
                f"{self.host}:0",
                self.certs_dir,
                spec.node_id,
                spec.region,
                spec.resources,
                spec.labels,
                self._ready_path(spec.node_id),
                self._store_root,
                state_dir=self.base_dir / spec.node_id,
                audit=self.audit,
                observability=self._observability(spec.node_id),
            )
            release(agents[spec.node_id], cmd, lifeline=True)
        ready = wait_ready(agents.values(), timeout, since=since)
        self.agent_addresses = {spec.node_id: ready[spec.node_id].address for spec in self.nodes}

    def _observability(self, name: str) -> Observability:
        port = 0
        if self.metrics:
            port = _free_port(self.host)
            self.metrics_addresses[name] = f"{self.host}:{port}"
        return Observability(metrics_port=port, metrics_host=self.host, traces=self.traces)

    def _issue(self, ca: CertificateAuthority, kind: str, name: str) -> None:
        self._credentials[(kind, name)] = ca.issue(kind, name)

    def kill_agent(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Simulate the loss of a node: send ``sig`` (default SIGKILL) to the agent's
        process group and wait until the agent is gone. (Its workers run in sessions of
        their own and notice the loss of their agent by themselves.)"""
        if node_id not in self.agent_addresses:
            raise FabricError(f"no agent {node_id!r} in this cluster")
        proc = self.processes[node_id]
        _signal_group(proc.pid, sig)
        proc.wait()

    def restart_head(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Simulate a head failure and its restart: send ``sig`` (default SIGKILL) to the
        head's process group, wait until it is gone, and start a new head on the same
        address, certificates and state directory; return once it serves.

        The new head starts under the last policy applied (its state directory keeps it),
        which is the cluster's policy unless one was applied since; the agents reconnect
        by themselves. The old port was the OS's choice, so the new head binds it
        explicitly, and tries again while it is briefly unavailable."""
        if not self.running:
            raise FabricError("the cluster is not running")
        since = time.monotonic()
        old = self.processes[HEAD_NAME]
        port = self.metrics_addresses.get(HEAD_NAME, ":0").rpartition(":")[2]
        cmd = head_command(
            self.head_address,
            self.certs_dir,
            self._ready_path(HEAD_NAME),
            state_dir=self.base_dir / HEAD_NAME,
            observability=Observability(int(port), self.host, self.traces),
            node_timeout=self.node_timeout,
        )

        def prestart_head() -> Launch:
            return prestart(
                HEAD_NAME, "fabric._head", self._ready_path(HEAD_NAME), self.log_path(HEAD_NAME)
            )

        # The new interpreter imports while the old head goes down, as agents do at start.
        launch = prestart_head()
        _signal_group(old.pid, sig)
        try:
            old.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(old.pid, signal.SIGKILL)
            old.wait()
        if old.stdin is not None:  # its lifeline
            with contextlib.suppress(OSError):
                old.stdin.close()
        while True:
            release(launch, cmd, lifeline=True)
            self.processes[HEAD_NAME] = launch.process
            try:
                wait_ready([launch], timeout, since=since)
                return
            except ClusterStartError as error:
                # gRPC binds with SO_REUSEADDR, but a port may still be held for a moment
                # by a socket the old head left; anything else is for the caller.
                unbound = "cannot listen" in error.summary or "Failed to bind" in error.summary
                if not unbound or time.monotonic() - since > timeout:
                    raise
            time.sleep(POLL_INTERVAL * 10)
            launch = prestart_head()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 5 s) and, if the cluster
        created its base directory, remove it. Calling it again does nothing."""
        with self._lock:
            # A forked child inherits this object (and its atexit hook) but not the
            # processes: they are its parent's to stop.
            if self._stopped or os.getpid() != self._owner_pid:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        # Agents first in the list so they see SIGTERM no later than the head.
        procs = [p for name, p in self.processes.items() if name != HEAD_NAME]
        if HEAD_NAME in self.processes:
            procs.append(self.processes[HEAD_NAME])
        terminate(procs)
        if self._store_root is not None:
            shutil.rmtree(self._store_root, ignore_errors=True)
        if self._owns_base_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    def __enter__(self) -> LocalCluster:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped else "not started")
        nodes = ", ".join(f"{n.node_id}@{n.region}" for n in self.nodes)
        return f"<LocalCluster {state} head={self.head_address or '-'} nodes=[{nodes}]>"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _PRESTART_FLAG:
        _run_prestarted(sys.argv[2])
    else:
        sys.exit(
            f"usage: python -m {__spec__.name if __spec__ else 'fabric._cluster'} "
            f"{_PRESTART_FLAG} MODULE"
        )
