"""Errors of lockd's gRPC services (the gateway and the fenced store): each maps to one
status code and a google.rpc ErrorInfo reason from the `ErrorReason` enum
(protos/lockd/v1/errors.proto); `abort` ends a call with one."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from lockd.v1.errors_pb2 import ErrorReason

__all__ = [
    "DOMAIN",
    "ErrorReason",
    "LockdError",
    "abort",
    "deadline",
    "exhausted",
    "invalid",
    "precondition",
    "unavailable",
]

DOMAIN = "lockd"


class LockdError(Exception):
    """An error a caller can act on: status code, ErrorInfo reason, message, metadata."""

    def __init__(
        self, code: grpc.StatusCode, reason: ErrorReason, message: str, **metadata: str
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = ErrorReason.Name(reason)
        self.message = message
        self.metadata = metadata


def invalid(reason: ErrorReason, message: str) -> LockdError:
    """INVALID_ARGUMENT."""
    return LockdError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def exhausted(reason: ErrorReason, message: str) -> LockdError:
    """RESOURCE_EXHAUSTED."""
    return LockdError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message)


def unavailable(reason: ErrorReason, message: str, retry_after_ms: int | None = None) -> LockdError:
    """UNAVAILABLE, with a retry hint when one is known."""
    extra = {} if retry_after_ms is None else {"retry_after_ms": str(retry_after_ms)}
    return LockdError(grpc.StatusCode.UNAVAILABLE, reason, message, **extra)


def precondition(reason: ErrorReason, message: str) -> LockdError:
    """FAILED_PRECONDITION."""
    return LockdError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def deadline(reason: ErrorReason, message: str) -> LockdError:
    """DEADLINE_EXCEEDED."""
    return LockdError(grpc.StatusCode.DEADLINE_EXCEEDED, reason, message)


DEADLINE_MARGIN_S = 0.005
"""An answer due this close to the call's deadline (or past it) is not sent: grpc ends
the call at the deadline itself, and a status sent after that fails in grpc's core."""


async def abort(context: Any, error: LockdError) -> NoReturn:
    """End the call (a grpc.aio ServicerContext) with `error`'s code, message and a
    google.rpc ErrorInfo detail; when the call is over or its deadline is at hand (a
    wait that ends at the deadline: an expected race, not an error), end the handler
    without a status, so grpc ends the call with DEADLINE_EXCEEDED and logs no error."""
    remaining = context.time_remaining()
    if context.done() or (remaining is not None and remaining <= DEADLINE_MARGIN_S):
        raise asyncio.CancelledError(f"call ended at its deadline: {error.message}")
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
    raise AssertionError("unreachable")  # abort raises
