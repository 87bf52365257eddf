"""Exit statuses of every `lockd` command, in one table (the README shows it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lockd_client import LockError

__all__ = [
    "CANNOT_RUN",
    "FAILED",
    "HARNESS_FAILED",
    "INTERRUPTED",
    "INVALID",
    "LEASE_LOST",
    "NOT_ACQUIRED",
    "OK",
    "PERMISSION_DENIED",
    "UNAVAILABLE",
    "UNKNOWN",
    "USAGE",
    "VALID",
    "for_error",
    "for_validity",
]

OK = 0
"""Done (for `lockd run`/`lockd elect`: CMD's own status, 128+N if it died of signal N)."""
FAILED = 1
"""lockd refused the request: the lease does not hold the lock, or another lock error."""
USAGE = 2
"""The command line or the request is invalid (a bad flag, name, TTL or lease id)."""
NOT_ACQUIRED = 3
"""The lock stayed held by someone else for the whole --wait."""
UNAVAILABLE = 4
"""lockd could not answer: no gateway reachable, no quorum, nodes restarting, overloaded."""
LEASE_LOST = 5
"""The lease was lost (while CMD ran, or when renewing it)."""
PERMISSION_DENIED = 6
"""An admin command (`release --force`) without a valid admin credential."""
CANNOT_RUN = 127
"""CMD could not be started (not found or not executable)."""
INTERRUPTED = 130
"""Interrupted by Ctrl-C."""

# Verdicts of the checking commands (`lockd jepsen run|check`, `lockd sim`).
VALID = 0
"""Every checker (every seed) passed."""
INVALID = 1
"""A checker found a violation (a seed failed)."""
UNKNOWN = 2
"""A checker could not decide (limits hit, or a history it cannot judge)."""
HARNESS_FAILED = 3
"""The harness could not run the test."""


def for_error(exc: LockError) -> int:
    """The exit status of a command that failed with `exc`."""
    from lockd_client import InvalidRequest, LeaseLost, LockTimeout, PermissionDenied, Unavailable

    if isinstance(exc, LockTimeout):
        return NOT_ACQUIRED
    if isinstance(exc, Unavailable):
        return UNAVAILABLE
    if isinstance(exc, InvalidRequest):
        return USAGE
    if isinstance(exc, LeaseLost):
        return LEASE_LOST
    if isinstance(exc, PermissionDenied):
        return PERMISSION_DENIED
    return FAILED


def for_validity(valid: bool | str | None) -> int:
    """The exit status for a verdict: True valid, False invalid, anything else unknown."""
    return VALID if valid is True else INVALID if valid is False else UNKNOWN
