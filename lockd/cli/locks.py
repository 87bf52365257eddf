"""Lock commands: `lockd acquire`, `release`, `renew`, `status`, `list`, `watch`, `run`
and `elect`."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lockd import exits
from lockd.cli.client import client_options, lease_id, run_client, table
from lockd.cli.params import DURATION

if TYPE_CHECKING:
    from lockd_client import AsyncClient, WatchEvent

__all__ = [
    "acquire",
    "elect",
    "list_locks",
    "release",
    "renew",
    "run",
    "status",
    "text",
    "watch",
    "when",
]


def text(value: bytes) -> str:
    """A stored value for people and JSON: UTF-8, undecodable bytes as \\xNN escapes."""
    return value.decode(errors="backslashreplace")


def when(unix_s: float | None) -> str:
    """An acquired-at time as ISO 8601 UTC, "-" when unknown."""
    if unix_s is None:
        return "-"
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds")


@click.command()
@click.argument("name")
@click.option("--ttl", default="30s", type=DURATION, help="Lease time to live.")
@click.option("--wait", default="0s", type=DURATION, help="How long to wait for the lock.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@click.option(
    "--owner", default=None, help="Who holds it, for `status`/`list`  [default: host/pid]"
)
@click.option("--value", default="", help="A small value stored with the lock (at most 1 KiB).")
@client_options
def acquire(
    name: str, ttl: int, wait: int, as_json: bool, owner: str | None, value: str, **conn: Any
) -> None:
    """Acquire NAME and print its fencing token, lease id and deadline.

    The lease is not renewed: it lasts TTL unless renewed with `lockd renew`. Exit status
    3 when the lock stayed held for the whole wait, 4 when lockd is unavailable."""

    async def go(client: AsyncClient) -> int:
        lease = await client.acquire(
            name, ttl / 1000, wait / 1000, watchdog=False, owner=owner, value=value.encode()
        )
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

    run_client(go, **conn)


@click.command()
@click.argument("name")
@click.option("--lease", "lease", help="Lease id printed by `lockd acquire`.")
@click.option(
    "--force",
    is_flag=True,
    help="Take the lock back whatever lease holds it (admin: needs the admin token, or an "
    "admin client certificate).",
)
@click.option(
    "--admin-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the gateway's admin token (for --force; or set LOCKD_ADMIN_TOKEN).",
)
@client_options
def release(
    name: str, lease: str | None, force: bool, admin_token_file: Path | None, **conn: Any
) -> None:
    """Release NAME held by lease --lease (exit 1 if that lease does not hold it), or
    with --force whatever holds it (exit 6 without a valid admin credential)."""
    if force == (lease is not None):
        raise click.UsageError("give either --lease or --force")
    if force:
        token = (
            admin_token_file.read_text().strip()
            if admin_token_file is not None
            else os.environ.get("LOCKD_ADMIN_TOKEN", "").strip()
        )

        async def forced(client: AsyncClient) -> int:
            nodes = await client.force_release(name, token or None)
            click.echo(
                f"force-released {name} on {nodes} nodes" if nodes else f"{name} was not held"
            )
            return 0

        run_client(forced, **conn)
        return
    assert lease is not None
    lease_bytes = lease_id(lease)

    async def go(client: AsyncClient) -> int:
        nodes = await client.release(name, lease_bytes)
        click.echo(f"released {name} on {nodes} nodes")
        return 0

    run_client(go, **conn)


@click.command("list")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per lock.")
@click.option("--page-size", default=100, type=click.IntRange(1, 1000), help="Keys per call.")
@client_options
def list_locks(prefix: str, as_json: bool, page_size: int, **conn: Any) -> None:
    """List the held locks whose names start with PREFIX: owner, token, TTL left."""

    async def go(client: AsyncClient) -> int:
        rows = []
        async for lock in client.list(prefix, page_size):
            if as_json:
                entry = dataclasses.asdict(lock) | {"value": text(lock.value)}
                click.echo(json.dumps(entry))
            else:
                rows.append(
                    (
                        lock.name,
                        lock.owner or "-",
                        str(lock.token),
                        f"{lock.ttl_remaining * 1000:.0f} ms",
                        when(lock.acquired_at),
                        str(lock.waiters),
                        text(lock.value),
                    )
                )
        if not as_json:
            rows.sort()
            headers = ["lock", "owner", "token", "ttl left", "acquired at", "waiters", "value"]
            click.echo(table(headers, rows) if rows else "no locks held")
        return 0

    run_client(go, **conn)


@click.command()
@click.argument("name")
@click.option("--prefix", is_flag=True, help="Watch every lock whose name starts with NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.option(
    "--count",
    default=0,
    type=click.IntRange(0),
    help="Exit after this many changes (0: until interrupted).",
)
@client_options
def watch(name: str, prefix: bool, as_json: bool, count: int, **conn: Any) -> None:
    """Print NAME's current state, then every change from any gateway: acquired (token,
    owner), updated, released, expired, force_released. With --prefix, every lock under NAME.

    If the gateway goes away, the watch moves to another endpoint and prints the current
    state again. Exit status 4 when cut off for reading too slowly, 130 on Ctrl-C."""

    async def go(client: AsyncClient) -> int:
        changes = 0
        async for event in client.watch(name, prefix=prefix):
            if as_json:
                entry = dataclasses.asdict(event) | {"value": text(event.value), "at": time.time()}
                click.echo(json.dumps(entry))
            else:
                click.echo(_watch_line(event))
            if event.type not in ("state", "synced"):
                changes += 1
                if changes == count:
                    return 0
        return 0

    try:
        run_client(go, **conn)
    except KeyboardInterrupt:
        raise SystemExit(exits.INTERRUPTED) from None


def _watch_line(event: WatchEvent) -> str:
    """One event for people: time, type, lock, then what is known about the grant."""
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    if event.type == "synced":
        return f"{stamp} synced {event.name}"
    parts = [stamp, event.type, event.name]
    if event.type == "state" and not event.held:
        parts.append("not held")
    elif event.token:
        parts.append(f"token={event.token}")
    if event.held:  # state of a held lock, acquired, updated
        parts += [f"owner={event.owner or '-'}", f"ttl={event.ttl_remaining * 1000:.0f}ms"]
        if event.value:
            parts.append(f"value={text(event.value)}")
    return " ".join(parts)


@click.command()
@click.argument("name")
@click.option("--lease", "lease", required=True, help="Lease id printed by `lockd acquire`.")
@click.option("--ttl", default="30s", type=DURATION, help="New time to live.")
@client_options
def renew(name: str, lease: str, ttl: int, **conn: Any) -> None:
    """Extend the lease --lease on NAME to a fresh TTL (exit 5 if it was lost)."""
    lease_bytes = lease_id(lease)

    async def go(client: AsyncClient) -> int:
        validity = await client.renew(name, lease_bytes, ttl / 1000)
        click.echo(f"renewed {name}: valid for {round(validity * 1000)} ms")
        return 0

    run_client(go, **conn)


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@client_options
def status(name: str | None, as_json: bool, **conn: Any) -> None:
    """Show the cluster (nodes, restart delays), or one lock when NAME is given."""

    async def go(client: AsyncClient) -> int:
        if name is not None:
            info = await client.describe(name)
            if as_json:
                click.echo(json.dumps(dataclasses.asdict(info) | {"value": text(info.value)}))
                return 0
            rows = [
                ("lock", info.name),
                ("held", "yes" if info.held else "no"),
                ("ttl left", f"{info.ttl_remaining * 1000:.0f} ms"),
                ("fencing counter", str(info.fencing_counter)),
                ("waiters", str(info.waiters)),
                ("nodes holding", f"{info.nodes_holding} of {info.nodes_answered} answering"),
            ]
            if info.held:
                rows += [
                    ("owner", info.owner or "-"),
                    ("value", text(info.value) or "-"),
                    ("acquired at", when(info.acquired_at)),
                ]
            click.echo(table(["", ""], rows, header=False))
            return 0
        cluster = await client.cluster_status()
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(cluster)))
            return exits.OK if cluster.quorum_available else exits.UNAVAILABLE
        nodes = [
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
        click.echo(table(["node", "mode", "state", "latency", "restart delay", "error"], nodes))
        ready = "available" if cluster.quorum_available else "NOT AVAILABLE"
        click.echo(
            f"\nquorum {cluster.quorum} of {len(cluster.nodes)}: {ready} "
            f"(gateway {client.endpoint}, lockd {cluster.version})"
        )
        return exits.OK if cluster.quorum_available else exits.UNAVAILABLE

    run_client(go, **conn)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--ttl", default="30s", type=DURATION, help="Lease TTL (renewed while CMD runs).")
@click.option("--wait", default="60s", type=DURATION, help="How long to wait for the lock.")
@client_options
def run(name: str, command: tuple[str, ...], ttl: int, wait: int, **conn: Any) -> None:
    """Run COMMAND while holding NAME:  lockd run NAME -- CMD ARGS...

    CMD gets LOCKD_FENCING_TOKEN and LOCKD_LOCK_NAME. If the lease is lost CMD gets
    SIGTERM, then SIGKILL by the lease's deadline. SIGINT/SIGTERM are forwarded to CMD.
    Exit status: CMD's (128+N if killed by signal N); 3 lock not acquired within --wait;
    4 lockd unavailable; 5 lease lost while CMD ran; 127 CMD could not be started."""
    from lockd.runner import run_under_lock

    async def go(client: AsyncClient) -> int:
        return await run_under_lock(client, name, ttl / 1000, wait / 1000, command)

    run_client(go, **conn)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("value", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--observe", is_flag=True, help="Print leader changes of NAME instead.")
@click.option("--json", "as_json", is_flag=True, help="With --observe: one JSON object a line.")
@click.option("--ttl", default="30s", type=DURATION, help="Lease TTL (renewed while CMD runs).")
@click.option(
    "--wait",
    default=None,
    type=DURATION,
    help="How long to campaign before giving up  [default: no limit]",
)
@click.option("--owner", default=None, help="Who campaigns, shown by Leader  [default: host/pid]")
@client_options
def elect(
    name: str,
    value: str | None,
    command: tuple[str, ...],
    observe: bool,
    as_json: bool,
    ttl: int,
    wait: int | None,
    owner: str | None,
    **conn: Any,
) -> None:
    """Run COMMAND while leading election NAME with VALUE:  lockd elect NAME VALUE -- CMD

    Campaigns (FIFO with the other candidates) until this one leads, then runs CMD with
    LOCKD_TERM and LOCKD_FENCING_TOKEN (the term), LOCKD_ELECTION and LOCKD_LOCK_NAME.
    Loss, signals and exit status as `lockd run` (3: not leading within --wait).
    With --observe, prints the leader (term, value, owner) now and at every change."""
    if observe:
        if value is not None or command:
            raise click.UsageError("--observe takes only the election NAME")
        _observe(name, as_json, **conn)
        return
    if value is None or not command:
        raise click.UsageError("usage: lockd elect NAME VALUE -- CMD [ARGS...]")
    from lockd.runner import run_as_leader

    async def go(client: AsyncClient) -> int:
        if owner is not None:
            client.owner = owner
        return await run_as_leader(
            client,
            name,
            value.encode(),
            ttl / 1000,
            None if wait is None else wait / 1000,
            command,
        )

    run_client(go, **conn)


def _observe(name: str, as_json: bool, **conn: Any) -> None:
    async def go(client: AsyncClient) -> int:
        async for leader in client.election(name).observe():
            if as_json:
                line = json.dumps(dataclasses.asdict(leader) | {"value": text(leader.value)})
            else:
                line = (
                    f"term {leader.term}  value {text(leader.value)!r}  owner {leader.owner or '-'}"
                )
            click.echo(line)
        return 0

    run_client(go, **conn)
