"""Checkers: a history in, a verdict out (True, False or "unknown") with details."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Validity", "merge"]

Validity = bool | str
"""True, False, or "unknown"."""


def merge(verdicts: Iterable[Validity]) -> Validity:
    """Compose verdicts: any False is False; else any "unknown" is "unknown"; else True."""
    seen = list(verdicts)
    if False in seen:
        return False
    if any(v == "unknown" for v in seen):
        return "unknown"
    return True
