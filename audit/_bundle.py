"""Proof bundles: one entry with everything needed to check it offline.

A bundle holds the entry's canonical bytes, its seq, the size of the tree a signed checkpoint
commits to, the RFC 9162 inclusion proof of the entry in that tree, the signed checkpoint, and
the verifier key it names. It shows no other entry: the proof holds only subtree hashes.

The JSON form has one spelling (sorted keys, no whitespace, canonical base64) and
:meth:`ProofBundle.from_json` accepts nothing else, so any change to a bundle's bytes is
refused rather than silently read as the same bundle.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ._checkpoint import parse_vkey, verify_checkpoint
from ._entry import Entry, decode
from ._errors import CheckpointError, EntryError, ProofError
from ._merkle import leaf_hash, verify_inclusion

_KEYS = ("checkpoint", "entry", "proof", "seq", "size", "vkey")


@dataclass(frozen=True)
class ProofBundle:
    entry: bytes
    """The entry's canonical bytes (:func:`fabric.audit.encode`)."""
    seq: int
    size: int
    """The tree size of the checkpoint the proof is against."""
    proof: tuple[bytes, ...]
    """The inclusion proof PATH(seq, D[size]) of RFC 9162 section 2.1.3.1."""
    checkpoint: str
    """The signed checkpoint (C2SP signed note) committing to the tree of `size` leaves."""
    vkey: str
    """The verifier key of the log, as the log names it; a verifier checks with its own."""

    def to_json(self) -> str:
        """The bundle as canonical JSON text; bytes are standard base64."""
        value = {
            "checkpoint": self.checkpoint,
            "entry": _b64(self.entry),
            "proof": [_b64(node) for node in self.proof],
            "seq": self.seq,
            "size": self.size,
            "vkey": self.vkey,
        }
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ProofBundle:
        """The bundle whose canonical JSON is `text`; :class:`ProofError` for anything else."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ProofError("malformed proof bundle: not UTF-8") from None
        if not isinstance(text, str):
            raise TypeError(f"a proof bundle is str or bytes, not {type(text).__name__}")
        try:
            value = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
        except (ValueError, RecursionError) as error:
            raise ProofError(f"malformed proof bundle: not JSON: {error}") from None
        if not isinstance(value, dict) or sorted(value) != list(_KEYS):
            raise ProofError(f"malformed proof bundle: it must be an object with keys {_KEYS}")
        if not isinstance(value["checkpoint"], str) or not isinstance(value["vkey"], str):
            raise ProofError("malformed proof bundle: checkpoint and vkey must be strings")
        for name in ("seq", "size"):
            if not isinstance(value[name], int) or isinstance(value[name], bool):
                raise ProofError(f"malformed proof bundle: {name} must be an integer")
        if not isinstance(value["proof"], list):
            raise ProofError("malformed proof bundle: proof must be a list")
        bundle = cls(
            entry=_unb64("entry", value["entry"]),
            seq=value["seq"],
            size=value["size"],
            proof=tuple(_unb64("proof", node) for node in value["proof"]),
            checkpoint=value["checkpoint"],
            vkey=value["vkey"],
        )
        if bundle.to_json() != text:
            raise ProofError("malformed proof bundle: not in canonical form")
        return bundle


def check_proof(bundle: ProofBundle, vkey: str, *, origin: str | None = None) -> Entry:
    """The entry `bundle` proves to be in the log whose verifier key is `vkey`.

    Needs nothing but the bundle and the key. Raises :class:`ProofError` naming the step that
    failed, or :class:`KeyFormatError` if `vkey` itself is malformed. With `origin`, the
    checkpoint must also be that log's.
    """
    # (1) The verifier's own key decides, never the key the bundle names.
    key_name, public_key = parse_vkey(vkey)
    # (2) The bundle must be made for that key.
    if bundle.vkey != vkey:
        raise ProofError(f"step (2): the bundle is for verifier key {bundle.vkey!r}, not {vkey!r}")
    # (3) The checkpoint must carry a valid signature by that key (c2sp.org/signed-note), and
    # name the expected log (c2sp.org/tlog-checkpoint: the caller checks the origin).
    try:
        checkpoint = verify_checkpoint(bundle.checkpoint, key_name, public_key)
    except CheckpointError as error:
        raise ProofError(f"step (3): the checkpoint does not verify: {error}") from error
    if origin is not None and checkpoint.origin != origin:
        raise ProofError(
            f"step (3): the checkpoint is of log {checkpoint.origin!r}, not {origin!r}"
        )
    # (4) The proof is against the tree the signed checkpoint commits to, of its size.
    if checkpoint.size != bundle.size:
        raise ProofError(
            f"step (4): the proof is for a tree of {bundle.size} entries; the checkpoint "
            f"commits to {checkpoint.size}"
        )
    # (5) The entry is canonical and says it is at the seq the proof is for.
    try:
        entry = decode(bundle.entry)
    except EntryError as error:
        raise ProofError(f"step (5): the entry is not well formed: {error}") from error
    if entry.seq != bundle.seq:
        raise ProofError(f"step (5): the entry is at seq {entry.seq}, the proof for {bundle.seq}")
    # (6) RFC 9162 section 2.1.3.2: the inclusion proof leads from the entry's leaf hash
    # (HASH(0x00 || entry), section 2.1.1) at index seq to the checkpoint's root hash.
    leaf = leaf_hash(bundle.entry)
    if not verify_inclusion(bundle.seq, bundle.size, leaf, bundle.proof, checkpoint.root_hash):
        raise ProofError(
            f"step (6): the inclusion proof does not lead from entry {bundle.seq} to the root "
            f"of the checkpoint's tree of {bundle.size} entries"
        )
    return entry


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(what: str, text: Any) -> bytes:
    if isinstance(text, str):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            if _b64(data) == text:
                return data
    raise ProofError(f"malformed proof bundle: {what} is not canonical base64")


def _no_float(text: str) -> Any:
    raise ValueError(f"{text} is not an integer")
