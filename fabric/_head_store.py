"""What the head keeps across restarts: nodes, named actors, budget leases, policy history.

:class:`HeadStore` is the small interface the head needs, so that PostgreSQL can replace
SQLite when the head's state must outlive its host; :class:`SqliteHeadStore` is the embedded
implementation, ``<state dir>/head.db``. A store only keeps what it is given: whether a node
is alive, whether a name is taken or how much of a budget is left is decided by
``ClusterDirectory`` and ``BudgetLeases``, which write through it before they answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fabric._proto import fabric_pb2 as pb
from fabric.exceptions import FabricError

SCHEMA_VERSION = 1
DB_FILE = "head.db"


class HeadStoreError(FabricError):
    """The head's store cannot be used (unknown schema, no WAL) or refused a write."""


@dataclass(frozen=True)
class SavedNode:
    """A node as it registered: what a restarted head shows until the node reconnects."""

    node_id: str
    address: str
    region: str
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)
    identity: str = ""  # the URI of its certificate's identity


@dataclass(frozen=True)
class PolicyVersion:
    """One applied policy: its version, its YAML text, when (epoch seconds) and by whom."""

    version: str
    text: str
    applied_at: float
    applied_by: str


class HeadStore(Protocol):
    """Storage for one head. Every write is durable when it returns. Not thread-safe: the
    head calls it from its event loop only."""

    def nodes(self) -> list[SavedNode]:
        """Every saved node, by node id."""
        ...

    def save_node(self, node: SavedNode) -> None:
        """Save a node, replacing the one saved under its id."""
        ...

    def remove_node(self, node_id: str, actor_ids: Sequence[bytes] = ()) -> None:
        """Forget a node and the actors it hosted (`actor_ids`), in one transaction."""
        ...

    def actors(self) -> list[pb.ActorInfo]:
        """Every saved named actor."""
        ...

    def save_actor(self, info: pb.ActorInfo) -> None:
        """Save an actor, replacing the one saved under its id; :class:`HeadStoreError` if
        another actor has its (tenant, namespace, name)."""
        ...

    def remove_actor(self, actor_id: bytes) -> None: ...

    def leases(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(tenant, budget) -> (window, amount leased in that window)."""
        ...

    def save_lease(self, tenant: str, budget: str, window: int, leased: float) -> None: ...

    def add_policy(self, policy: PolicyVersion) -> None:
        """Append an applied policy to the history."""
        ...

    def policies(self) -> list[PolicyVersion]:
        """The history of applied policies, oldest first."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    region TEXT NOT NULL,
    labels TEXT NOT NULL,      -- JSON object
    resources TEXT NOT NULL,   -- JSON object
    identity TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actors (
    actor_id BLOB PRIMARY KEY,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    info BLOB NOT NULL,        -- the serialized fabric.v1.ActorInfo
    UNIQUE (tenant, namespace, name)
);
CREATE TABLE IF NOT EXISTS leases (
    tenant TEXT NOT NULL,
    budget TEXT NOT NULL,
    window INTEGER NOT NULL,
    leased REAL NOT NULL,
    PRIMARY KEY (tenant, budget)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy_versions (
    seq INTEGER PRIMARY KEY,
    version TEXT NOT NULL,
    text TEXT NOT NULL,
    applied_at REAL NOT NULL,
    applied_by TEXT NOT NULL
);
"""


class SqliteHeadStore:
    """A :class:`HeadStore` in one SQLite file: WAL journal, ``synchronous=FULL``, one
    transaction per write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, state_dir: Path | None) -> SqliteHeadStore:
        """The store in `state_dir`, or in a temporary directory removed on :meth:`close`
        when `state_dir` is None: a head without a state directory runs the same code."""
        temporary = None
        if state_dir is None:
            temporary = tempfile.TemporaryDirectory(prefix="fabric-head-")
            state_dir = Path(temporary.name)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = cls(state_dir / DB_FILE)
        except BaseException:
            if temporary is not None:
                temporary.cleanup()
            raise
        store._temporary = temporary
        return store

    def _setup(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise HeadStoreError(
                f"{self.path}: head store schema {version}, this code knows {SCHEMA_VERSION}"
            )
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise HeadStoreError(f"{self.path}: SQLite refused WAL mode (journal mode {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        self._db.close()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.IntegrityError as error:
            db.execute("ROLLBACK")
            raise HeadStoreError(f"{self.path}: {error}") from error
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- nodes ------------------------------------------------------------------------------

    def nodes(self) -> list[SavedNode]:
        rows = self._db.execute(
            "SELECT node_id, address, region, labels, resources, identity FROM nodes "
            "ORDER BY node_id"
        ).fetchall()
        return [
            SavedNode(node_id, address, region, json.loads(labels), json.loads(resources), who)
            for node_id, address, region, labels, resources, who in rows
        ]

    def save_node(self, node: SavedNode) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?)",
                (
                    node.node_id,
                    node.address,
                    node.region,
                    json.dumps(dict(node.labels), sort_keys=True),
                    json.dumps(dict(node.resources), sort_keys=True),
                    node.identity,
                ),
            )

    def remove_node(self, node_id: str, actor_ids: Sequence[bytes] = ()) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            db.executemany("DELETE FROM actors WHERE actor_id = ?", [(a,) for a in actor_ids])

    # -- named actors -----------------------------------------------------------------------

    def actors(self) -> list[pb.ActorInfo]:
        rows = self._db.execute("SELECT info FROM actors ORDER BY actor_id").fetchall()
        return [pb.ActorInfo.FromString(info) for (info,) in rows]

    def save_actor(self, info: pb.ActorInfo) -> None:
        # Not INSERT OR REPLACE: that would silently delete another actor holding the name.
        with self._transaction() as db:
            db.execute(
                "INSERT INTO actors VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (actor_id) DO UPDATE "
                "SET tenant = ?2, namespace = ?3, name = ?4, info = ?5",
                (
                    info.actor_id,
                    info.tenant,
                    info.namespace,
                    info.name,
                    info.SerializeToString(deterministic=True),
                ),
            )

    def remove_actor(self, actor_id: bytes) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM actors WHERE actor_id = ?", (actor_id,))

    # -- budget leases ----------------------------------------------------------------------

    def leases(self) -> dict[tuple[str, str], tuple[int, float]]:
        rows = self._db.execute("SELECT tenant, budget, window, leased FROM leases").fetchall()
        return {(tenant, budget): (window, leased) for tenant, budget, window, leased in rows}

    def save_lease(self, tenant: str, budget: str, window: int, leased: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                (tenant, budget, window, leased),
            )

    # -- policy history ---------------------------------------------------------------------

    def add_policy(self, policy: PolicyVersion) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO policy_versions (version, text, applied_at, applied_by) "
                "VALUES (?, ?, ?, ?)",
                (policy.version, policy.text, policy.applied_at, policy.applied_by),
            )

    def policies(self) -> list[PolicyVersion]:
        rows = self._db.execute(
            "SELECT version, text, applied_at, applied_by FROM policy_versions ORDER BY seq"
        ).fetchall()
        return [PolicyVersion(*row) for row in rows]
