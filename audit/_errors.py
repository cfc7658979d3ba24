"""The errors of :mod:`fabric.audit`. Every one derives from :class:`AuditError`.

Proof verification does not raise: a proof that does not verify is an ordinary answer
(``False``), not an error. Errors are for things a caller must act on: a checkpoint that
cannot be trusted, or a key that cannot be used.
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
