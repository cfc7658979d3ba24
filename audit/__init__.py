"""The tamper-evident audit log: its Merkle tree, proofs and signed checkpoints.

Every decision the fabric takes is appended to one log. The log is an RFC 9162 Merkle tree,
so anyone holding a signed checkpoint (a C2SP tlog-checkpoint) can check with a short proof
that a record is in the log and that the log only ever grew. This package is the pure core:
hashing, proofs and checkpoints, without storage or networking.
"""

from ._checkpoint import (
    Checkpoint as Checkpoint,
)
from ._checkpoint import (
    encode_vkey as encode_vkey,
)
from ._checkpoint import (
    key_hash as key_hash,
)
from ._checkpoint import (
    parse_vkey as parse_vkey,
)
from ._checkpoint import (
    sign_checkpoint as sign_checkpoint,
)
from ._checkpoint import (
    verify_checkpoint as verify_checkpoint,
)
from ._errors import (
    AuditError as AuditError,
)
from ._errors import (
    BadSignatureError as BadSignatureError,
)
from ._errors import (
    CheckpointError as CheckpointError,
)
from ._errors import (
    KeyFormatError as KeyFormatError,
)
from ._errors import (
    MalformedCheckpointError as MalformedCheckpointError,
)
from ._errors import (
    UnknownKeyError as UnknownKeyError,
)
from ._merkle import (
    EMPTY_ROOT as EMPTY_ROOT,
)
from ._merkle import (
    HASH_SIZE as HASH_SIZE,
)
from ._merkle import (
    CompactRange as CompactRange,
)
from ._merkle import (
    NodeHash as NodeHash,
)
from ._merkle import (
    TreeNode as TreeNode,
)
from ._merkle import (
    consistency_proof as consistency_proof,
)
from ._merkle import (
    consistency_proof_from as consistency_proof_from,
)
from ._merkle import (
    inclusion_proof as inclusion_proof,
)
from ._merkle import (
    inclusion_proof_from as inclusion_proof_from,
)
from ._merkle import (
    leaf_hash as leaf_hash,
)
from ._merkle import (
    nodes_from_leaves as nodes_from_leaves,
)
from ._merkle import (
    root_hash as root_hash,
)
from ._merkle import (
    root_hash_from as root_hash_from,
)
from ._merkle import (
    subtree_hash as subtree_hash,
)
from ._merkle import (
    verify_consistency as verify_consistency,
)
from ._merkle import (
    verify_inclusion as verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "AuditError",
    "BadSignatureError",
    "Checkpoint",
    "CheckpointError",
    "CompactRange",
    "KeyFormatError",
    "MalformedCheckpointError",
    "NodeHash",
    "TreeNode",
    "UnknownKeyError",
    "consistency_proof",
    "consistency_proof_from",
    "encode_vkey",
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
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]
