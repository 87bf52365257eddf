from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_MODE_UNSPECIFIED: _ClassVar[NodeMode]
    NODE_MODE_EMBEDDED: _ClassVar[NodeMode]
    NODE_MODE_LOCKD_ENGINE: _ClassVar[NodeMode]
    NODE_MODE_REDIS: _ClassVar[NodeMode]
NODE_MODE_UNSPECIFIED: NodeMode
NODE_MODE_EMBEDDED: NodeMode
NODE_MODE_LOCKD_ENGINE: NodeMode
NODE_MODE_REDIS: NodeMode

class AcquireRequest(_message.Message):
    __slots__ = ("name", "ttl_ms", "wait_ms", "owner", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    ttl_ms: int
    wait_ms: int
    owner: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., wait_ms: _Optional[int] = ..., owner: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("lease_id", "fencing_token", "validity_ms", "ttl_ms")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    lease_id: bytes
    fencing_token: int
    validity_ms: int
    ttl_ms: int
    def __init__(self, lease_id: _Optional[bytes] = ..., fencing_token: _Optional[int] = ..., validity_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("name", "lease_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_id: bytes
    def __init__(self, name: _Optional[str] = ..., lease_id: _Optional[bytes] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("nodes_released",)
    NODES_RELEASED_FIELD_NUMBER: _ClassVar[int]
    nodes_released: int
    def __init__(self, nodes_released: _Optional[int] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("name", "lease_id", "ttl_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_id: bytes
    ttl_ms: int
    def __init__(self, name: _Optional[str] = ..., lease_id: _Optional[bytes] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("validity_ms",)
    VALIDITY_MS_FIELD_NUMBER: _ClassVar[int]
    validity_ms: int
    def __init__(self, validity_ms: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("name", "held", "ttl_remaining_ms", "fencing_counter", "waiters", "nodes_answered", "nodes_holding", "owner", "value", "acquired_at_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    TTL_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    FENCING_COUNTER_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    NODES_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    NODES_HOLDING_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    held: bool
    ttl_remaining_ms: int
    fencing_counter: int
    waiters: int
    nodes_answered: int
    nodes_holding: int
    owner: str
    value: bytes
    acquired_at_ms: int
    def __init__(self, name: _Optional[str] = ..., held: _Optional[bool] = ..., ttl_remaining_ms: _Optional[int] = ..., fencing_counter: _Optional[int] = ..., waiters: _Optional[int] = ..., nodes_answered: _Optional[int] = ..., nodes_holding: _Optional[int] = ..., owner: _Optional[str] = ..., value: _Optional[bytes] = ..., acquired_at_ms: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("prefix", "page_token", "page_size")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_token: str
    page_size: int
    def __init__(self, prefix: _Optional[str] = ..., page_token: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("locks", "next_page_token")
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    locks: _containers.RepeatedCompositeFieldContainer[LockEntry]
    next_page_token: str
    def __init__(self, locks: _Optional[_Iterable[_Union[LockEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LockEntry(_message.Message):
    __slots__ = ("name", "owner", "value", "fencing_token", "ttl_remaining_ms", "acquired_at_ms", "waiters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TTL_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    value: bytes
    fencing_token: int
    ttl_remaining_ms: int
    acquired_at_ms: int
    waiters: int
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., value: _Optional[bytes] = ..., fencing_token: _Optional[int] = ..., ttl_remaining_ms: _Optional[int] = ..., acquired_at_ms: _Optional[int] = ..., waiters: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("name", "prefix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefix: bool
    def __init__(self, name: _Optional[str] = ..., prefix: _Optional[bool] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("type", "name", "held", "fencing_token", "owner", "value", "ttl_remaining_ms", "acquired_at_ms")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[WatchEvent.Type]
        STATE: _ClassVar[WatchEvent.Type]
        SYNCED: _ClassVar[WatchEvent.Type]
        ACQUIRED: _ClassVar[WatchEvent.Type]
        RELEASED: _ClassVar[WatchEvent.Type]
        EXPIRED: _ClassVar[WatchEvent.Type]
        FORCE_RELEASED: _ClassVar[WatchEvent.Type]
        UPDATED: _ClassVar[WatchEvent.Type]
    TYPE_UNSPECIFIED: WatchEvent.Type
    STATE: WatchEvent.Type
    SYNCED: WatchEvent.Type
    ACQUIRED: WatchEvent.Type
    RELEASED: WatchEvent.Type
    EXPIRED: WatchEvent.Type
    FORCE_RELEASED: WatchEvent.Type
    UPDATED: WatchEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    type: WatchEvent.Type
    name: str
    held: bool
    fencing_token: int
    owner: str
    value: bytes
    ttl_remaining_ms: int
    acquired_at_ms: int
    def __init__(self, type: _Optional[_Union[WatchEvent.Type, str]] = ..., name: _Optional[str] = ..., held: _Optional[bool] = ..., fencing_token: _Optional[int] = ..., owner: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl_remaining_ms: _Optional[int] = ..., acquired_at_ms: _Optional[int] = ...) -> None: ...

class ForceReleaseRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ForceReleaseResponse(_message.Message):
    __slots__ = ("released", "nodes_released", "fencing_counter")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    NODES_RELEASED_FIELD_NUMBER: _ClassVar[int]
    FENCING_COUNTER_FIELD_NUMBER: _ClassVar[int]
    released: bool
    nodes_released: int
    fencing_counter: int
    def __init__(self, released: _Optional[bool] = ..., nodes_released: _Optional[int] = ..., fencing_counter: _Optional[int] = ...) -> None: ...

class CampaignRequest(_message.Message):
    __slots__ = ("election", "value", "ttl_ms", "owner", "wait_ms")
    ELECTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    election: str
    value: bytes
    ttl_ms: int
    owner: str
    wait_ms: int
    def __init__(self, election: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl_ms: _Optional[int] = ..., owner: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class LeaderKey(_message.Message):
    __slots__ = ("election", "lease_id", "term")
    ELECTION_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    election: str
    lease_id: bytes
    term: int
    def __init__(self, election: _Optional[str] = ..., lease_id: _Optional[bytes] = ..., term: _Optional[int] = ...) -> None: ...

class CampaignResponse(_message.Message):
    __slots__ = ("leader", "validity_ms", "ttl_ms", "lock_name")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    LOCK_NAME_FIELD_NUMBER: _ClassVar[int]
    leader: LeaderKey
    validity_ms: int
    ttl_ms: int
    lock_name: str
    def __init__(self, leader: _Optional[_Union[LeaderKey, _Mapping]] = ..., validity_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., lock_name: _Optional[str] = ...) -> None: ...

class ProclaimRequest(_message.Message):
    __slots__ = ("leader", "value", "ttl_ms", "owner")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    leader: LeaderKey
    value: bytes
    ttl_ms: int
    owner: str
    def __init__(self, leader: _Optional[_Union[LeaderKey, _Mapping]] = ..., value: _Optional[bytes] = ..., ttl_ms: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class ProclaimResponse(_message.Message):
    __slots__ = ("validity_ms",)
    VALIDITY_MS_FIELD_NUMBER: _ClassVar[int]
    validity_ms: int
    def __init__(self, validity_ms: _Optional[int] = ...) -> None: ...

class ResignRequest(_message.Message):
    __slots__ = ("leader",)
    LEADER_FIELD_NUMBER: _ClassVar[int]
    leader: LeaderKey
    def __init__(self, leader: _Optional[_Union[LeaderKey, _Mapping]] = ...) -> None: ...

class ResignResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaderRequest(_message.Message):
    __slots__ = ("election",)
    ELECTION_FIELD_NUMBER: _ClassVar[int]
    election: str
    def __init__(self, election: _Optional[str] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("election",)
    ELECTION_FIELD_NUMBER: _ClassVar[int]
    election: str
    def __init__(self, election: _Optional[str] = ...) -> None: ...

class LeaderResponse(_message.Message):
    __slots__ = ("election", "term", "value", "owner", "ttl_remaining_ms")
    ELECTION_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TTL_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    election: str
    term: int
    value: bytes
    owner: str
    ttl_remaining_ms: int
    def __init__(self, election: _Optional[str] = ..., term: _Optional[int] = ..., value: _Optional[bytes] = ..., owner: _Optional[str] = ..., ttl_remaining_ms: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("id", "acquire", "release", "renew")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    id: int
    acquire: AcquireRequest
    release: ReleaseRequest
    renew: RenewRequest
    def __init__(self, id: _Optional[int] = ..., acquire: _Optional[_Union[AcquireRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., renew: _Optional[_Union[RenewRequest, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("id", "acquire", "release", "renew", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    acquire: AcquireResponse
    release: ReleaseResponse
    renew: RenewResponse
    error: Error
    def __init__(self, id: _Optional[int] = ..., acquire: _Optional[_Union[AcquireResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., renew: _Optional[_Union[RenewResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "reason", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("nodes", "quorum", "quorum_available", "version")
    NODES_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    QUORUM_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    quorum: int
    quorum_available: bool
    version: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., quorum: _Optional[int] = ..., quorum_available: _Optional[bool] = ..., version: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("address", "mode", "reachable", "latency_ms", "restart_delay_remaining_ms", "restart_delay_reason", "run_id", "error")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    RESTART_DELAY_REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    RESTART_DELAY_REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    address: str
    mode: NodeMode
    reachable: bool
    latency_ms: float
    restart_delay_remaining_ms: int
    restart_delay_reason: str
    run_id: str
    error: str
    def __init__(self, address: _Optional[str] = ..., mode: _Optional[_Union[NodeMode, str]] = ..., reachable: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., restart_delay_remaining_ms: _Optional[int] = ..., restart_delay_reason: _Optional[str] = ..., run_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...
