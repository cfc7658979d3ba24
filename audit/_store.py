"""Where the audit log keeps its entries, subtree hashes and checkpoints.

:class:`AuditStore` is the small interface the log needs, so that PostgreSQL can replace
SQLite when one head's disk is no longer enough; :class:`SqliteAuditStore` is the embedded
implementation. A store only keeps what it is given: it never hashes, signs or decides, and
the verifier (:func:`verify_log`) trusts nothing in it but the entries' bytes and what
signatures vouch for.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Protocol

from ._entry import Entry
from ._errors import StoreError
from ._merkle import TreeNode
from ._query import Query

SCHEMA_VERSION = 1
_MAX_VARIABLES = 500  # bound parameters per statement, far below SQLite's limit
_RULES = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # the `rules` column


class AuditStore(Protocol):
    """Storage for one audit log. Not thread-safe: :class:`AuditLog` serialises its calls."""

    def size(self) -> int:
        """One past the largest seq stored (0 when empty)."""
        ...

    def append(
        self, entries: Sequence[tuple[int, Entry, bytes]], nodes: Sequence[TreeNode]
    ) -> None:
        """Store entries as (seq, entry, the canonical bytes of the entry at that seq) with
        the subtree hashes they complete, in one transaction durable when this returns. (The
        entry's own `seq` field is not read: the bytes carry the seq.)"""
        ...

    def seqs_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The seq of each of `ids` already stored; ids not stored are absent."""
        ...

    def entry_data(self, seq: int) -> bytes | None:
        """The canonical bytes stored at `seq`, or None."""
        ...

    def node_hash(self, level: int, index: int) -> bytes:
        """A stored subtree hash, laid out as :data:`fabric.audit.NodeHash` documents;
        :class:`StoreError` if it is not stored."""
        ...

    def add_checkpoint(self, size: int, text: str) -> None:
        """Store a signed checkpoint for `size` entries (durably); keeps an existing one."""
        ...

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """The stored checkpoint of the largest size, as (size, text), or None."""
        ...

    def checkpoints(self) -> list[tuple[int, str]]:
        """Every stored checkpoint as (size, text), by size."""
        ...

    def select(self, query: Query) -> list[tuple[int, bytes]]:
        """One page of (seq, bytes) matching `query`, by seq; ``query.limit`` is the page size."""
        ...

    def time_bounds(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        """The smallest and largest seq of the entries with since <= time < until (either
        bound may be None), or None if there are none."""
        ...

    def select_ids(self, ids: Sequence[str]) -> list[tuple[int, bytes]]:
        """(seq, bytes) of the entries with these ids, by seq."""
        ...

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Every stored (seq, bytes), by seq, as stored: the verifier's input."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    task TEXT NOT NULL,
    actor TEXT NOT NULL,
    outcome TEXT NOT NULL,
    node TEXT NOT NULL,
    policy TEXT NOT NULL,
    parent TEXT NOT NULL,
    rules TEXT NOT NULL
);
-- Every SQLite index ends in the rowid, here seq: equal keys come out in seq order, so each
-- of these serves "WHERE x = ? ORDER BY seq" without sorting (tenant is in effect tenant+seq).
CREATE INDEX IF NOT EXISTS entries_task ON entries (task);
CREATE INDEX IF NOT EXISTS entries_actor ON entries (actor);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries (tenant);
CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind);
CREATE INDEX IF NOT EXISTS entries_time ON entries (time);
CREATE INDEX IF NOT EXISTS entries_node ON entries (node);
CREATE TABLE IF NOT EXISTS entry_objects (
    object TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (object, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entry_rules (
    rule TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (rule, seq)
) WITHOUT ROWID;
-- (level, idx, hash): the complete subtree of 2**level leaves from leaf idx * 2**level.
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    text TEXT NOT NULL
);
"""

# Query filters on a column of `entries`, and those on a lookup table.
_COLUMNS = ("tenant", "kind", "outcome", "task", "actor", "node")
_LOOKUPS = {"object": "entry_objects", "rule": "entry_rules"}


class SqliteAuditStore:
    """An :class:`AuditStore` in one SQLite file: WAL journal, ``synchronous=FULL``, one
    transaction per appended batch, so a batch is durable once :meth:`append` returns."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: audit store schema {version}, this code knows {SCHEMA_VERSION}"
            )
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (journal mode {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def size(self) -> int:
        (last,) = self._db.execute("SELECT MAX(seq) FROM entries").fetchone()
        return 0 if last is None else last + 1

    def append(
        self, entries: Sequence[tuple[int, Entry, bytes]], nodes: Sequence[TreeNode]
    ) -> None:
        rows = [
            (
                seq,
                e.id,
                data,
                e.time,
                e.kind,
                e.tenant,
                e.task,
                e.actor,
                e.outcome,
                e.node,
                e.policy,
                e.parent,
                _RULES.encode(e.rules),
            )
            for seq, e, data in entries
        ]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(f"INSERT INTO entries VALUES ({', '.join('?' * 13)})", rows)
            db.executemany(
                "INSERT OR IGNORE INTO entry_objects VALUES (?, ?)",
                [(o, seq) for seq, e, _ in entries for o in e.objects],
            )
            db.executemany(
                "INSERT OR IGNORE INTO entry_rules VALUES (?, ?)",
                [(r, seq) for seq, e, _ in entries for r in e.rules],
            )
            db.executemany(
                "INSERT INTO tree VALUES (?, ?, ?)", [(n.level, n.index, n.hash) for n in nodes]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def seqs_of(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT id, seq FROM entries WHERE id IN ({marks})"
            found.update(self._db.execute(sql, chunk).fetchall())
        return found

    def entry_data(self, seq: int) -> bytes | None:
        row = self._db.execute("SELECT data FROM entries WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else row[0]

    def node_hash(self, level: int, index: int) -> bytes:
        row = self._db.execute(
            "SELECT hash FROM tree WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None or not isinstance(row[0], bytes):
            raise StoreError(f"{self.path}: no subtree hash stored at level {level}, index {index}")
        return row[0]

    def add_checkpoint(self, size: int, text: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?)", (size, text))

    def latest_checkpoint(self) -> tuple[int, str] | None:
        row = self._db.execute(
            "SELECT size, text FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def checkpoints(self) -> list[tuple[int, str]]:
        return self._db.execute("SELECT size, text FROM checkpoints ORDER BY size").fetchall()

    def select(self, query: Query) -> list[tuple[int, bytes]]:
        # A lookup table, when filtered on, drives the query: walking its (key, seq) primary
        # key from the cursor on yields matches in seq order, so a page stops at its limit.
        driver, joins, where, args = "e", [], [], []
        for name, table in _LOOKUPS.items():
            value = getattr(query, name)
            if value is not None:
                alias = name[0]
                joins.append(f"JOIN {table} AS {alias} ON {alias}.seq = e.seq")
                where.append(f"{alias}.{name} = ?")
                args.append(value)
                driver = alias
        where.append(f"{driver}.seq > ?")
        args.append(query.after_seq)
        if query.before_seq is not None:
            where.append(f"{driver}.seq < ?")
            args.append(query.before_seq)
        for column in _COLUMNS:
            value = getattr(query, column)
            if value is not None:
                where.append(f"e.{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("e.time >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("e.time < ?")
            args.append(query.until)
        sql = (
            f"SELECT e.seq, e.data FROM entries AS e {' '.join(joins)} "
            f"WHERE {' AND '.join(where)} ORDER BY {driver}.seq"
        )
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        return self._db.execute(sql, args).fetchall()

    def time_bounds(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        # One range scan of the (time, seq) index, which covers the query.
        sql = "SELECT MIN(seq), MAX(seq) FROM entries INDEXED BY entries_time WHERE time >= ?"
        args = [since or ""]
        if until is not None:
            sql += " AND time < ?"
            args.append(until)
        low, high = self._db.execute(sql, args).fetchone()
        return None if low is None else (low, high)

    def select_ids(self, ids: Sequence[str]) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = []
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT seq, data FROM entries WHERE id IN ({marks})"
            rows.extend(self._db.execute(sql, chunk).fetchall())
        return sorted(rows)

    def scan(self) -> Iterator[tuple[int, bytes]]:
        # Its own cursor: the scan is one statement, so it reads one snapshot of the entries.
        yield from self._db.cursor().execute("SELECT seq, data FROM entries ORDER BY seq")


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    items = list(ids)
    for start in range(0, len(items), _MAX_VARIABLES):
        yield items[start : start + _MAX_VARIABLES]
