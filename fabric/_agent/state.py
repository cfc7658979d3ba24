"""The agent's bookkeeping records: objects, tasks, actors and client sessions.

These are plain records; the rules that move them between states live in `node.py`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fabric._agent.workers import Worker
from fabric._proto import fabric_pb2 as pb
from fabric.policy._labels import NO_SELECTOR, LabelSelector, parse_selector
from fabric.policy._model import Regions, decode_regions

if TYPE_CHECKING:
    from fabric._agent.lineage import Lineage


class ObjState(enum.Enum):
    PENDING = "pending"  # its producing task has not finished
    READY = "ready"
    UNKNOWN = "unknown"  # a ref learnt of from another node; ask that node


@dataclass(eq=False)
class ObjEntry:
    tenant: str
    state: ObjState = ObjState.PENDING
    inline: bytes | None = None
    stored_size: int = -1  # >= 0 when the blob is in this node's store
    error: pb.ErrorInfo | None = None
    location: str = ""  # node holding the blob when it is not here
    remote_owner: str = ""  # set on copies: the node whose refcount decides
    holders: set[int] = field(default_factory=set)  # session ids
    pins: int = 0  # pending tasks using it as an argument, containers holding it
    contained: list[bytes] = field(default_factory=list)
    copies: set[str] = field(default_factory=set)  # nodes that fetched a copy
    waiters: list[Callable[[], None]] = field(default_factory=list)
    subscribers: set[int] = field(default_factory=set)
    fetching: bool = False
    cache: bool = False  # a copy pulled for a local use: dropped when nothing here uses it
    residency: Regions = None  # regions its bytes may live in; None: anywhere
    classes: frozenset[str] = frozenset()  # the data classes it derives from
    lineage: Lineage | None = None  # how to make it again, while it lives on another node
    lost_with: str = ""  # the node its bytes were lost with, until it is made again

    @property
    def local(self) -> bool:
        return self.state is ObjState.READY and (
            self.inline is not None or self.stored_size >= 0 or self.error is not None
        )


class TaskState(enum.Enum):
    PLACING = "placing"
    WAITING = "waiting"  # placed here, waiting for args, resources or a worker
    RUNNING = "running"
    REMOTE = "remote"  # forwarded to another node
    DONE = "done"


@dataclass(eq=False)
class TaskEntry:
    spec: pb.TaskSpec
    origin_session: int = 0  # local session that submitted it, or 0
    origin_node: str = ""  # node that forwarded it here, or ""
    state: TaskState = TaskState.PLACING
    retries_left: int = 0
    missing_args: int = 0
    worker: Worker | None = None
    committed: bool = False  # counted as demand by the local queues
    pinned: list[bytes] = field(default_factory=list)  # object arguments it pins
    cancelled: bool = False
    remote_node: str = ""
    # Regions its results may live in: its spec's, narrowed by every object it reads.
    residency: Regions = None
    classes: frozenset[str] = frozenset()  # its inputs' data classes, and its label's
    admitted: bool = False  # counted against its tenant's quotas on this node
    audit_id: str = ""  # the latest audit entry of this task here: the next one's parent
    audit_needed: int = 0  # journal records durable before acting on its placement
    selector: LabelSelector = NO_SELECTOR  # set from the spec in __post_init__
    # When this agent took it (monotonic; 0 once dispatched): its scheduling latency.
    taken: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # Crashes this task may survive: its own retries, or its actor's for a call.
        spec = self.spec
        if spec.kind == pb.NORMAL_TASK:
            self.retries_left = spec.max_retries
        elif spec.kind == pb.ACTOR_TASK:
            self.retries_left = spec.actor_options.max_task_retries
        self.residency = decode_regions(spec.residency)
        self.classes = frozenset(spec.data_classes)
        self.audit_id = spec.audit_parent
        # Parsed once (the spec was validated when it was taken), placed as often as needed.
        self.selector = parse_selector(spec.label_selector) if spec.label_selector else NO_SELECTOR

    @property
    def task_id(self) -> bytes:
        return self.spec.task_id

    @property
    def return_ids(self) -> list[bytes]:
        return [return_id(self.spec.task_id, i) for i in range(self.spec.num_returns)]


def return_id(task_id: bytes, index: int) -> bytes:
    return task_id + (index + 1).to_bytes(4, "big")


class ActorState(enum.Enum):
    STARTING = "starting"
    ALIVE = "alive"
    RESTARTING = "restarting"
    DEAD = "dead"


# The largest actor checkpoint an agent keeps (it holds each actor's latest in memory); a
# bigger one is refused like a `checkpoint()` that raised, and the previous one is kept.
MAX_CHECKPOINT_BYTES = 64 << 20


@dataclass(eq=False)
class ActorEntry:
    """An actor hosted on this node."""

    creation: TaskEntry
    state: ActorState = ActorState.STARTING
    worker: Worker | None = None
    restarts_left: int = 0
    queued: list[TaskEntry] = field(default_factory=list)  # calls waiting for ALIVE
    inflight: dict[bytes, TaskEntry] = field(default_factory=dict)
    death: pb.ErrorInfo | None = None
    resources: dict[str, float] = field(default_factory=dict)
    # Regions its state may live in: its creation's, narrowed by every object it reads.
    residency: Regions = None
    classes: frozenset[str] = frozenset()  # the data classes its state derives from
    calls_done: int = 0  # calls that returned a result, over all its incarnations
    # The latest checkpoint (see `TaskResult.checkpoint`), None before the first one, and
    # the call after which it was taken: a restart starts from it.
    checkpoint: bytes | None = None
    checkpoint_call: int = 0
    checkpoint_warned: bool = False  # a failed checkpoint is logged once per actor

    @property
    def tenant(self) -> str:
        return self.creation.spec.tenant


@dataclass(eq=False)
class Session:
    """A client of this agent: a driver over gRPC or one of our workers."""

    session_id: int
    tenant: str
    namespace: str
    job_id: bytes
    send: Callable[[pb.ServerMessage], None]
    identity: str
    worker: Worker | None = None
    held: set[bytes] = field(default_factory=set)
    owned_actors: dict[bytes, str] = field(default_factory=dict)  # actor id -> node
    closed: bool = False
    fingerprint: str = ""  # hex SHA-256 of a driver's certificate

    @property
    def is_driver(self) -> bool:
        return self.worker is None
