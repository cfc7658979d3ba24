"""The audit store's query indexes are built behind the appends: an append stores the log
only, a query first indexes whatever is missing, the head indexes when appends pause, and a
store of the first schema (columns indexed at every append) is upgraded in place."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric.audit import AuditLog, Entry, Query, SqliteAuditStore, StoreError, verify_log

import fabric._audit_service as audit_service
from fabric._audit_service import KEY_NAME
from tests.audit_server import TIMEOUT, AuditServer, entry, make_ca
from tests.conftest import wait_for

ORIGIN = "fabric.local/audit"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def make(i: int, **fields: object) -> Entry:
    values: dict[str, object] = {
        "id": f"node-a/boot-1/{i}",
        "time": f"2026-11-26T03:04:{i % 60:02d}.000000Z",
        "kind": "place" if i % 2 else "admit",
        "tenant": "acme" if i % 3 else "globex",
        "task": f"{i:08x}",
        "objects": (f"{i:04x}",),
        "rules": ("tenant.run-regions", f"rule.{i % 4}"),
    }
    values.update(fields)
    return Entry(**values)  # type: ignore[arg-type]


def open_log(path: Path) -> AuditLog:
    return AuditLog(SqliteAuditStore(path), ORIGIN, KEY, KEY_NAME)


def seqs(log: AuditLog, **fields: object) -> list[int]:
    return [e.seq for e in log.query(Query(**fields))]  # type: ignore[arg-type]


def test_an_append_stores_the_log_and_a_query_indexes_what_is_missing(tmp_path: Path) -> None:
    with contextlib.closing(open_log(tmp_path / "audit.db")) as log:
        log.append([make(i) for i in range(30)])
        assert log.unindexed == 30  # nothing indexed yet
        assert seqs(log, task=f"{7:08x}") == [7]
        assert log.unindexed == 0  # the query indexed everything first
        log.append([make(i) for i in range(30, 40)])
        # Every filter sees the entries appended after the last indexing.
        assert seqs(log, kind="admit", tenant="globex") == [i for i in range(40) if i % 6 == 0]
        assert seqs(log, object=f"{35:04x}") == [35]
        assert seqs(log, rule="rule.3") == [i for i in range(40) if i % 4 == 3]
        assert seqs(log, since="2026-11-26T03:04:38.000000Z") == [38, 39]


def test_indexing_goes_in_steps_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with contextlib.closing(open_log(path)) as log:
        log.append([make(i) for i in range(25)])
        assert log.index(10) == 15
        assert log.index(10) == 5
    with contextlib.closing(open_log(path)) as log:
        assert log.unindexed == 5  # the progress is in the store
        assert log.index() == 0
        assert seqs(log, tenant="globex") == [i for i in range(25) if i % 3 == 0]
        assert seqs(log, rule="tenant.run-regions") == list(range(25))  # no row twice


def test_a_stored_entry_that_is_not_json_fails_the_query_and_names_the_verifier(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    with contextlib.closing(open_log(path)) as log:
        log.append([make(i) for i in range(5)])
        log.checkpoint()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE entries SET data = ? WHERE seq = 3", (b"\xff not json",))
    with contextlib.closing(open_log(path)) as log:
        with pytest.raises(StoreError, match="fabric audit verify"):
            seqs(log, tenant="acme")
    with contextlib.closing(SqliteAuditStore(path)) as store:
        report = verify_log(store, log.vkey)
    assert [(p.kind, p.seq) for p in report.problems][:1] == [("undecodable", 3)]


# The first schema: query columns in `entries` itself, indexed at every append.
SCHEMA_1 = """
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, data BLOB NOT NULL, time TEXT NOT NULL,
    kind TEXT NOT NULL, tenant TEXT NOT NULL, task TEXT NOT NULL, actor TEXT NOT NULL,
    outcome TEXT NOT NULL, node TEXT NOT NULL, policy TEXT NOT NULL, parent TEXT NOT NULL,
    rules TEXT NOT NULL
);
CREATE INDEX entries_task ON entries (task);
CREATE INDEX entries_actor ON entries (actor);
CREATE INDEX entries_tenant ON entries (tenant);
CREATE INDEX entries_kind ON entries (kind);
CREATE INDEX entries_time ON entries (time);
CREATE INDEX entries_node ON entries (node);
CREATE TABLE entry_objects (object TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (object, seq)) WITHOUT ROWID;
CREATE TABLE entry_rules (rule TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (rule, seq)) WITHOUT ROWID;
CREATE TABLE tree (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, text TEXT NOT NULL);
PRAGMA user_version=1;
"""


def test_a_store_of_the_first_schema_is_upgraded_and_keeps_its_log(tmp_path: Path) -> None:
    # A log written by the current code, then its rows moved into the first schema's layout.
    written = tmp_path / "written.db"
    with contextlib.closing(open_log(written)) as log:
        log.append([make(i) for i in range(12)])
        checkpoint = log.checkpoint()
    old = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(old)) as db:
        db.executescript(SCHEMA_1)
        db.execute("ATTACH DATABASE ? AS w", (str(written),))
        db.execute(
            "INSERT INTO entries SELECT seq, id, data, '', '', '', '', '', '', '', '', '', '[]'"
            " FROM w.entries"
        )
        db.execute("INSERT INTO tree SELECT * FROM w.tree")
        db.execute("INSERT INTO checkpoints SELECT * FROM w.checkpoints")
        db.execute("INSERT INTO entry_rules VALUES ('stale', 0)")  # rebuilt from the bytes
        db.commit()
    with contextlib.closing(open_log(old)) as log:
        assert log.size == 12
        assert log.latest_checkpoint() == checkpoint
        assert seqs(log, tenant="globex") == [0, 3, 6, 9]
        assert seqs(log, rule="stale") == []
        assert seqs(log, object=f"{11:04x}") == [11]
    with contextlib.closing(SqliteAuditStore(old)) as store:
        assert verify_log(store, log.vkey).ok


def test_a_store_of_an_unknown_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version=9")
    with pytest.raises(StoreError, match="schema 9, this code knows 2"):
        SqliteAuditStore(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("pki") / "ca")


def test_the_head_indexes_once_appends_pause(
    certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_service, "INDEX_WHEN_QUIET", 0.2)
    monkeypatch.setattr(audit_service, "INDEX_STEP", 7)  # several steps, each after a pause
    with AuditServer(certs, tmp_path / "state") as server:
        assert server.append("n1", [entry("n1", i) for i in range(30)]) == 30
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "audit.db")) as db:

            def indexed() -> int:
                (rows,) = db.execute("SELECT COUNT(*) FROM entry_fields").fetchone()
                return int(rows)

            # No query asks: the head indexes by itself, in steps of 7.
            wait_for(lambda: indexed() == 30, TIMEOUT, "the head to index its log")


def test_the_head_indexes_as_it_goes_when_appends_never_pause(
    certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_service, "INDEX_WHEN_QUIET", 3600.0)
    monkeypatch.setattr(audit_service, "INDEX_BEHIND_AT_MOST", 10)
    monkeypatch.setattr(audit_service, "INDEX_STEP", 5)
    with AuditServer(certs, tmp_path / "state") as server:
        for batch in range(6):
            server.append("n1", [entry("n1", batch * 4 + i) for i in range(4)])
        with contextlib.closing(SqliteAuditStore(tmp_path / "state" / "audit.db")) as store:
            # Each append past the bound indexed a step: the lag stays within bound + batch.
            assert 0 < store.unindexed() <= 10 + 4


def test_a_reader_that_indexes_beside_the_head_leaves_it_working(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with contextlib.closing(open_log(path)) as head:
        head.append([make(i) for i in range(10)])
        with contextlib.closing(SqliteAuditStore(path)) as reader:
            assert len(reader.select(Query(tenant="acme"))) == 6  # the reader indexed 0..9
        head.append([make(i) for i in range(10, 15)])
        assert head.unindexed == 5
        assert seqs(head, tenant="globex") == [0, 3, 6, 9, 12]
