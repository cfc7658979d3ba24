"""Where the audit log keeps its entries, subtree hashes and checkpoints.

:class:`AuditStore` is the small interface the log needs, so that PostgreSQL can replace
SQLite when one head's disk is no longer enough; :class:`SqliteAuditStore` is the embedded
implementation. A store only keeps what it is given: it never hashes, signs or decides, and
the verifier (:func:`verify_log`) trusts nothing in it but the entries' bytes and what
signatures vouch for.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Protocol

from ._errors import StoreError
from ._merkle import TreeNode
from ._query import Query

SCHEMA_VERSION = 2
_MAX_VARIABLES = 500  # bound parameters per statement, far below SQLite's limit


class AuditStore(Protocol):
    """Storage for one audit log. Not thread-safe: :class:`AuditLog` serialises its calls."""

    def size(self) -> int:
        """One past the largest seq stored (0 when empty)."""
        ...

    def append(self, entries: Sequence[tuple[int, str, bytes]], nodes: Sequence[TreeNode]) -> None:
        """Store entries as (seq, id, the canonical bytes of the entry at that seq) with the
        subtree hashes they complete, in one transaction durable when this returns."""
        ...

    def unindexed(self) -> int:
        """Entries stored but not yet in the query indexes."""
        ...

    def index(self, limit: int | None = None) -> int:
        """Add at most `limit` entries not yet indexed (all when None) to the query indexes,
        in seq order; returns how many remain. :meth:`select` and :meth:`time_bounds` index
        whatever remains first, so a query always sees every stored entry."""
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
-- The log itself: what an append stores, in the transaction that makes it durable.
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL
);
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
-- The query indexes, built from the entries' bytes by `index`, behind the appends: one row
-- per entry, in seq order, so the first seq not indexed is MAX(seq) + 1.
CREATE TABLE IF NOT EXISTS entry_fields (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    task TEXT NOT NULL,
    actor TEXT NOT NULL,
    outcome TEXT NOT NULL,
    node TEXT NOT NULL
);
-- Every SQLite index ends in the rowid, here seq: equal keys come out in seq order, so each
-- of these serves "WHERE x = ? ORDER BY seq" without sorting (tenant is in effect tenant+seq).
CREATE INDEX IF NOT EXISTS entry_fields_task ON entry_fields (task);
CREATE INDEX IF NOT EXISTS entry_fields_actor ON entry_fields (actor);
CREATE INDEX IF NOT EXISTS entry_fields_tenant ON entry_fields (tenant);
CREATE INDEX IF NOT EXISTS entry_fields_kind ON entry_fields (kind);
CREATE INDEX IF NOT EXISTS entry_fields_time ON entry_fields (time);
CREATE INDEX IF NOT EXISTS entry_fields_node ON entry_fields (node);
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
"""

# Schema 1 kept the query columns in `entries` itself, indexed at every append; schema 2
# keeps only the log there. Upgrading copies the log and lets `index` rebuild the rest.
_FROM_SCHEMA_1 = """
DROP INDEX IF EXISTS entries_task;
DROP INDEX IF EXISTS entries_actor;
DROP INDEX IF EXISTS entries_tenant;
DROP INDEX IF EXISTS entries_kind;
DROP INDEX IF EXISTS entries_time;
DROP INDEX IF EXISTS entries_node;
ALTER TABLE entries RENAME TO entries_schema_1;
CREATE TABLE entries (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, data BLOB NOT NULL);
INSERT INTO entries SELECT seq, id, data FROM entries_schema_1;
DROP TABLE entries_schema_1;
DELETE FROM entry_objects;
DELETE FROM entry_rules;
"""

# The query indexes over the entries with first <= seq < end (bound as ?1, ?2), read from the
# canonical JSON. The bytes are cast to text: JSON functions may read a BLOB as binary JSON.
_INDEX = (
    """INSERT INTO entry_fields SELECT seq, json_extract(d, '$.time'),
    json_extract(d, '$.kind'), json_extract(d, '$.tenant'), json_extract(d, '$.task'),
    json_extract(d, '$.actor'), json_extract(d, '$.outcome'), json_extract(d, '$.node')
    FROM (SELECT seq, CAST(data AS TEXT) AS d FROM entries WHERE seq >= ?1 AND seq < ?2)""",
    """INSERT OR IGNORE INTO entry_objects SELECT j.value, e.seq
    FROM entries AS e, json_each(CAST(e.data AS TEXT), '$.objects') AS j
    WHERE e.seq >= ?1 AND e.seq < ?2""",
    """INSERT OR IGNORE INTO entry_rules SELECT j.value, e.seq
    FROM entries AS e, json_each(CAST(e.data AS TEXT), '$.rules') AS j
    WHERE e.seq >= ?1 AND e.seq < ?2""",
)

# Query filters on a column of `entry_fields`, and those on a lookup table.
_COLUMNS = ("tenant", "kind", "outcome", "task", "actor", "node")
_LOOKUPS = {"object": "entry_objects", "rule": "entry_rules"}


class SqliteAuditStore:
    """An :class:`AuditStore` in one SQLite file: WAL journal, ``synchronous=FULL``, one
    transaction per appended batch, so a batch is durable once :meth:`append` returns.

    An append stores only the log (the entries' ids and bytes, and the subtree hashes): the
    query indexes are built from the bytes later, in bulk and in SQL (:meth:`index`), which
    costs a fraction of indexing each row as it arrives and leaves the sequencer's work while
    nodes are busy at the least."""

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
        if version not in (0, 1, SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: audit store schema {version}, this code knows {SCHEMA_VERSION}"
            )
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (journal mode {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        upgrade = _FROM_SCHEMA_1 if version == 1 else ""
        self._db.executescript(
            f"BEGIN; {upgrade} {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        )

    def close(self) -> None:
        self._db.close()

    def size(self) -> int:
        (last,) = self._db.execute("SELECT MAX(seq) FROM entries").fetchone()
        return 0 if last is None else last + 1

    def append(self, entries: Sequence[tuple[int, str, bytes]], nodes: Sequence[TreeNode]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO entries VALUES (?, ?, ?)", entries)
            db.executemany(
                "INSERT INTO tree VALUES (?, ?, ?)", [(n.level, n.index, n.hash) for n in nodes]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def unindexed(self) -> int:
        return self.size() - self._indexed()

    def _indexed(self) -> int:
        # Read each time, not cached: another connection (a reader's query) may index too.
        (last,) = self._db.execute("SELECT MAX(seq) FROM entry_fields").fetchone()
        return 0 if last is None else int(last) + 1

    def index(self, limit: int | None = None) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # the write lock first: nobody indexes meanwhile
        start = end = size = 0
        try:
            size, start = self.size(), self._indexed()
            end = size if limit is None else min(size, start + limit)
            for statement in _INDEX if end > start else ():
                db.execute(statement, (start, end))
            db.execute("COMMIT")
        except sqlite3.Error as error:
            db.execute("ROLLBACK")
            raise StoreError(
                f"{self.path}: cannot index the entries from seq {start} ({error}): an "
                "entry's bytes are not JSON; `fabric audit verify` finds which"
            ) from error
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return size - end

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
        self.index()
        # A lookup table, when filtered on, drives the query: walking its (key, seq) primary
        # key from the cursor on yields matches in seq order, so a page stops at its limit.
        driver, joins, where, args = "f", [], [], []
        for name, table in _LOOKUPS.items():
            value = getattr(query, name)
            if value is not None:
                alias = name[0]
                joins.append(f"JOIN {table} AS {alias} ON {alias}.seq = f.seq")
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
                where.append(f"f.{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("f.time >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("f.time < ?")
            args.append(query.until)
        sql = (
            f"SELECT e.seq, e.data FROM entry_fields AS f {' '.join(joins)} "
            "JOIN entries AS e ON e.seq = f.seq "
            f"WHERE {' AND '.join(where)} ORDER BY {driver}.seq"
        )
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        return self._db.execute(sql, args).fetchall()

    def time_bounds(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        self.index()
        # One range scan of the (time, seq) index, which covers the query.
        sql = (
            "SELECT MIN(seq), MAX(seq) FROM entry_fields INDEXED BY entry_fields_time "
            "WHERE time >= ?"
        )
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
