"""One exception tree for everything lockd can say.

`LockError` is the root. A gRPC status (code + google.rpc ErrorInfo reason) maps to
exactly one subclass; `from_status` does the mapping for both the unary calls and the
Session stream. Reasons are the names of `ErrorReason` (protos/lockd/v1/errors.proto).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2

from lockd_client.v1.errors_pb2 import ErrorReason

__all__ = [
    "ErrorReason",
    "InvalidRequest",
    "LeaseLost",
    "LockError",
    "LockTimeout",
    "NoLeader",
    "NotLeader",
    "NotOwned",
    "Overloaded",
    "PermissionDenied",
    "Unavailable",
    "from_rpc_error",
    "from_status",
    "reason_name",
]


class LockError(Exception):
    """Root of lockd's errors: the lock name (when known), a reason and a message."""

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})


class LockTimeout(LockError):
    """The lock stayed held by someone else for the whole wait (DEADLINE_EXCEEDED)."""


class NotOwned(LockError):
    """This lease does not hold the lock: it expired, was released, or never held it."""


class NotLeader(NotOwned):
    """This lease does not lead the election (Resign): deposed, expired or resigned."""


class NoLeader(LockError):
    """The election has no leader now (Leader: NOT_FOUND)."""


class LeaseLost(LockError):
    """The lease can no longer be relied on: renewal failed or its deadline passed."""


class Unavailable(LockError):
    """lockd cannot answer now (no quorum, nodes restarting, gateway down).

    `retry_after` is how long to wait before trying again, in seconds, when known.
    """

    @property
    def retry_after(self) -> float | None:
        """Seconds until a retry may succeed, when the gateway said."""
        ms = self.metadata.get("retry_after_ms")
        return int(ms) / 1000 if ms and ms.isdigit() else None


class Overloaded(Unavailable):
    """A gateway limit was reached (too many waiters or leases): RESOURCE_EXHAUSTED."""


class InvalidRequest(LockError):
    """The request can never succeed as sent (bad name, TTL, wait or lease id)."""


class PermissionDenied(LockError):
    """The call needs an admin credential (ForceRelease) and had none, or a wrong one."""


def reason_name(reason: ErrorReason) -> str:
    """The ErrorInfo reason string of an `ErrorReason` value (`LockError.reason`)."""
    return ErrorReason.Name(reason)


_BY_CODE: dict[grpc.StatusCode, type[LockError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: LockTimeout,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
_BY_REASON: dict[str, type[LockError]] = {
    reason_name(ErrorReason.NOT_OWNED): NotOwned,
    reason_name(ErrorReason.LEASE_LOST): LeaseLost,
    reason_name(ErrorReason.NOT_LEADER): NotLeader,
    reason_name(ErrorReason.NO_LEADER): NoLeader,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_status(
    code: grpc.StatusCode | int,
    message: str,
    reason: str = "",
    metadata: Mapping[str, str] | None = None,
    name: str | None = None,
) -> LockError:
    """The exception for a status code, ErrorInfo reason and metadata."""
    if isinstance(code, int):
        code = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code)
    if cls is None:
        cls = LockError
        message = f"{code.name}: {message}"
    return cls(message, name=name, reason=reason, metadata=metadata)


def from_rpc_error(error: grpc.RpcError, name: str | None = None) -> LockError:
    """The exception for a failed unary call (reads the ErrorInfo detail if present)."""
    code = error.code()
    message = error.details() or code.name
    reason = ""
    metadata: dict[str, str] = {}
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = info.reason
                    metadata = dict(info.metadata)
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        reason = reason_name(ErrorReason.GATEWAY_UNREACHABLE)
    return from_status(code, message, reason, metadata, name)
