"""The sequencer: one writer that orders entries, extends the Merkle tree and signs checkpoints.

Every node records its decisions as entries with ids of its own choosing and forwards them;
:meth:`AuditLog.append` gives each new id the next seq, stores the entries with the subtree
hashes they complete in one durable transaction, and only then answers. Forwarding is
idempotent: an id the log already holds gets its existing seq back and is not stored again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._bundle import ProofBundle, check_proof
from ._checkpoint import Checkpoint, encode_vkey, sign_checkpoint, verify_checkpoint
from ._entry import Entry, encode, sequenced
from ._errors import (
    CheckpointError,
    EntryError,
    ProofError,
    ProofUnavailableError,
    StoreError,
)
from ._merkle import CompactRange, TreeNode, inclusion_proof_from, leaf_hash, root_hash_from
from ._query import Query, explain, run_query
from ._store import AuditStore


class AuditLog:
    """The audit log over `store`, signing checkpoints as `origin` with `signing_key`.

    Opening restores the tree's frontier from the store (:meth:`CompactRange.restore`) and
    checks the store's newest checkpoint against this origin, key and the stored tree; a
    store that fails raises :class:`StoreError`. Thread-safe; closing closes the store.
    """

    def __init__(
        self, store: AuditStore, origin: str, signing_key: Ed25519PrivateKey, key_name: str
    ) -> None:
        self._store = store
        self._origin = origin
        self._key = signing_key
        self._key_name = key_name
        self._vkey = encode_vkey(key_name, signing_key.public_key())
        self._lock = threading.Lock()
        Checkpoint(origin, 0, bytes(32))  # fails now if the origin cannot head a checkpoint
        self._range = CompactRange.restore(store.size(), store.node_hash)
        latest = store.latest_checkpoint()
        if latest is not None:
            self._check_own(*latest)

    def _check_own(self, size: int, text: str) -> None:
        try:
            checkpoint = verify_checkpoint(text, self._key_name, self._key.public_key())
        except CheckpointError as error:
            raise StoreError(f"the store's newest checkpoint is not this log's: {error}") from None
        if checkpoint.origin != self._origin or checkpoint.size != size:
            raise StoreError(
                f"the store's newest checkpoint is of log {checkpoint.origin!r} at size "
                f"{checkpoint.size}, stored for size {size}; this log is {self._origin!r}"
            )
        if size > self._range.size:
            raise StoreError(f"the store holds {self._range.size} entries, its checkpoint {size}")
        if root_hash_from(size, self._store.node_hash) != checkpoint.root_hash:
            raise StoreError(f"the stored tree disagrees with the checkpoint of size {size}")

    # --- writing --------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """The seq of each entry, once the new ones are durably stored.

        Entries whose id the log already holds (or that repeat an id earlier in `entries`) are
        not stored again and get that id's seq; one with the same id but other content raises
        :class:`EntryError` and nothing is stored. The `seq` the entries carry is ignored.
        """
        for entry in entries:
            if not isinstance(entry, Entry):
                raise TypeError(f"the log appends Entry values, not {type(entry).__name__}")
        unsequenced = [e if e.seq == -1 else replace(e, seq=-1) for e in entries]
        return self._append([(e.id, encode(e)) for e in unsequenced])

    def append_canonical(self, records: Sequence[tuple[str, bytes]]) -> list[int]:
        """:meth:`append` for entries a sequencer received as bytes: each pair is an entry's id
        and its canonical unsequenced bytes (seq -1), already checked (the head checks them
        with :func:`fabric.audit._entry.unsequenced_origin`), so the log writes the seq into
        the bytes and decodes nothing."""
        for entry_id, data in records:
            if not isinstance(entry_id, str) or not isinstance(data, bytes):
                raise TypeError("the log appends (id, canonical bytes) pairs")
        return self._append(records)

    def _append(self, records: Sequence[tuple[str, bytes]]) -> list[int]:
        with self._lock:
            known = self._store.seqs_of(list({entry_id for entry_id, _ in records}))
            for entry_id, unsequenced in records:
                if entry_id in known:
                    _require_same(entry_id, known[entry_id], unsequenced, self._store)
            seqs: list[int] = []
            batch: dict[str, tuple[int, bytes]] = {}
            rows: list[tuple[int, str, bytes]] = []
            nodes: list[TreeNode] = []
            next_seq = self._range.size
            try:
                for entry_id, unsequenced in records:
                    if entry_id in known:
                        seqs.append(known[entry_id])
                    elif entry_id in batch:
                        seq, held = batch[entry_id]
                        if held != unsequenced:
                            raise EntryError(
                                f"entry {entry_id!r} is already in the log (seq {seq}) with "
                                "other content"
                            )
                        seqs.append(seq)
                    else:
                        data = sequenced(unsequenced, next_seq)
                        nodes += self._range.append(leaf_hash(data))
                        rows.append((next_seq, entry_id, data))
                        batch[entry_id] = (next_seq, unsequenced)
                        seqs.append(next_seq)
                        next_seq += 1
                if rows:
                    self._store.append(rows, nodes)
            except BaseException:
                # Nothing was stored: the frontier goes back to what the store holds.
                self._range = CompactRange.restore(self._store.size(), self._store.node_hash)
                raise
            return seqs

    @property
    def unindexed(self) -> int:
        """Entries stored but not yet in the query indexes (see :meth:`index`)."""
        with self._lock:
            return self._store.unindexed()

    def index(self, limit: int | None = None) -> int:
        """Bring the query indexes forward over at most `limit` entries (all when None);
        returns how many remain. Queries bring them up to date first themselves, so this
        only chooses when the work is done: at a quiet moment rather than at the query."""
        with self._lock:
            return self._store.index(limit)

    def checkpoint(self) -> str:
        """Sign, durably store and return a checkpoint of the log's current size."""
        with self._lock:
            size, root = self._range.size, self._range.root()
            text = sign_checkpoint(Checkpoint(self._origin, size, root), self._key_name, self._key)
            self._store.add_checkpoint(size, text)
            return text

    # --- reading --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._range.size

    def root(self) -> bytes:
        """The root hash of all entries appended so far (RFC 9162 section 2.1.1)."""
        with self._lock:
            return self._range.root()

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def vkey(self) -> str:
        """The verifier key with which anyone checks this log's checkpoints and proofs."""
        return self._vkey

    def latest_checkpoint(self) -> str | None:
        with self._lock:
            latest = self._store.latest_checkpoint()
        return None if latest is None else latest[1]

    def query(self, query: Query) -> Iterator[Entry]:
        """The entries matching `query`, in seq order, read a page at a time."""
        return run_query(_Locked(self._store, self._lock), query)

    def explain(self, task: str) -> list[Entry]:
        """The provenance chain of `task`, in seq order: every entry about the task and,
        following ``parent`` links upward, the entries of the tasks it descends from."""
        return explain(_Locked(self._store, self._lock), task)

    def prove(self, seq: int) -> ProofBundle:
        """A bundle proving entry `seq` against the newest checkpoint, checkable offline.

        :class:`ProofUnavailableError` if there is no such entry or no checkpoint covers it
        yet (call :meth:`checkpoint` first). The log checks the bundle before handing it out:
        one that does not verify means the store was tampered with (:class:`StoreError`).
        """
        with self._lock:
            latest = self._store.latest_checkpoint()
            if not 0 <= seq < self._range.size:
                raise ProofUnavailableError(f"the log has no entry {seq}")
            if latest is None or seq >= latest[0]:
                raise ProofUnavailableError(f"no checkpoint covers entry {seq} yet")
            size, text = latest
            data = self._store.entry_data(seq)
            # RFC 9162 section 2.1.3.1: PATH(seq, D[size]), from the stored subtrees.
            proof = inclusion_proof_from(seq, size, self._store.node_hash)
        if data is None:
            raise StoreError(f"entry {seq} is missing from the store")
        bundle = ProofBundle(data, seq, size, tuple(proof), text, self._vkey)
        try:
            check_proof(bundle, self._vkey, origin=self._origin)
        except ProofError as error:
            raise StoreError(f"the store cannot prove entry {seq}: {error}") from error
        return bundle

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _require_same(entry_id: str, seq: int, unsequenced: bytes, store: AuditStore) -> None:
    """The entry `entry_id`, held at `seq`, must be the one in `unsequenced` (the canonical
    encoding is unique, so equal entries are equal bytes)."""
    held = store.entry_data(seq)
    if held is None:
        raise StoreError(f"entry {entry_id!r} vanished from the store")
    if sequenced(unsequenced, seq) != held:
        raise EntryError(f"entry {entry_id!r} is already in the log (seq {seq}) with other content")


class _Locked:
    """The store's read side, each call under the log's lock (queries page between appends)."""

    def __init__(self, store: AuditStore, lock: threading.Lock) -> None:
        self._store, self._lock = store, lock

    def select(self, query: Query) -> list[tuple[int, bytes]]:
        with self._lock:
            return self._store.select(query)

    def time_bounds(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        with self._lock:
            return self._store.time_bounds(since, until)

    def select_ids(self, ids: Sequence[str]) -> list[tuple[int, bytes]]:
        with self._lock:
            return self._store.select_ids(ids)
