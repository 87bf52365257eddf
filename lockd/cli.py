"""The `lockd` command line. Every option also reads a LOCKD_* environment variable
(`lockd engine --port` reads LOCKD_ENGINE_PORT)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lockd import __version__
from lockd.units import DURATION, SIZE

if TYPE_CHECKING:
    from lockd_client import AsyncClient

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
    hold_aof_until_fsync: bool,
    enable_clock_control: bool,
    unsafe_wall_clock: bool,
    enable_disk_faults: bool,
) -> None:
    """Run one engine node speaking RESP (redis-cli and redis-py work unchanged)."""
    from lockd.engine import Engine, EngineConfig, FsyncPolicy, WallClock
    from lockd.engine.server import serve

    config = EngineConfig(
        dir=directory,
        appendfsync=FsyncPolicy(appendfsync),
        max_ttl_ms=max_ttl,
        maxmemory=maxmemory,
        fence_block=fence_block,
        hold_until_fsync=hold_aof_until_fsync,
        port=port,
        clock_control=enable_clock_control,
        disk_faults=enable_disk_faults,
    )
    if unsafe_wall_clock:
        logging.getLogger("lockd.engine").warning(
            "UNSAFE: TTLs are measured on the wall clock; a clock step expires locks early"
        )
    try:
        node = Engine(config, clock=WallClock() if unsafe_wall_clock else None)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(f"cannot open data directory {directory}: {exc}") from exc
    asyncio.run(serve(node, host, port))


@main.command()
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
    help="fsync policy of the embedded engines.",
)
@click.option(
    "--metrics-listen",
    default="",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (off when empty).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, path_type=Path),
    help="PEM certificate chain: serve gRPC over TLS.",
)
@click.option(
    "--tls-key", type=click.Path(exists=True, path_type=Path), help="PEM private key of --tls-cert."
)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, path_type=Path),
    help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
)
@click.option(
    "--max-waiters-per-lock",
    default=1024,
    type=click.IntRange(1),
    help="Acquire calls that may wait for one lock at this gateway.",
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
    max_waiters_per_lock: int,
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
        max_waiters_per_lock=max_waiters_per_lock,
        shutdown_grace_s=shutdown_grace / 1000,
    )
    try:
        asyncio.run(run_gateway(config))
    except (UnsafeNodeError, ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


# -- client commands ---------------------------------------------------------------------


def _client_options(f: Callable[..., None]) -> Callable[..., None]:
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


def _run_client(
    coro_factory: Callable[[AsyncClient], Coroutine[Any, Any, int]], **conn: Any
) -> None:
    """Run one client command; lock errors become a message and exit status 1."""
    from lockd_client import LockError, LockTimeout, Unavailable

    async def main() -> int:
        client = _client(**conn)
        try:
            return await coro_factory(client)
        finally:
            await client.close()

    try:
        code = asyncio.run(main())
    except LockTimeout as exc:
        click.echo(f"lockd: {exc}", err=True)
        sys.exit(3)
    except Unavailable as exc:
        retry = f" (retry in {exc.retry_after:.1f}s)" if exc.retry_after else ""
        click.echo(f"lockd: {exc}{retry}", err=True)
        sys.exit(4)
    except LockError as exc:
        click.echo(f"lockd: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


def _lease_id(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("a lease id is 32 hex digits") from None
    if len(raw) != 16:
        raise click.BadParameter("a lease id is 32 hex digits")
    return raw


@main.command()
@click.argument("name")
@click.option("--ttl", default="30s", type=DURATION, help="Lease time to live.")
@click.option("--wait", default="0s", type=DURATION, help="How long to wait for the lock.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@_client_options
def acquire(name: str, ttl: int, wait: int, as_json: bool, **conn: Any) -> None:
    """Acquire NAME and print its fencing token, lease id and deadline.

    The lease is not renewed: it lasts TTL unless renewed with `lockd renew`. Exit status
    3 when the lock stayed held for the whole wait, 4 when lockd is unavailable."""

    async def go(client: AsyncClient) -> int:
        lease = await client.acquire(name, ttl / 1000, wait / 1000, watchdog=False)
        validity_ms = max(0, round((lease.deadline - time.monotonic()) * 1000))
        deadline = datetime.now(UTC) + timedelta(milliseconds=validity_ms)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "name": name,
                        "token": lease.token,
                        "lease_id": lease.lease_id.hex(),
                        "validity_ms": validity_ms,
                        "ttl_ms": ttl,
                        "deadline": deadline.isoformat(timespec="milliseconds"),
                    }
                )
            )
        else:
            click.echo(
                f"lock      {name}\ntoken     {lease.token}\nlease id  "
                f"{lease.lease_id.hex()}\nvalid for {validity_ms} ms (until "
                f"{deadline.isoformat(timespec='milliseconds')})"
            )
        return 0

    _run_client(go, **conn)


@main.command()
@click.argument("name")
@click.option("--lease", "lease", required=True, help="Lease id printed by `lockd acquire`.")
@_client_options
def release(name: str, lease: str, **conn: Any) -> None:
    """Release NAME held by lease --lease (exit 1 if that lease does not hold it)."""
    lease_id = _lease_id(lease)

    async def go(client: AsyncClient) -> int:
        nodes = await client.release(name, lease_id)
        click.echo(f"released {name} on {nodes} nodes")
        return 0

    _run_client(go, **conn)


@main.command()
@click.argument("name")
@click.option("--lease", "lease", required=True, help="Lease id printed by `lockd acquire`.")
@click.option("--ttl", default="30s", type=DURATION, help="New time to live.")
@_client_options
def renew(name: str, lease: str, ttl: int, **conn: Any) -> None:
    """Extend the lease --lease on NAME to a fresh TTL (exit 1 if it was lost)."""
    lease_id = _lease_id(lease)

    async def go(client: AsyncClient) -> int:
        validity = await client.renew(name, lease_id, ttl / 1000)
        click.echo(f"renewed {name}: valid for {round(validity * 1000)} ms")
        return 0

    _run_client(go, **conn)


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_client_options
def status(name: str | None, as_json: bool, **conn: Any) -> None:
    """Show the cluster (nodes, restart delays), or one lock when NAME is given."""

    async def go(client: AsyncClient) -> int:
        if name is not None:
            info = await client.describe(name)
            if as_json:
                click.echo(json.dumps(dataclasses.asdict(info)))
                return 0
            rows = [
                ("lock", info.name),
                ("held", "yes" if info.held else "no"),
                ("ttl left", f"{info.ttl_remaining * 1000:.0f} ms"),
                ("fencing counter", str(info.fencing_counter)),
                ("waiters", str(info.waiters)),
                ("nodes holding", f"{info.nodes_holding} of {info.nodes_answered} answering"),
            ]
            click.echo(_table(["", ""], rows, header=False))
            return 0
        cluster = await client.cluster_status()
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(cluster)))
            return 0 if cluster.quorum_available else 4
        table = [
            (
                n.address,
                n.mode,
                "up" if n.reachable else "DOWN",
                f"{n.latency_ms:.2f} ms" if n.reachable else "-",
                f"{n.restart_delay:.1f} s ({n.restart_reason})" if n.restart_delay else "-",
                n.error or "",
            )
            for n in cluster.nodes
        ]
        click.echo(_table(["node", "mode", "state", "latency", "restart delay", "error"], table))
        ready = "available" if cluster.quorum_available else "NOT AVAILABLE"
        click.echo(
            f"\nquorum {cluster.quorum} of {len(cluster.nodes)}: {ready} "
            f"(gateway {client.endpoint}, lockd {cluster.version})"
        )
        return 0 if cluster.quorum_available else 4

    _run_client(go, **conn)


def _table(headers: list[str], rows: Sequence[Sequence[str]], header: bool = True) -> str:
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


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--ttl", default="30s", type=DURATION, help="Lease TTL (renewed while CMD runs).")
@click.option("--wait", default="60s", type=DURATION, help="How long to wait for the lock.")
@_client_options
def run(name: str, command: tuple[str, ...], ttl: int, wait: int, **conn: Any) -> None:
    """Run COMMAND while holding NAME:  lockd run NAME -- CMD ARGS...

    CMD gets LOCKD_FENCING_TOKEN and LOCKD_LOCK_NAME. If the lease is lost CMD gets
    SIGTERM, then SIGKILL by the lease's deadline. SIGINT/SIGTERM are forwarded to CMD.
    Exit status: CMD's (128+N if killed by signal N); 3 lock not acquired within --wait;
    4 lockd unavailable; 5 lease lost while CMD ran; 127 CMD could not be started."""
    from lockd.runner import run_under_lock

    async def go(client: AsyncClient) -> int:
        return await run_under_lock(client, name, ttl / 1000, wait / 1000, command)

    _run_client(go, **conn)


@main.command()
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
@click.option(
    "--unsafe-no-token-check",
    is_flag=True,
    help="UNSAFE: accept writes whatever their token (the Jepsen harness's control "
    "run, which must then find lost updates).",
)
def store(listen: str, directory: Path, max_value: int, unsafe_no_token_check: bool) -> None:
    """Run the fenced sample storage (gRPC lockd.v1.FencedStore).

    A write is accepted only if its fencing token is at least the highest token seen for
    its resource; a refusal names the token that beat it (FAILED_PRECONDITION,
    STALE_TOKEN)."""
    from lockd.store.server import serve as run_store

    try:
        asyncio.run(
            run_store(
                listen=listen,
                directory=directory,
                max_value_bytes=max_value,
                check_tokens=not unsafe_no_token_check,
            )
        )
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


# -- jepsen --------------------------------------------------------------------------------


@main.group()
def jepsen() -> None:
    """The Jepsen-style harness: real processes, faults, checked histories."""


@jepsen.command("run")
@click.option("--nodes", default=5, type=click.IntRange(3, 9), help="Engine nodes.")
@click.option("--gateways", default=2, type=click.IntRange(1, 4), help="Gateways.")
@click.option("--clients", default=8, type=click.IntRange(1, 64), help="Client worker processes.")
@click.option("--keys", default=1, type=click.IntRange(1, 64), help="Locks (and counters).")
@click.option("--time-limit", default="60s", type=DURATION, help="Length of the faulty phase.")
@click.option(
    "--heal-time", default=None, type=DURATION, help="Final healed phase [default: 2 max-ttl + 3s]."
)
@click.option(
    "--nemesis",
    default="all",
    metavar="KIND,...",
    help="kill, power-loss, pause, clock, partition, disk (comma-separated), all, or none.",
)
@click.option("--seed", type=int, default=None, help="Seed of every random choice [random].")
@click.option(
    "--out",
    default="./var/jepsen",
    type=click.Path(path_type=Path),
    help="Results go to OUT/<test>/<timestamp>/, with OUT/<test>/latest.",
)
@click.option("--ttl", default="1s", type=DURATION, help="Lease TTL of the workers.")
@click.option("--max-ttl", default="2s", type=DURATION, help="Engines' and gateways' max TTL.")
@click.option("--think", default="200ms", type=DURATION, help="Longest think time in the lock.")
@click.option("--unsafe-store", is_flag=True, help="Store without its token check: must be caught.")
@click.option(
    "--unsafe-wall-clock",
    is_flag=True,
    help="Engines measure TTLs on the wall clock: with clock jumps, must be caught.",
)
@click.option(
    "--unsafe-unfenced-read",
    is_flag=True,
    help="Workers read without first writing their token to the store (unfenced "
    "read-modify-write).",
)
@click.option(
    "--check-time-limit", default="60s", type=DURATION, help="Linearizability search limit."
)
@click.option("--test-name", default=None, help="Name of the test directory [from the flags].")
def jepsen_run(
    nodes: int,
    gateways: int,
    clients: int,
    keys: int,
    time_limit: int,
    heal_time: int | None,
    nemesis: str,
    seed: int | None,
    out: Path,
    ttl: int,
    max_ttl: int,
    think: int,
    unsafe_store: bool,
    unsafe_wall_clock: bool,
    unsafe_unfenced_read: bool,
    check_time_limit: int,
    test_name: str | None,
) -> None:
    """Run lockd as real processes under faults and check what the clients saw.

    Exit status: 0 valid, 1 invalid, 2 unknown (a checker hit its limits), 3 the harness
    could not run the test."""
    import secrets

    from lockd.jepsen.generator import FAULTS
    from lockd.jepsen.run import RunConfig, exit_code, run

    if nemesis.strip() in ("all", ""):
        kinds: tuple[str, ...] = FAULTS
    elif nemesis.strip() == "none":
        kinds = ()
    else:
        kinds = tuple(k.strip() for k in nemesis.split(",") if k.strip())
        unknown = [k for k in kinds if k not in FAULTS]
        if unknown:
            raise click.BadParameter(
                f"unknown nemesis {', '.join(unknown)}; known: {', '.join(FAULTS)}, all, none"
            )
    if ttl > max_ttl:
        raise click.BadParameter("--ttl must not exceed --max-ttl")
    config = RunConfig(
        out=out,
        seed=seed if seed is not None else secrets.randbelow(2**31),
        nemeses=kinds,
        nodes=nodes,
        gateways=gateways,
        clients=clients,
        keys=keys,
        time_limit_s=time_limit / 1000,
        heal_s=heal_time / 1000 if heal_time is not None else None,
        ttl_s=ttl / 1000,
        max_ttl_ms=max_ttl,
        think_max_s=think / 1000,
        unsafe_store=unsafe_store,
        unsafe_wall_clock=unsafe_wall_clock,
        unfenced_read=unsafe_unfenced_read,
        test_name=test_name,
        check_time_limit_s=check_time_limit / 1000,
        command="lockd " + " ".join(sys.argv[1:]),
    )
    click.echo(f"lockd jepsen: {config.name}, seed {config.seed}", err=True)
    try:
        directory, results = run(config)
    except KeyboardInterrupt:
        click.echo("lockd jepsen: interrupted; every process it started was stopped", err=True)
        sys.exit(130)
    except Exception as exc:
        logging.getLogger("lockd.jepsen").exception("the run failed")
        click.echo(f"lockd jepsen: the run failed: {exc}", err=True)
        sys.exit(3)
    _print_verdict(directory, results)
    sys.exit(exit_code(results["valid"]))


@jepsen.command("check")
@click.argument("history", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def jepsen_check(history: Path) -> None:
    """Check a history.jsonl again (with the store log beside it, if there is one).

    Exit status: 0 valid, 1 invalid, 2 unknown."""
    from lockd.jepsen.history import load
    from lockd.jepsen.run import check_history, exit_code

    meta, events = load(history)
    store_log = history.parent / "data" / "store" / "store.log"
    results = check_history(events, meta, store_log if store_log.exists() else None)
    _print_verdict(history.parent, results)
    sys.exit(exit_code(results["valid"]))


def _print_verdict(directory: Path, results: dict[str, Any]) -> None:
    rows = [
        (name, json.dumps(r.get("valid")))
        for name, r in results.items()
        if isinstance(r, dict) and "valid" in r
    ]
    click.echo(_table(["checker", "valid"], rows))
    click.echo(f"\nvalid: {json.dumps(results['valid'])}   ({directory})")


@main.command()
@click.option("--seeds", type=click.IntRange(1), help="How many seeds to run [default: 1000].")
@click.option(
    "--seed",
    type=click.IntRange(0),
    help="First seed; alone, replay just that seed.",
)
@click.option("--steps", default=200, type=click.IntRange(1), help="Schedule steps per seed.")
@click.option(
    "--unsafe",
    type=click.Choice(
        ["single-phase-token", "no-drift", "wall-clock", "no-restart-delay", "volatile-fence"]
    ),
    help="Plant a bug: run with this UNSAFE option of the real code (the checkers must catch it).",
)
@click.option(
    "--keep",
    metavar="I,J,...",
    help="Replay only these steps of the seed's schedule (printed for a shrunk failure).",
)
@click.option("--jobs", default=0, type=click.IntRange(0), help="Processes (0: one per CPU).")
@click.option("--shrink/--no-shrink", default=True, help="Shrink the first failing schedule.")
@click.option("--trace", is_flag=True, help="Print the full trace of a replayed seed.")
@click.option("--keep-going", is_flag=True, help="Do not stop at the first failing seed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim(
    seeds: int | None,
    seed: int | None,
    steps: int,
    unsafe: str | None,
    keep: str | None,
    jobs: int,
    shrink: bool,
    trace: bool,
    keep_going: bool,
    as_json: bool,
) -> None:
    """Deterministic simulation: the real engines and quorum core under virtual time,
    with network faults, crashes, clock drift and jumps, and client pauses, all drawn
    from one seed; checks token uniqueness and order, the fenced store, liveness after
    healing, and Redlock's non-overlap. A failure prints a shrunk trace and the command
    that replays it.

    Exit status: 0 when every seed passed, 1 when one failed."""
    from lockd.sim.run import main as run_sim

    try:
        kept = None if keep is None else [int(i) for i in keep.split(",") if i not in ("", "none")]
    except ValueError:
        raise click.BadParameter(
            "a comma-separated list of step numbers", param_hint="--keep"
        ) from None
    status = run_sim(
        seeds,
        seed,
        steps,
        unsafe,
        kept,
        jobs,
        shrink,
        trace,
        keep_going,
        as_json,
        echo=click.echo,
        progress=lambda line: click.echo(line, err=True),
    )
    sys.exit(status)


# -- repair (issue 12) ----------------------------------------------------------------------


@main.command()
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
    from lockd.repair import repair as run_repair

    try:
        report = run_repair(path, dry_run=dry_run, fence_floor=fence_floor)
    except (OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.summary)
    if report.damaged and not report.written:
        sys.exit(1)
