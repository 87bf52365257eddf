"""click parameter types for durations (milliseconds) and sizes (bytes), and the TLS
options every server command shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lockd.units import parse_duration_ms, parse_size

__all__ = ["DURATION", "SIZE", "server_tls_options"]

F = TypeVar("F", bound=Callable[..., Any])


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


def server_tls_options(serves: str) -> Callable[[F], F]:
    """--tls-cert, --tls-key and --tls-client-ca of a server command that serves `serves`
    (e.g. "gRPC")."""
    cert = click.option(
        "--tls-cert",
        type=click.Path(exists=True, path_type=Path),
        help=f"PEM certificate chain: serve {serves} over TLS.",
    )
    key = click.option(
        "--tls-key",
        type=click.Path(exists=True, path_type=Path),
        help="PEM private key of --tls-cert.",
    )
    client_ca = click.option(
        "--tls-client-ca",
        type=click.Path(exists=True, path_type=Path),
        help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
    )

    def decorate(command: F) -> F:
        return cert(key(client_ca(command)))

    return decorate
