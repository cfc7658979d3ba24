"""The agent's audit journal: decisions are durable here before they are acted on, and stay
here until the head's sequencer has acknowledged them.

A journal is one append-only file of records (4-byte big-endian length, then an entry's
canonical bytes) and a small file holding how many records the head has acknowledged.
Appends are buffered; `sync` writes what is buffered and flushes it to the disk, once for
however many entries arrived since the last one (group commit). The file is allocated ahead
in large steps, so a commit is one write and one `fdatasync` with no metadata to update; a
zero length marks the end of the records. A record torn by a crash is cut off when the
journal is opened again; everything before it is kept. Forwarding is idempotent (the
head knows entries by id), so records sent but not yet acknowledged when a crash came are
simply sent again.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
MAX_RECORD = 1 << 20
JOURNAL = "audit.journal"
ACKED = "audit.acked"
ACK_SAVE_INTERVAL = 0.5  # seconds
COMPACT_AT = 64 << 20  # bytes: start a new file once everything in it is acknowledged
ALLOCATE = 16 << 20  # bytes allocated ahead


class Journal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / JOURNAL
        records = _recover(self.path)
        self._end = sum(_LENGTH.size + len(r) for r in records)  # where the next goes
        # Indexes are absolute: `file_base` is the index of the file's first record (older
        # ones were compacted away), `mem_base` that of the first still held in memory
        # (acknowledged ones are dropped).
        self.file_base = 0
        self.acked = min(_read_acked(directory / ACKED), len(records))
        self.mem_base = self.acked
        self._records = records[self.acked :]
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._allocated = os.fstat(self._fd).st_size
        self._buffer: list[bytes] = []
        self.synced = len(records)  # records durable on disk (absolute index)
        self._ack_saved = 0.0

    @property
    def size(self) -> int:
        return self.mem_base + len(self._records)

    @property
    def dirty(self) -> bool:
        return bool(self._buffer)

    def append(self, data: bytes) -> int:
        """Buffer one record; returns its index. Durable once `sync` has returned."""
        if len(data) > MAX_RECORD:
            raise ValueError(f"an audit record of {len(data)} bytes is too large")
        self._buffer.append(data)
        self._records.append(data)
        return self.size - 1

    def take(self) -> tuple[list[bytes], int]:
        """The buffered records and the index durable once they are written; the caller
        passes them to `write` (which may run on another thread), then `mark_synced`."""
        chunks, self._buffer = self._buffer, []
        return chunks, self.size

    def write(self, chunks: list[bytes]) -> None:
        """Append `chunks` and flush them to the disk (one flush for all). Touches only the
        file; one caller at a time."""
        if not chunks:
            return
        data = b"".join(_LENGTH.pack(len(c)) + c for c in chunks)
        if self._end + len(data) + _LENGTH.size > self._allocated:
            grow = max(ALLOCATE, len(data) + _LENGTH.size)
            os.posix_fallocate(self._fd, self._allocated, grow)
            self._allocated += grow
            os.fsync(self._fd)  # the new size is metadata: once per step, not per commit
        os.pwrite(self._fd, data, self._end)
        os.fdatasync(self._fd)
        self._end += len(data)

    def mark_synced(self, upto: int) -> None:
        self.synced = max(self.synced, upto)

    def sync(self) -> None:
        """Write and fsync every buffered record, here and now."""
        chunks, upto = self.take()
        self.write(chunks)
        self.mark_synced(upto)

    def pending(self, limit: int) -> tuple[int, list[bytes]]:
        """(first index, records) durable but not acknowledged, at most `limit`."""
        start = self.acked
        end = min(self.synced, start + limit)
        return start, self._records[start - self.mem_base : end - self.mem_base]

    def acknowledge(self, upto: int) -> None:
        """The head has every record before absolute index `upto`."""
        if upto <= self.acked:
            return
        self.acked = upto
        # Saved at most every ACK_SAVE_INTERVAL: after a crash, what was acknowledged since
        # is sent again, and the head, knowing the ids, stores it once.
        now = time.monotonic()
        if now - self._ack_saved >= ACK_SAVE_INTERVAL or upto == self.size:
            self._ack_saved = now
            _write_acked(self.directory / ACKED, upto - self.file_base)
        del self._records[: upto - self.mem_base]
        self.mem_base = upto
        if self.acked == self.size == self.synced and self._end >= COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path.with_suffix(".old"))
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._end = self._allocated = 0
        _write_acked(self.directory / ACKED, 0)
        self.path.with_suffix(".old").unlink()
        self.file_base = self.size  # everything before was acknowledged and is dropped

    def close(self) -> None:
        self.sync()
        os.close(self._fd)


def _recover(path: Path) -> list[bytes]:
    records: list[bytes] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    offset = 0
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        end = offset + _LENGTH.size + length
        if length == 0 or length > MAX_RECORD or end > len(data):
            break  # the end of the records (allocated space is zeros), or a torn one
        records.append(data[offset + _LENGTH.size : end])
        offset = end
    if any(data[offset:]):
        log.warning("audit journal %s: cutting a torn record at byte %d", path, offset)
    with open(path, "r+b") as f:
        # Whatever follows the last whole record goes (a torn record, allocated zeros).
        f.truncate(offset)
        os.fsync(f.fileno())
    return records


def _read_acked(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_acked(path: Path, count: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(count))
    os.replace(tmp, path)
