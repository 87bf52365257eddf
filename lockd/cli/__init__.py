"""The `lockd` command line: one small module per command group, each a thin layer over a
programmatic function and its config object. Every option also reads a LOCKD_*
environment variable (`lockd engine --port` reads LOCKD_ENGINE_PORT)."""

from __future__ import annotations

import logging

import click

from lockd import __version__
from lockd.cli.checks import jepsen, sim
from lockd.cli.locks import acquire, elect, list_locks, release, renew, run, status, watch
from lockd.cli.servers import cluster, engine, repair, serve, store, store_reset

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


for command in (
    serve,
    engine,
    store,
    store_reset,
    cluster,
    repair,
    acquire,
    release,
    renew,
    status,
    list_locks,
    watch,
    run,
    elect,
    jepsen,
    sim,
):
    main.add_command(command)
