"""click parameter types for durations (milliseconds) and sizes (bytes)."""

from __future__ import annotations

from collections.abc import Callable

import click

from lockd.units import parse_duration_ms, parse_size

__all__ = ["DURATION", "SIZE"]


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    def __init__(self, name: str, parse: Callable[[str], int]) -> None:
        self.name = name
        self._parse = parse

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return self._parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Parsed("duration", parse_duration_ms)
"""A click type giving milliseconds."""
SIZE = _Parsed("size", parse_size)
"""A click type giving bytes."""
