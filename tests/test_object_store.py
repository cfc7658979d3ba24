"""The node object store: sealed files, zero-copy reads, adoption checks, accounting."""

from __future__ import annotations

import mmap
import os
import random
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fabric._object_store import (
    IncomingObject,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreFull,
    StoreDirectory,
    default_store_root,
)
from fabric._serialization import SerializationError, Serialized, deserialize, serialize
from fabric.exceptions import FabricError, OutOfMemoryError


@pytest.fixture
def store() -> Iterator[ObjectStore]:
    root = default_store_root() / f"fabric-test-{secrets.token_hex(6)}"
    s = ObjectStore(root)
    try:
        yield s
    finally:
        s.close()


def new_id() -> bytes:
    return os.urandom(20)


def blob_of(value: object) -> bytes:
    return serialize(value).to_bytes()


def address_range(view: memoryview) -> tuple[int, int]:
    start = int(np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0])
    return start, start + view.nbytes


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------
# Layout and permissions


def test_default_store_root_is_writable_directory() -> None:
    root = default_store_root()
    assert root.is_dir()
    assert os.access(root, os.W_OK)


def test_root_and_tenant_directories_are_private(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    assert mode(store.root) == 0o700
    assert d.directory == store.root / "alice"
    assert mode(d.directory) == 0o700


def test_put_names_file_by_hex_id_with_mode_0600(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    size = d.put(oid, serialize({"k": "v"}))
    path = store.root / "alice" / oid.hex()
    assert d.path(oid) == path
    assert path.is_file()
    assert mode(path) == 0o600
    assert os.path.getsize(path) == size
    assert listing(d.directory) == [oid.hex()]  # no temp file left behind


def test_file_contents_equal_inline_blob(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    value = {"a": np.arange(1000), "b": np.ones((3, 3))}
    d.put(oid, serialize(value))
    assert d.path(oid).read_bytes() == blob_of(value)


def test_store_root_must_be_new(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(ObjectStoreError):
        ObjectStore(tmp_path / "taken")


def test_store_root_parents_are_created(tmp_path: Path) -> None:
    with ObjectStore(tmp_path / "a" / "b" / "store") as s:
        assert s.root.is_dir()


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../evil", "a/b", ".hidden", "-dash", "x" * 64, "sp ace", "é"]
)
def test_invalid_tenant_names_are_rejected(store: ObjectStore, name: str) -> None:
    with pytest.raises(ObjectStoreError):
        store.tenant_directory(name)


@pytest.mark.parametrize("name", ["a", "A9", "team.one_two-3", "x" * 63])
def test_valid_tenant_names(store: ObjectStore, name: str) -> None:
    assert store.tenant_directory(name).directory == store.root / name


@pytest.mark.parametrize("bad_id", [b"", b"x" * 65, "abc", bytearray(b"abc")])
def test_invalid_object_ids_are_rejected(store: ObjectStore, bad_id: object) -> None:
    d = store.tenant_directory("alice")
    with pytest.raises(ObjectStoreError):
        d.put(bad_id, serialize(1))  # type: ignore[arg-type]


def test_store_directory_requires_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ObjectStoreError):
        StoreDirectory(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ObjectStoreError):
        StoreDirectory(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(ObjectStoreError):
        StoreDirectory(tmp_path / "link")


# ---------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize(
    "value",
    [42, "text", b"bytes" * 1000, {"nested": [1, {"arr": np.arange(5)}]}],
    ids=["int", "str", "bytes", "nested"],
)
def test_put_get_roundtrip(store: ObjectStore, value: object) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    d.put(oid, serialize(value))
    result = d.get(oid)
    if isinstance(value, dict):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["nested"][1]["arr"], np.arange(5))
    else:
        assert result == value


def test_get_missing_object(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    with pytest.raises(ObjectStoreError):
        d.get(new_id())
    with pytest.raises(ObjectStoreError):
        d.open_blob(new_id())


def test_get_corrupt_file_raises_serialization_error(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    d.path(oid).write_bytes(b"FBO1" + b"\x00" * 100)
    with pytest.raises(SerializationError):
        d.get(oid)


def test_numpy_get_is_zero_copy_view_of_mapping(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    arr = np.random.default_rng(1).random(1 << 18)
    d.put(oid, serialize(arr))

    result = d.get(oid)
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, arr)
    assert not result.flags.writeable
    base: object = result
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview)
    assert isinstance(base.obj, mmap.mmap)
    assert base.readonly

    blob = d.open_blob(oid)
    viewed = deserialize(blob)
    assert isinstance(viewed, np.ndarray)
    low, high = address_range(blob)
    start = int(viewed.__array_interface__["data"][0])
    assert low <= start and start + viewed.nbytes <= high


def test_arrow_get_is_zero_copy_view_of_mapping(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    table = pa.table({"x": pa.array(np.arange(100_000, dtype=np.int64)), "y": ["a"] * 100_000})
    d.put(oid, serialize(table))
    assert d.get(oid).equals(table)  # type: ignore[attr-defined]

    blob = d.open_blob(oid)
    result = deserialize(blob)
    assert isinstance(result, pa.Table)
    low, high = address_range(blob)
    for column in result.columns:
        for buf in column.chunk(0).buffers():
            if buf is not None:
                assert low <= buf.address and buf.address + buf.size <= high


def test_mapping_is_read_only(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    d.put(oid, serialize(np.arange(10)))
    blob = d.open_blob(oid)
    assert blob.readonly
    with pytest.raises(TypeError):
        blob[0] = 0


def test_delete_while_reader_holds_mapping(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    arr = np.arange(1 << 16, dtype=np.int64)
    store.adopt("alice", oid, d.put(oid, serialize(arr)))
    held = d.get(oid)
    store.delete("alice", oid)
    assert not d.path(oid).exists()
    assert not store.contains("alice", oid)
    np.testing.assert_array_equal(held, arr)
    # A new object reusing the freed memory must not show through the old mapping.
    other = new_id()
    d.put(other, serialize(np.full(1 << 16, -1, dtype=np.int64)))
    np.testing.assert_array_equal(held, arr)


def test_delete_is_idempotent(store: ObjectStore) -> None:
    oid = new_id()
    store.put_blob("alice", oid, blob_of(1))
    store.delete("alice", oid)
    store.delete("alice", oid)
    store.delete("nobody", oid)
    assert store.used_bytes() == 0


def test_put_failure_leaves_no_temp_file(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")

    class Exploding(Serialized):
        def write_to_fd(self, fd: int) -> int:
            os.write(fd, b"partial")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        d.put(new_id(), Exploding(kind=0, payload=b""))
    assert listing(d.directory) == []


def test_put_replaces_atomically(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    d.put(oid, serialize("old"))
    held = d.open_blob(oid)
    d.put(oid, serialize("new"))
    assert d.get(oid) == "new"
    assert deserialize(held) == "old"


# ---------------------------------------------------------------------------
# Adoption


def test_adopt_records_size(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    size = d.put(oid, serialize(np.arange(100)))
    assert store.adopt("alice", oid, size) == size
    assert store.contains("alice", oid)
    assert store.size("alice", oid) == size
    assert store.adopt("alice", oid) == size  # size may be omitted; not counted twice
    assert store.used_bytes() == size


def test_adopt_never_sealed(store: ObjectStore) -> None:
    store.tenant_directory("alice")
    with pytest.raises(ObjectStoreError):
        store.adopt("alice", new_id(), 100)


def test_adopt_unknown_tenant(store: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError):
        store.adopt("ghost", new_id(), 100)


def test_adopt_refuses_symlink(store: ObjectStore, tmp_path: Path) -> None:
    d = store.tenant_directory("alice")
    target = tmp_path / "elsewhere"
    target.write_bytes(blob_of("secret"))
    oid = new_id()
    os.symlink(target, d.path(oid))
    with pytest.raises(ObjectStoreError):
        store.adopt("alice", oid, target.stat().st_size)
    assert not store.contains("alice", oid)
    assert not os.path.lexists(d.path(oid))
    assert target.exists()  # removing the link must not touch what it pointed at


def test_adopt_refuses_object_of_another_tenant(store: ObjectStore) -> None:
    alice = store.tenant_directory("alice")
    store.tenant_directory("mallory")
    oid = new_id()
    size = alice.put(oid, serialize("alice's data"))
    with pytest.raises(ObjectStoreError):
        store.adopt("mallory", oid, size)
    assert not store.contains("mallory", oid)
    assert alice.path(oid).exists()


def test_adopt_refuses_symlink_into_another_tenant(store: ObjectStore) -> None:
    alice = store.tenant_directory("alice")
    mallory = store.tenant_directory("mallory")
    oid = new_id()
    size = alice.put(oid, serialize("alice's data"))
    os.symlink(alice.path(oid), mallory.path(oid))
    with pytest.raises(ObjectStoreError):
        store.adopt("mallory", oid, size)
    assert alice.path(oid).exists()


def test_adopt_refuses_hard_link(store: ObjectStore) -> None:
    alice = store.tenant_directory("alice")
    mallory = store.tenant_directory("mallory")
    oid = new_id()
    size = alice.put(oid, serialize("alice's data"))
    os.link(alice.path(oid), mallory.path(oid))
    with pytest.raises(ObjectStoreError):
        store.adopt("mallory", oid, size)
    assert alice.path(oid).exists()


def test_adopt_refuses_wrong_size(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    size = d.put(oid, serialize("x"))
    with pytest.raises(ObjectStoreError):
        store.adopt("alice", oid, size + 1)
    assert not store.contains("alice", oid)
    assert store.used_bytes() == 0
    assert not d.path(oid).exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"tiny", b"NOPE" + bytes(200), blob_of([1, 2, 3])[:-1], blob_of("x") + b"!"],
    ids=["empty", "tiny", "bad magic", "truncated", "trailing"],
)
def test_adopt_refuses_bad_header(store: ObjectStore, content: bytes) -> None:
    d = store.tenant_directory("alice")
    oid = new_id()
    d.path(oid).write_bytes(content)
    with pytest.raises(ObjectStoreError):
        store.adopt("alice", oid, len(content))
    assert not store.contains("alice", oid)
    assert not d.path(oid).exists()


def test_adopt_refuses_directory_and_fifo(store: ObjectStore) -> None:
    d = store.tenant_directory("alice")
    dir_id, fifo_id = new_id(), new_id()
    d.path(dir_id).mkdir()
    os.mkfifo(d.path(fifo_id))
    with pytest.raises(ObjectStoreError):
        store.adopt("alice", dir_id)
    with pytest.raises(ObjectStoreError):
        store.adopt("alice", fifo_id)
    assert store.used_bytes() == 0


# ---------------------------------------------------------------------------
# Agent-side writes and accounting


def test_put_blob_and_read_back(store: ObjectStore) -> None:
    oid = new_id()
    blob = blob_of({"x": np.arange(50)})
    assert store.put_blob("bob", oid, blob) == len(blob)
    assert mode(store.root / "bob") == 0o700
    assert mode(store.root / "bob" / oid.hex()) == 0o600
    result = store.tenant_directory("bob").get(oid)
    assert isinstance(result, dict)
    np.testing.assert_array_equal(result["x"], np.arange(50))
    assert bytes(store.open_blob("bob", oid)) == blob


def test_put_blob_refuses_invalid_blob(store: ObjectStore) -> None:
    oid = new_id()
    with pytest.raises(ObjectStoreError):
        store.put_blob("bob", oid, b"FBO1 but not really")
    assert not store.contains("bob", oid)
    assert listing(store.root / "bob") == []


def test_accounting_per_tenant(store: ObjectStore) -> None:
    a1, a2, b1 = new_id(), new_id(), new_id()
    alice = store.tenant_directory("alice")
    s_a1 = store.adopt("alice", a1, alice.put(a1, serialize(np.zeros(1000))))
    s_a2 = store.put_blob("alice", a2, blob_of("two"))
    s_b1 = store.put_blob("bob", b1, blob_of(np.ones(10)))
    assert store.bytes_by_tenant() == {"alice": s_a1 + s_a2, "bob": s_b1}
    assert store.used_bytes() == s_a1 + s_a2 + s_b1
    store.delete("alice", a1)
    assert store.bytes_by_tenant() == {"alice": s_a2, "bob": s_b1}
    assert store.used_bytes() == s_a2 + s_b1
    with pytest.raises(ObjectStoreError):
        store.size("alice", a1)
    assert not store.contains("bob", a2)


def test_replacing_an_object_counts_the_new_size_once(store: ObjectStore) -> None:
    oid = new_id()
    store.put_blob("alice", oid, blob_of("short"))
    size = store.put_blob("alice", oid, blob_of("a much longer value" * 100))
    assert store.used_bytes() == size
    assert store.size("alice", oid) == size


# ---------------------------------------------------------------------------
# Capacity


@pytest.fixture
def small_store() -> Iterator[ObjectStore]:
    root = default_store_root() / f"fabric-test-{secrets.token_hex(6)}"
    s = ObjectStore(root, capacity_bytes=10_000)
    try:
        yield s
    finally:
        s.close()


def test_capacity_put_blob(small_store: ObjectStore) -> None:
    first = blob_of(np.zeros(600))  # about 5 KB
    small_store.put_blob("alice", new_id(), first)
    with pytest.raises(ObjectStoreFull) as info:
        small_store.put_blob("bob", new_id(), blob_of(np.zeros(700)))
    assert isinstance(info.value, ObjectStoreError)
    assert isinstance(info.value, OutOfMemoryError)
    assert isinstance(info.value, FabricError)
    assert small_store.bytes_by_tenant()["bob"] == 0
    assert listing(small_store.root / "bob") == []


def test_capacity_adopt_discards_file(small_store: ObjectStore) -> None:
    d = small_store.tenant_directory("alice")
    oid = new_id()
    size = d.put(oid, serialize(np.zeros(2000)))
    assert size > 10_000
    with pytest.raises(ObjectStoreFull):
        small_store.adopt("alice", oid, size)
    assert not d.path(oid).exists()
    assert small_store.used_bytes() == 0


def test_capacity_freed_by_delete(small_store: ObjectStore) -> None:
    oid = new_id()
    blob = blob_of(np.zeros(1000))
    small_store.put_blob("alice", oid, blob)
    with pytest.raises(ObjectStoreFull):
        small_store.put_blob("alice", new_id(), blob)
    small_store.delete("alice", oid)
    small_store.put_blob("alice", new_id(), blob)


def test_capacity_counts_transfers_in_progress(small_store: ObjectStore) -> None:
    incoming = small_store.begin_receive("alice", new_id(), 8000)
    with pytest.raises(ObjectStoreFull):
        small_store.begin_receive("bob", new_id(), 8000)
    with pytest.raises(ObjectStoreFull):
        small_store.put_blob("bob", new_id(), blob_of(np.zeros(500)))
    incoming.abort()
    small_store.begin_receive("bob", new_id(), 8000).abort()


# ---------------------------------------------------------------------------
# Chunked transfers between nodes


@pytest.fixture
def other_store() -> Iterator[ObjectStore]:
    root = default_store_root() / f"fabric-test-{secrets.token_hex(6)}"
    s = ObjectStore(root)
    try:
        yield s
    finally:
        s.close()


def test_chunked_transfer_roundtrip(store: ObjectStore, other_store: ObjectStore) -> None:
    oid = new_id()
    arr = np.random.default_rng(2).random(50_000)
    size = store.put_blob("alice", oid, blob_of({"arr": arr}))

    chunks = list(store.iter_chunks("alice", oid, chunk_size=4096))
    assert sum(c.nbytes for c in chunks) == size
    assert all(c.nbytes == 4096 for c in chunks[:-1])
    offsets = list(range(0, size, 4096))
    pairs = list(zip(offsets, chunks, strict=True))
    random.Random(3).shuffle(pairs)  # chunks may arrive out of order...
    pairs.append(pairs[0])  # ...and twice

    incoming = other_store.begin_receive("alice", oid, size)
    assert isinstance(incoming, IncomingObject)
    for offset, chunk in pairs:
        incoming.write(offset, chunk)
    assert incoming.bytes_received == size
    assert incoming.commit() == size
    assert incoming.done

    assert other_store.contains("alice", oid)
    assert other_store.bytes_by_tenant() == {"alice": size}
    path = other_store.root / "alice" / oid.hex()
    assert mode(path) == 0o600
    assert listing(other_store.root / "alice") == [oid.hex()]
    result = other_store.tenant_directory("alice").get(oid)
    assert isinstance(result, dict)
    np.testing.assert_array_equal(result["arr"], arr)


def test_iter_chunks_survives_delete(store: ObjectStore) -> None:
    oid = new_id()
    blob = blob_of(np.arange(10_000))
    store.put_blob("alice", oid, blob)
    chunks = store.iter_chunks("alice", oid, chunk_size=1000)
    store.delete("alice", oid)
    assert b"".join(bytes(c) for c in chunks) == blob


def test_iter_chunks_errors(store: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError):
        store.iter_chunks("alice", new_id())
    oid = new_id()
    store.put_blob("alice", oid, blob_of(1))
    with pytest.raises(ValueError):
        store.iter_chunks("alice", oid, chunk_size=0)


def test_abort_leaves_nothing(store: ObjectStore) -> None:
    oid = new_id()
    blob = blob_of("payload" * 100)
    incoming = store.begin_receive("alice", oid, len(blob))
    incoming.write(0, blob[:100])
    incoming.abort()
    incoming.abort()
    assert listing(store.root / "alice") == []
    assert not store.contains("alice", oid)
    assert store.used_bytes() == 0
    with pytest.raises(ObjectStoreError):
        incoming.write(0, b"x")
    with pytest.raises(ObjectStoreError):
        incoming.commit()


def test_context_manager_aborts_unless_committed(store: ObjectStore) -> None:
    blob = blob_of([1, 2, 3])
    with pytest.raises(RuntimeError), store.begin_receive("alice", new_id(), len(blob)) as inc:
        inc.write(0, blob)
        raise RuntimeError("connection dropped")
    assert listing(store.root / "alice") == []

    oid = new_id()
    with store.begin_receive("alice", oid, len(blob)) as inc:
        inc.write(0, blob)
        inc.commit()
    assert store.tenant_directory("alice").get(oid) == [1, 2, 3]


def test_commit_incomplete_transfer_fails_and_cleans_up(store: ObjectStore) -> None:
    oid = new_id()
    blob = blob_of("x" * 1000)
    incoming = store.begin_receive("alice", oid, len(blob))
    incoming.write(0, blob[:500])
    incoming.write(600, blob[600:])
    with pytest.raises(ObjectStoreError, match="100 bytes"):
        incoming.commit()
    assert incoming.done
    assert listing(store.root / "alice") == []
    assert not store.contains("alice", oid)


def test_commit_invalid_blob_fails_and_cleans_up(store: ObjectStore) -> None:
    oid = new_id()
    incoming = store.begin_receive("alice", oid, 256)
    incoming.write(0, b"\x00" * 256)
    with pytest.raises(ObjectStoreError):
        incoming.commit()
    assert listing(store.root / "alice") == []
    assert store.used_bytes() == 0


def test_receive_bounds(store: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError):
        store.begin_receive("alice", new_id(), 10)
    incoming = store.begin_receive("alice", new_id(), 100)
    with pytest.raises(ObjectStoreError):
        incoming.write(90, b"x" * 11)
    with pytest.raises(ObjectStoreError):
        incoming.write(-1, b"x")
    incoming.abort()


# ---------------------------------------------------------------------------
# Closing


def test_close_removes_everything_and_aborts_transfers() -> None:
    root = default_store_root() / f"fabric-test-{secrets.token_hex(6)}"
    s = ObjectStore(root)
    s.put_blob("alice", new_id(), blob_of(np.zeros(100)))
    incoming = s.begin_receive("bob", new_id(), 1000)
    s.close()
    assert not root.exists()
    assert incoming.done
    s.close()
    with pytest.raises(ObjectStoreError):
        s.put_blob("alice", new_id(), blob_of(1))
    with pytest.raises(ObjectStoreError):
        s.tenant_directory("alice")
    assert s.used_bytes() == 0
