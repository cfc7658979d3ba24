"""The errors of :mod:`fabric.audit`. Every one derives from :class:`AuditError`.

The Merkle proof checks of ``_merkle`` do not raise: a proof that does not verify is an
ordinary answer (``False``), not an error. Errors are for things a caller must act on: a
checkpoint that cannot be trusted, a key that cannot be used, an entry that is not well formed,
a proof bundle that does not check out (the caller refuses the record it vouches for), or a
store the log cannot trust.
"""

from __future__ import annotations

from fabric.exceptions import FabricError


class AuditError(FabricError):
    """Root of every error :mod:`fabric.audit` raises."""


class KeyFormatError(AuditError):
    """A key name or a verifier key ("vkey") that is not well formed."""


class CheckpointError(AuditError):
    """A checkpoint that must not be trusted. The subclass says why."""


class MalformedCheckpointError(CheckpointError):
    """The text is not a well-formed signed checkpoint, or a value cannot be written as one."""


class UnknownKeyError(CheckpointError):
    """The checkpoint carries no signature by the expected key (name and key hash)."""


class BadSignatureError(CheckpointError):
    """The checkpoint carries a signature by the expected key, and it does not verify."""


class EntryError(AuditError):
    """An entry that is not well formed, or bytes that are not the canonical encoding of one,
    or an entry whose id is already in the log with other content."""


class ProofError(AuditError):
    """A proof bundle that does not verify. The message names the step that failed."""


class ProofUnavailableError(AuditError):
    """No proof can be made yet: the entry is not in the log, or no signed checkpoint covers it."""


class StoreError(AuditError):
    """The store disagrees with itself or with the log opening it (origin, key, checkpoints),
    or lacks a value the log needs: the log refuses to run on it."""
