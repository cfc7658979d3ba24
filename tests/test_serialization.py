"""Object blobs: round trips, zero-copy reads, strict header validation, error blobs."""

from __future__ import annotations

import json
import pickle
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric._serialization import (
    ALIGNMENT,
    HEADER_SIZE,
    INLINE_THRESHOLD,
    KIND_ARROW,
    KIND_ERROR,
    KIND_PICKLE,
    ErrorPayload,
    SerializationError,
    Serialized,
    UnserializableError,
    blob_kind,
    deserialize,
    dumps_function,
    loads_function,
    note_contained_ref,
    read_header,
    serialize,
    serialize_error,
)
from fabric.exceptions import FabricError

HEADER = struct.Struct("<4sBBHIQQ")
ENTRY = struct.Struct("<QQ")


def roundtrip(value: object) -> object:
    return deserialize(serialize(value).to_bytes())


def address_range(view: memoryview) -> tuple[int, int]:
    start = int(np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0])
    return start, start + view.nbytes


def array_address(arr: np.ndarray) -> int:
    return int(arr.__array_interface__["data"][0])


class FakeRef:
    """Pickles like the runtime's ObjectRef: reports its id while being reduced."""

    def __init__(self, object_id: bytes) -> None:
        self.object_id = object_id

    def __reduce__(self) -> tuple[Any, ...]:
        note_contained_ref(self.object_id)
        return (FakeRef, (self.object_id,))


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "value",
    [
        0,
        -(2**70),
        3.5,
        None,
        "héllo",
        b"\x00\xff" * 1000,
        bytearray(b"abc"),
        [1, [2, [3]]],
        {"a": 1, "b": (2, 3), 4: {5, 6}},
        {"nested": {"arr": np.arange(10)}},
    ],
    ids=repr,
)
def test_plain_values_roundtrip(value: object) -> None:
    result = roundtrip(value)
    if isinstance(value, dict) and "nested" in value:
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["nested"]["arr"], np.arange(10))
    else:
        assert result == value
        assert type(result) is type(value)


def test_lambda_and_closure_roundtrip() -> None:
    offset = 41

    def add(x: int) -> int:
        return x + offset

    assert roundtrip(lambda x: x * 2)(21) == 42  # type: ignore[operator]
    assert roundtrip(add)(1) == 42  # type: ignore[operator]


def test_locally_defined_class_roundtrip() -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

    result = roundtrip(Point(3, -4))
    assert result.norm1() == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(1000, dtype=np.float64),
        lambda: np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        lambda: np.arange(100).reshape(10, 10)[:, ::3],  # not contiguous
        lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        lambda: np.array(7.25),  # 0-d
        lambda: np.zeros((0, 5)),
        lambda: np.array([True, False]),
        lambda: np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        lambda: np.array(["x", None, 3], dtype=object),
    ],
    ids=["1d", "3d", "strided", "fortran", "0d", "empty", "bool", "structured", "object"],
)
def test_numpy_roundtrip(make: Callable[[], np.ndarray]) -> None:
    arr = make()
    result = roundtrip(arr)
    assert isinstance(result, np.ndarray)
    assert result.dtype == arr.dtype
    assert result.shape == arr.shape
    np.testing.assert_array_equal(result, arr)


def test_large_array_is_out_of_band_not_in_payload() -> None:
    arr = np.arange(1 << 16, dtype=np.float64)
    s = serialize(arr)
    assert s.kind == KIND_PICKLE
    assert len(s.buffers) == 1
    assert s.buffers[0].nbytes == arr.nbytes
    assert len(s.payload) < 1024


def test_arrow_table_roundtrip() -> None:
    table = pa.concat_tables(
        [pa.table({"x": [1, 2], "s": ["a", None]}), pa.table({"x": [3], "s": ["c"]})]
    )
    s = serialize(table)
    assert s.kind == KIND_ARROW
    result = deserialize(s.to_bytes())
    assert isinstance(result, pa.Table)
    assert result.equals(table)


def test_arrow_record_batch_roundtrip() -> None:
    batch = pa.record_batch({"x": pa.array([1.5, None]), "y": ["p", "q"]})
    result = roundtrip(batch)
    assert isinstance(result, pa.RecordBatch)
    assert result.equals(batch)


def test_empty_arrow_batch_roundtrip() -> None:
    batch = pa.record_batch({"x": pa.array([], type=pa.int64())})
    result = roundtrip(batch)
    assert isinstance(result, pa.RecordBatch)
    assert result.num_rows == 0
    assert result.schema.equals(batch.schema)


def test_arrow_inside_container_is_pickled() -> None:
    table = pa.table({"x": [1, 2, 3]})
    s = serialize({"t": table})
    assert s.kind == KIND_PICKLE
    result = deserialize(s.to_bytes())
    assert isinstance(result, dict)
    assert result["t"].equals(table)


# ---------------------------------------------------------------------------
# Layout


def test_total_size_write_into_and_to_bytes_agree() -> None:
    s = serialize({"a": np.arange(100), "b": np.ones(7, dtype=np.int8), "c": "x"})
    blob = s.to_bytes()
    assert len(blob) == s.total_size
    dest = bytearray(b"\xaa" * (s.total_size + 100))  # dirty: padding must be zeroed
    assert s.write_into(dest) == s.total_size
    assert bytes(dest[: s.total_size]) == blob
    assert dest[s.total_size :] == b"\xaa" * 100


def test_write_into_rejects_small_or_readonly_destination() -> None:
    s = serialize(np.arange(10))
    with pytest.raises(ValueError):
        s.write_into(bytearray(s.total_size - 1))
    with pytest.raises(ValueError):
        s.write_into(memoryview(bytes(s.total_size)))


def test_regions_are_64_byte_aligned_and_header_documented() -> None:
    s = serialize([np.arange(3, dtype=np.int8), np.arange(5, dtype=np.int16), np.array(1.0)])
    blob = s.to_bytes()
    magic, kind, flags, reserved, nbuffers, payload_off, payload_len = HEADER.unpack_from(blob)
    assert (magic, kind, flags, reserved) == (b"FBO1", KIND_PICKLE, 0, 0)
    assert nbuffers == 3
    assert payload_off % ALIGNMENT == 0
    for i in range(nbuffers):
        off, _ = ENTRY.unpack_from(blob, HEADER_SIZE + i * ENTRY.size)
        assert off % ALIGNMENT == 0
    header = read_header(blob)
    assert header.total_size == len(blob)
    assert header.payload_offset == payload_off
    assert header.payload_len == payload_len


def test_blob_kind() -> None:
    assert blob_kind(serialize(1).to_bytes()) == KIND_PICKLE
    assert blob_kind(serialize(pa.table({"a": [1]})).to_bytes()) == KIND_ARROW
    assert blob_kind(serialize_error(ValueError("x"), "tb").to_bytes()) == KIND_ERROR


def test_inline_threshold() -> None:
    assert INLINE_THRESHOLD == 100 * 1024


# ---------------------------------------------------------------------------
# Zero copy


def test_numpy_deserialize_shares_memory_with_blob() -> None:
    arr = np.arange(4096, dtype=np.float64)
    backing = np.zeros(serialize(arr).total_size, dtype=np.uint8)  # 64-byte aligned memory
    serialize(arr).write_into(backing.data)
    view = backing.data.toreadonly()
    result = deserialize(view)
    assert isinstance(result, np.ndarray)
    low, high = address_range(view)
    assert low <= array_address(result) and array_address(result) + result.nbytes <= high
    assert not result.flags.writeable
    np.testing.assert_array_equal(result, arr)


def test_arrow_deserialize_shares_memory_with_blob() -> None:
    table = pa.table({"x": pa.array(np.arange(10_000, dtype=np.int64))})
    s = serialize(table)
    backing = np.zeros(s.total_size, dtype=np.uint8)
    s.write_into(backing.data)
    view = backing.data.toreadonly()
    result = deserialize(view)
    assert isinstance(result, pa.Table)
    low, high = address_range(view)
    data_buffer = result.column("x").chunk(0).buffers()[1]
    assert low <= data_buffer.address and data_buffer.address + data_buffer.size <= high


# ---------------------------------------------------------------------------
# Contained references


def test_contained_refs_in_order_without_duplicates() -> None:
    a, b, c = b"a" * 20, b"b" * 20, b"c" * 20
    ref_a = FakeRef(a)
    value = {"first": ref_a, "again": ref_a, "list": [FakeRef(b), FakeRef(a), FakeRef(c)]}
    s = serialize(value)
    assert s.contained_refs == [a, b, c]
    result = deserialize(s.to_bytes())
    assert isinstance(result, dict)
    assert result["list"][2].object_id == c


def test_no_refs_and_outside_serialize_is_noop() -> None:
    note_contained_ref(b"x" * 20)  # no collector open: must not fail or leak
    assert serialize([1, 2]).contained_refs == []


def test_nested_serialize_keeps_collectors_apart() -> None:
    inner_refs: list[list[bytes]] = []

    class Wrapper:
        def __reduce__(self) -> tuple[Any, ...]:
            inner = serialize(FakeRef(b"i" * 20))
            inner_refs.append(inner.contained_refs)
            return (list, ([inner.to_bytes()],))

    s = serialize([FakeRef(b"o" * 20), Wrapper()])
    assert s.contained_refs == [b"o" * 20]
    assert inner_refs == [[b"i" * 20]]


def test_contained_refs_per_thread() -> None:
    results: dict[int, list[bytes]] = {}
    barrier = threading.Barrier(4)

    class Slow:
        def __init__(self, n: int) -> None:
            self.n = n

        def __reduce__(self) -> tuple[Any, ...]:
            # Every thread is inside its own serialize() call at the same moment.
            barrier.wait(timeout=30)
            note_contained_ref(bytes([self.n]) * 20)
            return (int, (self.n,))

    def work(n: int) -> None:
        results[n] = serialize([Slow(n)]).contained_refs

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [bytes([n]) * 20] for n in range(4)}


# ---------------------------------------------------------------------------
# Serialization failures


def test_unpicklable_value_raises_serialization_error_naming_type() -> None:
    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    with pytest.raises(SerializationError) as info:
        serialize(Holder())
    message = str(info.value)
    assert "Holder" in message
    assert "lock" in message
    assert isinstance(info.value, FabricError)
    assert info.value.__cause__ is not None


def test_refs_collector_closed_after_failure() -> None:
    with pytest.raises(SerializationError):
        serialize([FakeRef(b"z" * 20), threading.Lock()])
    assert serialize([1]).contained_refs == []


def test_function_roundtrip() -> None:
    base = 10

    def f(x: int) -> int:
        return x + base

    data = dumps_function(f)
    assert isinstance(data, bytes)
    g = loads_function(data)
    assert g(5) == 15  # type: ignore[operator]


def test_function_failures() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(SerializationError):
        dumps_function(uses_lock)
    with pytest.raises(SerializationError):
        loads_function(b"definitely not a pickle")


# ---------------------------------------------------------------------------
# Malformed blobs


def valid_blob() -> bytes:
    return serialize([np.arange(10), np.arange(3, dtype=np.int8)]).to_bytes()


def patch_header(blob: bytes, **fields: int | bytes) -> bytes:
    names = ["magic", "kind", "flags", "reserved", "nbuffers", "payload_offset", "payload_len"]
    values = dict(zip(names, HEADER.unpack_from(blob), strict=True))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + blob[HEADER_SIZE:]


def patch_entry(blob: bytes, index: int, offset: int, length: int) -> bytes:
    out = bytearray(blob)
    ENTRY.pack_into(out, HEADER_SIZE + index * ENTRY.size, offset, length)
    return bytes(out)


def entries(blob: bytes) -> list[tuple[int, int]]:
    n = HEADER.unpack_from(blob)[4]
    return [ENTRY.unpack_from(blob, HEADER_SIZE + i * ENTRY.size) for i in range(n)]


def malformed_blobs() -> dict[str, bytes]:
    blob = valid_blob()
    (off0, len0), (off1, len1) = entries(blob)
    payload_offset = HEADER.unpack_from(blob)[5]
    return {
        "empty": b"",
        "truncated header": blob[: HEADER_SIZE - 1],
        "header only": blob[:HEADER_SIZE],
        "truncated body": blob[:-1],
        "bad magic": patch_header(blob, magic=b"FBO2"),
        "unknown kind": patch_header(blob, kind=9),
        "unknown flags": patch_header(blob, flags=0x80),
        "reserved set": patch_header(blob, reserved=1),
        "huge nbuffers": patch_header(blob, nbuffers=0xFFFFFFFF),
        "payload past end": patch_header(blob, payload_len=len(blob)),
        "payload offset huge": patch_header(blob, payload_offset=2**64 - 64),
        "payload misaligned": patch_header(blob, payload_offset=payload_offset + 1),
        "buffer past end": patch_entry(blob, 1, off1, len(blob)),
        "buffer offset huge": patch_entry(blob, 0, 2**64 - 64, len0),
        "buffer misaligned": patch_entry(blob, 0, off0 + 8, len0),
        "buffers overlap": patch_entry(blob, 1, off0, len1),
        "buffer over payload": patch_entry(blob, 0, payload_offset, len0),
        "buffer gap": patch_entry(blob, 0, off0 + 64, len0 - 64),
        "trailing bytes": blob + bytes(64),
        "fewer buffers than pickle needs": patch_header(blob, nbuffers=1)[: off0 + len0],
        "garbage pickle": Serialized(kind=KIND_PICKLE, payload=b"\xff" * 8).to_bytes(),
    }


@pytest.mark.parametrize("name", sorted(malformed_blobs()))
def test_malformed_blob_raises_serialization_error(name: str) -> None:
    blob = malformed_blobs()[name]
    with pytest.raises(SerializationError):
        deserialize(blob)


def test_arrow_blob_with_buffers_is_rejected() -> None:
    arrow = serialize(pa.table({"a": [1]}))
    forged = Serialized(kind=KIND_ARROW, payload=arrow.payload, buffers=[memoryview(b"x")])
    with pytest.raises(SerializationError):
        deserialize(forged.to_bytes())


def test_corrupt_arrow_payload_is_rejected() -> None:
    forged = Serialized(kind=KIND_ARROW, payload=b"\x00" * 100)
    with pytest.raises(SerializationError):
        deserialize(forged.to_bytes())


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_header_fuzz_only_ever_raises_serialization_error(data: st.DataObject) -> None:
    blob = bytearray(valid_blob())
    table_end = HEADER_SIZE + 2 * ENTRY.size
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, table_end - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        deserialize(bytes(blob[:cut]))
    except SerializationError:
        pass


# ---------------------------------------------------------------------------
# Error blobs


def test_error_roundtrip() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        s = serialize_error(exc, "Traceback: line 1")
    assert s.kind == KIND_ERROR
    result = deserialize(s.to_bytes())
    assert isinstance(result, ErrorPayload)
    assert isinstance(result.exc, KeyError)
    assert result.exc.args == ("missing",)
    assert result.traceback_text == "Traceback: line 1"


def test_custom_exception_roundtrip() -> None:
    class Custom(Exception):
        def __init__(self, code: int) -> None:
            super().__init__(code)
            self.code = code

    result = deserialize(serialize_error(Custom(7), "tb").to_bytes())
    assert isinstance(result, ErrorPayload)
    assert type(result.exc).__name__ == "Custom"
    assert result.exc.code == 7  # type: ignore[attr-defined]


def test_unpicklable_exception_yields_substitute() -> None:
    class HoldsLock(Exception):
        def __init__(self) -> None:
            super().__init__("lock trouble")
            self.lock = threading.Lock()

    result = deserialize(serialize_error(HoldsLock(), "remote tb").to_bytes())
    assert isinstance(result, ErrorPayload)
    assert isinstance(result.exc, UnserializableError)
    assert isinstance(result.exc, RuntimeError)
    assert "HoldsLock" in result.exc.type_name
    assert result.exc.message == "lock trouble"
    assert result.exc.traceback_text == "remote tb"
    assert "HoldsLock" in str(result.exc) and "lock trouble" in str(result.exc)
    assert result.traceback_text == "remote tb"


def test_exception_that_cannot_be_rebuilt_yields_substitute() -> None:
    class TwoArgs(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}-{b}")  # args has one element, __init__ wants two

    result = deserialize(serialize_error(TwoArgs(1, 2), "tb").to_bytes())
    assert isinstance(result, ErrorPayload)
    assert isinstance(result.exc, UnserializableError)
    assert result.exc.message == "1-2"


def test_exception_with_broken_str() -> None:
    class BadStr(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    result = deserialize(serialize_error(BadStr(), "tb").to_bytes())
    assert isinstance(result, ErrorPayload)
    assert type(result.exc).__name__ == "BadStr"


def test_error_blob_unloadable_here_falls_back_to_summary() -> None:
    summary = json.dumps({"type": "mod.Gone", "message": "m", "traceback": "t"}).encode()
    # A pickle referring to a module that does not exist on this side.
    payload = b"\x80\x05cno_such_module_xyz\nGone\n)R."
    s = Serialized(kind=KIND_ERROR, payload=payload, buffers=[memoryview(summary)])
    result = deserialize(s.to_bytes())
    assert isinstance(result, ErrorPayload)
    assert isinstance(result.exc, UnserializableError)
    assert (result.exc.type_name, result.exc.message, result.traceback_text) == (
        "mod.Gone",
        "m",
        "t",
    )


def test_error_blob_without_summary_is_malformed() -> None:
    s = Serialized(kind=KIND_ERROR, payload=pickle.dumps((ValueError(), "t")))
    with pytest.raises(SerializationError):
        deserialize(s.to_bytes())
    bad = Serialized(kind=KIND_ERROR, payload=b"x", buffers=[memoryview(b"not json")])
    with pytest.raises(SerializationError):
        deserialize(bad.to_bytes())


def test_substitute_pickles() -> None:
    sub = UnserializableError("a.B", "msg", "tb")
    back = pickle.loads(pickle.dumps(sub))
    assert (back.type_name, back.message, back.traceback_text) == ("a.B", "msg", "tb")
