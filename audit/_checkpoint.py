"""Signed checkpoints: the log's commitment to its size and root hash.

A checkpoint is a C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint) note text::

    <origin>\\n<tree size in decimal>\\n<base64 root hash>\\n[<extension line>\\n ...]

signed as a C2SP signed note (https://c2sp.org/signed-note) with Ed25519: the text, a blank
line, then one line per signature, ``— <key name> <base64(key hash || signature)>``. The
format is the one Go's golang.org/x/mod/sumdb/note and the transparency-dev tools read and
write, so any of them can check the audit log's checkpoints.

Parsing is strict where the specs allow a choice: base64 must be canonical, sizes must have
no leading zeros, and every signature line must be well formed, so that one checkpoint has
exactly one spelling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import (
    BadSignatureError,
    KeyFormatError,
    MalformedCheckpointError,
    UnknownKeyError,
)
from ._merkle import HASH_SIZE

_ED25519 = 0x01  # signed-note signature type of Ed25519
_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_KEY_HASH_SIZE = 4
# "Verifiers SHOULD apply a maximum limit to the number of signatures in a note ... but MUST
# accept at least up to 16 signatures." Go's sumdb/note stops at 100; so do we.
_MAX_SIGNATURES = 100
_MAX_TREE_SIZE = 2**64 - 1  # tree sizes are uint64 in every implementation we interoperate with
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_KEY_HASH_HEX = re.compile(r"[0-9a-f]{8}", re.ASCII)


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: its origin (the log's name), size and root hash.

    Construction checks that the values can be written as a checkpoint, and raises
    :class:`MalformedCheckpointError` if not.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()
    """Optional further lines of the note text; the tlog-checkpoint spec leaves them opaque."""

    def __post_init__(self) -> None:
        _check_line("the origin", self.origin)
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise TypeError(f"size must be an int, not {type(self.size).__name__}")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise MalformedCheckpointError(
                f"malformed checkpoint: the tree size must be in [0, 2**64), got {self.size}"
            )
        if not isinstance(self.root_hash, bytes):
            raise TypeError(f"root_hash must be bytes, not {type(self.root_hash).__name__}")
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedCheckpointError(
                f"malformed checkpoint: the root hash must have {HASH_SIZE} bytes, "
                f"got {len(self.root_hash)}"
            )
        if not isinstance(self.extensions, tuple):
            raise TypeError(f"extensions must be a tuple, not {type(self.extensions).__name__}")
        for line in self.extensions:
            _check_line("an extension line", line)

    def to_text(self) -> str:
        """The note text: the part of a signed checkpoint that the signatures cover."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)


def sign_checkpoint(checkpoint: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note of `checkpoint`, signed by `private_key` under `key_name`."""
    return sign_note(checkpoint.to_text(), key_name, private_key)


def verify_checkpoint(text: str, key_name: str, public_key: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint in the signed note `text`, once its signature by the key checks out.

    Raises :class:`MalformedCheckpointError`, :class:`UnknownKeyError` (no signature by this
    key) or :class:`BadSignatureError` (a signature by this key that does not verify).
    Signatures by other keys are ignored, as the signed-note spec requires. The caller checks
    that the checkpoint's origin is the log it asked about: a key may sign for several logs.
    """
    return _parse_checkpoint(open_note(text, key_name, public_key))


# --- signed notes (c2sp.org/signed-note) ---------------------------------------------------


def key_hash(key_name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key hash that names an Ed25519 key in signature lines and verifier keys:
    SHA-256(key name || 0x0A || 0x01 || public key)[:4]."""
    _check_key_name(key_name)
    material = key_name.encode() + b"\n" + bytes([_ED25519]) + public_key.public_bytes_raw()
    return hashlib.sha256(material).digest()[:_KEY_HASH_SIZE]


def encode_vkey(key_name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key ``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
    key_material = bytes([_ED25519]) + public_key.public_bytes_raw()
    return f"{key_name}+{key_hash(key_name, public_key).hex()}+{_b64encode(key_material)}"


def parse_vkey(vkey: str) -> tuple[str, Ed25519PublicKey]:
    """The key name and Ed25519 public key of a verifier key; :class:`KeyFormatError` if it
    is malformed, of another signature type, or its key hash does not match its key."""
    if not isinstance(vkey, str):
        raise TypeError(f"a verifier key is a str, not {type(vkey).__name__}")
    # The name and the hex hash contain no "+"; the base64 may.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise KeyFormatError(f"verifier key {vkey!r} is not <name>+<key hash>+<key>")
    name, hash_hex, key_b64 = parts
    _check_key_name(name)
    if not _KEY_HASH_HEX.fullmatch(hash_hex):
        raise KeyFormatError(f"verifier key {vkey!r}: the key hash is not 8 lowercase hex digits")
    material = _b64decode(key_b64)
    if not material:
        raise KeyFormatError(f"verifier key {vkey!r}: the key is not canonical base64")
    if material[0] != _ED25519:
        raise KeyFormatError(
            f"verifier key {vkey!r}: signature type 0x{material[0]:02x} is not Ed25519 (0x01)"
        )
    if len(material) != 33:
        raise KeyFormatError(f"verifier key {vkey!r}: an Ed25519 key has 32 bytes")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(material[1:])
    except ValueError:
        raise KeyFormatError(f"verifier key {vkey!r}: not an Ed25519 public key") from None
    if key_hash(name, public_key).hex() != hash_hex:
        raise KeyFormatError(f"verifier key {vkey!r}: the key hash does not match the key")
    return name, public_key


def sign_note(text: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """`text` as a signed note with one Ed25519 signature by `private_key` under `key_name`."""
    _check_key_name(key_name)
    if not text.endswith("\n") or _bad_character(text) is not None:
        raise ValueError("a note text ends in a newline and has no other control characters")
    signature = private_key.sign(text.encode())
    blob = key_hash(key_name, private_key.public_key()) + signature
    return f"{text}\n{_SIGNATURE_PREFIX}{key_name} {_b64encode(blob)}\n"


def open_note(note: str, key_name: str, public_key: Ed25519PublicKey) -> str:
    """The text of the signed note `note`, once its signature by the key checks out."""
    if not isinstance(note, str):
        raise TypeError(f"a signed note is a str, not {type(note).__name__}")
    _check_key_name(key_name)
    expected_hash = key_hash(key_name, public_key)
    # "Signed notes MUST be valid UTF-8 and MUST NOT contain any ASCII control characters
    # (those below U+0020) other than newline."
    bad = _bad_character(note)
    if bad is not None:
        raise MalformedCheckpointError(f"malformed checkpoint: it contains the character {bad!r}")
    # "A signed note consists of a text ending in newline (U+000A), followed by a blank line
    # (only a newline), followed by one or more signature lines"; "the text is separated from
    # the signatures by the last empty line in the note."
    blank = note.rfind("\n\n")
    if blank < 0:
        raise MalformedCheckpointError(
            "malformed checkpoint: no blank line separates the text from its signatures"
        )
    text, signature_block = note[: blank + 1], note[blank + 2 :]
    if not signature_block:
        raise MalformedCheckpointError("malformed checkpoint: it has no signature lines")
    if not signature_block.endswith("\n"):
        raise MalformedCheckpointError("malformed checkpoint: the last line has no newline")
    signature_lines = signature_block[:-1].split("\n")
    if len(signature_lines) > _MAX_SIGNATURES:
        raise MalformedCheckpointError(
            f"malformed checkpoint: more than {_MAX_SIGNATURES} signature lines"
        )
    signers: list[tuple[str, bytes]] = []
    verified = False
    for number, line in enumerate(signature_lines, start=1):
        # "em dash (U+2014), space (U+0020), key name, space, base64-encoded signature"
        name, blob = _parse_signature_line(number, line)
        signers.append((name, blob[:_KEY_HASH_SIZE]))
        # "Verifiers MUST ignore signatures from unknown keys, even if they share a name or ID
        # (but not both) with a known key. ... If a signature from a known key fails to verify,
        # clients SHOULD reject the whole note."
        if name != key_name or blob[:_KEY_HASH_SIZE] != expected_hash:
            continue
        try:
            public_key.verify(blob[_KEY_HASH_SIZE:], text.encode())
        except InvalidSignature:
            raise BadSignatureError(
                f"the checkpoint's signature by {key_name!r} (key hash {expected_hash.hex()}) "
                "does not verify"
            ) from None
        verified = True
    if not verified:
        found = ", ".join(f"{name!r} (key hash {khash.hex()})" for name, khash in signers)
        raise UnknownKeyError(
            f"the checkpoint is not signed by {key_name!r} (key hash {expected_hash.hex()}); "
            f"it is signed by {found}"
        )
    return text


def _parse_signature_line(number: int, line: str) -> tuple[str, bytes]:
    fields = line.removeprefix(_SIGNATURE_PREFIX).split(" ")
    if not line.startswith(_SIGNATURE_PREFIX) or len(fields) != 2:
        raise MalformedCheckpointError(
            f"malformed checkpoint: signature line {number} is not "
            f"'{_SIGNATURE_PREFIX}<key name> <base64 signature>'"
        )
    name, blob_b64 = fields
    blob = _b64decode(blob_b64)
    if not _is_key_name(name) or blob is None or len(blob) <= _KEY_HASH_SIZE:
        raise MalformedCheckpointError(
            f"malformed checkpoint: signature line {number} has a malformed key name or signature"
        )
    return name, blob


# --- checkpoint text (c2sp.org/tlog-checkpoint) -------------------------------------------


def _parse_checkpoint(text: str) -> Checkpoint:
    # "The note text is a sequence of at least three non-empty lines, separated by newlines
    # (U+000A)": origin, tree size, root hash, then optional extension lines.
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpointError(
            "malformed checkpoint: it needs an origin, a tree size and a root hash line, "
            f"got {len(lines)} line(s)"
        )
    origin, size_line, root_line, *extensions = lines
    for number, line in enumerate(lines, start=1):
        if not line:
            raise MalformedCheckpointError(f"malformed checkpoint: line {number} is empty")
    # "The second line is the tree size, the ASCII decimal representation of the number of
    # leaves in the tree, with no leading zeroes (unless the tree is empty ...)"
    if not _DECIMAL.fullmatch(size_line) or int(size_line) > _MAX_TREE_SIZE:
        raise MalformedCheckpointError(
            f"malformed checkpoint: line 2: tree size {size_line!r} is not a canonical decimal "
            "number below 2**64"
        )
    # "The third line is the root hash, the base64 encoding of the root of the [RFC 6962]
    # Merkle hash tree at the specified tree size."
    root = _b64decode(root_line)
    if root is None or len(root) != HASH_SIZE:
        raise MalformedCheckpointError(
            f"malformed checkpoint: line 3: root hash {root_line!r} is not the canonical base64 "
            f"of {HASH_SIZE} bytes"
        )
    return Checkpoint(origin, int(size_line), root, tuple(extensions))


# --- shared helpers -----------------------------------------------------------------------


def _check_line(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or "\n" in value or _bad_character(value) is not None:
        raise MalformedCheckpointError(
            f"malformed checkpoint: {what} must be one non-empty line without control "
            f"characters, got {value!r}"
        )


def _is_key_name(name: str) -> bool:
    # "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or plus (U+002B)
    # characters."
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def _check_key_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a key name is a str, not {type(name).__name__}")
    if not _is_key_name(name):
        raise KeyFormatError(f"key name {name!r} must be non-empty, with no spaces or '+'")
    if _bad_character(name) is not None:
        raise KeyFormatError(f"key name {name!r} must not contain control characters")


def _bad_character(text: str) -> str | None:
    """The first character a signed note must not contain: an ASCII control character other
    than newline, or a lone surrogate (which has no UTF-8 encoding)."""
    return next(
        (ch for ch in text if (ch < " " and ch != "\n") or "\ud800" <= ch <= "\udfff"), None
    )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """`text` decoded as standard base64 (RFC 4648 section 4), or None unless canonical."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Re-encoding rejects non-zero padding bits, so one value has one spelling.
    return data if _b64encode(data) == text else None
