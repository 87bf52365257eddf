"""What the client commands share: the connection flags, running one command on an
`AsyncClient` with errors mapped to exit statuses (`lockd.exits`), and table output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lockd.cli.params import DURATION

if TYPE_CHECKING:
    from lockd_client import AsyncClient

__all__ = ["client_options", "lease_id", "run_client", "table"]


def client_options(f: Callable[..., None]) -> Callable[..., None]:
    """--endpoint (repeatable), TLS and timeout flags shared by the client commands."""
    options = [
        click.option(
            "--endpoint",
            "endpoints",
            multiple=True,
            envvar="LOCKD_ENDPOINT",
            default=("127.0.0.1:7400",),
            metavar="HOST:PORT",
            help="Gateway address; repeat for failover (LOCKD_ENDPOINT: space-separated).",
        ),
        click.option(
            "--tls",
            is_flag=True,
            envvar="LOCKD_TLS",
            help="Use TLS (implied by the --tls-* flags).",
        ),
        click.option(
            "--tls-ca",
            type=click.Path(exists=True, path_type=Path),
            envvar="LOCKD_TLS_CA",
            help="PEM CA bundle that signed the gateway.",
        ),
        click.option(
            "--tls-cert",
            type=click.Path(exists=True, path_type=Path),
            envvar="LOCKD_TLS_CERT",
            help="PEM client certificate (mutual TLS).",
        ),
        click.option(
            "--tls-key",
            type=click.Path(exists=True, path_type=Path),
            envvar="LOCKD_TLS_KEY",
            help="PEM key of --tls-cert.",
        ),
        click.option(
            "--timeout",
            default="10s",
            type=DURATION,
            envvar="LOCKD_TIMEOUT",
            help="How long one call may take, waiting excluded.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _client(
    endpoints: tuple[str, ...],
    tls: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: int,
) -> AsyncClient:
    from lockd_client import TLS, AsyncClient

    settings = TLS(tls_ca, tls_cert, tls_key) if tls or tls_ca or tls_cert or tls_key else None
    return AsyncClient(list(endpoints), tls=settings, timeout=timeout / 1000)


def run_client(
    coro_factory: Callable[[AsyncClient], Coroutine[Any, Any, int]], **conn: Any
) -> None:
    """Run one client command and exit with its status; a lock error becomes a message
    and the status `lockd.exits.for_error` gives it."""
    from lockd import exits
    from lockd_client import LockError, Unavailable

    async def main() -> int:
        client = _client(**conn)
        try:
            return await coro_factory(client)
        finally:
            await client.close()

    try:
        code = asyncio.run(main())
    except LockError as exc:
        retry = ""
        if isinstance(exc, Unavailable) and exc.retry_after:
            retry = f" (retry in {exc.retry_after:.1f}s)"
        click.echo(f"lockd: {exc}{retry}", err=True)
        sys.exit(exits.for_error(exc))
    sys.exit(code)


def lease_id(value: str) -> bytes:
    """The 16 bytes of a lease id written in hex."""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("a lease id is 32 hex digits") from None
    if len(raw) != 16:
        raise click.BadParameter("a lease id is 32 hex digits")
    return raw


def table(headers: list[str], rows: Sequence[Sequence[str]], header: bool = True) -> str:
    """Rows as aligned columns (with a header line and a rule unless `header` is False)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines: list[Sequence[str]] = [headers] if header else []
    lines += rows
    out = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    if header:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
