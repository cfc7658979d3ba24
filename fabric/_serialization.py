"""Values to self-describing byte blobs ("object blobs") and back, without copying.

An object has exactly one encoding, whether it travels inline inside a protobuf
message or lives as a file in a node's shared-memory store. Readers of a store file
map it read-only and deserialize straight from the mapping, so numpy arrays and Arrow
tables come back as views of shared memory rather than copies.

Blob layout
-----------
All integers are little-endian; all offsets are counted from the start of the blob::

    offset  size  field
    0       4     magic            b"FBO1"
    4       1     kind             0 = pickle protocol 5, 1 = Arrow IPC stream, 2 = error
    5       1     flags            kind 1: bit 0 set = the value was a RecordBatch
                                   (otherwise a Table); must be 0 for other kinds
    6       2     reserved         must be 0
    8       4     nbuffers
    12      8     payload_offset
    20      8     payload_len
    28      16*n  buffer table: nbuffers x (u64 offset, u64 len)

The payload follows the buffer table, then the buffers in table order. The payload
and every buffer start at a multiple of 64 bytes (the alignment numpy and Arrow want
for SIMD access), each one at the first aligned offset after the end of the previous
region, with zero padding in between. The blob ends exactly where the last region
ends. Readers accept only this canonical layout, which rules out overlapping regions,
gaps that could hide data and trailing garbage in a single comparison.

What the payload and buffers hold depends on the kind:

* kind 0 -- the payload is a pickle (protocol 5) stream; the buffers are its
  out-of-band buffers, in the order the pickler produced them.
* kind 1 -- the payload is an Arrow IPC stream holding one Table or RecordBatch;
  there are no buffers.
* kind 2 -- the payload is a pickle of ``(exception, traceback_text)`` with every
  buffer in-band; there is exactly one buffer, a UTF-8 JSON summary
  ``{"type", "message", "traceback"}`` that keeps the error readable on a node that
  cannot unpickle the exception (its class is not importable there, say).
"""

from __future__ import annotations

import contextvars
import errno
import io
import json
import mmap
import os
import pickle
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from fabric.exceptions import FabricError

__all__ = [
    "ALIGNMENT",
    "HEADER_SIZE",
    "INLINE_THRESHOLD",
    "KIND_ARROW",
    "KIND_ERROR",
    "KIND_PICKLE",
    "MAGIC",
    "BlobHeader",
    "BlobLike",
    "ErrorPayload",
    "SerializationError",
    "Serialized",
    "UnserializableError",
    "blob_kind",
    "deserialize",
    "dumps_function",
    "loads_function",
    "note_contained_ref",
    "read_header",
    "serialize",
    "serialize_error",
]

KIND_PICKLE = 0
KIND_ARROW = 1
KIND_ERROR = 2
_KINDS = (KIND_PICKLE, KIND_ARROW, KIND_ERROR)

FLAG_RECORD_BATCH = 0x01
_ALLOWED_FLAGS = {KIND_PICKLE: 0, KIND_ARROW: FLAG_RECORD_BATCH, KIND_ERROR: 0}

INLINE_THRESHOLD = 100 * 1024
"""Blobs of at most this many bytes travel inline in messages; larger ones go to the store."""

MAGIC = b"FBO1"
ALIGNMENT = 64

_HEADER = struct.Struct("<4sBBHIQQ")
_ENTRY = struct.Struct("<QQ")
HEADER_SIZE = _HEADER.size

# Linux moves at most about 2 GiB per write(2); 1 GiB pieces keep each call whole.
_MAX_WRITE = 1 << 30


class SerializationError(FabricError):
    """A value could not be turned into a blob, or a blob could not be read back."""


class UnserializableError(RuntimeError):
    """Stands in for a remote exception that could not be pickled or unpickled.

    It keeps what a human needs -- the original type name, message and remote
    traceback -- so that an error is never lost on its way back to the caller.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


@dataclass
class ErrorPayload:
    """What :func:`deserialize` returns for an error blob; the caller decides how to raise."""

    exc: BaseException
    traceback_text: str


@dataclass(frozen=True)
class BlobHeader:
    """A validated blob header: where each region lives and how big the blob is."""

    kind: int
    flags: int
    payload_offset: int
    payload_len: int
    buffers: tuple[tuple[int, int], ...]
    total_size: int


BlobLike = bytes | bytearray | memoryview | mmap.mmap
"""Anything a blob can be read from: bytes, a view, or a mapping of a store file."""


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def _layout(payload_len: int, buffer_lens: list[int]) -> tuple[int, list[int], int]:
    """Canonical (payload_offset, buffer offsets, total size) for these region sizes."""
    payload_offset = _align(HEADER_SIZE + _ENTRY.size * len(buffer_lens))
    end = payload_offset + payload_len
    offsets = []
    for n in buffer_lens:
        start = _align(end)
        offsets.append(start)
        end = start + n
    return payload_offset, offsets, end


def _as_bytes_view(data: object) -> memoryview:
    view = memoryview(data)  # type: ignore[arg-type]
    if view.ndim != 1 or view.format != "B" or view.itemsize != 1:
        view = view.cast("B")
    return view


@dataclass
class Serialized:
    """A value ready to be laid out as a blob, holding its buffers by reference."""

    kind: int
    payload: bytes | memoryview
    buffers: list[memoryview] = field(default_factory=list)
    contained_refs: list[bytes] = field(default_factory=list)
    flags: int = 0

    def _segments(self) -> tuple[bytes, list[tuple[int, bytes | memoryview]], int]:
        """The packed header and table, the (offset, data) regions, and the total size."""
        lens = [b.nbytes for b in self.buffers]
        payload_len = memoryview(self.payload).nbytes
        payload_offset, offsets, total = _layout(payload_len, lens)
        header = bytearray(_HEADER.size + _ENTRY.size * len(lens))
        _HEADER.pack_into(
            header, 0, MAGIC, self.kind, self.flags, 0, len(lens), payload_offset, payload_len
        )
        for i, (off, n) in enumerate(zip(offsets, lens, strict=True)):
            _ENTRY.pack_into(header, _HEADER.size + i * _ENTRY.size, off, n)
        regions: list[tuple[int, bytes | memoryview]] = [(payload_offset, self.payload)]
        regions.extend(zip(offsets, self.buffers, strict=True))
        return bytes(header), regions, total

    @property
    def total_size(self) -> int:
        """Exact size of the blob :meth:`write_into` produces."""
        lens = [b.nbytes for b in self.buffers]
        return _layout(memoryview(self.payload).nbytes, lens)[2]

    def write_into(self, dest: memoryview | bytearray) -> int:
        """Lay the blob out at the start of ``dest``; return the number of bytes written."""
        out = _as_bytes_view(dest)
        header, regions, total = self._segments()
        if out.nbytes < total:
            raise ValueError(f"destination holds {out.nbytes} bytes, the blob needs {total}")
        if out.readonly:
            raise ValueError("destination is read-only")
        out[: len(header)] = header
        pos = len(header)
        for off, data in regions:
            # The destination may be recycled memory: padding must not leak old bytes.
            out[pos:off] = bytes(off - pos)
            view = _as_bytes_view(data)
            out[off : off + view.nbytes] = view
            pos = off + view.nbytes
        return total

    def write_to_fd(self, fd: int) -> int:
        """Write the blob into an empty regular file; return its size.

        Meant for files on tmpfs: ``pwrite`` lets the kernel copy straight from the
        value's buffers into the page cache, which measures about twice as fast as
        faulting in a fresh shared mapping and copying into it. Padding is left as
        holes, which read back as zeros.
        """
        header, regions, total = self._segments()
        os.ftruncate(fd, total)
        _pwrite_all(fd, memoryview(header), 0)
        for off, data in regions:
            _pwrite_all(fd, _as_bytes_view(data), off)
        return total

    def to_bytes(self) -> bytes:
        """The whole blob as one ``bytes`` object (for inline transport)."""
        header, regions, _ = self._segments()
        parts: list[bytes | memoryview] = [header]
        pos = len(header)
        for off, data in regions:
            parts.append(bytes(off - pos))
            view = _as_bytes_view(data)
            parts.append(view)
            pos = off + view.nbytes
        return b"".join(parts)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset``, however many calls that takes."""
    done = 0
    n = data.nbytes
    while done < n:
        written = os.pwrite(fd, data[done : done + _MAX_WRITE], offset + done)
        if written <= 0:
            raise OSError(errno.EIO, f"pwrite wrote {written} bytes")
        done += written


# ---------------------------------------------------------------------------
# Contained references

_ref_collector: contextvars.ContextVar[dict[bytes, None] | None] = contextvars.ContextVar(
    "fabric_contained_refs", default=None
)


def note_contained_ref(object_id: bytes) -> None:
    """Record that an ``ObjectRef`` with this id is being pickled.

    ``ObjectRef.__reduce__`` calls this so that :func:`serialize` can report which
    objects a value keeps alive. Outside :func:`serialize` it does nothing.
    """
    collector = _ref_collector.get()
    if collector is not None:
        collector[bytes(object_id)] = None


# ---------------------------------------------------------------------------
# Serialization


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _is_arrow_tabular(value: object) -> bool:
    # A value can only be a pyarrow object if pyarrow is already imported, so this
    # keeps serializing plain values from paying for the pyarrow import.
    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(value, (pa.Table, pa.RecordBatch))


def _serialize_arrow(value: Any) -> Serialized:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, value.schema) as writer:
        writer.write(value)
    flags = FLAG_RECORD_BATCH if isinstance(value, pa.RecordBatch) else 0
    return Serialized(kind=KIND_ARROW, payload=memoryview(sink.getvalue()), flags=flags)


def _serialize_pickle(value: object) -> Serialized:
    buffers: list[memoryview] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buf.raw())
        except BufferError:
            # Not contiguous: returning True asks pickle to copy it into the stream.
            return True
        return False

    stream = io.BytesIO()
    cloudpickle.CloudPickler(stream, protocol=5, buffer_callback=keep_out_of_band).dump(value)
    return Serialized(kind=KIND_PICKLE, payload=stream.getvalue(), buffers=buffers)


def serialize(value: object) -> Serialized:
    """Encode ``value``; raise :class:`SerializationError` naming its type on failure.

    Top-level pyarrow Tables and RecordBatches become Arrow IPC streams; anything
    else is pickled (protocol 5, via cloudpickle so lambdas, closures and locally
    defined classes work) with large contiguous buffers kept out-of-band, by
    reference, rather than copied into the stream.
    """
    collector: dict[bytes, None] = {}
    token = _ref_collector.set(collector)
    try:
        if _is_arrow_tabular(value):
            result = _serialize_arrow(value)
        else:
            result = _serialize_pickle(value)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize a value of type {_type_name(value)}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _ref_collector.reset(token)
    result.contained_refs = list(collector)
    return result


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__} object>"


def serialize_error(exc: BaseException, traceback_text: str) -> Serialized:
    """Encode an exception and its remote traceback as an error blob.

    If the exception cannot be pickled, or its pickle cannot be loaded back (a
    common case: an ``__init__`` with required arguments that ``args`` does not
    carry), an :class:`UnserializableError` with the same type name, message and
    traceback takes its place.
    """
    type_name = _type_name(exc)
    message = _safe_str(exc)
    summary = json.dumps(
        {"type": type_name, "message": message, "traceback": traceback_text}
    ).encode()
    try:
        payload = cloudpickle.dumps((exc, traceback_text), protocol=5)
        # Loading it here, where the exception's class is certainly importable,
        # catches exceptions that pickle fine but cannot be rebuilt.
        loaded = pickle.loads(payload)
        if not (isinstance(loaded, tuple) and isinstance(loaded[0], BaseException)):
            raise TypeError("the exception did not round-trip")
    except Exception:
        substitute = UnserializableError(type_name, message, traceback_text)
        payload = pickle.dumps((substitute, traceback_text), protocol=5)
    return Serialized(kind=KIND_ERROR, payload=payload, buffers=[memoryview(summary)])


def dumps_function(fn: object) -> bytes:
    """Pickle a function (or class) by value where needed, for shipping to workers."""
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {_type_name(fn)} {getattr(fn, '__qualname__', '')!s}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def loads_function(data: bytes) -> object:
    """Inverse of :func:`dumps_function`."""
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot load function: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------
# Deserialization


def read_header(blob: BlobLike) -> BlobHeader:
    """Parse and strictly validate the header of a complete blob.

    Raises :class:`SerializationError` for anything but a canonical blob whose size
    is exactly ``len(blob)``. Only the header and buffer table are read, so this is
    cheap on a mapped file regardless of its size.
    """
    view = _as_bytes_view(blob)
    size = view.nbytes
    if size < HEADER_SIZE:
        raise SerializationError(f"truncated blob header: {size} bytes, need {HEADER_SIZE}")
    magic, kind, flags, reserved, nbuffers, payload_offset, payload_len = _HEADER.unpack_from(
        view, 0
    )
    if magic != MAGIC:
        raise SerializationError(f"bad blob magic {bytes(magic)!r}")
    if kind not in _KINDS:
        raise SerializationError(f"unknown blob kind {kind}")
    if flags & ~_ALLOWED_FLAGS[kind]:
        raise SerializationError(f"unknown flags {flags:#x} for blob kind {kind}")
    if reserved != 0:
        raise SerializationError("reserved header field is not zero")
    table_end = HEADER_SIZE + _ENTRY.size * nbuffers
    if table_end > size:
        raise SerializationError(
            f"buffer table of {nbuffers} entries runs past the end of a {size}-byte blob"
        )
    buffers = tuple(
        _ENTRY.unpack_from(view, HEADER_SIZE + i * _ENTRY.size) for i in range(nbuffers)
    )
    regions = [("payload", payload_offset, payload_len)]
    regions.extend((f"buffer {i}", off, n) for i, (off, n) in enumerate(buffers))
    for name, off, n in regions:
        if off + n > size:
            raise SerializationError(
                f"{name} [{off}, {off + n}) runs past the end of a {size}-byte blob"
            )
        if off % ALIGNMENT:
            raise SerializationError(f"{name} at offset {off} is not {ALIGNMENT}-byte aligned")
    expected_payload, expected_offsets, total = _layout(payload_len, [n for _, n in buffers])
    previous_end = table_end
    for (name, off, n), expected in zip(
        regions, [expected_payload, *expected_offsets], strict=True
    ):
        if off < previous_end:
            raise SerializationError(f"{name} at offset {off} overlaps the preceding region")
        if off != expected:
            raise SerializationError(
                f"{name} at offset {off} leaves a gap (expected offset {expected})"
            )
        previous_end = off + n
    if total != size:
        raise SerializationError(f"blob has {size - total} bytes after its last region")
    return BlobHeader(kind, flags, payload_offset, payload_len, buffers, total)


def peek_kind(blob: BlobLike) -> int | None:
    """The kind a blob's header names, without validating the rest (None if it has no
    header): for bookkeeping only, never to decide how to read the blob."""
    view = _as_bytes_view(blob)
    if view.nbytes < HEADER_SIZE:
        return None
    magic, kind = _HEADER.unpack_from(view, 0)[:2]
    return kind if magic == MAGIC else None


def blob_kind(blob: BlobLike) -> int:
    """The kind of a blob (after validating its header): one of the ``KIND_*`` constants."""
    return read_header(blob).kind


def _buffer_views(view: memoryview, header: BlobHeader) -> Iterator[memoryview]:
    for off, n in header.buffers:
        yield view[off : off + n]


def _deserialize_arrow(payload: memoryview, flags: int) -> object:
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.py_buffer(payload))
    if flags & FLAG_RECORD_BATCH:
        return reader.read_next_batch()
    return reader.read_all()


def _deserialize_error(view: memoryview, header: BlobHeader) -> ErrorPayload:
    if len(header.buffers) != 1:
        raise SerializationError(
            f"error blob has {len(header.buffers)} buffers, expected 1 (the summary)"
        )
    off, n = header.buffers[0]
    try:
        summary = json.loads(bytes(view[off : off + n]).decode())
        type_name = str(summary["type"])
        message = str(summary["message"])
        traceback_text = str(summary["traceback"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SerializationError(f"malformed error summary: {exc}") from exc
    payload = view[header.payload_offset : header.payload_offset + header.payload_len]
    try:
        loaded = pickle.loads(payload)
        exc_obj, tb = loaded
        if isinstance(exc_obj, BaseException) and isinstance(tb, str):
            return ErrorPayload(exc_obj, tb)
    except Exception:
        pass
    return ErrorPayload(UnserializableError(type_name, message, traceback_text), traceback_text)


def deserialize(blob: BlobLike) -> object:
    """Decode a blob, sharing memory with it wherever the format allows.

    Numpy arrays and Arrow data in the result are views into ``blob`` (read-only if
    ``blob`` is), so the caller must keep nothing else writing to it. Error blobs
    come back as :class:`ErrorPayload`; nothing is raised on their behalf.
    """
    view = _as_bytes_view(blob)
    header = read_header(view)
    if header.kind == KIND_ERROR:
        return _deserialize_error(view, header)
    payload = view[header.payload_offset : header.payload_offset + header.payload_len]
    kind_name = "arrow" if header.kind == KIND_ARROW else "pickle"
    try:
        if header.kind == KIND_ARROW:
            if header.buffers:
                raise SerializationError("arrow blob must not have out-of-band buffers")
            return _deserialize_arrow(payload, header.flags)
        return pickle.loads(payload, buffers=_buffer_views(view, header))
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialize {kind_name} blob: {type(exc).__name__}: {exc}"
        ) from exc
