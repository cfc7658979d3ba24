"""The audit log on running clusters: every decision of a real workload is in the head's log
with its provenance chain, refusals name their rule, tenants see only their own entries, and
a kill -9 of the agent and the head in the middle of a load loses no task's entry."""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fabric.audit import Entry, SqliteAuditStore, decode, verify_log

import fabric
from fabric._cluster import (
    LocalCluster,
    NodeSpec,
    agent_command,
    head_command,
    spawn,
    terminate,
    wait_ready,
)
from fabric._pki import CertificateAuthority, CredentialPaths, Credentials
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as rpc
from fabric._tls import secure_channel
from fabric.exceptions import PlacementRefusedError
from tests.conftest import wait_for
from tests.sessions import acting_as, tenant_session

POLICY = Path(__file__).parent.parent / "configs" / "policy-two-tenants.yaml"
TIMEOUT = 60.0


def query(address: str, creds: Credentials, **filters: object) -> list[Entry]:
    request = pb.AuditQuery(**filters)  # type: ignore[arg-type]
    with secure_channel(address, creds) as channel:
        stream = rpc.HeadStub(channel).QueryAudit(request, timeout=TIMEOUT)
        return [decode(item.data) for item in stream]


@pytest.fixture(scope="module")
def audited() -> Iterator[LocalCluster]:
    nodes = [
        NodeSpec("eu-west-1", "eu-west", {"CPU": 2}),
        NodeSpec("us-east-1", "us-east", {"CPU": 2}),
    ]
    with LocalCluster(nodes, tenants=["alice", "bob"], policy=POLICY) as cluster:
        yield cluster


def creds_of(cluster: LocalCluster, kind: str, name: str) -> Credentials:
    return Credentials.load(cluster.credentials(kind, name))


@fabric.remote
def child(x: int) -> int:
    return x + 1


@fabric.remote
def parent(x: int) -> int:
    return fabric.get(child.remote(x), timeout=TIMEOUT)


@fabric.remote
def total(values: list[int]) -> int:
    return sum(values)


def test_a_nested_task_has_one_provenance_chain(audited: LocalCluster) -> None:
    operator = creds_of(audited, "operator", "admin")
    with tenant_session(audited, "alice", "eu-west-1") as alice, acting_as(alice):
        ref = parent.remote(1)
        assert fabric.get(ref, timeout=TIMEOUT) == 2
    task = ref.binary()[:16].hex()

    def chain() -> list[Entry]:
        return query(audited.head_address, operator, task=task)

    wait_for(
        lambda: [e.kind for e in chain()] == ["admit", "place", "task.finish"],
        what="the task's admission, placement and completion in the log",
    )
    admit, place, finish = chain()
    assert (place.parent, finish.parent) == (admit.id, place.id)
    assert (admit.tenant, admit.outcome, place.outcome, finish.outcome) == (
        "alice",
        "admit",
        "place",
        "ok",
    )
    assert place.rules[0].startswith("place.") and place.policy == admit.policy != ""
    # The subject is alice's certificate: its identity and the SHA-256 of its DER bytes.
    der = ssl.PEM_cert_to_DER_cert(audited.tenant_credentials("alice").cert.read_text())
    assert admit.identity.endswith("/tenant/alice")
    assert admit.fingerprint == place.fingerprint == hashlib.sha256(der).hexdigest()
    # The child's admission follows from its parent's placement: one chain, nested.
    children = query(audited.head_address, operator, kind="admit", tenant="alice")
    wait_for(
        lambda: any(
            e.parent == place.id
            for e in query(audited.head_address, operator, kind="admit", tenant="alice")
        ),
        what="the child task's admission, pointing at its parent",
    )
    assert children  # alice's admissions are there for the operator


def test_a_refusal_is_recorded_with_its_rule_and_tenants_see_only_their_own(
    audited: LocalCluster,
) -> None:
    operator = creds_of(audited, "operator", "admin")
    with tenant_session(audited, "alice", "eu-west-1") as alice, acting_as(alice):
        data = fabric.put([1, 2, 3])  # EU residency
        ref = total.options(region="us-east").remote(data)
        with pytest.raises(PlacementRefusedError):
            fabric.get(ref, timeout=TIMEOUT)
    task = ref.binary()[:16].hex()
    wait_for(
        lambda: any(
            e.outcome == "refuse" and e.rules == ("residency.inputs",)
            for e in query(audited.head_address, operator, task=task)
        ),
        what="the refusal in the log",
    )
    # bob asks for alice's task, and for alice's entries by name: he gets nothing of hers.
    bob = creds_of(audited, "tenant", "bob")
    assert query(audited.head_address, bob, task=task) == []
    assert query(audited.head_address, bob, tenant="alice") == []
    mine = query(audited.head_address, creds_of(audited, "tenant", "alice"), task=task)
    assert mine and all(e.tenant == "alice" for e in mine)


def test_a_query_with_no_cursor_starts_at_the_first_entry(audited: LocalCluster) -> None:
    first = query(audited.head_address, creds_of(audited, "operator", "admin"), limit=1)
    assert [(e.seq, e.kind) for e in first] == [(0, "node.join")]


def test_a_refused_certificate_is_recorded(audited: LocalCluster) -> None:
    operator = creds_of(audited, "operator", "admin")
    alice = creds_of(audited, "tenant", "alice")
    with secure_channel(audited.head_address, alice) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            rpc.HeadStub(channel).ApplyPolicy(pb.PolicyRequest(text="x"), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    wait_for(
        lambda: any(
            "tenant/alice" in " ".join(e.reasons) and "ApplyPolicy" in " ".join(e.reasons)
            for e in query(audited.head_address, operator, kind="cert.refuse")
        ),
        what="the refusal of alice's call to ApplyPolicy in the log",
    )


# ----------------------------------------------------------------------------- kill -9


@fabric.remote
def work(i: int) -> int:
    time.sleep(0.005)
    return i


@contextlib.contextmanager
def processes(base: Path, certs: Path) -> Iterator[tuple[str, str, list[subprocess.Popen[bytes]]]]:
    """A head and one agent with state directories that outlive them."""
    launches = []
    try:
        head = spawn(
            "head",
            head_command("127.0.0.1:0", certs, base / "head.json", state_dir=base / "head"),
            base / "head.json",
            base / "head.log",
        )
        launches.append(head)
        head_address = wait_ready([head], TIMEOUT)["head"].address
        agent = spawn(
            "n1",
            agent_command(
                head_address,
                "127.0.0.1:0",
                certs,
                "n1",
                "local",
                {"CPU": 2},
                {},
                base / "n1.json",
                state_dir=base / "n1",
            ),
            base / "n1.json",
            base / "n1.log",
        )
        launches.append(agent)
        agent_address = wait_ready([agent], TIMEOUT)["n1"].address
        yield head_address, agent_address, [head.process, agent.process]
    finally:
        terminate([launch.process for launch in reversed(launches)])


def test_kill_9_of_agent_and_head_mid_load_loses_no_entry(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ca = CertificateAuthority.create(certs)
    for kind, name in (("node", "head"), ("node", "n1"), ("tenant", "t"), ("operator", "admin")):
        ca.issue(kind, name)

    def creds(kind: str, name: str) -> Credentials:
        issued = certs / "issued"
        return Credentials.load(
            CredentialPaths(
                cert=issued / f"{kind}-{name}.pem",
                key=issued / f"{kind}-{name}.key",
                ca=certs / "ca.pem",
                crl=certs / "crl.pem",
            )
        )

    finished: list[str] = []
    with processes(tmp_path, certs) as (_, agent_address, (head, agent)):
        from fabric._driver import connect

        client = connect(agent_address, creds("tenant", "t"), timeout=TIMEOUT)
        killed = threading.Event()
        with acting_as(client):
            refs = [work.remote(i) for i in range(400)]
            pending = list(refs)
            while pending and not killed.is_set():
                ready, pending = fabric.wait(pending, num_returns=1, timeout=TIMEOUT)
                for ref in ready:
                    fabric.get(ref, timeout=TIMEOUT)
                    finished.append(ref.binary()[:16].hex())
                if len(finished) >= 60:
                    agent.kill()  # SIGKILL, both, in the middle of the load
                    head.kill()
                    killed.set()
        client.closed_reason = "killed"
        client.transport.close()
    assert 60 <= len(finished) < 400

    # Both come back on their state: the agent forwards what its journal holds.
    with processes(tmp_path, certs) as (head_address, _, _):
        operator = creds("operator", "admin")

        def placed() -> set[str]:
            return {e.task for e in query(head_address, operator, kind="place")}

        wait_for(
            lambda: set(finished) <= placed(),
            timeout=TIMEOUT,
            what="a placement entry for every task that ran",
        )
        entries = query(head_address, operator)
    ids = [e.id for e in entries]
    assert len(ids) == len(set(ids))
    places = [e.task for e in entries if e.kind == "place"]
    assert len(places) == len(set(places))  # each task placed once, recorded once
    vkey = (tmp_path / "head" / "audit.vkey").read_text().strip()
    with contextlib.closing(SqliteAuditStore(tmp_path / "head" / "audit.db")) as store:
        report = verify_log(store, vkey)
    assert report.ok, report.diagnostics()
