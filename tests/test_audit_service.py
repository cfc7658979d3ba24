"""The head's audit service over real mutual TLS: nodes append, readers see what the policy lets
them see, follow streams wake on appends, proofs check offline, checkpoints only grow.

Each test starts :class:`HeadAudit` behind the head's interceptor (``tests/audit_server.py``)
on a fresh state directory, and tries the refused call before the allowed one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from fabric.audit import (
    AuditError,
    Entry,
    ProofBundle,
    StoreError,
    check_proof,
    decode,
    encode,
    parse_vkey,
    verify_checkpoint,
    verify_consistency,
)

from fabric._audit_service import KEY_NAME, HeadAudit
from fabric._proto import fabric_pb2 as pb
from tests.audit_server import TIMEOUT, AuditServer, entries_of, entry, make_ca
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture
def server(certs: Path, tmp_path: Path) -> Iterator[AuditServer]:
    with AuditServer(certs, tmp_path / "state") as server:
        yield server


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details() or ""


def query(server: AuditServer, identity: str, **fields: object) -> list[tuple[int, str]]:
    request = pb.AuditQuery(**{"after_seq": -1, **fields})  # type: ignore[arg-type]
    return entries_of(server.stubs[identity].QueryAudit(request, timeout=TIMEOUT))


def vkey_of(server: AuditServer) -> str:
    assert server.state_dir is not None
    return (server.state_dir / "audit.vkey").read_text().strip()


# --- the state directory ------------------------------------------------------------------


def test_the_state_dir_keeps_the_log_its_private_key_and_its_verifier_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with HeadAudit.open(state) as audit:
        vkey = audit.vkey
    assert stat.S_IMODE((state / "audit.key").stat().st_mode) == 0o600
    assert (state / "audit.vkey").read_text() == vkey + "\n"
    assert parse_vkey(vkey)[0] == KEY_NAME
    with HeadAudit.open(state) as audit:
        assert audit.vkey == vkey  # the same key on every start
        assert asyncio.run(audit.append([entry("n1", 0)])) == 1
    # A log whose key is lost is refused, not continued under a new key.
    (state / "audit.key").rename(tmp_path / "audit.key")
    with pytest.raises(StoreError, match=r"^the store's newest checkpoint is not this log's: "):
        HeadAudit.open(state)
    assert not (state / "audit.key").exists()
    assert (state / "audit.vkey").read_text() == vkey + "\n"
    (tmp_path / "audit.key").rename(state / "audit.key")
    # A key others can read is refused rather than used.
    os.chmod(state / "audit.key", 0o644)
    with pytest.raises(AuditError, match=r"readable by others \(mode 644\); chmod 600 it"):
        HeadAudit.open(state)
    # Without a state directory the head still records, in a directory of its own.
    with HeadAudit.open(None) as audit:
        temporary = audit.state_dir
        assert (temporary / "audit.db").is_file()
    assert not temporary.exists()


# --- appending ----------------------------------------------------------------------------


def test_only_nodes_append(server: AuditServer) -> None:
    request = pb.AuditRecords(entries=[encode(entry("n1", 0))])
    for identity in ("tenant/alice", "operator/admin", "operator/auditor"):
        code, details = refused(
            functools.partial(server.stubs[identity].AppendAudit, request, timeout=TIMEOUT)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, identity
        assert details.endswith("is not allowed to call /fabric.v1.Head/AppendAudit")
    assert server.append("n1", [entry("n1", 0)]) == 1


def test_appending_is_idempotent_and_every_batch_is_signed(server: AuditServer) -> None:
    batch = [entry("n1", i) for i in range(3)]
    assert server.append("n1", batch) == 3
    assert server.append("n1", batch) == 3  # re-sent after a lost reply: nothing new
    assert server.append("n1", [batch[1], entry("n1", 3), batch[2]]) == 4
    assert query(server, "operator/auditor") == [(i, f"n1/boot-1/{i}") for i in range(4)]
    # The checkpoint signed after the last batch covers it.
    reply = server.stubs["node/n2"].AuditCheckpoint(pb.AuditCheckpointRequest(), timeout=TIMEOUT)
    name, key = parse_vkey(vkey_of(server))
    assert verify_checkpoint(reply.checkpoint, name, key).size == 4


GOOD = entry("n1", 100)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        pytest.param(
            encode(entry("n2", 0)),
            "record 1: it is recorded by node 'n2', not by 'n1'",
            id="another-nodes-entry",
        ),
        pytest.param(
            encode(entry("n1", 0, id="n2/boot-1/0")),
            "record 1: its id 'n2/boot-1/0' does not start with 'n1/'",
            id="another-nodes-id",
        ),
        pytest.param(
            encode(entry("n1", 0, seq=7)),
            "record 1: it carries seq 7; nodes send seq -1",
            id="self-sequenced",
        ),
        pytest.param(
            encode(entry("n1", 0)).replace(b'"kind":', b'"kind": '),
            "record 1: entry data is not in canonical form",
            id="second-spelling",
        ),
        pytest.param(b"\xff", "record 1: entry data is not JSON", id="not-json"),
        pytest.param(
            encode(entry("n1", 100, outcome="refuse")),
            "record 1: it repeats the id of record 0 with other content",
            id="same-id-other-content",
        ),
    ],
)
def test_a_batch_with_one_bad_record_is_refused_whole(
    server: AuditServer, bad: bytes, problem: str
) -> None:
    request = pb.AuditRecords(entries=[encode(GOOD), bad])
    code, details = refused(lambda: server.stubs["node/n1"].AppendAudit(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(problem)
    assert query(server, "operator/auditor") == []  # not even the good record


def test_rewriting_a_stored_entry_by_re_appending_it_is_refused(server: AuditServer) -> None:
    server.append("n1", [entry("n1", 0), entry("n1", 1)])
    forged = entry("n1", 1, outcome="refuse")
    request = pb.AuditRecords(entries=[encode(entry("n1", 2)), encode(forged)])
    code, details = refused(lambda: server.stubs["node/n1"].AppendAudit(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "record 1: entry 'n1/boot-1/1' is already in the log (seq 1) with other content"
    )
    assert [seq for seq, _ in query(server, "operator/auditor")] == [0, 1]


# --- reading ------------------------------------------------------------------------------


def test_a_tenant_sees_only_its_own_entries_whatever_it_asks_for(server: AuditServer) -> None:
    server.append("n1", [entry("n1", 0), entry("n1", 1, tenant="bob"), entry("n1", 2)])
    server.append("n2", [entry("n2", 0, tenant="bob")])
    alice = [(0, "n1/boot-1/0"), (2, "n1/boot-1/2")]
    assert query(server, "tenant/alice") == alice
    assert query(server, "tenant/alice", tenant="bob") == alice  # asks for bob's: gets its own
    assert query(server, "tenant/alice", node="n2") == []
    assert query(server, "tenant/bob") == [(1, "n1/boot-1/1"), (3, "n2/boot-1/0")]
    assert query(server, "tenant/bob", after_seq=1) == [(3, "n2/boot-1/0")]


def test_operators_and_auditors_see_every_entry_nodes_and_strangers_none(
    server: AuditServer,
) -> None:
    for identity in ("node/n1", "node/head"):
        code, _ = refused(functools.partial(query, server, identity))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    code, details = refused(lambda: query(server, "tenant/mallory"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith("tenant/mallory is no operator, auditor or tenant under policy ")
    server.append("n1", [entry("n1", 0), entry("n1", 1, tenant="bob", kind="place")])
    everything = [(0, "n1/boot-1/0"), (1, "n1/boot-1/1")]
    assert query(server, "operator/auditor") == everything
    assert query(server, "operator/admin") == everything
    assert query(server, "operator/auditor", tenant="bob") == [(1, "n1/boot-1/1")]
    assert query(server, "operator/auditor", kind="place", limit=5) == [(1, "n1/boot-1/1")]
    assert query(server, "operator/auditor", limit=1) == [(0, "n1/boot-1/0")]


def test_bad_queries_say_what_is_wrong(server: AuditServer) -> None:
    for fields, problem in (
        ({"since": "yesterday"}, "'since' must be RFC 3339 UTC with microseconds"),
        ({"after_seq": -2}, "query after_seq must be an int >= -1, got -2"),
        ({"explain": True}, "explain needs a task id"),
        ({"explain": True, "task": "aa", "follow": True}, "explain cannot follow"),
    ):
        code, details = refused(functools.partial(query, server, "operator/admin", **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(problem), details


def test_explain_gives_the_chain_and_a_tenant_only_its_part_of_it(server: AuditServer) -> None:
    a, b = "a" * 32, "b" * 32
    server.append(
        "n1",
        [
            entry("n1", 0, kind="admit", task=a),
            entry("n1", 1, kind="place", task=a),
            entry("n1", 2, kind="admit", task="c" * 32, tenant="bob"),  # not in the chain
            # bob's work that alice's nested task follows from (a cross-tenant chain).
            entry("n1", 3, kind="transfer", task="d" * 32, tenant="bob", parent="n1/boot-1/1"),
        ],
    )
    server.append(
        "n2",
        [
            entry("n2", 0, kind="admit", task=b, parent="n1/boot-1/3"),
            entry("n2", 1, kind="place", task=b),
            entry("n2", 2, kind="task.finish", task=b),
        ],
    )
    chain = [
        *("n1/boot-1/0", "n1/boot-1/1"),  # alice's task a: admitted, placed
        "n1/boot-1/3",  # bob's entry that b follows from
        *("n2/boot-1/0", "n2/boot-1/1", "n2/boot-1/2"),  # b: admitted, placed, finished
    ]
    assert [i for _, i in query(server, "operator/auditor", explain=True, task=b)] == chain
    alice = [i for _, i in query(server, "tenant/alice", explain=True, task=b)]
    assert alice == [i for i in chain if i != "n1/boot-1/3"]
    assert query(server, "tenant/bob", explain=True, task=b) == [(3, "n1/boot-1/3")]


def test_follow_streams_the_entries_appended_after_it_started(server: AuditServer) -> None:
    server.append("n1", [entry("n1", 0), entry("n1", 1, tenant="bob")])
    follow = pb.AuditQuery(after_seq=-1, follow=True)
    auditor = server.stubs["operator/auditor"].QueryAudit(follow, timeout=TIMEOUT)
    alice = server.stubs["tenant/alice"].QueryAudit(follow, timeout=TIMEOUT)
    try:
        assert [next(auditor).seq, next(auditor).seq, next(alice).seq] == [0, 1, 0]
        wait_for(lambda: server.audit.followers_waiting == 2, TIMEOUT, "both streams to wait")
        server.append("n2", [entry("n2", 0, tenant="bob")])
        server.append("n2", [entry("n2", 1)])
        assert decode(next(auditor).data).id == "n2/boot-1/0"
        assert decode(next(auditor).data).id == "n2/boot-1/1"
        # alice's stream woke for bob's entry too, and sent nothing of it.
        assert next(alice).seq == 3
    finally:
        auditor.cancel()
        alice.cancel()
    wait_for(lambda: server.audit.followers_waiting == 0, TIMEOUT, "the streams to end")


def test_the_head_records_its_own_decisions(server: AuditServer) -> None:
    async def record() -> tuple[str, str]:
        first = server.audit.record_nowait(
            "policy.apply", outcome="accept", rules=("role.operator",), reasons=("ok",)
        )
        second = await server.audit.record(
            "node.join",
            outcome="refuse",
            rules=("node.region-claim",),
            reasons=("node n9 may not claim region 'us-east'",),
            identity="spiffe://fabric.local/node/n9",
            policy="3f2a9c0d11b2e4f5",
        )
        return first, second

    first, second = server.run(record())
    # Awaiting the second made the first durable too: one writer, in order.
    assert query(server, "operator/auditor") == [(0, first), (1, second)]
    assert first.startswith("head/") and second.startswith("head/")
    data = server.stubs["operator/auditor"].QueryAudit(pb.AuditQuery(after_seq=0), timeout=TIMEOUT)
    recorded = decode(next(iter(data)).data)
    assert (recorded.node, recorded.kind, recorded.rules) == (
        "head",
        "node.join",
        ("node.region-claim",),
    )


# --- proofs and checkpoints ---------------------------------------------------------------


def test_a_proof_checks_offline_with_the_verifier_key_file(server: AuditServer) -> None:
    server.append("n1", [entry("n1", i, tenant=("alice", "bob")[i % 2]) for i in range(5)])
    vkey = vkey_of(server)
    for identity in ("operator/auditor", "tenant/bob"):
        proof = server.stubs[identity].ProveAudit(pb.AuditProveRequest(seq=3), timeout=TIMEOUT)
        proved: Entry = check_proof(ProofBundle.from_json(proof.bundle), vkey)
        assert (proved.seq, proved.id, proved.tenant) == (3, "n1/boot-1/3", "bob")


def test_proving_another_tenants_entry_is_not_found_like_a_missing_one(
    server: AuditServer,
) -> None:
    server.append("n1", [entry("n1", 0, tenant="bob")])
    stub = server.stubs["tenant/alice"]
    for seq in (0, 7):
        code, details = refused(
            functools.partial(stub.ProveAudit, pb.AuditProveRequest(seq=seq), timeout=TIMEOUT)
        )
        assert (code, details) == (
            grpc.StatusCode.NOT_FOUND,
            f"the audit log has no entry {seq} you may see",
        )


def test_each_checkpoint_extends_the_last_by_a_consistency_proof(server: AuditServer) -> None:
    name, key = parse_vkey(vkey_of(server))
    stub = server.stubs["tenant/alice"]

    def checkpoint(old_size: int = 0) -> tuple[int, bytes, list[bytes]]:
        request = pb.AuditCheckpointRequest(old_size=old_size)
        reply = stub.AuditCheckpoint(request, timeout=TIMEOUT)
        assert reply.vkey == vkey_of(server)
        signed = verify_checkpoint(reply.checkpoint, name, key)
        return signed.size, signed.root_hash, list(reply.consistency)

    assert checkpoint()[0] == 0  # the empty log: signed on demand
    server.append("n1", [entry("n1", i) for i in range(3)])
    size3, root3, proof = checkpoint()
    assert (size3, proof) == (3, [])
    server.append("n2", [entry("n2", i) for i in range(4)])
    size7, root7, proof = checkpoint(old_size=3)
    assert size7 == 7 and proof
    assert verify_consistency(3, 7, root3, root7, proof)
    assert checkpoint(old_size=7) == (7, root7, [])
    # Asked from a size the log does not have: the checkpoint alone, which shows a rollback.
    assert checkpoint(old_size=9) == (7, root7, [])
