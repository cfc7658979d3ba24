"""Merkle tree hashing and proofs for the audit log, per RFC 9162 section 2.1.

RFC 9162 section 2.1 defines the same tree as RFC 6962 section 2.1 (SHA-256, 0x00 / 0x01
domain separation), so roots and proofs interoperate with Certificate Transparency and the
C2SP transparency-log ecosystem.

There are two ways in:

* List-based (:func:`root_hash`, :func:`inclusion_proof`, :func:`consistency_proof`): take
  every leaf hash. Simple, and what the tests use; O(n) hashing per call.
* Storage-based (:func:`root_hash_from`, :func:`inclusion_proof_from`,
  :func:`consistency_proof_from`, :func:`subtree_hash`): take a :data:`NodeHash` accessor
  and make O(log n) reads of it, so a large log never needs its leaves in memory.

Storage layout expected of a :data:`NodeHash` ``node_hash(level, index)``: the hash of the
complete subtree of ``2**level`` leaves that starts at leaf ``index * 2**level``; level 0 holds
the leaf hashes. Only complete subtrees of the tree at hand are ever asked for, that is
``(index + 1) * 2**level <= size``. :meth:`CompactRange.append` reports exactly these
subtrees as they complete, so a sequencer can store them as it goes.

Verification never raises on adversarial input: a proof of the wrong length, a hash of the
wrong size or an out-of-range index all answer ``False``. Only arguments of the wrong type
(a ``str`` where ``bytes`` belong) raise ``TypeError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

HASH_SIZE = 32
"""Bytes in every hash of the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = HASH(), the root hash of the empty tree (RFC 9162 section 2.1.1)."""

NodeHash = Callable[[int, int], bytes]
"""``node_hash(level, index)``: the hash of the complete subtree of ``2**level`` leaves
starting at leaf ``index * 2**level`` (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class TreeNode:
    """One complete subtree: ``2**level`` leaves from leaf ``index * 2**level``."""

    level: int
    index: int
    hash: bytes


def leaf_hash(entry: bytes) -> bytes:
    """The hash of one log entry: HASH(0x00 || entry) (RFC 9162 section 2.1.1)."""
    _require_bytes("entry", entry)
    return hashlib.sha256(b"\x00" + entry).digest()


def _children_hash(left: bytes, right: bytes) -> bytes:
    # RFC 9162 section 2.1.1: MTH(D_n) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])).
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    # RFC 9162 section 2.1.1: "k is the largest power of two smaller than n (i.e., k < n <= 2k)".
    return 1 << ((n - 1).bit_length() - 1)


# --- subtree hashes from storage ----------------------------------------------------------


def subtree_hash(start: int, end: int, node_hash: NodeHash) -> bytes:
    """MTH(D[start:end]) in at most ``log2(end - start) + 1`` reads of `node_hash`.

    ``D[start:end]`` must be a node of some Merkle tree: `start` a multiple of the largest
    power of two not above ``end - start``. Every subtree that proofs need is one.
    """
    _require_int("start", start)
    _require_int("end", end)
    size = end - start
    if start < 0 or size <= 0:
        raise ValueError(f"[{start}, {end}) is not a non-empty range of leaves")
    if start % (1 << (size.bit_length() - 1)):
        raise ValueError(f"[{start}, {end}) is not a node of a Merkle tree")
    # RFC 9162 section 2.1.1 splits n leaves into a complete left part of k leaves and the
    # rest, again and again: so D[start:end] is one complete subtree per set bit of its
    # size, largest first, and its hash folds those from the right.
    parts: list[bytes] = []
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            parts.append(node_hash(level, start >> level))
            start += 1 << level
    result = parts.pop()
    while parts:
        result = _children_hash(parts.pop(), result)
    return result


def nodes_from_leaves(leaf_hash_at: Callable[[int], bytes]) -> NodeHash:
    """A :data:`NodeHash` computing each subtree from its leaves (``2**level`` leaf reads).

    For logs whose leaf hashes are at hand but whose subtree hashes are not stored.
    """

    def node_hash(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hash_at(index)
        return _children_hash(node_hash(level - 1, 2 * index), node_hash(level - 1, 2 * index + 1))

    return node_hash


def root_hash_from(size: int, node_hash: NodeHash) -> bytes:
    """MTH of the first `size` leaves (RFC 9162 section 2.1.1), in O(log size) reads."""
    _require_int("size", size)
    if size < 0:
        raise ValueError(f"a tree cannot have {size} leaves")
    return EMPTY_ROOT if size == 0 else subtree_hash(0, size, node_hash)


def inclusion_proof_from(index: int, size: int, node_hash: NodeHash) -> list[bytes]:
    """PATH(index, D_size) (RFC 9162 section 2.1.3.1), in O(log size) reads."""
    _require_int("index", index)
    _require_int("size", size)
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    # The recursion of 2.1.3.1 walks from the root to the leaf, one sibling per level.
    path: list[bytes] = []
    start, end = 0, size
    # PATH(0, {d(0)}) = {}: the walk stops at the leaf.
    while end - start > 1:
        mid = start + _split(end - start)
        if index < mid:
            # m < k: PATH(m, D_n) = PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(subtree_hash(mid, end, node_hash))
            end = mid
        else:
            # m >= k: PATH(m, D_n) = PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(subtree_hash(start, mid, node_hash))
            start = mid
    # PATH lists the deepest sibling first; the walk met it last.
    path.reverse()
    return path


def consistency_proof_from(old_size: int, new_size: int, node_hash: NodeHash) -> list[bytes]:
    """PROOF(old_size, D_new_size) (RFC 9162 section 2.1.4.1), in O(log new_size) reads.

    Equal sizes give the empty proof, SUBPROOF(m, D[m], true) = {}.
    """
    _require_int("old_size", old_size)
    _require_int("new_size", new_size)
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} leaves to {new_size} leaves")
    # PROOF(m, D_n) = SUBPROOF(m, D_n, true); `whole` is SUBPROOF's b: whether the current
    # subtree is all of the old tree, whose root the verifier already has.
    proof: list[bytes] = []
    start, end, whole = 0, new_size, True
    # The old tree ends at old_size, so "m == n" for the subtree D[start:end] is this:
    while old_size != end:
        mid = start + _split(end - start)
        if old_size <= mid:
            # m <= k: SUBPROOF(m, D_n, b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            proof.append(subtree_hash(mid, end, node_hash))
            end = mid
        else:
            # m > k: SUBPROOF(m, D_n, b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            proof.append(subtree_hash(start, mid, node_hash))
            start, whole = mid, False
    # m == n: SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}
    if not whole:
        proof.append(subtree_hash(start, end, node_hash))
    # SUBPROOF lists the deepest node first; the walk met it last.
    proof.reverse()
    return proof


# --- the same over a list of leaf hashes --------------------------------------------------


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree with these leaf hashes (RFC 9162 section 2.1.1)."""
    return root_hash_from(len(leaf_hashes), nodes_from_leaves(leaf_hashes.__getitem__))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D_n) for the tree with these leaf hashes (RFC 9162 section 2.1.3.1)."""
    return inclusion_proof_from(index, len(leaf_hashes), nodes_from_leaves(leaf_hashes.__getitem__))


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D_n) for the tree with these leaf hashes (RFC 9162 section 2.1.4.1)."""
    node_hash = nodes_from_leaves(leaf_hashes.__getitem__)
    return consistency_proof_from(old_size, len(leaf_hashes), node_hash)


# --- verification -------------------------------------------------------------------------


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether `proof` shows `leaf_hash` at `index` in the tree of `size` leaves with `root`.

    The algorithm of RFC 9162 section 2.1.3.2. The proof authenticates the leaf's position in
    a tree with this root; that the root belongs to `size` leaves is what a signed checkpoint
    authenticates.
    """
    _require_int("index", index)
    _require_int("size", size)
    _require_bytes("leaf_hash", leaf_hash)
    _require_bytes("root", root)
    _require_proof(proof)
    if not _all_hashes(leaf_hash, root, *proof):
        return False
    # (1) "If leaf_index is greater than or equal to tree_size, then fail".
    if not 0 <= index < size:
        return False
    # (2) "Set fn to leaf_index and sn to tree_size - 1."
    fn, sn = index, size - 1
    # (3) "Set r to hash."
    r = leaf_hash
    # (4) "For each value p in the inclusion_path array:"
    for p in proof:
        # (4a) "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0:
            return False
        # (4b) "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn & 1 or fn == sn:
            # (4b.i) "Set r to HASH(0x01 || p || r)."
            r = _children_hash(p, r)
            # (4b.ii) "If LSB(fn) is not set, then right-shift both fn and sn equally until
            # either LSB(fn) is set or fn is 0."
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            # (4b, otherwise) "Set r to HASH(0x01 || r || p)."
            r = _children_hash(r, p)
        # (4c) "Finally, right-shift both fn and sn one time."
        fn >>= 1
        sn >>= 1
    # (5) "If sn is equal to 0 and r and the root_hash are equal, then the log has proven the
    # inclusion of hash. Otherwise, fail the proof verification."
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether `proof` shows the tree of `old_size` leaves with `old_root` to be a prefix of
    the tree of `new_size` leaves with `new_root`.

    The algorithm of RFC 9162 section 2.1.4.2, which is defined for 0 < old_size < new_size.
    Equal sizes verify exactly when the proof is empty and the roots are equal (the proof of
    section 2.1.4.1 is then empty). An old size of 0 never verifies: there is nothing to
    prove, and a caller asking is confused about which tree it holds.
    """
    _require_int("old_size", old_size)
    _require_int("new_size", new_size)
    _require_bytes("old_root", old_root)
    _require_bytes("new_root", new_root)
    _require_proof(proof)
    if not _all_hashes(old_root, new_root, *proof):
        return False
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    # (1) "If consistency_path is an empty array, stop and fail the proof verification."
    if not proof:
        return False
    path = list(proof)
    # (2) "If first is an exact power of 2, then prepend first_hash to the consistency_path
    # array."
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # (3) "Set fn to first - 1 and sn to second - 1."
    fn, sn = old_size - 1, new_size - 1
    # (4) "If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set."
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # (5) "Set both fr and sr to the first value in the consistency_path array."
    fr = sr = path[0]
    # (6) "For each subsequent value c in the consistency_path array:"
    for c in path[1:]:
        # (6a) "If sn is 0, then stop the iteration and fail the proof verification."
        if sn == 0:
            return False
        # (6b) "If LSB(fn) is set, or if fn is equal to sn, then:"
        if fn & 1 or fn == sn:
            # (6b.i) "Set fr to HASH(0x01 || c || fr)." (6b.ii) "Set sr to HASH(0x01 || c || sr)."
            fr = _children_hash(c, fr)
            sr = _children_hash(c, sr)
            # (6b.iii) "If LSB(fn) is not set, then right-shift both fn and sn equally until
            # either LSB(fn) is set or fn is 0."
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            # (6b, otherwise) "Set sr to HASH(0x01 || sr || c)."
            sr = _children_hash(sr, c)
        # (6c) "Finally, right-shift both fn and sn one time."
        fn >>= 1
        sn >>= 1
    # (7) "verify that the fr calculated is equal to the first_hash supplied, that the sr
    # calculated is equal to the second_hash supplied, and that sn is 0."
    return fr == old_root and sr == new_root and sn == 0


# --- the sequencer's incremental tree -----------------------------------------------------


class CompactRange:
    """The right edge ("frontier") of a growing log: O(log n) memory, O(log n) root.

    Holds one complete-subtree hash per set bit of the size, largest (leftmost) first; its
    root agrees with :func:`root_hash` of all the leaves appended so far.
    """

    # Invariant: len(self._hashes) == self._size.bit_count(), and self._hashes[j] is the hash
    # of the j-th complete subtree of the size's binary decomposition, largest first.

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def restore(cls, size: int, node_hash: NodeHash) -> CompactRange:
        """The frontier of the first `size` leaves, read from storage (O(log size) reads)."""
        _require_int("size", size)
        if size < 0:
            raise ValueError(f"a tree cannot have {size} leaves")
        frontier = cls()
        start = 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                frontier._hashes.append(node_hash(level, start >> level))
                start += 1 << level
        frontier._size = size
        return frontier

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> list[TreeNode]:
        """Append one leaf hash; returns the subtrees it completes, the leaf itself first.

        Those are the nodes a :data:`NodeHash` storage needs, in an order that never
        refers to a node not yet returned.
        """
        _require_bytes("leaf_hash", leaf_hash)
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf_hash)}")
        index, level, node = self._size, 0, leaf_hash
        completed = [TreeNode(0, index, node)]
        # Each trailing 1 bit of the old size is a complete subtree just left of the new leaf
        # at that level, and of the same size as what the new leaf has completed so far.
        while self._size >> level & 1:
            node = _children_hash(self._hashes.pop(), node)
            level, index = level + 1, index >> 1
            completed.append(TreeNode(level, index, node))
        self._hashes.append(node)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """MTH of the leaves appended so far (RFC 9162 section 2.1.1)."""
        if not self._hashes:
            return EMPTY_ROOT
        # As in subtree_hash: the complete subtrees fold from the right.
        result = self._hashes[-1]
        for node in reversed(self._hashes[:-1]):
            result = _children_hash(node, result)
        return result


# --- argument checks ----------------------------------------------------------------------


def _require_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")


def _require_bytes(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def _require_proof(proof: object) -> None:
    if isinstance(proof, (bytes, bytearray, str)) or not isinstance(proof, Sequence):
        raise TypeError(f"proof must be a sequence of bytes, not {type(proof).__name__}")
    for item in proof:
        _require_bytes("every proof element", item)


def _all_hashes(*values: bytes) -> bool:
    return all(len(value) == HASH_SIZE for value in values)
