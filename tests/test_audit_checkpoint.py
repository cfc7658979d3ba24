"""C2SP signed checkpoints of the audit log (signed notes with Ed25519), anchored on the
reference note of Go's golang.org/x/mod/sumdb/note. Error messages are pinned: an operator
reads them.
"""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fabric.audit import (
    EMPTY_ROOT,
    BadSignatureError,
    Checkpoint,
    CheckpointError,
    KeyFormatError,
    MalformedCheckpointError,
    UnknownKeyError,
    encode_vkey,
    key_hash,
    parse_vkey,
    sign_checkpoint,
    verify_checkpoint,
)
from fabric.audit._checkpoint import open_note, sign_note

from tests.test_audit_merkle import ROOTS

# The reference note of golang.org/x/mod/sumdb/note (note_test.go and the package example).

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_NOTE = (
    PETER_TEXT + "\n— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

LOG = "fabric.example/audit"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
CHECKPOINT = Checkpoint(LOG, 8, ROOTS[8])


def peter_private_key() -> Ed25519PrivateKey:
    # PRIVATE+KEY+<name>+<hash>+base64(0x01 || 32-byte seed)
    material = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert material[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(material[1:])


def test_notes_interoperate_with_go_sumdb_note() -> None:
    name, public_key = parse_vkey(PETER_VKEY)
    assert name == "PeterNeumann"
    assert key_hash(name, public_key).hex() == "c74f20a3"
    assert encode_vkey(name, public_key) == PETER_VKEY
    private_key = peter_private_key()
    assert private_key.public_key() == public_key
    # Ed25519 is deterministic, so our note must be Go's byte for byte.
    assert sign_note(PETER_TEXT, name, private_key) == PETER_NOTE
    assert open_note(PETER_NOTE, name, public_key) == PETER_TEXT
    with pytest.raises(BadSignatureError):
        open_note(PETER_NOTE.replace("cryptography", "cryptographY"), name, public_key)


def test_a_checkpoint_round_trips() -> None:
    text = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)
    body = f"{LOG}\n8\n{base64.b64encode(ROOTS[8]).decode()}\n"
    assert text.startswith(body + "\n— fabric.example/audit ")
    assert text.count("\n") == 5 and text.endswith("\n")
    assert verify_checkpoint(text, LOG, LOG_KEY.public_key()) == CHECKPOINT
    with_extensions = Checkpoint(LOG, 0, EMPTY_ROOT, ("policy 7", "x"))
    signed = sign_checkpoint(with_extensions, LOG, LOG_KEY)
    assert verify_checkpoint(signed, LOG, LOG_KEY.public_key()) == with_extensions


def test_the_checkpoint_text_is_the_c2sp_format() -> None:
    # The example of c2sp.org/tlog-checkpoint, signed here by our own key.
    example = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    checkpoint = verify_checkpoint(
        sign_note(example, "example.com/behind-the-sofa", LOG_KEY),
        "example.com/behind-the-sofa",
        LOG_KEY.public_key(),
    )
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.to_text() == example


def test_the_vkey_names_the_key_that_signed() -> None:
    vkey = encode_vkey(LOG, LOG_KEY.public_key())
    name, public_key = parse_vkey(vkey)
    assert name == LOG and public_key == LOG_KEY.public_key()
    assert vkey.split("+")[1] == key_hash(LOG, LOG_KEY.public_key()).hex()
    signature_line = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY).splitlines()[-1]
    blob = base64.b64decode(signature_line.split(" ")[2])
    assert blob[:4] == key_hash(LOG, LOG_KEY.public_key()) and len(blob) == 4 + 64
    assert verify_checkpoint(sign_checkpoint(CHECKPOINT, LOG, LOG_KEY), *parse_vkey(vkey))


def rejects(text: str, error: type[CheckpointError], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        verify_checkpoint(text, LOG, LOG_KEY.public_key())


LOG_HASH = key_hash(LOG, LOG_KEY.public_key()).hex()
OTHER_HASH = key_hash(LOG, OTHER_KEY.public_key()).hex()


def test_a_changed_body_is_a_bad_signature() -> None:
    text = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)
    bad = f"the checkpoint's signature by '{LOG}' (key hash {LOG_HASH}) does not verify"
    rejects(text.replace("\n8\n", "\n9\n"), BadSignatureError, bad)
    rejects(text.replace(LOG + "\n", "fabric.example/audiT\n", 1), BadSignatureError, bad)


def test_a_changed_signature_is_a_bad_signature() -> None:
    text = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)
    body, _, line = text.rpartition("\n— ")
    name, blob_b64 = line.split(" ")
    blob = bytearray(base64.b64decode(blob_b64))
    blob[20] ^= 0x01
    changed = f"{body}\n— {name} {base64.b64encode(bytes(blob)).decode()}\n"
    rejects(
        changed,
        BadSignatureError,
        f"the checkpoint's signature by '{LOG}' (key hash {LOG_HASH}) does not verify",
    )


def test_a_signature_by_another_key_is_an_unknown_key() -> None:
    by_other_name = sign_checkpoint(CHECKPOINT, "fabric.example/other", LOG_KEY)
    other_name_hash = key_hash("fabric.example/other", LOG_KEY.public_key()).hex()
    rejects(
        by_other_name,
        UnknownKeyError,
        f"the checkpoint is not signed by '{LOG}' (key hash {LOG_HASH}); "
        f"it is signed by 'fabric.example/other' (key hash {other_name_hash})",
    )
    rejects(
        sign_checkpoint(CHECKPOINT, LOG, OTHER_KEY),
        UnknownKeyError,
        f"the checkpoint is not signed by '{LOG}' (key hash {LOG_HASH}); "
        f"it is signed by '{LOG}' (key hash {OTHER_HASH})",
    )


def test_signatures_by_other_keys_are_ignored() -> None:
    ours = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)
    theirs = sign_checkpoint(CHECKPOINT, "witness.example/w1", OTHER_KEY)
    our_line, their_line = ours.splitlines()[-1], theirs.splitlines()[-1]
    body = CHECKPOINT.to_text()
    for lines in ([our_line, their_line], [their_line, our_line]):
        note = body + "\n" + "".join(line + "\n" for line in lines)
        assert verify_checkpoint(note, LOG, LOG_KEY.public_key()) == CHECKPOINT
    # A known key's signature that fails rejects the note, even next to a good one.
    forged = their_line.replace("witness.example/w1", LOG)
    forged_blob = base64.b64decode(forged.split(" ")[2])
    forged = forged.replace(
        forged.split(" ")[2],
        base64.b64encode(key_hash(LOG, LOG_KEY.public_key()) + forged_blob[4:]).decode(),
    )
    rejects(
        body + "\n" + our_line + "\n" + forged + "\n",
        BadSignatureError,
        f"the checkpoint's signature by '{LOG}' (key hash {LOG_HASH}) does not verify",
    )


def test_a_missing_blank_line_is_malformed() -> None:
    text = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)
    rejects(
        text.replace("\n\n", "\n"),
        MalformedCheckpointError,
        "malformed checkpoint: no blank line separates the text from its signatures",
    )
    rejects(
        CHECKPOINT.to_text() + "\n",
        MalformedCheckpointError,
        "malformed checkpoint: it has no signature lines",
    )
    rejects(
        text[:-1],
        MalformedCheckpointError,
        "malformed checkpoint: the last line has no newline",
    )


@pytest.mark.parametrize(
    "size_line", ["007", "00", "-1", "+8", " 8", "8 ", "", "٣", "1e3", str(2**64)]
)
def test_a_size_that_is_not_canonical_decimal_is_malformed(size_line: str) -> None:
    # Correctly signed, so the body itself is what gets rejected.
    root = base64.b64encode(ROOTS[8]).decode()
    text = sign_note(f"{LOG}\n{size_line}\n{root}\n", LOG, LOG_KEY)
    message = (
        f"malformed checkpoint: line 2: tree size {size_line!r} is not a canonical decimal "
        "number below 2**64"
    )
    if size_line == "":
        message = "malformed checkpoint: line 2 is empty"
    rejects(text, MalformedCheckpointError, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{LOG}\n8\n", "malformed checkpoint: it needs an origin, a tree size and a root hash "
         "line, got 2 line(s)"),
        (f"{LOG}\n8\nAAAA\n", "malformed checkpoint: line 3: root hash 'AAAA' is not the "
         "canonical base64 of 32 bytes"),
        # The last base64 digit carries 4 unused bits; non-zero ones give a second spelling.
        (f"{LOG}\n8\n{base64.b64encode(ROOTS[8]).decode()[:-2]}R=\n",
         "malformed checkpoint: line 3: root hash "
         f"'{base64.b64encode(ROOTS[8]).decode()[:-2]}R=' is not the canonical base64 of 32 bytes"),
        (f"{LOG}\n8\n{base64.b64encode(ROOTS[8]).decode()}\n\next\n",
         "malformed checkpoint: line 4 is empty"),
    ],
)  # fmt: skip
def test_a_malformed_body_is_malformed(body: str, message: str) -> None:
    rejects(sign_note(body, LOG, LOG_KEY), MalformedCheckpointError, message)


def test_a_malformed_signature_line_is_malformed() -> None:
    text = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)
    expected = "malformed checkpoint: signature line 1 is not '— <key name> <base64 signature>'"
    rejects(text.replace("— ", "-- "), MalformedCheckpointError, expected)
    rejects(text.replace("— ", "—"), MalformedCheckpointError, expected)
    rejects(text[:-1] + " extra\n", MalformedCheckpointError, expected)
    rejects(
        text[: text.rindex(" ") + 1] + "bm90IGJhc2U2NA\n",  # base64 without its padding
        MalformedCheckpointError,
        "malformed checkpoint: signature line 1 has a malformed key name or signature",
    )
    rejects(
        text + "— w1 AAAA\n",  # three bytes: no room for a key hash and a signature
        MalformedCheckpointError,
        "malformed checkpoint: signature line 2 has a malformed key name or signature",
    )
    rejects(
        text[:-1] + "\r\n",
        MalformedCheckpointError,
        "malformed checkpoint: it contains the character '\\r'",
    )
    line = text.splitlines()[-1].replace(LOG, "w") + "\n"
    rejects(
        text + line * 100,
        MalformedCheckpointError,
        "malformed checkpoint: more than 100 signature lines",
    )


def test_any_changed_character_is_rejected() -> None:
    text = sign_checkpoint(Checkpoint(LOG, 1234, ROOTS[5], ("ext",)), LOG, LOG_KEY)
    for i, ch in enumerate(text):
        changed = text[:i] + chr(ord(ch) ^ 1) + text[i + 1 :]
        with pytest.raises(CheckpointError):
            verify_checkpoint(changed, LOG, LOG_KEY.public_key())
        removed = text[:i] + text[i + 1 :]
        with pytest.raises(CheckpointError):
            verify_checkpoint(removed, LOG, LOG_KEY.public_key())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": "a\nb"}, "malformed checkpoint: the origin must be one non-empty line "
         "without control characters, got 'a\\nb'"),
        ({"origin": ""}, "malformed checkpoint: the origin must be one non-empty line "
         "without control characters, got ''"),
        ({"size": -1}, "malformed checkpoint: the tree size must be in [0, 2**64), got -1"),
        ({"size": 2**64}, "malformed checkpoint: the tree size must be in [0, 2**64), got "
         "18446744073709551616"),
        ({"root_hash": ROOTS[8][:31]}, "malformed checkpoint: the root hash must have 32 bytes, "
         "got 31"),
        ({"extensions": ("",)}, "malformed checkpoint: an extension line must be one non-empty "
         "line without control characters, got ''"),
        ({"extensions": ("a\nb",)}, "malformed checkpoint: an extension line must be one "
         "non-empty line without control characters, got 'a\\nb'"),
    ],
)  # fmt: skip
def test_a_checkpoint_that_cannot_be_written_is_refused(
    kwargs: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {"origin": LOG, "size": 8, "root_hash": ROOTS[8]} | kwargs
    with pytest.raises(MalformedCheckpointError, match=f"^{re.escape(message)}$"):
        Checkpoint(**values)


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("PeterNeumann+c74f20a3", "verifier key 'PeterNeumann+c74f20a3' is not "
         "<name>+<key hash>+<key>"),
        (PETER_VKEY.replace("c74f20a3", "c74f20a4"), f"verifier key "
         f"{PETER_VKEY.replace('c74f20a3', 'c74f20a4')!r}: the key hash does not match the key"),
        (PETER_VKEY.replace("c74f20a3", "C74F20A3"), f"verifier key "
         f"{PETER_VKEY.replace('c74f20a3', 'C74F20A3')!r}: the key hash is not 8 lowercase hex "
         "digits"),
        (PETER_VKEY.replace("+ARpc", "+Apc"), f"verifier key "
         f"{PETER_VKEY.replace('+ARpc', '+Apc')!r}: the key is not canonical base64"),
        ("Peter Neumann+c74f20a3+AA==", "key name 'Peter Neumann' must be non-empty, with no "
         "spaces or '+'"),
        ("w+00000000+AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "verifier key "
         "'w+00000000+AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA': signature type 0x02 is "
         "not Ed25519 (0x01)"),
        ("w+00000000+AQAA", "verifier key 'w+00000000+AQAA': an Ed25519 key has 32 bytes"),
    ],
)  # fmt: skip
def test_a_malformed_vkey_is_refused(vkey: str, message: str) -> None:
    with pytest.raises(KeyFormatError, match=f"^{re.escape(message)}$"):
        parse_vkey(vkey)


def test_key_names_follow_the_signed_note_rules() -> None:
    for name in ["", "a b", "a+b", "a\u00a0b", "a\tb"]:
        with pytest.raises(KeyFormatError):
            sign_checkpoint(CHECKPOINT, name, LOG_KEY)
        with pytest.raises(KeyFormatError):
            verify_checkpoint(sign_checkpoint(CHECKPOINT, LOG, LOG_KEY), name, LOG_KEY.public_key())
