"""The tamper-evident audit log: its Merkle tree, proofs and signed checkpoints.

Every decision the fabric takes is appended to one log. The log is an RFC 9162 Merkle tree,
so anyone holding a signed checkpoint (a C2SP tlog-checkpoint) can check with a short proof
that a record is in the log and that the log only ever grew.

* The integrity core: hashing, proofs and checkpoints (``_merkle``, ``_checkpoint``).
* Entries and their canonical encoding (``_entry``).
* The log as a library, without networking: storage behind :class:`AuditStore` (SQLite now),
  the sequencer :class:`AuditLog` with queries and proof bundles, and :func:`verify_log`,
  which checks a whole stored log with nothing but its public key.
"""

from ._bundle import (
    ProofBundle as ProofBundle,
)
from ._bundle import (
    check_proof as check_proof,
)
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
from ._entry import (
    Entry as Entry,
)
from ._entry import (
    decode as decode,
)
from ._entry import (
    encode as encode,
)
from ._entry import (
    entry_time as entry_time,
)
from ._entry import (
    from_decision as from_decision,
)
from ._entry import (
    unsequenced_origin as unsequenced_origin,
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
    EntryError as EntryError,
)
from ._errors import (
    KeyFormatError as KeyFormatError,
)
from ._errors import (
    MalformedCheckpointError as MalformedCheckpointError,
)
from ._errors import (
    ProofError as ProofError,
)
from ._errors import (
    ProofUnavailableError as ProofUnavailableError,
)
from ._errors import (
    StoreError as StoreError,
)
from ._errors import (
    UnknownKeyError as UnknownKeyError,
)
from ._log import (
    AuditLog as AuditLog,
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
from ._query import (
    Query as Query,
)
from ._store import (
    AuditStore as AuditStore,
)
from ._store import (
    SqliteAuditStore as SqliteAuditStore,
)
from ._verify import (
    Problem as Problem,
)
from ._verify import (
    VerifyReport as VerifyReport,
)
from ._verify import (
    verify_log as verify_log,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "AuditError",
    "AuditLog",
    "AuditStore",
    "BadSignatureError",
    "Checkpoint",
    "CheckpointError",
    "CompactRange",
    "Entry",
    "EntryError",
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
