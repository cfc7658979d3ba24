"""Verifying a stored log from its entries' bytes and the log's public key alone.

Whoever can write the store's file can rewrite anything in it, the stored leaf and subtree
hashes included; only signatures cannot be forged. So :func:`verify_log` recomputes the whole
Merkle tree from the entries' canonical bytes and believes a stored hash only when a signed
root vouches for it: descending from a checkpoint's root, a pair of stored children is
believed when they hash to their (believed) parent. That is what lets it say *which* entry
changed rather than only *that* something did.

Problem kinds, each reported at a seq:

* ``undecodable``: the bytes are not the canonical encoding of an entry.
* ``flipped``: the entry decodes, but is not the one a checkpoint commits to (or, past the
  last checkpoint, not the one whose hash was stored with it).
* ``deleted``: a seq has no entry (a gap), or a run of entries was renumbered to hide one.
* ``inserted``: a run of entries sits later than the seqs they carry, a row beyond the end
  follows a gap, or a row past the last checkpoint has no leaf hash stored with it.
* ``reordered``: entries that only changed places (each carries the seq of another).
* ``truncated``: a stored checkpoint is signed for more entries than the store holds.
* ``checkpoint-replaced``: a stored checkpoint does not verify with the key, is of another
  log or size than its row, or commits to a root that the entries and the stored tree agree
  is not theirs.
* ``rollback``: the store holds fewer entries than the checkpoint the verifier saw last, and
  no stored checkpoint says so (an older copy of the store).
* ``forked``: the store's first entries are not the ones the last-seen checkpoint commits to.
* ``last-seen-invalid``: the verifier's own last-seen checkpoint does not verify.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._checkpoint import Checkpoint, parse_vkey, verify_checkpoint
from ._entry import decode
from ._errors import CheckpointError, EntryError, StoreError
from ._merkle import HASH_SIZE, _children_hash, _split, leaf_hash, root_hash_from, subtree_hash
from ._store import AuditStore


@dataclass(frozen=True)
class Problem:
    kind: str
    seq: int | None
    """Where: an entry's seq, or a checkpoint's size; None for the last-seen checkpoint."""
    detail: str

    def __str__(self) -> str:
        where = "" if self.seq is None else f" at seq {self.seq}"
        return f"{self.kind}{where}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    size: int
    """Entries in the recomputed tree (seqs 0 .. size - 1)."""
    root: bytes
    """The root hash recomputed from the entries' bytes."""
    problems: tuple[Problem, ...]
    checkpoint: str | None
    """What the caller keeps as its last-seen checkpoint from now on: when ``ok``, the newest
    checkpoint that verified (stored or last-seen); otherwise the last-seen checkpoint it
    passed in, unchanged, so that saving it never adopts a tampered history."""
    unsigned: int
    """Entries past the newest checkpoint that verified: only the store vouches for them."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def diagnostics(self) -> str:
        if self.ok:
            return f"ok: {self.size} entries, {self.unsigned} of them past the last checkpoint"
        return "\n".join(str(problem) for problem in self.problems)


def verify_log(
    store: AuditStore,
    vkey: str,
    last_seen_checkpoint: str | None = None,
    *,
    origin: str | None = None,
) -> VerifyReport:
    """Check the whole log in `store` against the key `vkey` and, given the checkpoint the
    verifier saw last (its own copy), against rollback. `origin` defaults to the last-seen
    checkpoint's, else the newest stored one's. O(n) time; about 64 bytes of memory per entry."""
    key_name, public_key = parse_vkey(vkey)
    verifier = _Verifier(store, key_name, public_key, origin)
    last_seen = verifier.open_last_seen(last_seen_checkpoint)
    stored = verifier.open_stored(store.checkpoints())
    verifier.read_entries(
        max([c.size for c, _ in stored] + [last_seen[0].size if last_seen else 0])
    )
    verifier.classify_misplaced()
    verifier.build_tree()
    verifier.check_stored(stored)
    verifier.check_last_seen(last_seen)
    return verifier.report(last_seen_checkpoint)


class _Verifier:
    def __init__(
        self, store: AuditStore, key_name: str, key: Ed25519PublicKey, origin: str | None
    ) -> None:
        self.store, self.key_name, self.key, self.origin = store, key_name, key, origin
        self.problems: list[Problem] = []
        self.flagged = _Ranges()  # seqs a problem already accounts for
        self.leaves = bytearray()
        self.levels: list[bytes] = []
        self.misplaced: dict[int, int] = {}  # row seq -> the seq its entry carries
        self.renumbered = 0  # entries deleted with the later ones renumbered down
        self.truncated = False
        self.signed = 0  # the largest size a valid signature covers
        self.verified: list[tuple[Checkpoint, str]] = []

    def add(self, kind: str, seq: int | None, detail: str, span: int = 1) -> None:
        self.problems.append(Problem(kind, seq, detail))
        if seq is not None and span > 0:
            self.flagged.add(seq, seq + span)

    # --- checkpoints' signatures ----------------------------------------------------------

    def _open(self, text: str) -> Checkpoint:
        checkpoint = verify_checkpoint(text, self.key_name, self.key)
        if self.origin is None:
            self.origin = checkpoint.origin
        if checkpoint.origin != self.origin:
            raise CheckpointError(f"it is of log {checkpoint.origin!r}, not {self.origin!r}")
        return checkpoint

    def open_last_seen(self, text: str | None) -> tuple[Checkpoint, str] | None:
        if text is None:
            return None
        try:
            return self._open(text), text
        except CheckpointError as error:
            self.add("last-seen-invalid", None, f"the last-seen checkpoint: {error}")
            return None

    def open_stored(self, rows: list[tuple[int, str]]) -> list[tuple[Checkpoint, str]]:
        good = []
        for size, text in sorted(rows, reverse=True):  # newest first sets the origin
            try:
                checkpoint = self._open(text)
                if checkpoint.size != size:
                    raise CheckpointError(f"it is signed for {checkpoint.size} entries")
            except CheckpointError as error:
                detail = f"the checkpoint stored for {size} entries does not verify: {error}"
                self.add("checkpoint-replaced", size, detail, span=0)
            else:
                good.append((checkpoint, text))
        return good

    # --- the entries ----------------------------------------------------------------------

    def read_entries(self, signed: int) -> None:
        """Leaf hashes by seq, a missing entry's as zeros: a gap inside the `signed` part is a
        deletion, a gap past it puts every row after it beyond the end."""
        self.signed = signed
        expected, stray, stray_from = 0, 0, 0
        for seq, data in self.store.scan():
            if seq < 0:
                self.add("inserted", seq, "a row at a negative seq", span=0)
                continue
            if stray:
                stray += 1
                continue
            if seq > expected:
                hole_end = min(seq, max(signed, expected))
                if hole_end > expected:
                    detail = f"no entries at seqs {expected}..{hole_end - 1}"
                    self.add("deleted", expected, detail, span=hole_end - expected)
                    self.leaves += bytes(HASH_SIZE) * (hole_end - expected)
                    expected = hole_end
                if seq > expected:
                    stray, stray_from = 1, seq
                    continue
            if not isinstance(data, bytes):  # a value rewritten as another SQL type
                data = str(data).encode()
            self.leaves += leaf_hash(data)
            try:
                entry = decode(data)
            except EntryError as error:
                self.add("undecodable", seq, str(error))
            else:
                if entry.seq != seq:
                    self.misplaced[seq] = entry.seq
            expected = seq + 1
        if stray:
            detail = f"{stray} row(s) from here lie beyond a gap after seq {expected - 1}"
            self.add("inserted", stray_from, f"{detail}, past every checkpoint", span=0)

    def classify_misplaced(self) -> None:
        """Entries that only swapped places close cycles (row r carries seq c, row c carries
        another misplaced seq, ... back to r); a run of rows all off by the same d is a block
        shifted by d rows inserted (d > 0) or deleted (d < 0) before it."""
        state: dict[int, bool] = {}  # False: on the current path; True: done
        cyclic: set[int] = set()
        for start in self.misplaced:
            path, row = [], start
            while row in self.misplaced and row not in state:
                state[row] = False
                path.append(row)
                row = self.misplaced[row]
            if state.get(row) is False:
                cyclic.update(path[path.index(row) :])
            state.update(dict.fromkeys(path, True))
        for row in sorted(cyclic):
            self.add("reordered", row, f"holds the entry of seq {self.misplaced[row]}")
        runs: list[list[int]] = []  # [first row, last row, offset]
        for row in sorted(set(self.misplaced) - cyclic):
            offset = row - self.misplaced[row]
            if runs and runs[-1][1] == row - 1 and runs[-1][2] == offset:
                runs[-1][1] = row
            else:
                runs.append([row, row, offset])
        for first, last, d in runs:
            held = f"rows {first}..{last} hold the entries of seqs {first - d}..{last - d}"
            if d > 0:
                detail = f"{held}: {d} row(s) were inserted at seq {first - d}"
                self.add("inserted", first - d, detail, span=last + 1 - (first - d))
            else:
                detail = f"{held}: {-d} entr(ies) were deleted here, the later ones renumbered"
                self.add("deleted", first, detail, span=last + 1 - first)
                self.renumbered -= d

    # --- the recomputed tree --------------------------------------------------------------

    def build_tree(self) -> None:
        """Every complete subtree hash (RFC 9162 section 2.1.1), level by level."""
        level = bytes(self.leaves)
        self.levels = [level]
        while len(level) >= 2 * HASH_SIZE:
            level = b"".join(
                hashlib.sha256(b"\x01" + level[i : i + 2 * HASH_SIZE]).digest()
                for i in range(0, len(level) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE)
            )
            self.levels.append(level)
        self.leaves = bytearray()  # levels[0] holds them now

    @property
    def size(self) -> int:
        return len(self.levels[0]) // HASH_SIZE

    def _node(self, level: int, index: int) -> bytes:
        return self.levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def _root(self, size: int) -> bytes:
        return root_hash_from(size, self._node)

    def _stored_node(self, level: int, index: int) -> bytes | None:
        try:
            return self.store.node_hash(level, index)
        except StoreError:
            return None

    def _stored(self, start: int, end: int) -> bytes | None:
        try:
            return subtree_hash(start, end, self.store.node_hash)
        except StoreError:
            return None

    # --- checking checkpoints against the tree --------------------------------------------

    def check_stored(self, stored: list[tuple[Checkpoint, str]]) -> None:
        n, descended = self.size, False
        for checkpoint, text in stored:  # newest first
            size = checkpoint.size
            if size > n:
                if not self.truncated and size - n > self.renumbered:
                    self.truncated = True
                    detail = f"a checkpoint is signed for {size} entries, the store holds {n}"
                    self.add("truncated", n, f"{detail}: seqs {n}..{size - 1} are gone", span=0)
            elif self._root(size) == checkpoint.root_hash:
                self.verified.append((checkpoint, text))
            else:
                self._mismatch(checkpoint, descend=not descended)
                descended = True
        if n > self.signed and self._stored(0, n) != self._root(n):
            self._check_unsigned()

    def _mismatch(self, checkpoint: Checkpoint, descend: bool) -> None:
        size, root = checkpoint.size, checkpoint.root_hash
        if size == 0 or self._stored(0, size) == self._root(size):
            detail = (
                f"the entries and the stored tree agree on their root; the checkpoint signed "
                f"for {size} entries commits to another: it was replaced, or every hash was "
                "rewritten with the entries"
            )
            self.add("checkpoint-replaced", size, detail, span=0)
            return
        first = self.flagged.first()
        if not descend and first is not None and first < size:
            return  # a problem found before accounts for it
        for start, end in self._locate(0, size, root):
            if end - start == 1:
                detail = f"not the entry the checkpoint signed for {size} entries commits to"
            else:
                detail = (
                    f"an entry in seqs {start}..{end - 1} is not the one the checkpoint "
                    f"signed for {size} entries commits to; the stored hashes were "
                    "rewritten too, so it cannot be narrowed down"
                )
            self.add("flipped", start, detail, span=end - start)

    def _locate(self, start: int, end: int, want: bytes) -> list[tuple[int, int]]:
        """The smallest subtrees of D[start:end] whose recomputed hash differs from the one
        the believed hash `want` vouches for, skipping seqs already accounted for."""
        if self.flagged.covers(start, end):
            return []
        if end - start == 1:
            return [(start, end)]
        # RFC 9162 section 2.1.1: MTH(D[start:end]) = HASH(0x01 || MTH(left) || MTH(right)).
        mid = start + _split(end - start)
        left, right = self._stored(start, mid), self._stored(mid, end)
        if left is None or right is None or _children_hash(left, right) != want:
            return [(start, end)]
        found = []
        if subtree_hash(start, mid, self._node) != left:
            found += self._locate(start, mid, left)
        if subtree_hash(mid, end, self._node) != right:
            found += self._locate(mid, end, right)
        return found

    def _check_unsigned(self) -> None:
        """Past the last checkpoint only the leaf hashes stored with the entries can speak."""
        for seq in range(self.signed, self.size):
            if self.flagged.covers(seq, seq + 1):
                continue
            stored = self._stored_node(0, seq)
            if stored is None:
                detail = "no leaf hash was stored with it and no checkpoint covers it"
                self.add("inserted", seq, f"{detail}: the log did not append it")
            elif stored != self._node(0, seq):
                detail = "not the entry whose hash was stored with it"
                self.add("flipped", seq, f"{detail} (no checkpoint covers it yet)")

    def check_last_seen(self, last_seen: tuple[Checkpoint, str] | None) -> None:
        if last_seen is None:
            return
        checkpoint = last_seen[0]
        size, n = checkpoint.size, self.size
        if size > n:
            if not self.truncated and size - n > self.renumbered:
                detail = (
                    f"the store holds {n} entries, the checkpoint you saw last is signed for "
                    f"{size}: it is an older copy, or was truncated along with its checkpoints"
                )
                self.add("rollback", n, detail, span=0)
            return
        if self._root(size) == checkpoint.root_hash:
            self.verified.append(last_seen)
            return
        first = self.flagged.first()
        if first is None or first >= size:
            detail = f"the store's first {size} entries are not the ones the checkpoint you saw"
            self.add("forked", size, f"{detail} last commits to: rolled back, then appended", 0)

    def report(self, last_seen: str | None) -> VerifyReport:
        newest = max(self.verified, key=lambda v: v[0].size, default=None)
        signed = newest[0].size if newest else 0
        return VerifyReport(
            size=self.size,
            root=self._root(self.size),
            problems=tuple(sorted(self.problems, key=lambda p: -1 if p.seq is None else p.seq)),
            checkpoint=last_seen if self.problems or newest is None else newest[1],
            unsigned=max(0, self.size - signed),
        )


class _Ranges:
    """A set of seqs as sorted, disjoint, non-adjacent half-open ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        i = bisect_left(self._ends, start)  # the first range ending at or after `start`
        j = bisect_right(self._starts, end)  # past the last range starting at or before `end`
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
        self._starts[i:j], self._ends[i:j] = [start], [end]

    def covers(self, start: int, end: int) -> bool:
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def first(self) -> int | None:
        return self._starts[0] if self._starts else None
