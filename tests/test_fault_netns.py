"""Fault tolerance on four simulated hosts: a killed agent, a cut link, a killed head.

One network namespace per node agent, the head in the root namespace on the topology's
bridge address (its state directory keeps its audit log and ``head.db`` across a restart),
under ``configs/policy-eu-only.yaml``, as ``tests/test_lineage.py``: alice's data may live
only in the EU. The hosts:

    us-1  (us-east)     the driver's agent: it owns everything the driver submits
    eu-1, eu-2, eu-3    (eu-central) where alice's work may run and her results may live

Every agent has ``{"CPU": 2, "work": 100}``, us-1 too: it could run every task, and is idle,
so every placement on an EU host is the policy's doing. The driver (tenant/alice, in the
root namespace) connects to us-1. Its results are alice's data, so they stay on the EU
hosts that made them: they never reach us-1, let alone the driver. The tasks therefore
report where they ran, and what they found, in files the test reads (``runs.log``, and
the reports of `tests.test_lineage.check`). A lost result is made again from its lineage
by us-1, inside the EU.

Each test gets a fabric of its own (a lost agent or a restarted head would leak into the
next one) on one topology for the module. Skipped, with the reason, where network
namespaces are unavailable.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fabric.audit import Entry, decode

import fabric
from fabric._client import CoreClient
from fabric._cluster import (
    ClusterStartError,
    Launch,
    agent_command,
    head_command,
    spawn,
    terminate,
    wait_ready,
)
from fabric._driver import connect
from fabric._object_store import default_store_root
from fabric._pki import CertificateAuthority, CredentialPaths, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from tests.conftest import wait_for
from tests.netns import Host, Topology, netns_topology
from tests.sessions import alive_nodes
from tests.test_lineage import (
    CHAIN,
    ELEMENTS,
    POLICY,
    WORK,
    chain,
    held,
    runs,
    session_as,
    verified,
    zeros,
)

DRIVER_NODE = "us-1"
EU = ("eu-1", "eu-2", "eu-3")
REGIONS = {DRIVER_NODE: "us-east", **dict.fromkeys(EU, "eu-central")}
RESOURCES = {"CPU": 2, "work": 100}
NODE_TIMEOUT = 2.0  # the head's node-loss deadline (--node-timeout)
# How late after the deadline a silent node may be noticed: agents report every second,
# the watchdog looks every NODE_TIMEOUT / 4, and the view then has to reach the driver's agent.
LOSS_SLACK = 3.0
START_TIMEOUT = 60.0
TIMEOUT = 60.0

hosts4 = netns_topology(4, scope="module")


@dataclass
class Fabric:
    """A head and four agents on `topology`, and what it takes to hurt them."""

    topology: Topology
    base: Path
    certs: Path
    policy: Path
    operator: Credentials
    hosts: dict[str, Host]  # node id -> its host
    store_root: Path
    head: Launch = field(init=False)
    head_address: str = ""
    agents: dict[str, Launch] = field(default_factory=dict)  # node id -> its agent
    agent_addresses: dict[str, str] = field(default_factory=dict)
    # Every process ever started (a restarted head too), for the teardown.
    started: list[Launch] = field(default_factory=list)

    @property
    def head_state(self) -> Path:
        return self.base / "head"

    def start_head(self, listen: str) -> Launch:
        ready = self.base / "run" / "head.json"
        cmd = head_command(
            listen,
            self.certs,
            ready,
            state_dir=self.head_state,
            policy=self.policy,
            node_timeout=NODE_TIMEOUT,
        )
        launch = spawn("head", cmd, ready, self.base / "logs" / "head.log")
        self.started.append(launch)
        return launch

    def start_agent(self, node_id: str) -> Launch:
        host = self.hosts[node_id]
        ready = self.base / "run" / f"{node_id}.json"
        log_path = self.base / "logs" / f"{node_id}.log"
        cmd = agent_command(
            self.head_address,
            f"{host.address}:0",
            self.certs,
            node_id,
            REGIONS[node_id],
            RESOURCES,
            {"host": node_id},  # what a task pinned to this host selects
            ready,
            store_root=self.store_root,
        )
        with open(log_path, "ab") as log:
            process = self.topology.popen(
                host,
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        launch = Launch(node_id, process, ready, log_path)
        self.started.append(launch)
        return launch

    def kill_agent(self, node_id: str) -> None:
        """kill -9 the agent of `node_id` and its process group (not its workers, which
        run in sessions of their own and notice the loss by themselves)."""
        process = self.agents[node_id].process
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        process.wait(timeout=TIMEOUT)

    def kill_head(self) -> None:
        process = self.head.process
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        process.wait(timeout=TIMEOUT)

    def start_head_again(self) -> None:
        """A new head on the old head's address, certificates, state directory and policy;
        returns once it serves. The port was the OS's choice the first time: the new head
        binds it explicitly, and tries again while a socket of the old one still holds it
        (as `LocalCluster.restart_head` does)."""
        since = time.monotonic()
        while True:
            self.head = self.start_head(self.head_address)
            try:
                wait_ready([self.head], START_TIMEOUT, since=since)
                return
            except ClusterStartError as error:
                unbound = "cannot listen" in error.summary or "Failed to bind" in error.summary
                if not unbound or time.monotonic() - since > START_TIMEOUT:
                    raise

    def audit(self, kind: str = "", after: int = -1) -> list[Entry]:
        """The head's audit entries (of `kind`, after seq `after`), read as operator/admin."""
        request = pb.AuditQuery(kind=kind, after_seq=after)
        with secure_channel(self.head_address, self.operator) as channel:
            stream = rpc.HeadStub(channel).QueryAudit(request, timeout=TIMEOUT)
            return [decode(item.data) for item in stream]

    def head_view(self) -> dict[str, bool]:
        """The head's own view: node id -> alive."""
        with secure_channel(self.head_address, self.operator) as channel:
            view = rpc.HeadStub(channel).Status(pb.Empty(), timeout=TIMEOUT)
        return {node.node_id: node.alive for node in view.nodes}


def credentials(certs: Path, kind: str, name: str) -> CredentialPaths:
    issued = certs / "issued"
    return CredentialPaths(
        cert=issued / f"{kind}-{name}.pem",
        key=issued / f"{kind}-{name}.key",
        ca=certs / "ca.pem",
        crl=certs / "crl.pem",
    )


@pytest.fixture
def fab(hosts4: Topology, tmp_path: Path) -> Iterator[Fabric]:
    """A fresh head and four agents, and the driver connected to us-1 as tenant/alice."""
    base = tmp_path / "fabric"
    for directory in ("logs", "run"):
        (base / directory).mkdir(parents=True)
    certs = base / "certs"
    ca = CertificateAuthority.create(certs)
    for kind, name in [
        ("node", "head"),
        *(("node", node_id) for node_id in REGIONS),
        ("tenant", "alice"),
        ("operator", "admin"),
    ]:
        ca.issue(kind, name)
    # One directory for every agent's store, so that the teardown reclaims the stores of
    # agents that were killed and could not clean up.
    store_root = Path(tempfile.mkdtemp(prefix="fabric-fault-", dir=default_store_root()))
    os.chmod(store_root, 0o711)
    fab = Fabric(
        topology=hosts4,
        base=base,
        certs=certs,
        policy=POLICY,
        operator=Credentials.load(credentials(certs, "operator", "admin")),
        hosts=dict(zip(REGIONS, hosts4.hosts, strict=True)),
        store_root=store_root,
    )
    try:
        fab.head = fab.start_head(f"{hosts4.bridge_address}:0")
        fab.head_address = wait_ready([fab.head], START_TIMEOUT)["head"].address
        fab.agents = {node_id: fab.start_agent(node_id) for node_id in REGIONS}
        ready = wait_ready(fab.agents.values(), START_TIMEOUT)
        fab.agent_addresses = {node_id: ready[node_id].address for node_id in REGIONS}
        wait_until_every_agent_sees_every_node(fab)
        with session_as(fab.agent_addresses[DRIVER_NODE], certs, "tenant/alice"):
            yield fab
    finally:
        # Agents before the head, as LocalCluster stops them.
        agents = [launch.process for launch in fab.started if launch.name != "head"]
        terminate(agents + [launch.process for launch in fab.started if launch.name == "head"])
        shutil.rmtree(store_root, ignore_errors=True)


def sees_every_node(client: CoreClient) -> bool:
    return alive_nodes(client) == set(REGIONS)


def wait_until_every_agent_sees_every_node(fab: Fabric) -> None:
    """An agent is ready once it has the head's first view, which need not list the
    agents that joined after it; a result fetched from another EU host needs that host in
    the fetching agent's view."""
    alice = Credentials.load(credentials(fab.certs, "tenant", "alice"))
    for node_id, address in fab.agent_addresses.items():
        client = connect(address, alice, timeout=TIMEOUT)
        try:
            seen = functools.partial(sees_every_node, client)
            wait_for(seen, TIMEOUT, f"{node_id} to see every node")
        finally:
            client.closed_reason = "closed by the test"
            client.transport.close()


# ----------------------------------------------------------------------------- remote code


@fabric.remote
def square(x: int, log: str) -> int:
    with open(log, "a") as f:
        f.write(f"{x} {fabric.get_runtime_context().get_node_id()}\n")
    time.sleep(0.02)
    return x * x


@fabric.remote
def check_squares(report: str, *values: int) -> None:
    """Reports "ok" if `values` are the squares of 0, 1, 2, ... in order."""
    right = list(values) == [x * x for x in range(len(values))]
    with open(report, "w") as f:
        f.write("ok" if right else f"wrong: {list(values)}")


# ----------------------------------------------------------------------------- helpers


def wait_finished(fab: Fabric, refs: Sequence[Any]) -> None:
    """Wait until the tasks of `refs` finished, by the audit log (their results may not
    come to the driver, so `fabric.wait` would say nothing)."""
    tasks = {ref.task_id().hex() for ref in refs}

    def done() -> bool:
        return tasks <= {e.task for e in fab.audit("task.finish")}

    wait_for(done, TIMEOUT, "the tasks to finish")


def alive_in_the_drivers_view() -> set[str]:
    return {n["NodeID"] for n in fabric.nodes() if n["Alive"]}


def of_node(entries: list[Entry], node_id: str) -> list[Entry]:
    return [e for e in entries if e.identity.endswith(f"/node/{node_id}")]


def last_seq(fab: Fabric) -> int:
    return max(e.seq for e in fab.audit())


def placed_on(fab: Fabric, node_id: str) -> list[Entry]:
    """alice's placements that chose `node_id`: by another node ("fits on <id>"), or by
    the node itself (its local node fits, or the task was pinned to it)."""
    itself = {"place.local-fits", "place.pinned-node"}
    return [
        e
        for e in fab.audit("place")
        if e.tenant == "alice"
        and e.outcome == "place"
        and (f"fits on {node_id}" in e.reasons or (e.node == node_id and itself & {*e.rules}))
    ]


def what_the_check_found(checked: Any, report: Path) -> str:
    """What the check task of `checked` reported ("ok", "wrong: ..."), or why it wrote
    nothing. (Its own result, derived from EU data, may not come to the driver: waiting
    for it is enough, and only an error that stopped it does come.)"""
    ready, _ = fabric.wait([checked], timeout=TIMEOUT)
    assert ready, "the check did not finish"
    if report.exists():
        return report.read_text()
    try:
        fabric.get(checked, timeout=TIMEOUT)
    except Exception as error:  # why it could not run: for the failure message
        return f"no report: {type(error).__name__}: {error}"
    return "no report"


def assert_rebuilt_what_the_check_needed(
    fab: Fabric, mark: int, arrays: Sequence[Any], first: dict[int, str], victim: str
) -> None:
    """The check of the chain's last link needed the links lost with `victim` from the
    end of the chain back to the first link another host still holds: those were rebuilt
    (links nobody needs may be rebuilt too, or not), and nothing that was not lost."""
    needed = set()
    for k in range(CHAIN - 1, -1, -1):
        if first[k] != victim:
            break
        needed.add(arrays[k].task_id().hex())
    lost = {arrays[k].task_id().hex() for k, node in first.items() if node == victim}

    def rebuilt() -> set[str]:
        return {e.task for e in fab.audit("object.rebuild", mark)}

    # Recorded by us-1 and forwarded to the head in the background: waited for.
    wait_for(lambda: needed <= rebuilt(), TIMEOUT, "the rebuilds of the lost links in the log")
    assert rebuilt() <= lost


def assert_ran_in_the_eu_only(fab: Fabric, *logs: Path) -> None:
    """Residency held: every run of alice's tasks was on an EU host, by the run logs and
    by the placements in the audit log."""
    ran = {node for log in logs for _, node in runs(log)}
    assert ran <= set(EU), "\n".join(log.read_text() for log in logs)
    assert placed_on(fab, DRIVER_NODE) == []
    assert all(placed_on(fab, node) for node in ran)  # the placements are there to read


# ----------------------------------------------------------------------------- tests


def test_a_killed_agent_loses_nothing_its_work_and_results_are_made_again_in_the_eu(
    fab: Fabric, tmp_path: Path
) -> None:
    log, held_log, release = tmp_path / "runs.log", tmp_path / "held.log", tmp_path / "release"
    arrays = chain(log)
    wait_finished(fab, arrays)
    first = dict(runs(log))
    victim = first[CHAIN - 1]  # the host holding the end of the chain
    # Two CPUs each, on three EU hosts of two CPUs: one held step runs on every EU host,
    # the victim's included, until the test lets them finish.
    running = [
        held.options(resources=WORK, num_cpus=2).remote(arrays[0], k, str(held_log), str(release))
        for k in (1, 2, 3)
    ]
    wait_for(lambda: len(runs(held_log)) == 3, TIMEOUT, "the held steps to start")
    on = dict(runs(held_log))
    assert sorted(on.values()) == sorted(EU)
    mark = last_seq(fab)

    fab.kill_agent(victim)
    release.touch()

    assert verified(arrays[-1], CHAIN - 1, tmp_path / "report") == "ok"
    for k, ref in enumerate(running, start=1):
        assert verified(ref, 1, tmp_path / f"report-{k}") == "ok"
    [loss] = of_node(fab.audit("node.loss", mark), victim)
    assert victim in loss.reasons[0]

    assert_rebuilt_what_the_check_needed(fab, mark, arrays, first, victim)
    rebuilds = fab.audit("object.rebuild", mark)
    assert {(e.rules, e.tenant, e.node) for e in rebuilds} == {
        (("lineage.rebuild",), "alice", DRIVER_NODE)
    }
    # The held step that was running on the victim was placed again, and ran elsewhere.
    moved = {running[k - 1].task_id().hex() for k, node in on.items() if node == victim}
    retries = fab.audit("task.retry", mark)
    assert moved <= {e.task for e in retries}
    assert all(e.rules == ("node.lost",) for e in retries)
    assert {node for _, node in runs(log)[CHAIN:] + runs(held_log)[3:]} <= set(EU) - {victim}
    assert_ran_in_the_eu_only(fab, log, held_log)


def test_a_cut_link_loses_its_node_by_the_deadline_and_the_healed_node_takes_work_again(
    fab: Fabric, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    arrays = chain(log)
    wait_finished(fab, arrays)
    first = dict(runs(log))
    victim = first[CHAIN - 1]
    host = fab.hosts[victim]
    mark = last_seq(fab)

    fab.topology.link_down(host)
    try:
        cut = time.monotonic()
        wait_for(
            lambda: victim not in alive_in_the_drivers_view(),
            NODE_TIMEOUT + LOSS_SLACK,
            f"the head to declare {victim}, cut off, lost",
        )
        noticed = time.monotonic() - cut
        [loss] = of_node(fab.audit("node.loss", mark), victim)
        assert (loss.outcome, loss.rules) == ("lost", ("node.heartbeat-deadline",))
        match = re.fullmatch(
            rf"no report from node {victim} for (\d+\.\d) s \(deadline 2 s\)", loss.reasons[0]
        )
        assert match is not None, loss.reasons[0]
        assert NODE_TIMEOUT <= float(match[1]) < NODE_TIMEOUT + LOSS_SLACK  # (rounded)
        assert noticed < NODE_TIMEOUT + LOSS_SLACK

        # The chain comes back on the EU hosts still connected.
        assert verified(arrays[-1], CHAIN - 1, tmp_path / "report") == "ok"
        assert_rebuilt_what_the_check_needed(fab, mark, arrays, first, victim)
        assert {node for _, node in runs(log)[CHAIN:]} <= set(EU) - {victim}
    finally:
        fab.topology.link_up(host)

    wait_for(
        lambda: victim in alive_in_the_drivers_view(),
        TIMEOUT,
        f"{victim} back in the view once its link is up",
    )
    assert of_node(fab.audit("node.join", loss.seq), victim)  # it registered afresh...
    assert of_node(fab.audit("node.loss", mark), victim) == [loss]  # ...and was lost once
    after = tmp_path / "after.log"
    pinned = zeros.options(resources=WORK, label_selector={"host": victim})
    assert verified(pinned.remote(ELEMENTS, str(after)), 0, tmp_path / "report-after") == "ok"
    assert runs(after) == [(0, victim)]
    assert_ran_in_the_eu_only(fab, log, after)


def test_work_in_flight_across_a_head_killed_and_restarted_completes_and_loses_no_node(
    fab: Fabric, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    mark = last_seq(fab)
    refs = [square.options(resources=WORK).remote(x, str(log)) for x in range(40)]
    fab.kill_head()
    started_with_the_head = len(runs(log))
    # Agents place and forward by the view they last had: work goes on without a head.
    refs += [square.options(resources=WORK).remote(x, str(log)) for x in range(40, 80)]
    fab.start_head_again()
    assert len(runs(log)) > started_with_the_head  # tasks started while no head served
    refs += [square.options(resources=WORK).remote(x, str(log)) for x in range(80, 120)]

    report = tmp_path / "report"
    checked = check_squares.options(resources=WORK).remote(str(report), *refs)
    found = what_the_check_found(checked, report)

    wait_for(
        lambda: all(of_node(fab.audit("node.join", mark), n) for n in REGIONS),
        TIMEOUT,
        "every node to register with the restarted head",
    )
    wait_for(
        lambda: alive_in_the_drivers_view() == set(REGIONS),
        TIMEOUT,
        "every node alive in the driver's view",
    )
    assert fab.head_view() == dict.fromkeys(REGIONS, True)
    verify = subprocess.run(
        [
            "fabric", "audit", "verify", "--state-dir", str(fab.head_state),
            "--vkey", str(fab.head_state / "audit.vkey"),
            "--last-seen", str(tmp_path / "audit-last-seen"),
        ],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The restarted head awaited the nodes of its last run, and each was back in time (a
    # node declared lost would have its running tasks placed again: checked first).
    assert [e.reasons for e in fab.audit("node.loss", mark)] == []
    assert found == "ok"
    assert sorted(x for x, _ in runs(log)) == list(range(120))  # each ran, once
    assert_ran_in_the_eu_only(fab, log)
