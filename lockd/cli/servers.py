"""Server commands: `lockd serve` (the gateway), `lockd engine` (one node), `lockd store`
(the fenced sample storage) and `lockd cluster` (the production shape on one machine).
Each builds its config object and calls the programmatic `run`/`serve` of its package."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from lockd.cli.params import DURATION, SIZE, server_tls_options

__all__ = ["cluster", "engine", "repair", "serve", "store"]


def admin_options(call: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """--admin-token-file and --admin-cn of a server whose admin call is `call`."""

    def add(f: Callable[..., None]) -> Callable[..., None]:
        f = click.option(
            "--admin-cn",
            multiple=True,
            metavar="NAME",
            help=f"Client certificate CN allowed to call {call} (repeatable; needs "
            "--tls-client-ca).",
        )(f)
        return click.option(
            "--admin-token-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help=f"File holding the admin token {call} accepts.",
        )(f)

    return add


def check_admin_options(
    admin_token_file: Path | None, admin_cn: tuple[str, ...], tls_client_ca: Path | None
) -> None:
    """Refuse an empty admin token file, or --admin-cn without mutual TLS."""
    if admin_token_file is not None and not admin_token_file.read_bytes().strip():
        raise click.BadParameter("the file is empty", param_hint="--admin-token-file")
    if admin_cn and tls_client_ca is None:
        raise click.BadParameter("needs --tls-client-ca (mutual TLS)", param_hint="--admin-cn")


@click.command()
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
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the password clients must AUTH with (Redis's requirepass); "
    "LOCKD_ENGINE_PASSWORD gives it too. Without either, no authentication.",
)
@server_tls_options("RESP")
@click.option(
    "--max-client-input",
    default="128mb",
    type=SIZE,
    help="Bytes all clients together may have sent in commands not yet complete; past "
    "it the connections holding the most are closed.",
)
@click.option(
    "--idle-timeout",
    default="5m",
    type=DURATION,
    help="Close a client connection silent this long (0: never; subscribers exempt).",
)
@click.option(
    "--tcp-keepalive",
    default="60s",
    type=DURATION,
    help="Send TCP keepalive probes after this much silence (0: off).",
)
@click.option(
    "--hold-aof-until-fsync",
    is_flag=True,
    hidden=True,
    help="TEST ONLY: keep AOF writes in this process until fsync, so that "
    "kill -9 loses exactly what a power cut would.",
)
@click.option(
    "--enable-clock-control",
    is_flag=True,
    help="TEST ONLY: accept LOCKD.CLOCK RATE|JUMP|OFFSET|GET, with which the Jepsen "
    "harness drifts this node's clock and steps its wall clock.",
)
@click.option(
    "--unsafe-wall-clock",
    is_flag=True,
    help="UNSAFE: measure TTLs on the wall clock, so a clock step expires locks early "
    "(the harness shows with it what monotonic time buys).",
)
@click.option(
    "--enable-disk-faults",
    is_flag=True,
    help="TEST ONLY: accept LOCKD.DISK FAIL <errno>|HEAL|GET, with which the Jepsen "
    "harness makes this node's disk writes fail.",
)
def engine(
    host: str,
    port: int,
    directory: Path,
    appendfsync: str,
    max_ttl: int,
    maxmemory: int,
    fence_block: int,
    password_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    max_client_input: int,
    idle_timeout: int,
    tcp_keepalive: int,
    hold_aof_until_fsync: bool,
    enable_clock_control: bool,
    unsafe_wall_clock: bool,
    enable_disk_faults: bool,
) -> None:
    """Run one engine node speaking RESP (redis-cli and redis-py work unchanged)."""
    from lockd.engine import EngineConfig, FsyncPolicy
    from lockd.engine.server import ServerLimits, run

    password = os.environ.get("LOCKD_ENGINE_PASSWORD") or None
    if password_file is not None:
        password = password_file.read_text().strip()
        if not password:
            raise click.BadParameter("the file is empty", param_hint="--password-file")
    config = EngineConfig(
        dir=directory,
        appendfsync=FsyncPolicy(appendfsync),
        max_ttl_ms=max_ttl,
        maxmemory=maxmemory,
        fence_block=fence_block,
        hold_until_fsync=hold_aof_until_fsync,
        host=host,
        port=port,
        password=password,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        clock_control=enable_clock_control,
        unsafe_wall_clock=unsafe_wall_clock,
        disk_faults=enable_disk_faults,
    )
    limits = ServerLimits(
        total_query_buffer=max_client_input,
        idle_timeout_s=idle_timeout / 1000,
        keepalive_s=max(0, round(tcp_keepalive / 1000)),
    )
    try:
        asyncio.run(run(config, limits))
    except (OSError, RuntimeError, ValueError) as exc:
        raise click.ClickException(f"cannot run the engine on {directory}: {exc}") from exc


@click.command("store-reset")
@click.argument("resource")
@click.option(
    "--store",
    "endpoint",
    default="127.0.0.1:7500",
    metavar="HOST:PORT",
    help="Address of the `lockd store`.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the store's admin token (or set LOCKD_ADMIN_TOKEN).",
)
@click.option("--tls-ca", type=click.Path(exists=True, path_type=Path), help="PEM CA bundle.")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, path_type=Path),
    help="PEM client certificate (an admin CN, instead of the token).",
)
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), help="PEM key.")
def store_reset(
    resource: str,
    endpoint: str,
    admin_token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Admin: set RESOURCE's highest token at the store back to 0, so writers are
    accepted again (after a write with a token no lock reaches, such as 2^64-1). Logged
    by the store at WARNING; stop the resource's writers first. Exit 6 without a valid
    admin credential."""
    import grpc

    from lockd import exits
    from lockd_client import TLS, StoreClient, StoreError

    token = (
        admin_token_file.read_text().strip()
        if admin_token_file is not None
        else os.environ.get("LOCKD_ADMIN_TOKEN", "").strip()
    )
    tls = TLS(tls_ca, tls_cert, tls_key) if tls_ca or tls_cert or tls_key else None
    client = StoreClient(endpoint, credentials=tls.credentials() if tls else None)
    try:
        replaced = client.reset_fence(resource, token)
    except StoreError as exc:
        click.echo(f"lockd: {exc}", err=True)
        denied = exc.code == grpc.StatusCode.PERMISSION_DENIED
        sys.exit(exits.PERMISSION_DENIED if denied else exits.for_error(exc))
    finally:
        client.close()
    click.echo(f"reset the fence of {resource}: highest token {replaced} -> 0")


@click.command()
@click.option(
    "--listen", default="127.0.0.1:7400", metavar="HOST:PORT", help="gRPC address to listen on."
)
@click.option(
    "--data-dir",
    default="./var/lockd",
    type=click.Path(path_type=Path),
    help="Data directory of the five embedded engines (one subdirectory each).",
)
@click.option(
    "--nodes",
    default="",
    metavar="URL,...",
    help="Use RESP nodes instead of embedded engines: comma-separated "
    "redis://host:port URLs of `lockd engine` processes or Redis 7+/Valkey.",
)
@click.option("--max-ttl", default="60s", type=DURATION, help="Longest TTL a lease may ask for.")
@click.option(
    "--node-timeout",
    default="200ms",
    type=DURATION,
    help="How long one node may take to answer before it counts as failed.",
)
@click.option(
    "--appendfsync",
    default="everysec",
    type=click.Choice(["always", "everysec", "no"]),
    help="fsync policy of the embedded engines (always: every write fsynced before it is "
    "answered; concurrent calls share fsyncs, the five engines fsync in parallel).",
)
@click.option(
    "--metrics-listen",
    default="",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (off when empty).",
)
@server_tls_options("gRPC")
@admin_options("ForceRelease (`lockd release --force`)")
@click.option(
    "--max-waiters-per-lock",
    default=1024,
    type=click.IntRange(1),
    help="Acquire calls that may wait for one lock at this gateway.",
)
@click.option(
    "--session-window",
    default=1024,
    type=click.IntRange(1),
    help="Requests one Session stream may have unanswered before the gateway stops "
    "reading it (flow control).",
)
@click.option(
    "--session-backlog",
    default=65_536,
    type=click.IntRange(1),
    help="Unanswered Session requests over all streams; past it a stream is read only "
    "while it has none.",
)
@click.option(
    "--max-watchers",
    default=10_000,
    type=click.IntRange(1),
    help="Watch streams this gateway serves at once.",
)
@click.option(
    "--watch-queue",
    default=1024,
    type=click.IntRange(1),
    help="Events a watcher may fall behind before it is cut off.",
)
@click.option(
    "--shutdown-grace",
    default="5s",
    type=DURATION,
    help="On SIGTERM, how long in-flight calls may take to finish.",
)
def serve(
    listen: str,
    data_dir: Path,
    nodes: str,
    max_ttl: int,
    node_timeout: int,
    appendfsync: str,
    metrics_listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    admin_token_file: Path | None,
    admin_cn: tuple[str, ...],
    max_waiters_per_lock: int,
    session_window: int,
    session_backlog: int,
    max_watchers: int,
    watch_queue: int,
    shutdown_grace: int,
) -> None:
    """Run the gRPC lock service (lockd.v1) on five embedded engines, or on --nodes."""
    from lockd.engine import FsyncPolicy
    from lockd.gateway import GatewayConfig
    from lockd.gateway import serve as run_gateway
    from lockd.gateway.nodes import UnsafeNodeError

    config = GatewayConfig(
        listen=listen,
        data_dir=data_dir,
        nodes=tuple(u.strip() for u in nodes.split(",") if u.strip()),
        max_ttl_ms=max_ttl,
        node_timeout_ms=node_timeout,
        appendfsync=FsyncPolicy(appendfsync),
        metrics_listen=metrics_listen or None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        admin_token_file=admin_token_file,
        admin_cns=admin_cn,
        max_waiters_per_lock=max_waiters_per_lock,
        session_window=session_window,
        session_backlog=session_backlog,
        max_watchers=max_watchers,
        watch_queue=watch_queue,
        shutdown_grace_s=shutdown_grace / 1000,
    )
    check_admin_options(admin_token_file, admin_cn, tls_client_ca)
    try:
        asyncio.run(run_gateway(config))
    except (UnsafeNodeError, ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:7500",
    metavar="HOST:PORT",
    help="gRPC address of the FencedStore service.",
)
@click.option(
    "--dir",
    "directory",
    default="./var/store",
    type=click.Path(path_type=Path),
    help="Data directory (an append-only log, fsynced before each answer).",
)
@click.option("--max-value", default="1mb", type=SIZE, help="Largest value accepted.")
@server_tls_options("gRPC")
@admin_options("ResetFence (`lockd store-reset`)")
@click.option(
    "--unsafe-no-token-check",
    is_flag=True,
    help="UNSAFE: accept writes whatever their token (the Jepsen harness's control "
    "run, which must then find lost updates).",
)
def store(
    listen: str,
    directory: Path,
    max_value: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    admin_token_file: Path | None,
    admin_cn: tuple[str, ...],
    unsafe_no_token_check: bool,
) -> None:
    """Run the fenced sample storage (gRPC lockd.v1.FencedStore).

    A write is accepted only if its fencing token is at least the highest token seen for
    its resource; a refusal names the token that beat it (FAILED_PRECONDITION,
    STALE_TOKEN)."""
    from lockd.store.server import StoreConfig
    from lockd.store.server import serve as run_store

    config = StoreConfig(
        directory=directory,
        listen=listen,
        max_value_bytes=max_value,
        check_tokens=not unsafe_no_token_check,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        admin_token_file=admin_token_file,
        admin_cns=admin_cn,
    )
    check_admin_options(admin_token_file, admin_cn, tls_client_ca)
    try:
        asyncio.run(run_store(config))
    except (RuntimeError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option(
    "--listen", default="127.0.0.1:7400", metavar="HOST:PORT", help="gRPC address of the gateway."
)
@click.option(
    "--data-dir",
    default="./var/cluster",
    type=click.Path(path_type=Path),
    help="Data directories (engine-0 ... engine-4) and logs of the engines.",
)
@click.option(
    "--engine-port",
    default=7381,
    type=click.IntRange(1, 65530),
    help="The first engine's RESP port on 127.0.0.1; the others take the next four.",
)
@click.option(
    "--appendfsync",
    default="everysec",
    type=click.Choice(["always", "everysec", "no"]),
    help="fsync policy of the engines.",
)
@click.option("--max-ttl", default="60s", type=DURATION, help="Longest TTL a lease may ask for.")
def cluster(listen: str, data_dir: Path, engine_port: int, appendfsync: str, max_ttl: int) -> None:
    """Run the production shape on this machine: five `lockd engine` processes and a
    gateway over them (RESP), for trying it out before deploying five machines
    (docs/DEPLOYMENT.md)."""
    from lockd.cluster import ClusterConfig, run
    from lockd.engine import FsyncPolicy

    config = ClusterConfig(
        data_dir=data_dir,
        listen=listen,
        first_engine_port=engine_port,
        appendfsync=FsyncPolicy(appendfsync),
        max_ttl_ms=max_ttl,
    )
    try:
        asyncio.run(run(config))
    except (OSError, RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("path", type=click.Path(exists=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check and report; write nothing.")
@click.option(
    "--fence-floor",
    type=click.IntRange(0),
    default=None,
    help="For fence.reserve: the floor to write, above every token the node may have "
    "accepted (a reservation cannot be rebuilt from its bytes).",
)
def repair(path: Path, dry_run: bool, fence_floor: int | None) -> None:
    """Check a data file (appendonly.aof, store.log, fence.reserve) and write a repaired
    copy, keeping the damaged file as NAME.broken (like redis-check-aof --fix)."""
    import sys

    from lockd.repair import repair as run_repair

    try:
        report = run_repair(path, dry_run=dry_run, fence_floor=fence_floor)
    except (OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.summary)
    if report.damaged and not report.written:
        sys.exit(1)
