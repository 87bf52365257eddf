from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    BAD_REQUEST: _ClassVar[ErrorReason]
    BAD_NAME: _ClassVar[ErrorReason]
    BAD_TTL: _ClassVar[ErrorReason]
    BAD_WAIT: _ClassVar[ErrorReason]
    BAD_LEASE_ID: _ClassVar[ErrorReason]
    BAD_OWNER: _ClassVar[ErrorReason]
    BAD_VALUE: _ClassVar[ErrorReason]
    BAD_PAGE: _ClassVar[ErrorReason]
    NOT_ADMIN: _ClassVar[ErrorReason]
    NO_LEADER: _ClassVar[ErrorReason]
    LOCK_HELD: _ClassVar[ErrorReason]
    QUORUM_UNAVAILABLE: _ClassVar[ErrorReason]
    NODES_RESTARTING: _ClassVar[ErrorReason]
    TTL_TOO_SHORT: _ClassVar[ErrorReason]
    FENCE_CONTENDED: _ClassVar[ErrorReason]
    SHUTTING_DOWN: _ClassVar[ErrorReason]
    STORE_FAILED: _ClassVar[ErrorReason]
    NOT_OWNED: _ClassVar[ErrorReason]
    LEASE_LOST: _ClassVar[ErrorReason]
    NOT_LEADER: _ClassVar[ErrorReason]
    STALE_TOKEN: _ClassVar[ErrorReason]
    VALUE_CHANGED: _ClassVar[ErrorReason]
    TOO_MANY_WAITERS: _ClassVar[ErrorReason]
    TOO_MANY_LOCKS: _ClassVar[ErrorReason]
    WATCHER_TOO_SLOW: _ClassVar[ErrorReason]
    TOO_MANY_WATCHERS: _ClassVar[ErrorReason]
    GATEWAY_UNREACHABLE: _ClassVar[ErrorReason]
    TIMEOUT: _ClassVar[ErrorReason]
    RELEASED: _ClassVar[ErrorReason]
    EXPIRED: _ClassVar[ErrorReason]
    RENEW_FAILED: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
BAD_REQUEST: ErrorReason
BAD_NAME: ErrorReason
BAD_TTL: ErrorReason
BAD_WAIT: ErrorReason
BAD_LEASE_ID: ErrorReason
BAD_OWNER: ErrorReason
BAD_VALUE: ErrorReason
BAD_PAGE: ErrorReason
NOT_ADMIN: ErrorReason
NO_LEADER: ErrorReason
LOCK_HELD: ErrorReason
QUORUM_UNAVAILABLE: ErrorReason
NODES_RESTARTING: ErrorReason
TTL_TOO_SHORT: ErrorReason
FENCE_CONTENDED: ErrorReason
SHUTTING_DOWN: ErrorReason
STORE_FAILED: ErrorReason
NOT_OWNED: ErrorReason
LEASE_LOST: ErrorReason
NOT_LEADER: ErrorReason
STALE_TOKEN: ErrorReason
VALUE_CHANGED: ErrorReason
TOO_MANY_WAITERS: ErrorReason
TOO_MANY_LOCKS: ErrorReason
WATCHER_TOO_SLOW: ErrorReason
TOO_MANY_WATCHERS: ErrorReason
GATEWAY_UNREACHABLE: ErrorReason
TIMEOUT: ErrorReason
RELEASED: ErrorReason
EXPIRED: ErrorReason
RENEW_FAILED: ErrorReason
