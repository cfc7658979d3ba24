from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMAL_TASK: _ClassVar[TaskKind]
    ACTOR_CREATION: _ClassVar[TaskKind]
    ACTOR_TASK: _ClassVar[TaskKind]
NORMAL_TASK: TaskKind
ACTOR_CREATION: TaskKind
ACTOR_TASK: TaskKind

class ErrorInfo(_message.Message):
    __slots__ = ("kind", "message", "budget", "invariant")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[ErrorInfo.Kind]
        WORKER_CRASHED: _ClassVar[ErrorInfo.Kind]
        ACTOR_DIED: _ClassVar[ErrorInfo.Kind]
        TASK_CANCELLED: _ClassVar[ErrorInfo.Kind]
        OBJECT_FREED: _ClassVar[ErrorInfo.Kind]
        UNKNOWN_OBJECT: _ClassVar[ErrorInfo.Kind]
        PLACEMENT_REFUSED: _ClassVar[ErrorInfo.Kind]
        SYSTEM: _ClassVar[ErrorInfo.Kind]
        ACTOR_UNAVAILABLE: _ClassVar[ErrorInfo.Kind]
        OBJECT_LOST: _ClassVar[ErrorInfo.Kind]
        INVALID_REQUEST: _ClassVar[ErrorInfo.Kind]
        ACTOR_NOT_FOUND: _ClassVar[ErrorInfo.Kind]
        RESIDENCY_REFUSED: _ClassVar[ErrorInfo.Kind]
        QUOTA_EXCEEDED: _ClassVar[ErrorInfo.Kind]
        BUDGET_EXCEEDED: _ClassVar[ErrorInfo.Kind]
        BUDGET_REFUSED: _ClassVar[ErrorInfo.Kind]
        INVARIANT_VIOLATED: _ClassVar[ErrorInfo.Kind]
    UNKNOWN: ErrorInfo.Kind
    WORKER_CRASHED: ErrorInfo.Kind
    ACTOR_DIED: ErrorInfo.Kind
    TASK_CANCELLED: ErrorInfo.Kind
    OBJECT_FREED: ErrorInfo.Kind
    UNKNOWN_OBJECT: ErrorInfo.Kind
    PLACEMENT_REFUSED: ErrorInfo.Kind
    SYSTEM: ErrorInfo.Kind
    ACTOR_UNAVAILABLE: ErrorInfo.Kind
    OBJECT_LOST: ErrorInfo.Kind
    INVALID_REQUEST: ErrorInfo.Kind
    ACTOR_NOT_FOUND: ErrorInfo.Kind
    RESIDENCY_REFUSED: ErrorInfo.Kind
    QUOTA_EXCEEDED: ErrorInfo.Kind
    BUDGET_EXCEEDED: ErrorInfo.Kind
    BUDGET_REFUSED: ErrorInfo.Kind
    INVARIANT_VIOLATED: ErrorInfo.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    INVARIANT_FIELD_NUMBER: _ClassVar[int]
    kind: ErrorInfo.Kind
    message: str
    budget: BudgetBreach
    invariant: str
    def __init__(self, kind: _Optional[_Union[ErrorInfo.Kind, str]] = ..., message: _Optional[str] = ..., budget: _Optional[_Union[BudgetBreach, _Mapping]] = ..., invariant: _Optional[str] = ...) -> None: ...

class BudgetBreach(_message.Message):
    __slots__ = ("budget", "limit", "measured")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    budget: str
    limit: float
    measured: float
    def __init__(self, budget: _Optional[str] = ..., limit: _Optional[float] = ..., measured: _Optional[float] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("cpu_seconds", "memory", "wall_seconds", "processes", "retry")
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    cpu_seconds: float
    memory: int
    wall_seconds: float
    processes: int
    retry: bool
    def __init__(self, cpu_seconds: _Optional[float] = ..., memory: _Optional[int] = ..., wall_seconds: _Optional[float] = ..., processes: _Optional[int] = ..., retry: _Optional[bool] = ...) -> None: ...

class Arg(_message.Message):
    __slots__ = ("keyword", "object_id", "inline_blob", "owner_node", "residency", "data_classes")
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    DATA_CLASSES_FIELD_NUMBER: _ClassVar[int]
    keyword: str
    object_id: bytes
    inline_blob: bytes
    owner_node: str
    residency: str
    data_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keyword: _Optional[str] = ..., object_id: _Optional[bytes] = ..., inline_blob: _Optional[bytes] = ..., owner_node: _Optional[str] = ..., residency: _Optional[str] = ..., data_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class ActorOptions(_message.Message):
    __slots__ = ("max_restarts", "max_task_retries", "max_concurrency", "name", "namespace", "detached", "class_name", "handle_meta")
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_RETRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    HANDLE_META_FIELD_NUMBER: _ClassVar[int]
    max_restarts: int
    max_task_retries: int
    max_concurrency: int
    name: str
    namespace: str
    detached: bool
    class_name: str
    handle_meta: str
    def __init__(self, max_restarts: _Optional[int] = ..., max_task_retries: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., detached: _Optional[bool] = ..., class_name: _Optional[str] = ..., handle_meta: _Optional[str] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "kind", "function_digest", "function_blob", "function_name", "args", "num_returns", "resources", "max_retries", "retry_exceptions", "actor_id", "method_name", "sequence_no", "actor_options", "parent_task_id", "owner_node", "tenant", "job_id", "caller_id", "actor_node", "hops", "label_selector", "residency_label", "residency", "policy_version", "audit_parent", "budget", "data_classes", "trace_context", "restore_state", "restore_call")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_BLOB_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    NUM_RETURNS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NO_FIELD_NUMBER: _ClassVar[int]
    ACTOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NODE_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_LABEL_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PARENT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    DATA_CLASSES_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STATE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_CALL_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    kind: TaskKind
    function_digest: bytes
    function_blob: bytes
    function_name: str
    args: _containers.RepeatedCompositeFieldContainer[Arg]
    num_returns: int
    resources: _containers.ScalarMap[str, float]
    max_retries: int
    retry_exceptions: bool
    actor_id: bytes
    method_name: str
    sequence_no: int
    actor_options: ActorOptions
    parent_task_id: bytes
    owner_node: str
    tenant: str
    job_id: bytes
    caller_id: bytes
    actor_node: str
    hops: int
    label_selector: _containers.ScalarMap[str, str]
    residency_label: str
    residency: str
    policy_version: str
    audit_parent: str
    budget: Budget
    data_classes: _containers.RepeatedScalarFieldContainer[str]
    trace_context: _containers.ScalarMap[str, str]
    restore_state: bytes
    restore_call: int
    def __init__(self, task_id: _Optional[bytes] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., function_digest: _Optional[bytes] = ..., function_blob: _Optional[bytes] = ..., function_name: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ..., num_returns: _Optional[int] = ..., resources: _Optional[_Mapping[str, float]] = ..., max_retries: _Optional[int] = ..., retry_exceptions: _Optional[bool] = ..., actor_id: _Optional[bytes] = ..., method_name: _Optional[str] = ..., sequence_no: _Optional[int] = ..., actor_options: _Optional[_Union[ActorOptions, _Mapping]] = ..., parent_task_id: _Optional[bytes] = ..., owner_node: _Optional[str] = ..., tenant: _Optional[str] = ..., job_id: _Optional[bytes] = ..., caller_id: _Optional[bytes] = ..., actor_node: _Optional[str] = ..., hops: _Optional[int] = ..., label_selector: _Optional[_Mapping[str, str]] = ..., residency_label: _Optional[str] = ..., residency: _Optional[str] = ..., policy_version: _Optional[str] = ..., audit_parent: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., data_classes: _Optional[_Iterable[str]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., restore_state: _Optional[bytes] = ..., restore_call: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("namespace", "host_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HOST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    host_token: str
    def __init__(self, namespace: _Optional[str] = ..., host_token: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "tenant", "job_id", "store_path", "namespace", "region", "local_socket", "policy_version", "acknowledge_puts_from", "task_budget_limit", "actor_budget_limit")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_PATH_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SOCKET_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGE_PUTS_FROM_FIELD_NUMBER: _ClassVar[int]
    TASK_BUDGET_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_BUDGET_LIMIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    tenant: str
    job_id: bytes
    store_path: str
    namespace: str
    region: str
    local_socket: str
    policy_version: str
    acknowledge_puts_from: int
    task_budget_limit: Budget
    actor_budget_limit: Budget
    def __init__(self, node_id: _Optional[str] = ..., tenant: _Optional[str] = ..., job_id: _Optional[bytes] = ..., store_path: _Optional[str] = ..., namespace: _Optional[str] = ..., region: _Optional[str] = ..., local_socket: _Optional[str] = ..., policy_version: _Optional[str] = ..., acknowledge_puts_from: _Optional[int] = ..., task_budget_limit: _Optional[_Union[Budget, _Mapping]] = ..., actor_budget_limit: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PutObject(_message.Message):
    __slots__ = ("object_id", "inline_blob", "sealed_size", "contained_ids", "residency_label")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    SEALED_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_IDS_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_LABEL_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    inline_blob: bytes
    sealed_size: int
    contained_ids: _containers.RepeatedScalarFieldContainer[bytes]
    residency_label: str
    def __init__(self, object_id: _Optional[bytes] = ..., inline_blob: _Optional[bytes] = ..., sealed_size: _Optional[int] = ..., contained_ids: _Optional[_Iterable[bytes]] = ..., residency_label: _Optional[str] = ...) -> None: ...

class RefUpdate(_message.Message):
    __slots__ = ("add", "release")
    ADD_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    add: _containers.RepeatedScalarFieldContainer[bytes]
    release: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, add: _Optional[_Iterable[bytes]] = ..., release: _Optional[_Iterable[bytes]] = ...) -> None: ...

class KillActor(_message.Message):
    __slots__ = ("actor_id", "no_restart", "actor_node", "tenant")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    NO_RESTART_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NODE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    no_restart: bool
    actor_node: str
    tenant: str
    def __init__(self, actor_id: _Optional[bytes] = ..., no_restart: _Optional[bool] = ..., actor_node: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class CancelTask(_message.Message):
    __slots__ = ("task_id", "force", "recursive", "tenant")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    force: bool
    recursive: bool
    tenant: str
    def __init__(self, task_id: _Optional[bytes] = ..., force: _Optional[bool] = ..., recursive: _Optional[bool] = ..., tenant: _Optional[str] = ...) -> None: ...

class GetActor(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchInline(_message.Message):
    __slots__ = ("object_id",)
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    def __init__(self, object_id: _Optional[bytes] = ...) -> None: ...

class Blocked(_message.Message):
    __slots__ = ("blocked", "returned")
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    blocked: bool
    returned: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, blocked: _Optional[bool] = ..., returned: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("resources",)
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.ScalarMap[str, float]
    def __init__(self, resources: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CreatePlacementGroup(_message.Message):
    __slots__ = ("group_id", "bundles", "strategy", "name", "label_selector", "detached")
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    group_id: bytes
    bundles: _containers.RepeatedCompositeFieldContainer[Bundle]
    strategy: str
    name: str
    label_selector: _containers.ScalarMap[str, str]
    detached: bool
    def __init__(self, group_id: _Optional[bytes] = ..., bundles: _Optional[_Iterable[_Union[Bundle, _Mapping]]] = ..., strategy: _Optional[str] = ..., name: _Optional[str] = ..., label_selector: _Optional[_Mapping[str, str]] = ..., detached: _Optional[bool] = ...) -> None: ...

class RemovePlacementGroup(_message.Message):
    __slots__ = ("group_id", "node_id")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: bytes
    node_id: str
    def __init__(self, group_id: _Optional[bytes] = ..., node_id: _Optional[str] = ...) -> None: ...

class GetPlacementGroup(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PlacementGroupInfo(_message.Message):
    __slots__ = ("group_id", "bundles", "strategy", "name", "node_id", "state")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    group_id: bytes
    bundles: _containers.RepeatedCompositeFieldContainer[Bundle]
    strategy: str
    name: str
    node_id: str
    state: str
    def __init__(self, group_id: _Optional[bytes] = ..., bundles: _Optional[_Iterable[_Union[Bundle, _Mapping]]] = ..., strategy: _Optional[str] = ..., name: _Optional[str] = ..., node_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("request_id", "hello", "submit", "subscribe", "put", "refs", "kill", "cancel", "get_actor", "cluster_info", "fetch", "blocked", "create_placement_group", "remove_placement_group", "get_placement_group")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    GET_ACTOR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_INFO_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    CREATE_PLACEMENT_GROUP_FIELD_NUMBER: _ClassVar[int]
    REMOVE_PLACEMENT_GROUP_FIELD_NUMBER: _ClassVar[int]
    GET_PLACEMENT_GROUP_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    hello: Hello
    submit: TaskSpec
    subscribe: Subscribe
    put: PutObject
    refs: RefUpdate
    kill: KillActor
    cancel: CancelTask
    get_actor: GetActor
    cluster_info: ClusterInfoRequest
    fetch: FetchInline
    blocked: Blocked
    create_placement_group: CreatePlacementGroup
    remove_placement_group: RemovePlacementGroup
    get_placement_group: GetPlacementGroup
    def __init__(self, request_id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., submit: _Optional[_Union[TaskSpec, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., put: _Optional[_Union[PutObject, _Mapping]] = ..., refs: _Optional[_Union[RefUpdate, _Mapping]] = ..., kill: _Optional[_Union[KillActor, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ..., get_actor: _Optional[_Union[GetActor, _Mapping]] = ..., cluster_info: _Optional[_Union[ClusterInfoRequest, _Mapping]] = ..., fetch: _Optional[_Union[FetchInline, _Mapping]] = ..., blocked: _Optional[_Union[Blocked, _Mapping]] = ..., create_placement_group: _Optional[_Union[CreatePlacementGroup, _Mapping]] = ..., remove_placement_group: _Optional[_Union[RemovePlacementGroup, _Mapping]] = ..., get_placement_group: _Optional[_Union[GetPlacementGroup, _Mapping]] = ...) -> None: ...

class ObjectReady(_message.Message):
    __slots__ = ("object_id", "inline_blob", "stored_size", "error")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    STORED_SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    inline_blob: bytes
    stored_size: int
    error: ErrorInfo
    def __init__(self, object_id: _Optional[bytes] = ..., inline_blob: _Optional[bytes] = ..., stored_size: _Optional[int] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...

class ActorInfo(_message.Message):
    __slots__ = ("actor_id", "name", "namespace", "node_id", "state", "class_name", "handle_meta", "tenant")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    HANDLE_META_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    name: str
    namespace: str
    node_id: str
    state: str
    class_name: str
    handle_meta: str
    tenant: str
    def __init__(self, actor_id: _Optional[bytes] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., node_id: _Optional[str] = ..., state: _Optional[str] = ..., class_name: _Optional[str] = ..., handle_meta: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "region", "total", "available", "alive", "labels", "running_tasks", "queued_tasks", "workers", "identity", "tenant_load", "accepted")
    class TotalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AvailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TenantLoadEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TenantLoad
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TenantLoad, _Mapping]] = ...) -> None: ...
    class AcceptedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_LOAD_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    region: str
    total: _containers.ScalarMap[str, float]
    available: _containers.ScalarMap[str, float]
    alive: bool
    labels: _containers.ScalarMap[str, str]
    running_tasks: int
    queued_tasks: int
    workers: int
    identity: str
    tenant_load: _containers.MessageMap[str, TenantLoad]
    accepted: _containers.ScalarMap[str, int]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., region: _Optional[str] = ..., total: _Optional[_Mapping[str, float]] = ..., available: _Optional[_Mapping[str, float]] = ..., alive: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., running_tasks: _Optional[int] = ..., queued_tasks: _Optional[int] = ..., workers: _Optional[int] = ..., identity: _Optional[str] = ..., tenant_load: _Optional[_Mapping[str, TenantLoad]] = ..., accepted: _Optional[_Mapping[str, int]] = ...) -> None: ...

class TenantLoad(_message.Message):
    __slots__ = ("running_tasks", "queued_tasks", "workers", "actors")
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    running_tasks: int
    queued_tasks: int
    workers: int
    actors: int
    def __init__(self, running_tasks: _Optional[int] = ..., queued_tasks: _Optional[int] = ..., workers: _Optional[int] = ..., actors: _Optional[int] = ...) -> None: ...

class SignedPolicy(_message.Message):
    __slots__ = ("version", "document", "signature", "signer_certificate")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    version: str
    document: bytes
    signature: bytes
    signer_certificate: bytes
    def __init__(self, version: _Optional[str] = ..., document: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer_certificate: _Optional[bytes] = ...) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("nodes", "version", "policy")
    NODES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    version: int
    policy: SignedPolicy
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., version: _Optional[int] = ..., policy: _Optional[_Union[SignedPolicy, _Mapping]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("error", "welcome", "actor", "cluster", "inline_blob", "placement_group")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_GROUP_FIELD_NUMBER: _ClassVar[int]
    error: ErrorInfo
    welcome: Welcome
    actor: ActorInfo
    cluster: ClusterInfo
    inline_blob: bytes
    placement_group: PlacementGroupInfo
    def __init__(self, error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., actor: _Optional[_Union[ActorInfo, _Mapping]] = ..., cluster: _Optional[_Union[ClusterInfo, _Mapping]] = ..., inline_blob: _Optional[bytes] = ..., placement_group: _Optional[_Union[PlacementGroupInfo, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("request_id", "ready", "reply")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ready: ObjectReady
    reply: Reply
    def __init__(self, request_id: _Optional[int] = ..., ready: _Optional[_Union[ObjectReady, _Mapping]] = ..., reply: _Optional[_Union[Reply, _Mapping]] = ...) -> None: ...

class ClientBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ClientMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ClientMessage, _Mapping]]] = ...) -> None: ...

class ServerBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ServerMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ServerMessage, _Mapping]]] = ...) -> None: ...

class ResolvedArg(_message.Message):
    __slots__ = ("keyword", "inline_blob", "stored_id")
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    STORED_ID_FIELD_NUMBER: _ClassVar[int]
    keyword: str
    inline_blob: bytes
    stored_id: bytes
    def __init__(self, keyword: _Optional[str] = ..., inline_blob: _Optional[bytes] = ..., stored_id: _Optional[bytes] = ...) -> None: ...

class ExecuteTask(_message.Message):
    __slots__ = ("spec", "args", "restore_state")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STATE_FIELD_NUMBER: _ClassVar[int]
    spec: TaskSpec
    args: _containers.RepeatedCompositeFieldContainer[ResolvedArg]
    restore_state: bytes
    def __init__(self, spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., args: _Optional[_Iterable[_Union[ResolvedArg, _Mapping]]] = ..., restore_state: _Optional[bytes] = ...) -> None: ...

class ReturnValue(_message.Message):
    __slots__ = ("object_id", "inline_blob", "stored_size", "contained_ids")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    STORED_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_IDS_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    inline_blob: bytes
    stored_size: int
    contained_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_id: _Optional[bytes] = ..., inline_blob: _Optional[bytes] = ..., stored_size: _Optional[int] = ..., contained_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "returns", "is_error", "checkpoint", "checkpoint_error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    returns: _containers.RepeatedCompositeFieldContainer[ReturnValue]
    is_error: bool
    checkpoint: bytes
    checkpoint_error: str
    def __init__(self, task_id: _Optional[bytes] = ..., returns: _Optional[_Iterable[_Union[ReturnValue, _Mapping]]] = ..., is_error: _Optional[bool] = ..., checkpoint: _Optional[bytes] = ..., checkpoint_error: _Optional[str] = ...) -> None: ...

class WorkerStarted(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class FromWorker(_message.Message):
    __slots__ = ("client", "result", "started")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    client: ClientMessage
    result: TaskResult
    started: WorkerStarted
    def __init__(self, client: _Optional[_Union[ClientMessage, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., started: _Optional[_Union[WorkerStarted, _Mapping]] = ...) -> None: ...

class Reclaim(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ToWorker(_message.Message):
    __slots__ = ("server", "execute", "cancel", "reclaim")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RECLAIM_FIELD_NUMBER: _ClassVar[int]
    server: ServerMessage
    execute: ExecuteTask
    cancel: CancelTask
    reclaim: Reclaim
    def __init__(self, server: _Optional[_Union[ServerMessage, _Mapping]] = ..., execute: _Optional[_Union[ExecuteTask, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ..., reclaim: _Optional[_Union[Reclaim, _Mapping]] = ...) -> None: ...

class ObjectLocation(_message.Message):
    __slots__ = ("object_id", "tenant", "inline_blob", "stored_size", "error", "contained_ids", "residency", "data_classes", "moved_to")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    INLINE_BLOB_FIELD_NUMBER: _ClassVar[int]
    STORED_SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_IDS_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    DATA_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MOVED_TO_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    tenant: str
    inline_blob: bytes
    stored_size: int
    error: ErrorInfo
    contained_ids: _containers.RepeatedScalarFieldContainer[bytes]
    residency: str
    data_classes: _containers.RepeatedScalarFieldContainer[str]
    moved_to: str
    def __init__(self, object_id: _Optional[bytes] = ..., tenant: _Optional[str] = ..., inline_blob: _Optional[bytes] = ..., stored_size: _Optional[int] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., contained_ids: _Optional[_Iterable[bytes]] = ..., residency: _Optional[str] = ..., data_classes: _Optional[_Iterable[str]] = ..., moved_to: _Optional[str] = ...) -> None: ...

class TaskFinished(_message.Message):
    __slots__ = ("task_id", "returns", "tenant", "ran_on", "checkpoint", "checkpoint_call")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RAN_ON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_CALL_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    returns: _containers.RepeatedCompositeFieldContainer[ObjectLocation]
    tenant: str
    ran_on: str
    checkpoint: bytes
    checkpoint_call: int
    def __init__(self, task_id: _Optional[bytes] = ..., returns: _Optional[_Iterable[_Union[ObjectLocation, _Mapping]]] = ..., tenant: _Optional[str] = ..., ran_on: _Optional[str] = ..., checkpoint: _Optional[bytes] = ..., checkpoint_call: _Optional[int] = ...) -> None: ...

class ActorCreated(_message.Message):
    __slots__ = ("actor_id", "error")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    error: ErrorInfo
    def __init__(self, actor_id: _Optional[bytes] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...

class ReserveBundle(_message.Message):
    __slots__ = ("tenant", "group_id", "index", "resources", "attempt")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    group_id: bytes
    index: int
    resources: _containers.ScalarMap[str, float]
    attempt: int
    def __init__(self, tenant: _Optional[str] = ..., group_id: _Optional[bytes] = ..., index: _Optional[int] = ..., resources: _Optional[_Mapping[str, float]] = ..., attempt: _Optional[int] = ...) -> None: ...

class BundleReserved(_message.Message):
    __slots__ = ("tenant", "group_id", "index", "ok", "error", "attempt")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    group_id: bytes
    index: int
    ok: bool
    error: str
    attempt: int
    def __init__(self, tenant: _Optional[str] = ..., group_id: _Optional[bytes] = ..., index: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReleaseBundle(_message.Message):
    __slots__ = ("tenant", "group_id", "index", "attempt")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    group_id: bytes
    index: int
    attempt: int
    def __init__(self, tenant: _Optional[str] = ..., group_id: _Optional[bytes] = ..., index: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class PeerMessage(_message.Message):
    __slots__ = ("forward", "finished", "kill", "cancel", "free", "reserve", "reserved", "release", "remove_group")
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    REMOVE_GROUP_FIELD_NUMBER: _ClassVar[int]
    forward: TaskSpec
    finished: TaskFinished
    kill: KillActor
    cancel: CancelTask
    free: ObjectLocation
    reserve: ReserveBundle
    reserved: BundleReserved
    release: ReleaseBundle
    remove_group: ReleaseBundle
    def __init__(self, forward: _Optional[_Union[TaskSpec, _Mapping]] = ..., finished: _Optional[_Union[TaskFinished, _Mapping]] = ..., kill: _Optional[_Union[KillActor, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ..., free: _Optional[_Union[ObjectLocation, _Mapping]] = ..., reserve: _Optional[_Union[ReserveBundle, _Mapping]] = ..., reserved: _Optional[_Union[BundleReserved, _Mapping]] = ..., release: _Optional[_Union[ReleaseBundle, _Mapping]] = ..., remove_group: _Optional[_Union[ReleaseBundle, _Mapping]] = ...) -> None: ...

class PeerBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[PeerMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[PeerMessage, _Mapping]]] = ...) -> None: ...

class PeerAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("object_id", "tenant")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    tenant: str
    def __init__(self, object_id: _Optional[bytes] = ..., tenant: _Optional[str] = ...) -> None: ...

class ObjectChunk(_message.Message):
    __slots__ = ("total_size", "offset", "data", "error", "moved_to")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MOVED_TO_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    offset: int
    data: bytes
    error: ErrorInfo
    moved_to: str
    def __init__(self, total_size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., moved_to: _Optional[str] = ...) -> None: ...

class RegisterNode(_message.Message):
    __slots__ = ("address", "region", "resources", "labels")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    address: str
    region: str
    resources: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, address: _Optional[str] = ..., region: _Optional[str] = ..., resources: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NodeReport(_message.Message):
    __slots__ = ("available", "running_tasks", "queued_tasks", "workers", "register", "tenant_load", "total", "accepted")
    class AvailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TenantLoadEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TenantLoad
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TenantLoad, _Mapping]] = ...) -> None: ...
    class TotalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AcceptedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    TENANT_LOAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    available: _containers.ScalarMap[str, float]
    running_tasks: int
    queued_tasks: int
    workers: int
    register: RegisterNode
    tenant_load: _containers.MessageMap[str, TenantLoad]
    total: _containers.ScalarMap[str, float]
    accepted: _containers.ScalarMap[str, int]
    def __init__(self, available: _Optional[_Mapping[str, float]] = ..., running_tasks: _Optional[int] = ..., queued_tasks: _Optional[int] = ..., workers: _Optional[int] = ..., register: _Optional[_Union[RegisterNode, _Mapping]] = ..., tenant_load: _Optional[_Mapping[str, TenantLoad]] = ..., total: _Optional[_Mapping[str, float]] = ..., accepted: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ActorRecord(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ActorInfo
    def __init__(self, info: _Optional[_Union[ActorInfo, _Mapping]] = ...) -> None: ...

class LookupActor(_message.Message):
    __slots__ = ("tenant", "name", "namespace", "actor_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    namespace: str
    actor_id: bytes
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., actor_id: _Optional[bytes] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("text", "filename", "dry_run")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    text: str
    filename: str
    dry_run: bool
    def __init__(self, text: _Optional[str] = ..., filename: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class AuditRecords(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, entries: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AuditAck(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class AuditQuery(_message.Message):
    __slots__ = ("tenant", "kind", "outcome", "task", "actor", "object", "rule", "node", "since", "until", "limit", "after_seq", "follow", "explain")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    kind: str
    outcome: str
    task: str
    actor: str
    object: str
    rule: str
    node: str
    since: str
    until: str
    limit: int
    after_seq: int
    follow: bool
    explain: bool
    def __init__(self, tenant: _Optional[str] = ..., kind: _Optional[str] = ..., outcome: _Optional[str] = ..., task: _Optional[str] = ..., actor: _Optional[str] = ..., object: _Optional[str] = ..., rule: _Optional[str] = ..., node: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., limit: _Optional[int] = ..., after_seq: _Optional[int] = ..., follow: _Optional[bool] = ..., explain: _Optional[bool] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    data: bytes
    def __init__(self, seq: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AuditProveRequest(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class AuditProof(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    def __init__(self, bundle: _Optional[str] = ...) -> None: ...

class AuditCheckpointRequest(_message.Message):
    __slots__ = ("old_size",)
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    def __init__(self, old_size: _Optional[int] = ...) -> None: ...

class AuditCheckpointReply(_message.Message):
    __slots__ = ("checkpoint", "vkey", "consistency")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VKEY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    vkey: str
    consistency: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, checkpoint: _Optional[str] = ..., vkey: _Optional[str] = ..., consistency: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BudgetLeaseRequest(_message.Message):
    __slots__ = ("tenant", "budget", "want", "used")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    WANT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    budget: str
    want: float
    used: float
    def __init__(self, tenant: _Optional[str] = ..., budget: _Optional[str] = ..., want: _Optional[float] = ..., used: _Optional[float] = ...) -> None: ...

class BudgetLease(_message.Message):
    __slots__ = ("granted", "window", "window_seconds", "seconds_left", "limit", "leased")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    granted: float
    window: int
    window_seconds: float
    seconds_left: float
    limit: float
    leased: float
    def __init__(self, granted: _Optional[float] = ..., window: _Optional[int] = ..., window_seconds: _Optional[float] = ..., seconds_left: _Optional[float] = ..., limit: _Optional[float] = ..., leased: _Optional[float] = ...) -> None: ...
