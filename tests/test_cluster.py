"""LocalCluster, the launch helpers under it, and `fabric start` / `stop` with real processes.

The helpers are exercised with a small stand-in process (it writes a ready file like the
head and agents do), so their behaviour is pinned independently of the runtime; the
cluster and `fabric start` tests then run real head and agent processes over real mutual
TLS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fabric.cli._status import fetch_status

from fabric._cluster import (
    ClusterStartError,
    Launch,
    LocalCluster,
    NodeSpec,
    Ready,
    prestart,
    read_ready,
    release,
    spawn,
    terminate,
    wait_ready,
)
from fabric._pki import CertificateAuthority, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric.exceptions import FabricError
from tests.conftest import wait_for
from tests.test_cli import FABRIC, run_fabric

# ----------------------------------------------------------------------------- stand-in process

_STAND_IN = '''
"""Behaves like a head or agent towards its launcher: ready file, errors, SIGTERM."""
import argparse, json, os, signal, subprocess, sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--address", default="127.0.0.1:1")
    parser.add_argument("--fail")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--with-child", action="store_true")
    args = parser.parse_args()
    if args.fail:
        print("starting up", file=sys.stderr)
        print(f"fabric: error: {args.fail}", file=sys.stderr)
        sys.exit(3)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ready = {"address": args.address, "pid": os.getpid(), "node_id": "stand-in"}
    if args.with_child:
        # Inherits the blocked SIGTERM: only SIGKILL (of the group) ends it.
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        ready["child"] = child.pid
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(ready, fh)
    os.replace(tmp, args.ready_file)
    if args.ignore_term:
        signal.pause()
    signal.sigwait({signal.SIGTERM})
    print("stopping", file=sys.stderr)


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The stand-in's module name; launched processes find it on PYTHONPATH."""
    (tmp_path / "stand_in.py").write_text(textwrap.dedent(_STAND_IN))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{path}" if path else str(tmp_path))
    return "stand_in"


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    """Launches made by a test; whatever is left running is ended afterwards."""
    made: list[Launch] = []
    yield made
    terminate([launch.process for launch in made], grace=1)


def _launch(tmp_path: Path, module: str, *args: str) -> Launch:
    ready = tmp_path / "run" / "stand-in.json"
    cmd = [sys.executable, "-m", module, "--ready-file", str(ready), *args]
    return spawn("stand-in", cmd, ready, tmp_path / "logs" / "stand-in.log")


def _pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_wait_ready_returns_what_the_process_wrote(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    launch = _launch(tmp_path, stand_in, "--address", "127.0.0.1:4242")
    launches.append(launch)
    ready = wait_ready([launch], timeout=60)
    assert ready == {"stand-in": Ready("127.0.0.1:4242", launch.process.pid, "stand-in")}
    terminate([launch.process])
    assert launch.process.returncode == 0
    assert (tmp_path / "logs" / "stand-in.log").read_text() == "stopping\n"


def test_a_process_that_exits_early_is_reported_with_its_log(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    launch = _launch(tmp_path, stand_in, "--fail", "cannot listen on 1.2.3.4:5")
    launches.append(launch)
    with pytest.raises(ClusterStartError) as info:
        wait_ready([launch], timeout=60)
    err = info.value
    assert (
        err.summary
        == "stand-in exited with status 3 before it was ready: cannot listen on 1.2.3.4:5"
    )
    assert err.log_path == tmp_path / "logs" / "stand-in.log"
    assert str(err) == (
        f"{err.summary}\nlast lines of the log ({err.log_path}):\n"
        "starting up\nfabric: error: cannot listen on 1.2.3.4:5"
    )


def test_log_tail_covers_only_this_launch(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    log = tmp_path / "logs" / "stand-in.log"
    log.parent.mkdir()
    log.write_text("an earlier run\n")
    launch = _launch(tmp_path, stand_in, "--fail", "again")
    launches.append(launch)
    with pytest.raises(ClusterStartError) as info:
        wait_ready([launch], timeout=60)
    assert info.value.log_tail == "starting up\nfabric: error: again"
    assert log.read_text().startswith("an earlier run\n")


def test_wait_ready_times_out(tmp_path: Path, stand_in: str, launches: list[Launch]) -> None:
    # Prestarted and never released: alive, importing nothing further, never ready.
    launch = prestart("stand-in", stand_in, tmp_path / "never.json", tmp_path / "never.log")
    launches.append(launch)
    with pytest.raises(ClusterStartError, match=r"^stand-in not ready within 0\.2 s$"):
        wait_ready([launch], timeout=0.2)
    assert launch.process.poll() is None


def test_prestart_then_release(tmp_path: Path, stand_in: str, launches: list[Launch]) -> None:
    ready_file = tmp_path / "run" / "pre.json"
    launch = prestart("pre", stand_in, ready_file, tmp_path / "pre.log")
    launches.append(launch)
    assert read_ready(ready_file) is None
    release(
        launch,
        [sys.executable, "-m", stand_in, "--ready-file", str(ready_file), "--address", "h:7"],
    )
    # The prestarted interpreter itself becomes the process: same pid, same process group.
    assert wait_ready([launch], timeout=60)["pre"] == Ready("h:7", launch.process.pid, "stand-in")
    terminate([launch.process])
    assert launch.process.returncode == 0


def test_a_lifeline_ends_the_process_with_its_launcher(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    ready_file = tmp_path / "run" / "pre.json"
    launch = prestart("pre", stand_in, ready_file, tmp_path / "pre.log")
    launches.append(launch)
    release(
        launch, [sys.executable, "-m", stand_in, "--ready-file", str(ready_file)], lifeline=True
    )
    wait_ready([launch], timeout=60)
    assert launch.process.poll() is None
    assert launch.process.stdin is not None
    launch.process.stdin.close()  # as when the launcher dies: the stand-in gets SIGTERM
    assert launch.process.wait(timeout=30) == 0
    assert (tmp_path / "pre.log").read_text() == "stopping\n"


def test_release_after_the_process_died_is_reported_by_wait_ready(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    launch = prestart("pre", stand_in, tmp_path / "pre.json", tmp_path / "pre.log")
    launches.append(launch)
    launch.process.kill()
    launch.process.wait()
    release(launch, [sys.executable, "-m", stand_in, "--ready-file", str(tmp_path / "pre.json")])
    with pytest.raises(ClusterStartError, match=r"^pre was killed by SIGKILL before it was ready$"):
        wait_ready([launch], timeout=60)


def test_release_needs_a_module_command(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    launch = prestart("pre", stand_in, tmp_path / "pre.json", tmp_path / "pre.log")
    launches.append(launch)
    with pytest.raises(ValueError, match=r"^not a `python -m MODULE` command: \['stand_in'\]$"):
        release(launch, ["stand_in"])


def test_terminate_kills_stragglers_and_their_process_group(
    tmp_path: Path, stand_in: str, launches: list[Launch]
) -> None:
    launch = _launch(tmp_path, stand_in, "--ignore-term", "--with-child")
    launches.append(launch)
    wait_ready([launch], timeout=60)
    child = json.loads(launch.ready_file.read_text())["child"]
    assert not _pid_gone(child)
    terminate([launch.process], grace=0.2)
    assert launch.process.returncode == -signal.SIGKILL
    wait_for(lambda: _pid_gone(child), timeout=10, what="the stand-in's child to be killed")


def test_read_ready_malformed(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    assert read_ready(path) is None
    path.write_text('{"pid": 1}')
    with pytest.raises(
        ClusterStartError, match=rf"^ready file {re.escape(str(path))} is malformed: 'address'$"
    ):
        read_ready(path)


def test_module_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fabric._cluster"], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (
        1,
        "usage: python -m fabric._cluster --prestarted MODULE\n",
    )


# ------------------------------------------------------------------------ LocalCluster, input


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([], "a LocalCluster needs at least one node"),
        ([NodeSpec("a", "r", {}), NodeSpec("a", "r", {})], "duplicate node id 'a'"),
        ([NodeSpec("head", "r", {})], "node id 'head' is reserved for the head"),
        (
            [NodeSpec("a/b", "r", {})],
            "invalid node id 'a/b': expected 1-63 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit",
        ),
    ],
)
def test_node_specs_are_checked(nodes: list[NodeSpec], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        LocalCluster(nodes)


def test_default_node() -> None:
    cluster = LocalCluster()
    assert cluster.nodes == (NodeSpec("node-1", "local", {"CPU": float(os.cpu_count() or 1)}),)
    assert repr(cluster) == "<LocalCluster not started head=- nodes=[node-1@local]>"
    with pytest.raises(FabricError, match=r"^the cluster has not been started$"):
        _ = cluster.certs_dir


# ------------------------------------------------------------------------ LocalCluster, running


def _status(cluster: LocalCluster) -> pb.ClusterInfo:
    paths = cluster.operator_credentials()
    return fetch_status(cluster.head_address, Credentials.load(paths), paths)


def _processes_ended(cluster: LocalCluster) -> bool:
    return all(proc.poll() is not None for proc in cluster.processes.values())


def test_local_cluster_lifecycle() -> None:
    cluster = LocalCluster().start()
    try:
        base = cluster.base_dir
        assert stat.S_IMODE(base.stat().st_mode) == 0o700
        assert re.fullmatch(r"127\.0\.0\.1:\d+", cluster.head_address)
        assert list(cluster.agent_addresses) == ["node-1"]
        assert set(cluster.processes) == {"head", "node-1"}
        assert all(proc.poll() is None for proc in cluster.processes.values())
        assert cluster.log_path("head") == cluster.logs_dir / "head.log"
        assert cluster.log_path("head").exists() and cluster.log_path("node-1").exists()
        assert (cluster.certs_dir / "ca.key").exists()

        creds = Credentials.load(cluster.tenant_credentials("default"))
        assert creds.identity.uri == "spiffe://fabric.local/tenant/default"
        assert cluster.credentials("node", "node-1").cert == (
            cluster.certs_dir / "issued" / "node-node-1.pem"
        )
        with pytest.raises(
            FabricError,
            match=r"^this cluster issued no certificate to tenant/acme \(issued: node/head, "
            r"node/node-1, operator/admin, tenant/default\)$",
        ):
            cluster.tenant_credentials("acme")
        with pytest.raises(FabricError, match=r"^this LocalCluster has already been started$"):
            cluster.start()

        (node,) = _status(cluster).nodes
        assert (node.node_id, node.region, node.alive) == ("node-1", "local", True)
        assert node.address == cluster.agent_addresses["node-1"]
        assert dict(node.total) == {"CPU": float(os.cpu_count() or 1)}
        assert repr(cluster) == (
            f"<LocalCluster running head={cluster.head_address} nodes=[node-1@local]>"
        )
    finally:
        cluster.stop()
    assert _processes_ended(cluster)
    assert not base.exists()
    cluster.stop()  # idempotent
    assert not cluster.running


def test_three_regions_and_node_loss() -> None:
    nodes = [
        NodeSpec("eu-1", "eu-west", {"CPU": 2}, {"tier": "gold"}),
        NodeSpec("eu-2", "eu-central", {"CPU": 1, "GPU": 1}),
        NodeSpec("us-1", "us-east", {"CPU": 4}),
    ]
    with LocalCluster(nodes, tenants=("acme", "globex")) as cluster:
        assert sorted(cluster.agent_addresses) == ["eu-1", "eu-2", "us-1"]
        assert len(set(cluster.agent_addresses.values())) == 3
        for tenant in ("acme", "globex"):
            assert Credentials.load(cluster.tenant_credentials(tenant)).identity.name == tenant
        view = {n.node_id: n for n in _status(cluster).nodes}
        assert {k: (n.region, dict(n.total), dict(n.labels)) for k, n in view.items()} == {
            "eu-1": ("eu-west", {"CPU": 2.0}, {"tier": "gold"}),
            "eu-2": ("eu-central", {"CPU": 1.0, "GPU": 1.0}, {}),
            "us-1": ("us-east", {"CPU": 4.0}, {}),
        }
        assert all(n.alive for n in view.values())

        cluster.kill_agent("eu-2")
        assert cluster.processes["eu-2"].returncode == -signal.SIGKILL

        def lost() -> bool:
            return all(n.node_id != "eu-2" or not n.alive for n in _status(cluster).nodes)

        wait_for(lost, timeout=60, what="the head to notice eu-2 is gone")
        assert {n.node_id for n in _status(cluster).nodes if n.alive} == {"eu-1", "us-1"}
        with pytest.raises(FabricError, match=r"^no agent 'nope' in this cluster$"):
            cluster.kill_agent("nope")
    assert _processes_ended(cluster)


def test_a_head_that_cannot_start_is_reported_and_cleaned_up() -> None:
    # TEST-NET-3 (RFC 5737): never an address of this machine, so binding to it fails.
    cluster = LocalCluster(host="203.0.113.1")
    with pytest.raises(ClusterStartError) as info:
        cluster.start()
    assert re.fullmatch(
        r"head exited with status 1 before it was ready: .*203\.0\.113\.1.*",
        str(info.value).splitlines()[0],
    ), str(info.value)
    assert info.value.log_tail
    # Everything started is stopped, the prestarted agent included, and the directory is gone.
    assert set(cluster.processes) == {"head", "node-1"}
    assert _processes_ended(cluster)
    assert not cluster.base_dir.exists()


def test_start_timeout(tmp_path: Path) -> None:
    cluster = LocalCluster(base_dir=tmp_path / "c")
    with pytest.raises(ClusterStartError, match=r"^head not ready within 0\.01 s"):
        cluster.start(timeout=0.01)
    assert _processes_ended(cluster)
    assert (tmp_path / "c").exists()  # not ours to remove


def test_given_base_dir_is_kept_and_its_ca_reused(tmp_path: Path) -> None:
    base = tmp_path / "cluster"
    with LocalCluster(base_dir=base) as cluster:
        ca_pem = (cluster.certs_dir / "ca.pem").read_bytes()
    assert (base / "logs" / "head.log").exists()
    with LocalCluster(base_dir=base) as again:
        assert (again.certs_dir / "ca.pem").read_bytes() == ca_pem
        assert _status(again).nodes[0].alive
    assert CertificateAuthority.load(base / "certs").trust_domain == "fabric.local"


def test_a_forked_child_does_not_stop_the_parents_cluster() -> None:
    with LocalCluster() as cluster:
        pid = os.fork()
        if pid == 0:  # the child: its exit (and atexit) must leave the cluster alone
            try:
                cluster.stop()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert all(proc.poll() is None for proc in cluster.processes.values())
        assert _status(cluster).nodes[0].alive


def test_a_cluster_dies_with_its_owner() -> None:
    """Even an owner killed outright (no atexit) takes its cluster with it."""
    script = textwrap.dedent(
        """
        import json, sys
        from fabric._cluster import LocalCluster, NodeSpec
        cluster = LocalCluster([NodeSpec("a", "r", {"CPU": 1}), NodeSpec("b", "r", {"CPU": 1})])
        cluster.start()
        print(json.dumps({name: p.pid for name, p in cluster.processes.items()}), flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        assert set(pids) == {"head", "a", "b"}
        assert not any(_pid_gone(pid) for pid in pids.values())
    finally:
        owner.kill()
        owner.wait()
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()
    wait_for(lambda: all(_pid_gone(pid) for pid in pids.values()), timeout=30, what="exit")


def test_a_cluster_left_running_is_stopped_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json
        from fabric._cluster import LocalCluster
        cluster = LocalCluster().start()
        print(json.dumps({name: p.pid for name, p in cluster.processes.items()}), flush=True)
        print(cluster.base_dir, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    pids_line, base_line = result.stdout.splitlines()
    pids = json.loads(pids_line)
    assert set(pids) == {"head", "node-1"}
    wait_for(lambda: all(_pid_gone(pid) for pid in pids.values()), timeout=30, what="exit")
    assert not Path(base_line).exists()


# ------------------------------------------------------------ fabric start / status / stop


@pytest.fixture
def operator_pki(tmp_path: Path) -> Path:
    """A CA directory with head, operator and n1 certificates, n1's in its own host dir."""
    ca_dir = tmp_path / "ca"
    assert run_fabric("certs", "init", "--dir", ca_dir).returncode == 0
    for who in (["--node", "head"], ["--operator", "admin"]):
        assert run_fabric("certs", "issue", "--dir", ca_dir, *who).returncode == 0
    host = run_fabric("certs", "issue", "--dir", ca_dir, "--node", "n1", "--out", tmp_path / "h1")
    assert host.returncode == 0, host.stderr
    return ca_dir


def test_start_status_stop(tmp_path: Path, operator_pki: Path) -> None:
    state = tmp_path / "state"
    head = run_fabric(
        "start", "--head", "--listen", "127.0.0.1:0", "--certs", operator_pki, "--state-dir", state
    )
    assert head.returncode == 0, head.stderr
    head_address = head.stdout.strip()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", head_address)
    record = json.loads((state / "processes" / "head.json").read_text())
    assert (record["role"], record["address"]) == ("head", head_address)
    head_pid = record["pid"]
    try:
        agent = run_fabric(
            "start",
            "--address",
            head_address,
            "--region",
            "eu-west",
            "--resources",
            "CPU=2,GPU=1",
            "--labels",
            "zone=a",
            "--node-id",
            "n1",
            "--certs",
            tmp_path / "h1",
            "--state-dir",
            state,
        )
        assert agent.returncode == 0, agent.stderr
        agent_address = agent.stdout.strip()
        agent_pid = json.loads((state / "processes" / "agent-n1.json").read_text())["pid"]
        assert (state / "logs" / "agent-n1.log").exists()

        again = run_fabric(
            "start",
            "--head",
            "--listen",
            "127.0.0.1:0",
            "--certs",
            operator_pki,
            "--state-dir",
            state,
        )
        assert again.returncode == 1
        assert again.stderr == (
            f"fabric: error: head is already running (pid {head_pid}, {head_address}); "
            f"stop it first with: fabric stop --state-dir {state}\n"
        )

        status = run_fabric(
            "status",
            "--address",
            head_address,
            "--certs",
            operator_pki,
            "--identity",
            "operator/admin",
        )
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].split() == [
            "NODE",
            "REGION",
            "ADDRESS",
            "ALIVE",
            "CPU",
            "GPU",
            "RUNNING",
            "QUEUED",
            "WORKERS",
            "LABELS",
        ]
        assert lines[1].split() == [
            "n1",
            "eu-west",
            agent_address,
            "yes",
            "2/2",
            "1/1",
            "0",
            "0",
            "0",
            "zone=a",
        ]
        assert lines[2].split()[:5] == ["TOTAL", "1", "node", "1/1", "2/2"]

        as_json = run_fabric(
            "status",
            "--address",
            head_address,
            "--certs",
            operator_pki,
            "--identity",
            "operator/admin",
            "--json",
        )
        (node,) = json.loads(as_json.stdout)["nodes"]
        assert node["identity"] == "spiffe://fabric.local/node/n1"
        assert node["total"] == {"CPU": 2.0, "GPU": 1.0}
        assert node["labels"] == {"zone": "a"}
    finally:
        stop = run_fabric("stop", "--state-dir", state)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.splitlines() == [
        f"stopped agent-n1 (pid {agent_pid}, {agent_address})",
        f"stopped head (pid {head_pid}, {head_address})",
    ]
    assert _pid_gone(head_pid) and _pid_gone(agent_pid)
    assert list((state / "processes").iterdir()) == []
    assert run_fabric("stop", "--state-dir", state).stdout.startswith("nothing to stop")


def test_start_reports_a_process_that_fails(tmp_path: Path, operator_pki: Path) -> None:
    state = tmp_path / "state"
    # TEST-NET-3 (RFC 5737): never an address of this machine, so binding to it fails.
    result = run_fabric(
        "start",
        "--head",
        "--listen",
        "203.0.113.1:0",
        "--certs",
        operator_pki,
        "--state-dir",
        state,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert re.fullmatch(
        r"fabric: error: head exited with status 1 before it was ready: [^\n]*203\.0\.113\.1"
        rf"[^\n]* \(log: {re.escape(str(state / 'logs' / 'head.log'))}\)\n",
        result.stderr,
    ), result.stderr
    assert not (state / "processes" / "head.json").exists()


def test_start_foreground_execs(tmp_path: Path, operator_pki: Path) -> None:
    state = tmp_path / "state"
    assert FABRIC is not None
    proc = subprocess.Popen(
        [
            FABRIC,
            "start",
            "--head",
            "--foreground",
            "--listen",
            "127.0.0.1:0",
            "--certs",
            str(operator_pki),
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready_file = state / "run" / "head.ready.json"
        wait_for(
            lambda: ready_file.exists() or proc.poll() is not None, what="the head's ready file"
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        # exec: the head is this very process, not a child of it.
        assert json.loads(ready_file.read_text())["pid"] == proc.pid
        assert not (state / "processes").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
