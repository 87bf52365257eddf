"""List RPC cost: hold N locks through a `lockd serve` process, then list them all a page
of 1000 (the most List allows) at a time, timing each call.

    python -m tests.bench.list_bench --locks 10000 --locks 100000 [--shape embedded|engine]
        [--node-timeout 200ms]

`embedded`: the gateway's default five engines in its process; `engine`: five
`lockd engine` processes under a `lockd serve --nodes` gateway. The locks are acquired by
many concurrent Acquire calls of the async client (watchdog off) with a TTL long enough to
outlast the listing; the gateway holds at most 100 000 leases (its `max_locks`).

Reports the calls, their total and mean, the three slowest (a node's walk starts with a
sorted snapshot of its keys, so its first call is expected to be slow), and whether every
held lock was listed exactly once, at least once (a listing may report a lock twice), or
how many it missed (see docs/BENCHMARKS.md "List cost": a scan step slower than the
gateway's --node-timeout skips the rest of that node's walk).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from lockd.gateway.listing import MAX_PAGE
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc
from lockd_client.aio import AsyncClient, AsyncLease
from tests.bench.shapes import Served, engine_nodes, gateway

Row = tuple[str, str, str]
PREFIX = "bench/list/"
CONCURRENCY = 256
"""Acquire calls in flight at once (under the gateway's Session window of 1024)."""
MAX_TTL = "30m"
"""The gateway's (and engines') --max-ttl: the leases' TTL, enough to outlast a listing."""
TTL = 1800.0


@dataclasses.dataclass(frozen=True)
class ListCost:
    """One full listing of `held` locks."""

    held: int
    acquire_seconds: float
    calls: list[float]
    """Seconds each List call took, in order."""
    listed: int
    """Entries returned (duplicates counted)."""
    missing: int
    """Held locks the listing never reported."""
    duplicated: int
    """Held locks reported more than once."""

    def verdict(self) -> str:
        """'exactly once', 'at least once (k twice or more)' or 'MISSED k'."""
        if self.missing:
            return f"MISSED {self.missing}"
        if self.duplicated:
            return f"at least once ({self.duplicated} more than once)"
        return "exactly once"


async def _hold(client: AsyncClient, count: int) -> list[AsyncLease]:
    """Acquire `count` locks under PREFIX, CONCURRENCY calls at a time (no watchdog)."""
    names = iter(f"{PREFIX}{i:06d}" for i in range(count))
    leases: list[AsyncLease] = []

    async def worker() -> None:
        for name in names:
            leases.append(await client.acquire(name, ttl=TTL, watchdog=False))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return leases


async def _measure(target: str, count: int) -> ListCost:
    """Hold `count` locks at `target`, list them all timing each call, release them."""
    client = AsyncClient(target, timeout=60.0)
    try:
        # Wait out the nodes' restart delay, if any, before the timed part.
        warm = await client.acquire("bench/warm", ttl=1.0, wait=120.0, watchdog=False)
        await warm.release()
        started = time.perf_counter()
        leases = await _hold(client, count)
        acquire_seconds = time.perf_counter() - started
        seen: collections.Counter[str] = collections.Counter()
        calls: list[float] = []
        async with grpc.aio.insecure_channel(target) as channel:
            stub = lock_service_pb2_grpc.LockServiceStub(channel)  # type: ignore[no-untyped-call]
            token = ""
            while True:
                sent = time.perf_counter()
                page = await stub.List(
                    pb.ListRequest(prefix=PREFIX, page_token=token, page_size=MAX_PAGE),
                    timeout=120.0,
                )
                calls.append(time.perf_counter() - sent)
                seen.update(lock.name for lock in page.locks)
                token = page.next_page_token
                if not token:
                    break
        held = {lease.name for lease in leases}
        cost = ListCost(
            held=len(held),
            acquire_seconds=acquire_seconds,
            calls=calls,
            listed=sum(seen.values()),
            missing=len(held - seen.keys()),
            duplicated=sum(1 for name in held if seen[name] > 1),
        )
        await _release(client, leases)
        return cost
    finally:
        await client.close()


async def _release(client: AsyncClient, leases: list[AsyncLease]) -> None:
    """Release the leases, CONCURRENCY at a time (they would otherwise outlive the run)."""
    pending = iter(leases)

    async def worker() -> None:
        for lease in pending:
            await lease.release()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@contextlib.contextmanager
def _served(tmp: Path, shape: str, node_timeout: str) -> Iterator[Served]:
    flags = ["--max-ttl", MAX_TTL] + (["--node-timeout", node_timeout] if node_timeout else [])
    if shape == "embedded":
        with gateway(tmp, "", *flags) as served:
            yield served
        return
    with (
        engine_nodes(tmp, max_ttl=MAX_TTL) as nodes,
        gateway(tmp, nodes.target, *flags) as served,
    ):
        yield served


def list_cost(
    counts: tuple[int, ...] = (2000,), shape: str = "embedded", node_timeout: str = ""
) -> list[Row]:
    """Rows (for `make bench` too): per lock count, the full listing's calls and times;
    `node_timeout` is the gateway's --node-timeout (its default when empty)."""
    rows: list[Row] = []
    for count in counts:
        with (
            tempfile.TemporaryDirectory() as tmp,
            _served(Path(tmp), shape, node_timeout) as served,
        ):
            cost = asyncio.run(_measure(served.target, count))
        total = sum(cost.calls)
        slowest = ", ".join(f"{c * 1000:.0f}" for c in sorted(cost.calls, reverse=True)[:3])
        rows.append(
            (
                f"list {cost.held} held locks, {shape}, page {MAX_PAGE}",
                f"{len(cost.calls)} calls, {total:.2f} s",
                f"mean {total / len(cost.calls) * 1000:.0f} ms, "
                f"slowest {slowest} ms; {cost.listed} listed, {cost.verdict()}; "
                f"acquired in {cost.acquire_seconds:.1f} s",
            )
        )
    return rows


def main() -> None:
    """Print one row per --locks count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locks", type=int, action="append", default=None)
    parser.add_argument("--shape", choices=["embedded", "engine"], default="embedded")
    parser.add_argument("--node-timeout", default="", help="the gateway's --node-timeout")
    args = parser.parse_args()
    counts = tuple(args.locks or [10_000])
    for name, value, note in list_cost(counts, args.shape, args.node_timeout):
        print(f"{name:<58} {value:>28}  {note}", flush=True)


if __name__ == "__main__":
    main()
