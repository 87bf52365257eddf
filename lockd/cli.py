"""The `lockd` command line. Every option also reads a LOCKD_* environment variable
(`lockd engine --port` reads LOCKD_ENGINE_PORT)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from lockd import __version__
from lockd.units import DURATION, SIZE

__all__ = ["main"]


@click.group(context_settings={"auto_envvar_prefix": "LOCKD", "show_default": True})
@click.version_option(__version__, prog_name="lockd")
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log verbosity.",
)
def main(log_level: str) -> None:
    """lockd: a distributed lock service with fencing tokens."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option(
    "--port",
    default=7379,
    type=click.IntRange(0, 65535),
    help="TCP port for RESP clients (0 picks a free one).",
)
@click.option(
    "--dir",
    "directory",
    default="./var/engine",
    type=click.Path(path_type=Path),
    help="Data directory (append-only file, fencing reservation).",
)
@click.option(
    "--appendfsync",
    default="everysec",
    type=click.Choice(["always", "everysec", "no"]),
    help="When the append-only file is fsynced. Fencing counters are durable "
    "under every policy (reserved ahead with fsync).",
)
@click.option(
    "--max-ttl",
    default="60s",
    type=DURATION,
    help="Longest lock TTL this node grants; after an unclean stop it refuses "
    "acquisitions for max-ttl plus drift.",
)
@click.option(
    "--maxmemory",
    default="0",
    type=SIZE,
    help="Memory cap for keys (0 = none). Above it new keys are refused with "
    "OOM; nothing is ever evicted.",
)
@click.option(
    "--fence-block",
    default=1024,
    type=click.IntRange(1),
    help="Fencing values reserved per fsync of the reservation file.",
)
@click.option(
    "--hold-aof-until-fsync",
    is_flag=True,
    hidden=True,
    help="TEST ONLY: keep AOF writes in this process until fsync, so that "
    "kill -9 loses exactly what a power cut would.",
)
def engine(
    host: str,
    port: int,
    directory: Path,
    appendfsync: str,
    max_ttl: int,
    maxmemory: int,
    fence_block: int,
    hold_aof_until_fsync: bool,
) -> None:
    """Run one engine node speaking RESP (redis-cli and redis-py work unchanged)."""
    from lockd.engine import Engine, EngineConfig, FsyncPolicy
    from lockd.resp.server import serve

    config = EngineConfig(
        dir=directory,
        appendfsync=FsyncPolicy(appendfsync),
        max_ttl_ms=max_ttl,
        maxmemory=maxmemory,
        fence_block=fence_block,
        hold_until_fsync=hold_aof_until_fsync,
        port=port,
    )
    try:
        node = Engine(config)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(f"cannot open data directory {directory}: {exc}") from exc
    asyncio.run(serve(node, host, port))
