"""The head's store on its own: what one open writes, the next open reads back."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from fabric._head_store import (
    DB_FILE,
    SCHEMA_VERSION,
    HeadStoreError,
    PolicyVersion,
    SavedNode,
    SqliteHeadStore,
)
from fabric._proto import fabric_pb2 as pb

NODE = SavedNode(
    node_id="eu-1",
    address="10.0.0.1:7000",
    region="eu-west",
    labels={"zone": "a"},
    resources={"CPU": 4.0, "GPU": 1.0},
    identity="spiffe://fabric.local/node/eu-1",
)


def actor(actor_id: bytes, name: str, node: str = "eu-1", tenant: str = "acme") -> pb.ActorInfo:
    return pb.ActorInfo(
        actor_id=actor_id,
        name=name,
        namespace="ns",
        node_id=node,
        state="alive",
        class_name="Counter",
        handle_meta='{"methods": []}',
        tenant=tenant,
    )


def test_what_one_open_writes_the_next_reads(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    with contextlib.closing(SqliteHeadStore(path)) as store:
        store.save_node(NODE)
        store.save_actor(actor(b"a1", "counter"))
        store.save_actor(actor(b"a2", "other", node=""))
        store.save_lease("acme", "total_tasks", 7, 12.0)
        store.add_policy(PolicyVersion("v1", "kind: Policy\n", 100.5, "operator/admin"))
        store.add_policy(PolicyVersion("v2", "kind: Policy # 2\n", 200.0, "operator/admin"))
    with contextlib.closing(SqliteHeadStore(path)) as store:
        assert store.nodes() == [NODE]
        assert store.actors() == [actor(b"a1", "counter"), actor(b"a2", "other", node="")]
        assert store.leases() == {("acme", "total_tasks"): (7, 12.0)}
        assert [(p.version, p.text, p.applied_at) for p in store.policies()] == [
            ("v1", "kind: Policy\n", 100.5),
            ("v2", "kind: Policy # 2\n", 200.0),
        ]


def test_a_second_open_sees_what_the_first_writes_while_both_are_open(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    with (
        contextlib.closing(SqliteHeadStore(path)) as first,
        contextlib.closing(SqliteHeadStore(path)) as second,
    ):
        first.save_lease("acme", "cpu_seconds", 3, 1.5)
        first.save_node(NODE)
        assert second.leases() == {("acme", "cpu_seconds"): (3, 1.5)}
        assert second.nodes() == [NODE]


def test_a_save_replaces_what_was_saved_under_the_same_key(tmp_path: Path) -> None:
    with contextlib.closing(SqliteHeadStore(tmp_path / DB_FILE)) as store:
        store.save_node(NODE)
        moved = SavedNode("eu-1", "10.0.0.2:7000", "eu-west", {}, {"CPU": 2.0}, NODE.identity)
        store.save_node(moved)
        assert store.nodes() == [moved]
        store.save_actor(actor(b"a1", "counter", node=""))
        store.save_actor(actor(b"a1", "counter", node="eu-1"))
        assert store.actors() == [actor(b"a1", "counter", node="eu-1")]
        store.save_lease("acme", "total_tasks", 7, 12.0)
        store.save_lease("acme", "total_tasks", 8, 3.0)
        assert store.leases() == {("acme", "total_tasks"): (8, 3.0)}


def test_a_name_taken_by_another_actor_is_refused_and_the_owner_kept(tmp_path: Path) -> None:
    with contextlib.closing(SqliteHeadStore(tmp_path / DB_FILE)) as store:
        store.save_actor(actor(b"a1", "counter"))
        with pytest.raises(HeadStoreError, match="UNIQUE constraint failed"):
            store.save_actor(actor(b"a2", "counter"))
        assert store.actors() == [actor(b"a1", "counter")]
        # The same name in another tenant is another name.
        store.save_actor(actor(b"a3", "counter", tenant="globex"))
        assert len(store.actors()) == 2


def test_removing_a_node_removes_the_actors_it_is_given_with_it(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    with contextlib.closing(SqliteHeadStore(path)) as store:
        store.save_node(NODE)
        store.save_actor(actor(b"a1", "one"))
        store.save_actor(actor(b"a2", "two"))
        store.save_actor(actor(b"a3", "three", node="us-1"))
        store.remove_node("eu-1", [b"a1", b"a2"])
        store.remove_actor(b"a3")
    with contextlib.closing(SqliteHeadStore(path)) as store:
        assert store.nodes() == []
        assert store.actors() == []


def test_a_store_of_an_unknown_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    expected = f"head store schema {SCHEMA_VERSION + 1}, this code knows {SCHEMA_VERSION}$"
    with pytest.raises(HeadStoreError, match=expected):
        SqliteHeadStore(path)


def test_the_store_is_durable_by_configuration(tmp_path: Path) -> None:
    with contextlib.closing(SqliteHeadStore(tmp_path / DB_FILE)) as store:
        db = store._db
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_head_without_a_state_dir_gets_a_temporary_one_removed_on_close() -> None:
    store = SqliteHeadStore.open(None)
    directory = Path(store.path).parent
    store.save_node(NODE)
    assert store.nodes() == [NODE]
    store.close()
    assert not directory.exists()


def test_open_creates_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state" / "head"
    with contextlib.closing(SqliteHeadStore.open(state)) as store:
        store.save_lease("acme", "total_tasks", 1, 1.0)
    assert (state / DB_FILE).exists()
    with contextlib.closing(SqliteHeadStore.open(state)) as store:
        assert store.leases() == {("acme", "total_tasks"): (1, 1.0)}
