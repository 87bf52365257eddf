"""Gateway errors: each maps to one gRPC status code and an ErrorInfo reason."""

from __future__ import annotations

import grpc

__all__ = [
    "DOMAIN",
    "LockdError",
    "deadline",
    "exhausted",
    "invalid",
    "precondition",
    "unavailable",
]

DOMAIN = "lockd"


class LockdError(Exception):
    """An error a caller can act on: status code, ErrorInfo reason, message, metadata."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata


def invalid(reason: str, message: str) -> LockdError:
    """INVALID_ARGUMENT."""
    return LockdError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def exhausted(reason: str, message: str) -> LockdError:
    """RESOURCE_EXHAUSTED."""
    return LockdError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message)


def unavailable(reason: str, message: str, retry_after_ms: int | None = None) -> LockdError:
    """UNAVAILABLE, with a retry hint when one is known."""
    extra = {} if retry_after_ms is None else {"retry_after_ms": str(retry_after_ms)}
    return LockdError(grpc.StatusCode.UNAVAILABLE, reason, message, **extra)


def precondition(reason: str, message: str) -> LockdError:
    """FAILED_PRECONDITION."""
    return LockdError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def deadline(reason: str, message: str) -> LockdError:
    """DEADLINE_EXCEEDED."""
    return LockdError(grpc.StatusCode.DEADLINE_EXCEEDED, reason, message)
