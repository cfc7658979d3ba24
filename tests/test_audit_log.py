"""The audit log as a library: entries, the sequencer on SQLite, queries, proof bundles and
verification of a whole stored log.

The tampering tests edit the SQLite file directly, as an attacker with write access to the
head's disk would, and each is named after the attack it reproduces.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fabric.audit
import fabric.audit._query
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric.audit import (
    AuditError,
    AuditLog,
    Checkpoint,
    CompactRange,
    Entry,
    EntryError,
    ProofBundle,
    ProofError,
    ProofUnavailableError,
    Query,
    SqliteAuditStore,
    StoreError,
    VerifyReport,
    check_proof,
    decode,
    encode,
    encode_vkey,
    entry_time,
    from_decision,
    leaf_hash,
    root_hash,
    sign_checkpoint,
    verify_log,
)
from fabric.policy import NodeView, PlacementRequest, decide_placement
from hypothesis import given, settings
from hypothesis import strategies as st

ORIGIN = "fabric.local/audit"
KEY_NAME = "fabric.local"
T0 = datetime(2026, 11, 26, 3, 4, 5, 123456, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VKEY = encode_vkey(KEY_NAME, KEY.public_key())
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def at(second: int) -> str:
    return entry_time(T0 + timedelta(seconds=second))


def make(i: int, **fields: object) -> Entry:
    values: dict[str, object] = {
        "id": f"node-a/boot-1/{i}",
        "time": at(i),
        "kind": "admit",
        "tenant": "acme",
        "task": f"{i:08x}",
        "reasons": (f"reason {i}",),
    }
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


def open_log(path: Path, key: Ed25519PrivateKey = KEY, origin: str = ORIGIN) -> AuditLog:
    return AuditLog(SqliteAuditStore(path), origin, key, KEY_NAME)


def stored_entries(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT seq, data FROM entries ORDER BY seq").fetchall()


def verify(path: Path, last_seen: str | None = None) -> VerifyReport:
    store = SqliteAuditStore(path)
    try:
        return verify_log(store, VKEY, last_seen)
    finally:
        store.close()


def found(report: VerifyReport) -> list[tuple[str, int | None]]:
    return [(problem.kind, problem.seq) for problem in report.problems]


# --- the public surface -------------------------------------------------------------------


def test_the_log_is_exported() -> None:
    names = {
        "AuditLog",
        "AuditStore",
        "Entry",
        "EntryError",
        "Problem",
        "ProofBundle",
        "ProofError",
        "ProofUnavailableError",
        "Query",
        "SqliteAuditStore",
        "StoreError",
        "VerifyReport",
        "check_proof",
        "decode",
        "encode",
        "entry_time",
        "from_decision",
        "verify_log",
    }
    assert names <= set(fabric.audit.__all__)
    for name in ("EntryError", "ProofError", "ProofUnavailableError", "StoreError"):
        assert issubclass(getattr(fabric.audit, name), AuditError)


# --- entries and their canonical encoding ---------------------------------------------------


def test_the_encoding_is_sorted_compact_utf8_json() -> None:
    entry = Entry(
        id="n/1/7",
        seq=3,
        time="2026-11-26T03:04:05.123456Z",
        kind="place",
        tenant="acmé",
        objects=("ab", "cd"),
        rules=("place.local-fits",),
    )
    assert (
        encode(entry)
        == (
            '{"actor":"","fingerprint":"","function":"","id":"n/1/7","identity":"","inputs":"",'
            '"job":"","kind":"place","node":"","objects":["ab","cd"],"outcome":"","parent":"",'
            '"policy":"","reasons":[],"rules":["place.local-fits"],"seq":3,"task":"",'
            '"tenant":"acmé","time":"2026-11-26T03:04:05.123456Z"}'
        ).encode()
    )
    assert decode(encode(entry)) == entry


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_hex = st.text("0123456789abcdef", max_size=16)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        Entry,
        id=_text.filter(bool),
        time=st.datetimes(timezones=st.just(UTC)).map(entry_time),
        kind=_text.filter(bool),
        seq=st.integers(-1, 2**63 - 1),
        tenant=_text,
        identity=_text,
        fingerprint=st.sampled_from(["", "ab" * 32]),
        job=_hex,
        task=_hex,
        actor=_hex,
        objects=st.lists(_hex).map(tuple),
        function=_hex,
        outcome=_text,
        rules=st.lists(_text).map(tuple),
        reasons=st.lists(_text).map(tuple),
        inputs=_hex,
        policy=_text,
        node=_text,
        parent=_text,
    )
)
def test_every_entry_round_trips_through_its_one_encoding(entry: Entry) -> None:
    data = encode(entry)
    assert decode(data) == entry
    assert encode(decode(data)) == data


CANONICAL = encode(make(1, seq=1, tenant="é"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (CANONICAL.replace(b',"id"', b', "id"'), "not in canonical form"),
        (CANONICAL + b"\n", "not in canonical form"),
        (b'{"seq":1,' + CANONICAL[1:].replace(b',"seq":1', b""), "not in canonical form"),
        (CANONICAL.replace(b'"seq":1', b'"seq":1.0'), "not an integer: entries hold no floats"),
        (CANONICAL.replace(b'"seq":1', b'"seq":1e0'), "not an integer: entries hold no floats"),
        (CANONICAL.replace(b'"seq":1', b'"seq":NaN'), "not an integer: entries hold no floats"),
        (CANONICAL.replace(b'"seq":1', b'"seq":true'), "'seq' must be an int"),
        (CANONICAL.replace(b'"seq":1', b'"seq":"1"'), "'seq' must be an int"),
        (CANONICAL.replace(b'"kind":"admit"', b'"kind":1.5'), "no floats"),
        (CANONICAL.replace(b'"objects":[]', b'"objects":"ab"'), "'objects' must be a list"),
        (CANONICAL.replace(b'"reasons":["reason 1"]', b'"reasons":[1]'), "must be a str"),
        (CANONICAL.replace(b'{"actor":""', b'{"actor":"","colour":"red"'), "unknown key"),
        (CANONICAL.replace(b'"actor":"",', b""), "lacks key"),
        (CANONICAL.replace(b'"actor":""', b'"actor":"","actor":""'), "not in canonical form"),
        (CANONICAL.replace("é".encode(), b"\\u00e9"), "not in canonical form"),
        (CANONICAL.replace("é".encode(), b"\xe9"), "not JSON"),
        (b"[]", "a JSON list, not an object"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=[
        "whitespace",
        "trailing-newline",
        "unsorted-keys",
        "float",
        "exponent",
        "nan",
        "bool-seq",
        "string-seq",
        "float-in-str-field",
        "string-for-list",
        "int-in-list",
        "unknown-key",
        "missing-key",
        "duplicate-key",
        "needless-escape",
        "latin-1",
        "not-an-object",
        "deep-nesting",
    ],
)
def test_decode_rejects_anything_but_the_canonical_encoding(data: bytes, message: str) -> None:
    assert decode(CANONICAL) == make(1, seq=1, tenant="é")
    with pytest.raises(EntryError, match=message):
        decode(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": ""}, r"^entry field 'id' must not be empty$"),
        ({"time": "2026-11-26T03:04:05Z"}, r"^'time' must be RFC 3339 UTC with microseconds"),
        ({"time": "2026-02-30T03:04:05.000000Z"}, r"^'time' must be RFC 3339 UTC"),
        ({"task": "ABCD"}, r"^entry field 'task' must be lowercase hex, got 'ABCD'$"),
        ({"objects": ("ab", "xy")}, r"^entry field 'objects' must be lowercase hex"),
        ({"fingerprint": "ab"}, r"^entry field 'fingerprint' must be 64 hex digits"),
        ({"seq": -2}, r"^entry field 'seq' must be in \[-1, 2\*\*63\), got -2$"),
        ({"tenant": "\ud800"}, r"^entry field 'tenant' has no UTF-8 encoding$"),
    ],
)
def test_entries_check_their_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(EntryError, match=message):
        make(1, **fields)


def test_entries_refuse_wrong_types() -> None:
    with pytest.raises(TypeError, match=r"^entry field 'rules' must be a tuple, not list$"):
        make(1, rules=["a"])
    with pytest.raises(TypeError, match=r"^entry field 'seq' must be an int, not float$"):
        make(1, seq=1.0)


def test_an_entry_records_a_decision() -> None:
    node = NodeView("node-b", "eu", {"CPU": 2.0}, {"CPU": 2.0})
    request = PlacementRequest("acme", b"\x01\x02", {"CPU": 1.0}, local_node_id="node-a")
    decision = decide_placement(request, [node])
    entry = from_decision(
        decision, id="node-a/1/9", kind="place", time=at(0), tenant="acme", task="0102"
    )
    assert (entry.outcome, entry.node, entry.rules) == ("place", "node-b", ("place.remote-fits",))
    assert entry.reasons == decision.reasons
    assert (entry.inputs, entry.policy) == (decision.input_digest, decision.policy_version)
    deciding = from_decision(
        decision, id="x", kind="place", time=at(0), tenant="acme", node="node-a"
    )
    assert deciding.node == "node-a"


# --- the sequencer ------------------------------------------------------------------------


def test_append_assigns_consecutive_seqs_and_forwarding_again_changes_nothing(
    tmp_path: Path,
) -> None:
    with open_log(tmp_path / "audit.db") as log:
        assert log.append([make(i) for i in range(5)]) == [0, 1, 2, 3, 4]
        root = log.root()
        # A forwarder retrying a batch it is unsure about, with one new entry in it.
        assert log.append([make(3), make(5), make(1), make(5)]) == [3, 5, 1, 5]
        assert log.size == 6
        assert log.append([make(i) for i in range(5)]) == [0, 1, 2, 3, 4]
        assert log.size == 6
        assert log.append([]) == []
        assert root != log.root()
    assert [seq for seq, _ in stored_entries(tmp_path / "audit.db")] == list(range(6))


def test_the_store_commits_durably(tmp_path: Path) -> None:
    # A SIGKILL cannot tell synchronous=FULL from NORMAL (the page cache survives it), and a
    # power cut is out of a test's reach: so the settings themselves are pinned.
    store = SqliteAuditStore(tmp_path / "audit.db")
    try:
        assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_id_already_logged_with_other_content_is_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    with open_log(tmp_path / "audit.db") as log:
        log.append([make(0)])
        root = log.root()
        message = r"^entry 'node-a/boot-1/0' is already in the log \(seq 0\) with other content$"
        with pytest.raises(EntryError, match=message):
            log.append([make(1), make(0, kind="deny")])
        with pytest.raises(EntryError, match="already in the log"):
            log.append([make(1), make(1, kind="deny")])
        assert (log.size, log.root()) == (1, root)
        assert log.append([make(1)]) == [1]


def test_a_reopened_log_continues_and_its_root_is_that_of_all_leaves(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    for start in (0, 7, 100):
        with open_log(path) as log:
            assert log.size == start
            log.append([make(i) for i in range(start, start + 7)])
            log.append([make(i) for i in range(start + 7, {0: 7, 7: 100, 100: 133}[start])])
            log.checkpoint()
    with open_log(path) as log:
        leaves = [leaf_hash(data) for _, data in stored_entries(path)]
        assert len(leaves) == log.size == 133
        assert log.root() == root_hash(leaves)
        assert verify(path).ok


def test_a_store_is_refused_under_another_key_or_origin(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with open_log(path) as log:
        log.append([make(0)])
        log.checkpoint()
    with pytest.raises(StoreError, match="the store's newest checkpoint is not this log's"):
        open_log(path, key=OTHER_KEY)
    with pytest.raises(StoreError, match=r"is of log 'fabric\.local/audit' at size 1"):
        open_log(path, origin="elsewhere/audit")


CHILD = """
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric.audit import AuditLog, Entry, SqliteAuditStore, entry_time

path, key = sys.argv[1], Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[2]))
log = AuditLog(SqliteAuditStore(path), "fabric.local/audit", key, "fabric.local")
i = 0
while True:
    batch = [Entry(id=f"child/{i + j}", time=entry_time(), kind="admit") for j in range(50)]
    seqs = log.append(batch)
    i += 50
    if i % 500 == 0:
        log.checkpoint()
    print(seqs[-1], flush=True)
"""


def test_a_killed_sequencer_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), KEY.private_bytes_raw().hex()],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = -1
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while acknowledged < 2000:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child acknowledged too few entries in time"
            if select.select([child.stdout], [], [], remaining)[0]:
                line = child.stdout.readline()
                assert line, f"the child exited with {child.wait()}"
                acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # Whatever the child appended after its last acknowledgement may or may not be there.
    rows = stored_entries(path)
    assert len(rows) > acknowledged
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    assert len({decode(data).id for _, data in rows}) == len(rows)
    report = verify(path)
    assert report.ok, report.diagnostics()
    with open_log(path) as log:
        assert log.size == len(rows)
        assert log.append([Entry(id=f"child/{len(rows)}", time=at(0), kind="admit")]) == [len(rows)]
        assert log.append([decode(rows[0][1])]) == [0]  # a retried forward


# --- tampering with the stored log --------------------------------------------------------


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A log of 100 entries with checkpoints at 40, 64 and 90; returns its path and the
    newest checkpoint, as a verifier that saw it would have kept it."""
    path = tmp_path / "audit.db"
    with open_log(path) as log:
        for start, end in ((0, 40), (40, 64), (64, 90)):
            log.append([make(i) for i in range(start, end)])
            log.checkpoint()
        last_seen = log.checkpoint()
        log.append([make(i) for i in range(90, 100)])
    report = verify(path, last_seen)
    assert report.ok, report.diagnostics()
    assert (report.size, report.unsigned, report.checkpoint) == (100, 10, last_seen)
    yield path, last_seen


def tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as db:
        for sql, args in statements:
            db.execute(sql, args)


def data_at(path: Path, seq: int) -> bytes:
    return dict(stored_entries(path))[seq]


def test_attack_flip_a_byte_that_keeps_the_entry_readable(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = data_at(path, 17).replace(b"reason 17", b"reason 71")
    tamper(path, ("UPDATE entries SET data = ? WHERE seq = 17", (forged,)))
    report = verify(path, last_seen)
    assert found(report) == [("flipped", 17)]
    assert str(report.problems[0]) == (
        "flipped at seq 17: not the entry the checkpoint signed for 90 entries commits to"
    )


def test_attack_flip_a_byte_and_its_stored_leaf_hash(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = data_at(path, 33).replace(b"reason 33", b"reason 34")
    tamper(
        path,
        ("UPDATE entries SET data = ? WHERE seq = 33", (forged,)),
        ("UPDATE tree SET hash = ? WHERE level = 0 AND idx = 33", (leaf_hash(forged),)),
    )
    # The signed root vouches for the pair (32, 33) but, with 33's stored hash rewritten,
    # for neither alone: which of the two changed cannot be told, and the report says so.
    report = verify(path, last_seen)
    assert found(report) == [("flipped", 32)]
    assert report.problems[0].detail.startswith("an entry in seqs 32..33 is not the one the")


def test_attack_flip_a_byte_and_rebuild_every_stored_hash(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = data_at(path, 5).replace(b"reason 5", b"reason 6")
    tamper(path, ("UPDATE entries SET data = ? WHERE seq = 5", (forged,)))
    frontier = CompactRange()
    nodes = [n for _, data in stored_entries(path) for n in frontier.append(leaf_hash(data))]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM tree")
        db.executemany(
            "INSERT INTO tree VALUES (?, ?, ?)", [(n.level, n.index, n.hash) for n in nodes]
        )
    # The stored tree now agrees with the entries: only the signatures still tell.
    assert found(verify(path, last_seen)) == [
        ("checkpoint-replaced", 40),
        ("checkpoint-replaced", 64),
        ("checkpoint-replaced", 90),
        ("forked", 90),
    ]


def test_attack_flip_a_byte_that_breaks_the_encoding(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = data_at(path, 50).replace(b'"kind":"admit"', b'"kind" :"admit"')
    tamper(path, ("UPDATE entries SET data = ? WHERE seq = 50", (forged,)))
    report = verify(path, last_seen)
    assert found(report) == [("undecodable", 50)]
    assert "not in canonical form" in report.problems[0].detail


def test_attack_flip_an_entry_no_checkpoint_covers_yet(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = data_at(path, 95).replace(b"reason 95", b"reason 59")
    tamper(path, ("UPDATE entries SET data = ? WHERE seq = 95", (forged,)))
    report = verify(path, last_seen)
    assert found(report) == [("flipped", 95)]
    assert "no checkpoint covers it yet" in report.problems[0].detail


def test_attack_delete_a_row(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    tamper(path, ("DELETE FROM entries WHERE seq = 22", ()))
    report = verify(path, last_seen)
    assert found(report) == [("deleted", 22)]
    assert report.problems[0].detail == "no entries at seqs 22..22"


def test_attack_delete_a_row_to_hide_a_later_change(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = data_at(path, 70).replace(b"reason 70", b"reason 07")
    tamper(
        path,
        ("DELETE FROM entries WHERE seq = 22", ()),
        ("UPDATE entries SET data = ? WHERE seq = 70", (forged,)),
    )
    assert found(verify(path, last_seen)) == [("deleted", 22), ("flipped", 70)]


def test_attack_delete_a_row_and_renumber_the_rest(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    tamper(
        path,
        ("DELETE FROM entries WHERE seq = 30", ()),
        ("UPDATE entries SET seq = -seq WHERE seq > 30", ()),
        ("UPDATE entries SET seq = -seq - 1 WHERE seq < 0", ()),
    )
    assert found(verify(path, last_seen)) == [("deleted", 30)]


def test_attack_insert_a_forged_row_at_the_end(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = make(100, seq=100, kind="deny")
    tamper(
        path,
        ("INSERT INTO entries (seq, id, data) VALUES (?, ?, ?)", (100, forged.id, encode(forged))),
    )
    report = verify(path, last_seen)
    assert found(report) == [("inserted", 100)]


def test_attack_insert_a_forged_row_in_the_middle(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = make(1000, seq=12, kind="deny")
    tamper(
        path,
        ("UPDATE entries SET seq = -seq - 1 WHERE seq >= 12", ()),
        ("UPDATE entries SET seq = -seq WHERE seq < 0", ()),
        ("INSERT INTO entries (seq, id, data) VALUES (12, ?, ?)", (forged.id, encode(forged))),
    )
    report = verify(path, last_seen)
    assert found(report) == [("inserted", 12)]
    assert report.problems[0].detail == (
        "rows 13..100 hold the entries of seqs 12..99: 1 row(s) were inserted at seq 12"
    )


def test_attack_swap_two_rows(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    a, b = data_at(path, 8), data_at(path, 61)
    tamper(
        path,
        ("UPDATE entries SET data = ? WHERE seq = 8", (b,)),
        ("UPDATE entries SET data = ? WHERE seq = 61", (a,)),
    )
    report = verify(path, last_seen)
    assert found(report) == [("reordered", 8), ("reordered", 61)]
    assert report.problems[0].detail == "holds the entry of seq 61"


def test_attack_truncate_the_last_rows(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    tamper(path, ("DELETE FROM entries WHERE seq >= 80", ()))
    report = verify(path, last_seen)
    assert found(report) == [("truncated", 80)]
    assert report.problems[0].detail == (
        "a checkpoint is signed for 90 entries, the store holds 80: seqs 80..89 are gone"
    )


def test_attack_replace_a_checkpoint_with_one_signed_by_another_key(
    logged: tuple[Path, str],
) -> None:
    path, last_seen = logged
    with open_log(path) as log:
        root = log.root()
    forged = sign_checkpoint(Checkpoint(ORIGIN, 64, root), KEY_NAME, OTHER_KEY)
    tamper(path, ("UPDATE checkpoints SET text = ? WHERE size = 64", (forged,)))
    report = verify(path, last_seen)
    assert found(report) == [("checkpoint-replaced", 64)]
    assert "not signed by 'fabric.local'" in report.problems[0].detail


def test_attack_replace_a_checkpoint_with_one_for_another_root(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    forged = sign_checkpoint(Checkpoint(ORIGIN, 40, bytes(32)), KEY_NAME, KEY)
    other_size = sign_checkpoint(Checkpoint(ORIGIN, 41, bytes(32)), KEY_NAME, KEY)
    tamper(
        path,
        ("UPDATE checkpoints SET text = ? WHERE size = 40", (forged,)),
        ("UPDATE checkpoints SET text = ? WHERE size = 64", (other_size,)),
    )
    report = verify(path, last_seen)
    assert found(report) == [("checkpoint-replaced", 40), ("checkpoint-replaced", 64)]
    assert "it is signed for 41 entries" in report.problems[1].detail


def test_attack_restore_an_older_copy_of_the_database(tmp_path: Path) -> None:
    path, old = tmp_path / "audit.db", tmp_path / "old.db"
    with open_log(path) as log:
        log.append([make(i) for i in range(30)])
        log.checkpoint()
    shutil.copy(path, old)
    with open_log(path) as log:
        log.append([make(i) for i in range(30, 50)])
        log.checkpoint()
    report = verify(path)
    assert report.ok
    last_seen = report.checkpoint
    shutil.copy(old, path)
    report = verify(path, last_seen)
    assert found(report) == [("rollback", 30)]
    assert report.checkpoint == last_seen  # saving it never adopts the older history
    # The rolled-back log, appended to past the size the verifier saw: a fork.
    with open_log(path) as log:
        log.append([make(i, kind="other") for i in range(30, 60)])
        log.checkpoint()
    assert found(verify(path, last_seen)) == [("forked", 50)]


def test_a_last_seen_checkpoint_that_does_not_verify_is_reported(
    logged: tuple[Path, str],
) -> None:
    path, last_seen = logged
    report = verify(path, last_seen.replace("\n90\n", "\n91\n"))
    assert found(report) == [("last-seen-invalid", None)]
    assert "does not verify" in report.problems[0].detail


# --- proof bundles --------------------------------------------------------------------------


def test_a_bundle_proves_its_entry_offline(logged: tuple[Path, str]) -> None:
    path, last_seen = logged
    with open_log(path) as log:
        bundle = log.prove(17)
        with pytest.raises(ProofUnavailableError, match=r"^no checkpoint covers entry 95 yet$"):
            log.prove(95)
        with pytest.raises(ProofUnavailableError, match=r"^the log has no entry 100$"):
            log.prove(100)
    assert (bundle.seq, bundle.size, bundle.checkpoint, bundle.vkey) == (17, 90, last_seen, VKEY)
    text = bundle.to_json()
    assert b"reason 18" not in text.encode()  # other entries appear only as hashes
    assert check_proof(ProofBundle.from_json(text), VKEY, origin=ORIGIN) == make(17, seq=17)
    with pytest.raises(
        ProofError, match=r"^step \(3\): the checkpoint is of log 'fabric.local/audit', not 'x/y'$"
    ):
        check_proof(bundle, VKEY, origin="x/y")


def test_every_byte_flip_in_a_bundle_is_refused(logged: tuple[Path, str]) -> None:
    path, _ = logged
    with open_log(path) as log:
        data = log.prove(63).to_json().encode()
    assert check_proof(ProofBundle.from_json(data), VKEY).seq == 63
    for i in range(len(data)):
        flipped = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        with pytest.raises(ProofError):
            check_proof(ProofBundle.from_json(flipped), VKEY)


def test_a_bundle_does_not_verify_under_another_key(logged: tuple[Path, str]) -> None:
    path, _ = logged
    with open_log(path) as log:
        bundle = log.prove(3)
    other = encode_vkey(KEY_NAME, OTHER_KEY.public_key())
    with pytest.raises(ProofError, match=r"^step \(2\): the bundle is for verifier key"):
        check_proof(bundle, other)
    relabelled = ProofBundle(bundle.entry, 3, 90, bundle.proof, bundle.checkpoint, other)
    with pytest.raises(ProofError, match=r"^step \(3\): the checkpoint does not verify"):
        check_proof(relabelled, other)


def test_a_bundle_does_not_prove_another_entry(logged: tuple[Path, str]) -> None:
    path, _ = logged
    with open_log(path) as log:
        bundle, neighbour = log.prove(3), log.prove(2)
    swapped = ProofBundle(neighbour.entry, 3, 90, bundle.proof, bundle.checkpoint, VKEY)
    with pytest.raises(ProofError, match=r"^step \(5\): the entry is at seq 2, the proof for 3$"):
        check_proof(swapped, VKEY)
    moved = ProofBundle(neighbour.entry, 2, 90, bundle.proof, bundle.checkpoint, VKEY)
    with pytest.raises(ProofError, match=r"^step \(6\): the inclusion proof does not lead"):
        check_proof(moved, VKEY)
    forged = encode(make(3, seq=3, kind="deny"))
    with pytest.raises(ProofError, match=r"^step \(6\)"):
        check_proof(ProofBundle(forged, 3, 90, bundle.proof, bundle.checkpoint, VKEY), VKEY)


def test_a_log_refuses_to_hand_out_a_proof_its_store_cannot_back(
    logged: tuple[Path, str],
) -> None:
    path, _ = logged
    tamper(path, ("UPDATE tree SET hash = zeroblob(32) WHERE level = 1 AND idx = 4", ()))
    with open_log(path) as log, pytest.raises(StoreError, match="cannot prove entry 11"):
        log.prove(11)


# --- queries --------------------------------------------------------------------------------


def _varied(i: int) -> Entry:
    return make(
        i,
        kind=("admit", "place", "transfer")[i % 3],
        tenant=("acme", "globex")[i % 2],
        outcome=("place", "refuse")[i % 5 == 0],
        task=f"{i % 7:04x}",
        actor=f"{i % 4:04x}" if i % 4 else "",
        objects=tuple(f"{o:04x}" for o in {i % 6, i % 9}),
        rules=("tenant.run-regions",) if i % 5 == 0 else ("place.local-fits",),
        node=("node-a", "node-b", "node-c")[i % 3 - 1],
    )


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        (Query(tenant="globex"), lambda e: e.tenant == "globex"),
        (Query(kind="transfer"), lambda e: e.kind == "transfer"),
        (Query(outcome="refuse"), lambda e: e.outcome == "refuse"),
        (Query(task="0003"), lambda e: e.task == "0003"),
        (Query(actor="0002"), lambda e: e.actor == "0002"),
        (Query(object="0005"), lambda e: "0005" in e.objects),
        (Query(rule="tenant.run-regions"), lambda e: "tenant.run-regions" in e.rules),
        (Query(node="node-c"), lambda e: e.node == "node-c"),
        (Query(since=at(10), until=at(20)), lambda e: at(10) <= e.time < at(20)),
        (Query(after_seq=90), lambda e: e.seq > 90),
        (Query(after_seq=10, before_seq=20), lambda e: 10 < e.seq < 20),
        (Query(tenant="acme", kind="admit", rule="place.local-fits"), None),
        (Query(object="0000", limit=3), None),
    ],
)
def test_queries_filter_like_python_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: Query, matches: object
) -> None:
    monkeypatch.setattr(fabric.audit._query, "PAGE", 4)  # several pages per answer
    with open_log(tmp_path / "audit.db") as log:
        log.append([_varied(i) for i in range(100)])
        everything = list(log.query(Query()))
        if query.limit is not None:
            expected = [e for e in everything if query.object in e.objects][: query.limit]
        elif matches is None:
            expected = [
                e
                for e in everything
                if e.tenant == "acme" and e.kind == "admit" and "place.local-fits" in e.rules
            ]
        else:
            expected = [e for e in everything if matches(e)]  # type: ignore[operator]
        got = list(log.query(query))
    assert len(everything) == 100
    assert expected and got == expected


def test_a_time_window_holds_entries_whose_clocks_disagree(tmp_path: Path) -> None:
    # Recorders' clocks differ: seq order is not time order.
    skew = [0, 50, 3, 47, 10, 20, 90, 15, 30, 5, 60, 25]
    with open_log(tmp_path / "audit.db") as log:
        log.append([make(i, time=at(s)) for i, s in enumerate(skew)])
        window = [e.seq for e in log.query(Query(since=at(10), until=at(48)))]
        assert window == [i for i, s in enumerate(skew) if 10 <= s < 48] == [3, 4, 5, 7, 8, 11]
        assert [e.seq for e in log.query(Query(since=at(10), until=at(48), limit=2))] == [3, 4]
        assert [e.seq for e in log.query(Query(since=at(10), after_seq=7))] == [8, 10, 11]
        assert [e.seq for e in log.query(Query(until=at(5), before_seq=5))] == [0, 2]
        assert list(log.query(Query(since=at(91)))) == []


def test_a_query_checks_its_filters() -> None:
    with pytest.raises(EntryError, match=r"^'since' must be RFC 3339 UTC"):
        Query(since="yesterday")
    with pytest.raises(ValueError, match=r"^query limit must be None or an int >= 0"):
        Query(limit=-1)


def test_explain_follows_a_task_up_through_its_parents(tmp_path: Path) -> None:
    entries = [
        make(0, id="job", kind="job.admit", task=""),
        make(1, id="a-admit", task="aa", parent="job"),
        make(2, id="other", task="dd"),
        make(3, id="a-place", kind="place", task="aa"),
        make(4, id="b-admit", task="bb", parent="a-place"),
        make(5, id="b-place", kind="place", task="bb"),
        make(6, id="c-admit", task="cc", parent="b-place"),
        make(7, id="a-finish", kind="task.finish", task="aa"),
        make(8, id="c-place", kind="place", task="cc"),
        make(9, id="dangling", task="cc", parent="not-forwarded-yet"),
        make(10, id="d-child", task="ee", parent="other"),
    ]
    with open_log(tmp_path / "audit.db") as log:
        log.append(entries)
        chain = [e.id for e in log.explain("cc")]
        assert chain == [
            "job",
            "a-admit",
            "a-place",
            "b-admit",
            "b-place",
            "c-admit",
            "a-finish",
            "c-place",
            "dangling",
        ]
        assert [e.id for e in log.explain("bb")] == [
            "job",
            "a-admit",
            "a-place",
            "b-admit",
            "b-place",
            "a-finish",
        ]
        assert [e.id for e in log.explain("ff")] == []
        with pytest.raises(ValueError, match=r"^explain needs a task id, got ''$"):
            log.explain("")


def test_a_query_refuses_an_entry_tampered_with(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with open_log(path) as log:
        log.append([make(i) for i in range(3)])
    tamper(path, ("UPDATE entries SET data = ? WHERE seq = 1", (encode(make(1, seq=2)),)))
    with open_log(path) as log:
        assert [e.seq for e in log.query(Query(task="00000000"))] == [0]
        with pytest.raises(StoreError, match=r"^the entry stored at seq 1 says it is at seq 2$"):
            list(log.query(Query()))


def test_bundle_json_is_canonical() -> None:
    bundle = ProofBundle(b"{}", 0, 1, (bytes(32),), "cp\n", "k+00000000+AQ==")
    value = json.loads(bundle.to_json())
    assert sorted(value) == ["checkpoint", "entry", "proof", "seq", "size", "vkey"]
    assert ProofBundle.from_json(bundle.to_json()) == bundle
    with pytest.raises(ProofError, match=r"^malformed proof bundle: not in canonical form$"):
        ProofBundle.from_json(json.dumps(value))
