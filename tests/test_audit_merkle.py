"""The audit log's integrity core: RFC 9162 Merkle proofs (signed checkpoints are in
test_audit_checkpoint.py).

Three anchors outside the code under test: the Certificate Transparency test vectors (as
in certificate-transparency-go, Trillian and transparency-dev/merkle), a second RFC 6962
implementation written here the straightforward recursive way, and the reference note of
Go's golang.org/x/mod/sumdb/note. Checkpoint error messages are pinned: an operator reads them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import fabric.audit
import fabric.audit._merkle
import pytest
from fabric.audit import (
    EMPTY_ROOT,
    AuditError,
    CompactRange,
    TreeNode,
    consistency_proof,
    consistency_proof_from,
    inclusion_proof,
    inclusion_proof_from,
    leaf_hash,
    nodes_from_leaves,
    root_hash,
    root_hash_from,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.exceptions import FabricError


def test_public_api_is_exactly_this() -> None:
    assert sorted(fabric.audit.__all__) == [
        "AuditError",
        "AuditLog",
        "AuditStore",
        "BadSignatureError",
        "Checkpoint",
        "CheckpointError",
        "CompactRange",
        "EMPTY_ROOT",
        "Entry",
        "EntryError",
        "HASH_SIZE",
        "KeyFormatError",
        "MalformedCheckpointError",
        "NodeHash",
        "Problem",
        "ProofBundle",
        "ProofError",
        "ProofUnavailableError",
        "Query",
        "SqliteAuditStore",
        "StoreError",
        "TreeNode",
        "UnknownKeyError",
        "VerifyReport",
        "check_proof",
        "consistency_proof",
        "consistency_proof_from",
        "decode",
        "encode",
        "encode_vkey",
        "entry_time",
        "from_decision",
        "inclusion_proof",
        "inclusion_proof_from",
        "key_hash",
        "leaf_hash",
        "nodes_from_leaves",
        "parse_vkey",
        "root_hash",
        "root_hash_from",
        "sign_checkpoint",
        "subtree_hash",
        "unsequenced_origin",
        "verify_checkpoint",
        "verify_consistency",
        "verify_inclusion",
        "verify_log",
    ]
    public = {name for name in vars(fabric.audit) if not name.startswith("_")}
    assert public - set(fabric.audit.__all__) == set()


def test_every_error_derives_from_the_package_root() -> None:
    errors = [
        value
        for value in vars(fabric.audit).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert len(errors) == 10
    assert all(issubclass(error, AuditError) for error in errors)
    assert issubclass(AuditError, FabricError)


# --- the Certificate Transparency test vectors -------------------------------------------
# The 8 leaf inputs and the expected roots and proofs of certificate-transparency-go's and
# Trillian's merkle tests (now transparency-dev/merkle, proof/verify_test.go). Indices here
# count from 0; the Go tables count inclusion-proof leaves from 1.


def h(hex_digest: str) -> bytes:
    return bytes.fromhex(hex_digest)


LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
LEAVES = [leaf_hash(entry) for entry in LEAF_INPUTS]

ROOTS = {  # tree size -> root hash
    0: h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    1: h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    2: h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    3: h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    4: h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    5: h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    6: h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    7: h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    8: h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
}

INCLUSION_PROOFS = [  # (leaf index, tree size, proof)
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

CONSISTENCY_PROOFS = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_the_empty_tree_has_the_hash_of_nothing() -> None:
    assert root_hash([]) == EMPTY_ROOT == ROOTS[0]
    assert CompactRange().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_known_roots(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ROOTS[size]
    frontier = CompactRange()
    for leaf in LEAVES[:size]:
        frontier.append(leaf)
    assert frontier.root() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_known_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(index, LEAVES[:size]) == proof
    assert verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size])
    for probe, args in corrupted_inclusion(index, size, LEAVES[index], proof, ROOTS[size]):
        assert not verify_inclusion(*args), probe


@pytest.mark.parametrize(("old_size", "new_size", "proof"), CONSISTENCY_PROOFS)
def test_known_consistency_proofs(old_size: int, new_size: int, proof: list[bytes]) -> None:
    assert consistency_proof(old_size, LEAVES[:new_size]) == proof
    old_root, new_root = ROOTS[old_size], ROOTS[new_size]
    assert verify_consistency(old_size, new_size, old_root, new_root, proof)
    for probe, args in corrupted_consistency(old_size, new_size, old_root, new_root, proof):
        assert not verify_consistency(*args), probe


def test_every_bit_of_every_proof_of_the_known_tree_matters() -> None:
    checked = 0
    for size in range(1, 9):
        tree = LEAVES[:size]
        for index in range(size):
            proof = inclusion_proof(index, tree)
            for flipped in bit_flips(proof):
                assert not verify_inclusion(index, size, tree[index], flipped, ROOTS[size])
                checked += 1
        for old_size in range(1, size):
            proof = consistency_proof(old_size, tree)
            for flipped in bit_flips(proof):
                assert not verify_consistency(old_size, size, ROOTS[old_size], ROOTS[size], flipped)
                checked += 1
    assert checked > 20_000


# --- the corruptions every proof must not survive ------------------------------------------

InclusionArgs = tuple[int, int, bytes, list[bytes], bytes]
ConsistencyArgs = tuple[int, int, bytes, bytes, list[bytes]]


def bit_flips(proof: list[bytes]) -> Iterator[list[bytes]]:
    """`proof` with one bit flipped, for every bit of every element."""
    for i, element in enumerate(proof):
        for bit in range(8 * len(element)):
            changed = bytearray(element)
            changed[bit // 8] ^= 1 << (bit % 8)
            yield [*proof[:i], bytes(changed), *proof[i + 1 :]]


def corrupted_inclusion(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> Iterator[tuple[str, InclusionArgs]]:
    # The probes of transparency-dev/merkle's corruptInclusionProof, and some more. Other
    # indices and sizes are tested exhaustively in test_matches_the_reference.
    yield "index - 1", (index - 1, size, leaf, proof, root)
    yield "index + 1", (index + 1, size, leaf, proof, root)
    yield "index = size", (size, size, leaf, proof, root)
    yield "size 0", (index, 0, leaf, proof, root)
    yield "wrong leaf", (index, size, SOME_HASH, proof, root)
    yield "short leaf", (index, size, leaf[:-1], proof, root)
    yield "empty root", (index, size, leaf, proof, EMPTY_ROOT)
    yield "random root", (index, size, leaf, proof, SOME_HASH)
    yield "long root", (index, size, leaf, proof, root + b"\0")
    if size > 1:  # in a tree of one leaf, the root is the leaf hash
        yield "leaf as root", (index, size, leaf, proof, leaf)
    yield "trailing garbage", (index, size, leaf, [*proof, b""], root)
    yield "trailing root", (index, size, leaf, [*proof, root], root)
    yield "trailing hash", (index, size, leaf, [*proof, SOME_HASH], root)
    yield "preceding garbage", (index, size, leaf, [b"", *proof], root)
    yield "preceding root", (index, size, leaf, [root, *proof], root)
    yield "preceding leaf", (index, size, leaf, [leaf, *proof], root)
    if proof:
        yield "truncated", (index, size, leaf, proof[:-1], root)
        yield "first removed", (index, size, leaf, proof[1:], root)
        yield "duplicated", (index, size, leaf, [proof[0], *proof], root)
        yield "short element", (index, size, leaf, [proof[0][:-1], *proof[1:]], root)
        yield "long element", (index, size, leaf, [proof[0] + b"\0", *proof[1:]], root)
    if len(proof) > 1:
        yield "inserted", (index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root)
        yield "swapped", (index, size, leaf, [proof[1], proof[0], *proof[2:]], root)


def corrupted_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> Iterator[tuple[str, ConsistencyArgs]]:
    # The probes of transparency-dev/merkle's corruptConsistencyProof, and some more.
    yield "old size 0", (0, new_size, old_root, new_root, proof)
    yield "old size 0, empty tree", (0, new_size, EMPTY_ROOT, new_root, [])
    yield "old size > new size", (new_size + 1, new_size, old_root, new_root, proof)
    yield "wrong old root", (old_size, new_size, SOME_HASH, new_root, proof)
    yield "wrong new root", (old_size, new_size, old_root, SOME_HASH, proof)
    yield "short old root", (old_size, new_size, old_root[:-1], new_root, proof)
    yield "long new root", (old_size, new_size, old_root, new_root + b"\0", proof)
    if old_size == new_size:
        yield "equal sizes, a proof", (old_size, new_size, old_root, new_root, [old_root])
        return
    yield "roots swapped", (old_size, new_size, new_root, old_root, proof)
    yield "sizes swapped", (new_size, old_size, new_root, old_root, proof)
    yield "empty proof", (old_size, new_size, old_root, new_root, [])
    yield "trailing garbage", (old_size, new_size, old_root, new_root, [*proof, b""])
    yield "trailing old root", (old_size, new_size, old_root, new_root, [*proof, old_root])
    yield "trailing new root", (old_size, new_size, old_root, new_root, [*proof, new_root])
    yield "preceding garbage", (old_size, new_size, old_root, new_root, [b"", *proof])
    yield "preceding old root", (old_size, new_size, old_root, new_root, [old_root, *proof])
    yield "preceding new root", (old_size, new_size, old_root, new_root, [new_root, *proof])
    yield "duplicated", (old_size, new_size, old_root, new_root, [proof[0], *proof])
    yield "truncated", (old_size, new_size, old_root, new_root, proof[:-1])
    yield "first removed", (old_size, new_size, old_root, new_root, proof[1:])
    yield "short element", (old_size, new_size, old_root, new_root, [proof[0][:-1], *proof[1:]])
    if len(proof) > 1:
        yield "swapped", (old_size, new_size, old_root, new_root, [proof[1], proof[0], *proof[2:]])


# --- an independent implementation: RFC 6962 section 2.1, recursively, over the entries ----


def ref_split(n: int) -> int:
    k = 1
    while 2 * k < n:
        k *= 2
    return k


def ref_mth(entries: Sequence[bytes]) -> bytes:
    if not entries:
        return hashlib.sha256().digest()
    if len(entries) == 1:
        return hashlib.sha256(bytes([0]) + entries[0]).digest()
    k = ref_split(len(entries))
    return hashlib.sha256(bytes([1]) + ref_mth(entries[:k]) + ref_mth(entries[k:])).digest()


def ref_path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, entries[:k]), ref_mth(entries[k:])]
    return [*ref_path(m - k, entries[k:]), ref_mth(entries[:k])]


def ref_subproof(m: int, entries: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [ref_mth(entries)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, entries[:k], b), ref_mth(entries[k:])]
    return [*ref_subproof(m - k, entries[k:], False), ref_mth(entries[:k])]


# The shape of a proof: which way each element is hashed in. A proof binds its shape, not the
# tree size: sizes with the same shape accept the same proof against the same root (the
# signed checkpoint is what binds the root to a size).


def ref_path_shape(m: int, n: int) -> list[str]:
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path_shape(m, k), "right"]
    return [*ref_path_shape(m - k, n - k), "left"]


def ref_subproof_shape(m: int, n: int, b: bool) -> list[str]:
    if m == n:
        return [] if b else ["start"]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof_shape(m, k, b), "right"]
    return [*ref_subproof_shape(m - k, n - k, False), "left"]


def entries_for(n: int) -> list[bytes]:
    return [f"decision {i}".encode() for i in range(n)]


@pytest.mark.parametrize("size", range(1, 131))
def test_matches_the_reference(size: int) -> None:
    entries = entries_for(size)
    leaves = [leaf_hash(entry) for entry in entries]
    root = root_hash(leaves)
    assert root == ref_mth(entries)
    for index in range(size):
        proof = inclusion_proof(index, leaves)
        assert proof == ref_path(index, entries), index
        assert verify_inclusion(index, size, leaves[index], proof, root)
    for old_size in range(1, size + 1):
        proof = consistency_proof(old_size, leaves)
        assert proof == ref_subproof(old_size, entries, True), old_size
        assert verify_consistency(old_size, size, ref_mth(entries[:old_size]), root, proof)


@pytest.mark.parametrize("size", [1000, 1023, 1024, 1025])
def test_matches_the_reference_for_larger_trees(size: int) -> None:
    entries = entries_for(size)
    leaves = [leaf_hash(entry) for entry in entries]
    root = root_hash(leaves)
    assert root == ref_mth(entries)
    samples = sorted({0, 1, 2, 511, 512, 513, size // 2, size - 2, size - 1, *range(3, size, 97)})
    for index in samples:
        proof = inclusion_proof(index, leaves)
        assert proof == ref_path(index, entries), index
        assert verify_inclusion(index, size, leaves[index], proof, root)
    for old_size in [s + 1 for s in samples]:
        proof = consistency_proof(old_size, leaves)
        assert proof == ref_subproof(old_size, entries, True), old_size
        assert verify_consistency(old_size, size, ref_mth(entries[:old_size]), root, proof)


@pytest.mark.parametrize("size", range(1, 41))
def test_an_inclusion_proof_binds_its_index_and_shape(size: int) -> None:
    leaves = [leaf_hash(entry) for entry in entries_for(2 * size + 2)]
    root = root_hash(leaves[:size])
    for index in range(size):
        proof = inclusion_proof(index, leaves[:size])
        for other in range(-1, size + 1):
            if other != index:
                assert not verify_inclusion(other, size, leaves[index], proof, root)
        shape = ref_path_shape(index, size)
        for other_size in range(0, 2 * size + 2):
            same_shape = other_size > index and ref_path_shape(index, other_size) == shape
            verified = verify_inclusion(index, other_size, leaves[index], proof, root)
            assert verified == same_shape, (index, size, other_size)


@pytest.mark.parametrize("size", range(2, 41))
def test_a_consistency_proof_binds_its_sizes_shape(size: int) -> None:
    leaves = [leaf_hash(entry) for entry in entries_for(2 * size + 2)]
    roots = [root_hash(leaves[:n]) for n in range(2 * size + 2)]
    for old_size in range(1, size):
        proof = consistency_proof(old_size, leaves[:size])
        shape = ref_subproof_shape(old_size, size, True)
        old_root, new_root = roots[old_size], roots[size]
        for other_new in range(0, 2 * size + 2):
            for other_old in range(0, size + 2):
                verified = verify_consistency(other_old, other_new, old_root, new_root, proof)
                same_shape = 0 < other_old < other_new and (
                    ref_subproof_shape(other_old, other_new, True) == shape
                )
                assert verified == same_shape, (old_size, size, other_old, other_new)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), size=st.integers(min_value=1, max_value=3000))
def test_no_single_bit_flip_survives(data: st.DataObject, size: int) -> None:
    leaves = [leaf_hash(entry) for entry in entries_for(size)]
    root = root_hash(leaves)
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    proof = inclusion_proof(index, leaves)
    if proof:
        element = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        flipped = flip(proof, element, bit)
        assert not verify_inclusion(index, size, leaves[index], flipped, root)
    bit = data.draw(st.integers(min_value=0, max_value=255), label="leaf bit")
    assert not verify_inclusion(index, size, flip([leaves[index]], 0, bit)[0], proof, root)
    old_size = data.draw(st.integers(min_value=1, max_value=size), label="old size")
    proof = consistency_proof(old_size, leaves)
    old_root = root_hash(leaves[:old_size])
    assert verify_consistency(old_size, size, old_root, root, proof)
    if proof:
        element = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        assert not verify_consistency(old_size, size, old_root, root, flip(proof, element, bit))
    bit = data.draw(st.integers(min_value=0, max_value=255), label="old root bit")
    assert not verify_consistency(old_size, size, flip([old_root], 0, bit)[0], root, proof)


def flip(proof: list[bytes], element: int, bit: int) -> list[bytes]:
    changed = bytearray(proof[element])
    changed[bit // 8] ^= 1 << (bit % 8)
    return [*proof[:element], bytes(changed), *proof[element + 1 :]]


def test_equal_sizes_are_consistent_exactly_when_the_roots_are_equal() -> None:
    assert consistency_proof(8, LEAVES) == []
    assert verify_consistency(8, 8, ROOTS[8], ROOTS[8], [])
    assert not verify_consistency(8, 8, ROOTS[8], ROOTS[7], [])
    assert not verify_consistency(8, 8, ROOTS[8], ROOTS[8], [ROOTS[8]])


def test_an_empty_old_tree_never_verifies() -> None:
    # There is nothing to prove from size 0, and no proof of anything is accepted from it.
    for new_size in range(0, 9):
        assert not verify_consistency(0, new_size, EMPTY_ROOT, ROOTS[new_size], [])
        assert not verify_consistency(0, new_size, EMPTY_ROOT, EMPTY_ROOT, [])
        assert not verify_consistency(0, new_size, EMPTY_ROOT, ROOTS[new_size], [ROOTS[new_size]])


def test_adversarial_values_answer_false() -> None:
    root = ROOTS[8]
    proof = inclusion_proof(3, LEAVES)
    assert verify_inclusion(3, 8, LEAVES[3], proof, root)
    assert not verify_inclusion(-1, 8, LEAVES[3], proof, root)
    assert not verify_inclusion(3, -8, LEAVES[3], proof, root)
    assert not verify_inclusion(3, 2**64, LEAVES[3], proof, root)
    assert not verify_inclusion(2**70 + 3, 2**71, LEAVES[3], proof, root)
    assert not verify_inclusion(3, 8, b"", proof, root)
    assert not verify_inclusion(3, 8, LEAVES[3], proof * 50, root)
    assert not verify_consistency(-1, 8, ROOTS[1], root, [])
    assert not verify_consistency(6, 2**64, ROOTS[6], root, consistency_proof(6, LEAVES))


def test_hashes_of_the_wrong_size_never_verify() -> None:
    # Without the size check these would verify: nothing is hashed on the way to the root.
    # transparency-dev/merkle's TestVerifyInclusionSingleEntry has the first.
    assert verify_inclusion(0, 1, LEAVES[0], [], ROOTS[1])
    assert not verify_inclusion(0, 1, b"", [], b"")
    assert not verify_inclusion(0, 1, LEAVES[0] + b"!", [], LEAVES[0] + b"!")
    assert verify_consistency(8, 8, ROOTS[8], ROOTS[8], [])
    assert not verify_consistency(8, 8, b"", b"", [])
    assert not verify_consistency(8, 8, ROOTS[8][:31], ROOTS[8][:31], [])


def test_a_long_proof_costs_no_more_than_a_proof_of_the_right_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Steps 2.1.3.2 (4a) and 2.1.4.2 (6a) stop at the root: padding a proof cannot make a
    # verifier hash more than log2(size) + 1 times.
    padding = [SOME_HASH] * 10_000
    inclusion = [*inclusion_proof(5, LEAVES), *padding]
    consistency = [*consistency_proof(6, LEAVES), *padding]
    hashes = 0
    real = fabric.audit._merkle._children_hash

    def counting(left: bytes, right: bytes) -> bytes:
        nonlocal hashes
        hashes += 1
        return real(left, right)

    monkeypatch.setattr(fabric.audit._merkle, "_children_hash", counting)
    assert not verify_inclusion(5, 8, LEAVES[5], inclusion, ROOTS[8])
    assert hashes <= 4
    hashes = 0
    assert not verify_consistency(6, 8, ROOTS[6], ROOTS[8], consistency)
    assert hashes <= 2 * 4


def test_arguments_of_the_wrong_type_raise() -> None:
    proof = inclusion_proof(3, LEAVES)
    with pytest.raises(TypeError, match=r"^index must be an int, not str$"):
        verify_inclusion("3", 8, LEAVES[3], proof, ROOTS[8])
    with pytest.raises(TypeError, match=r"^size must be an int, not float$"):
        verify_inclusion(3, 8.0, LEAVES[3], proof, ROOTS[8])
    with pytest.raises(TypeError, match=r"^leaf_hash must be bytes, not str$"):
        verify_inclusion(3, 8, LEAVES[3].hex(), proof, ROOTS[8])
    with pytest.raises(TypeError, match=r"^proof must be a sequence of bytes, not bytes$"):
        verify_inclusion(3, 8, LEAVES[3], b"".join(proof), ROOTS[8])
    with pytest.raises(TypeError, match=r"^every proof element must be bytes, not str$"):
        verify_consistency(6, 8, ROOTS[6], ROOTS[8], [p.hex() for p in proof])
    with pytest.raises(TypeError, match=r"^old_root must be bytes, not NoneType$"):
        verify_consistency(6, 8, None, ROOTS[8], proof)


def test_proofs_are_only_made_for_leaves_and_sizes_of_the_tree() -> None:
    with pytest.raises(ValueError, match=r"^leaf 8 is not in a tree of 8 leaves$"):
        inclusion_proof(8, LEAVES)
    with pytest.raises(ValueError, match=r"^leaf -1 is not in a tree of 8 leaves$"):
        inclusion_proof(-1, LEAVES)
    with pytest.raises(ValueError, match=r"^no consistency proof from 0 leaves to 8 leaves$"):
        consistency_proof(0, LEAVES)
    with pytest.raises(ValueError, match=r"^no consistency proof from 9 leaves to 8 leaves$"):
        consistency_proof(9, LEAVES)


# --- the sequencer's frontier and proofs from stored subtrees -------------------------------


class Storage:
    """Complete-subtree hashes keyed by (level, index), as CompactRange reports them."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.reads = 0

    def put(self, nodes: list[TreeNode]) -> None:
        for node in nodes:
            assert (node.level, node.index) not in self.nodes
            self.nodes[node.level, node.index] = node.hash

    def node_hash(self, level: int, index: int) -> bytes:
        self.reads += 1
        return self.nodes[level, index]


def test_the_frontier_agrees_with_the_tree_at_every_size() -> None:
    leaves = [leaf_hash(entry) for entry in entries_for(600)]
    frontier = CompactRange()
    for size, leaf in enumerate(leaves, start=1):
        assert frontier.size == size - 1
        frontier.append(leaf)
        assert frontier.root() == root_hash(leaves[:size]), size
        # Invariant: one stored hash per set bit of the size.
        assert len(frontier._hashes) == size.bit_count()


def test_the_frontier_reports_every_complete_subtree_once() -> None:
    leaves = [leaf_hash(entry) for entry in entries_for(1025)]
    storage, frontier = Storage(), CompactRange()
    for size, leaf in enumerate(leaves, start=1):
        completed = frontier.append(leaf)
        assert completed[0] == TreeNode(0, size - 1, leaf)
        storage.put(completed)
        # All complete subtrees of [0, size) are stored: floor(size / 2**level) per level.
        assert len(storage.nodes) == 2 * size - size.bit_count()
    tree = nodes_from_leaves(leaves.__getitem__)
    for (level, index), stored in storage.nodes.items():
        assert (index + 1) << level <= len(leaves)
        assert stored == tree(level, index)


def test_proofs_from_storage_read_logarithmically_many_nodes() -> None:
    size = 5000
    leaves = [leaf_hash(entry) for entry in entries_for(size)]
    storage, frontier = Storage(), CompactRange()
    for leaf in leaves:
        storage.put(frontier.append(leaf))
    bound = 2 * size.bit_length()
    for index in [0, 1, 2047, 2048, 4095, 4096, 4999, *range(3, size, 389)]:
        storage.reads = 0
        proof = inclusion_proof_from(index, size, storage.node_hash)
        assert storage.reads <= bound, index
        assert proof == inclusion_proof(index, leaves)
        assert verify_inclusion(index, size, leaves[index], proof, frontier.root())
    for old_size in [1, 2, 3, 2047, 2048, 2049, 4999, 5000, *range(5, size, 397)]:
        storage.reads = 0
        proof = consistency_proof_from(old_size, size, storage.node_hash)
        assert storage.reads <= bound, old_size
        assert proof == consistency_proof(old_size, leaves)
        old_root = root_hash_from(old_size, storage.node_hash)
        assert verify_consistency(old_size, size, old_root, frontier.root(), proof)
    storage.reads = 0
    assert root_hash_from(size, storage.node_hash) == frontier.root()
    assert storage.reads == size.bit_count()


def test_a_huge_tree_needs_only_its_complete_subtrees() -> None:
    size = 2**40 + 12345
    reads: list[tuple[int, int]] = []

    def node_hash(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, (level, index)
        reads.append((level, index))
        return hashlib.sha256(f"{level}/{index}".encode()).digest()

    for index in [0, 2**39, 2**40 - 1, 2**40, size - 1]:
        reads.clear()
        proof = inclusion_proof_from(index, size, node_hash)
        assert len(reads) <= 2 * size.bit_length() and len(proof) <= size.bit_length()
    for old_size in [1, 2**40, 2**40 + 1, size - 1]:
        reads.clear()
        proof = consistency_proof_from(old_size, size, node_hash)
        assert len(reads) <= 2 * size.bit_length() and len(proof) <= size.bit_length() + 1
    reads.clear()
    root_hash_from(size, node_hash)
    assert len(reads) == size.bit_count()


def test_a_restored_frontier_continues_where_it_stopped() -> None:
    leaves = [leaf_hash(entry) for entry in entries_for(300)]
    storage, frontier = Storage(), CompactRange()
    for leaf in leaves[:237]:
        storage.put(frontier.append(leaf))
    restored = CompactRange.restore(237, storage.node_hash)
    assert restored.size == 237 and restored.root() == frontier.root()
    for leaf in leaves[237:]:
        assert restored.append(leaf) == frontier.append(leaf)
    assert restored.root() == root_hash(leaves)


def test_subtree_hash_reads_nodes_of_a_tree_only() -> None:
    tree = nodes_from_leaves(LEAVES.__getitem__)
    assert subtree_hash(0, 8, tree) == ROOTS[8]
    assert subtree_hash(4, 7, tree) == root_hash(LEAVES[4:7])
    with pytest.raises(ValueError, match=r"^\[2, 6\) is not a node of a Merkle tree$"):
        subtree_hash(2, 6, tree)
    with pytest.raises(ValueError, match=r"^\[3, 3\) is not a non-empty range of leaves$"):
        subtree_hash(3, 3, tree)


def test_the_frontier_takes_hashes_only() -> None:
    with pytest.raises(ValueError, match=r"^a leaf hash has 32 bytes, not 5$"):
        CompactRange().append(b"entry")
    with pytest.raises(TypeError, match=r"^leaf_hash must be bytes, not str$"):
        CompactRange().append("0" * 32)
