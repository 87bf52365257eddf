"""Watch event latency: a lock released through gateway A, its RELEASED event read by a
watcher on gateway B (both `lockd serve --nodes` processes sharing five nodes), and the
same for ACQUIRED. Latency runs from sending the Release (Acquire) RPC at A to reading
the event at B, on one clock (both clients live in this process).

    python -m tests.bench.watch_bench [--cycles 500] [--shape engine|redis|embedded]

`embedded` has one gateway only (embedded engines cannot be shared): watcher and actor
both use it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc
from tests.bench.shapes import Served, engine_nodes, gateway, redis_nodes

Row = tuple[str, str, str]
E = pb.WatchEvent


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(actor_at: str, watcher_at: str, cycles: int) -> dict[str, list[float]]:
    """Acquire/release `cycles` times at `actor_at`; per event type, the seconds from
    sending the call to reading its event from a watch on `watcher_at` (and, to compare,
    the Release call's own round trip)."""
    async with (
        grpc.aio.insecure_channel(actor_at) as a_ch,
        grpc.aio.insecure_channel(watcher_at) as b_ch,
    ):
        actor = lock_service_pb2_grpc.LockServiceStub(a_ch)  # type: ignore[no-untyped-call]
        watcher = lock_service_pb2_grpc.LockServiceStub(b_ch)  # type: ignore[no-untyped-call]
        # Wait out the nodes' restart delay (real Redis just started counts as restarting).
        await actor.Acquire(pb.AcquireRequest(name="warm", ttl_ms=100, wait_ms=60_000))
        events = aiter(watcher.Watch(pb.WatchRequest(name="bench/watch")))
        assert (await anext(events)).type == E.STATE
        assert (await anext(events)).type == E.SYNCED
        took: dict[str, list[float]] = {"acquired": [], "released": [], "(Release RPC)": []}
        for _ in range(cycles):
            sent = time.perf_counter()
            held = await actor.Acquire(pb.AcquireRequest(name="bench/watch", ttl_ms=10_000))
            event = await anext(events)
            took["acquired"].append(time.perf_counter() - sent)
            assert (event.type, event.fencing_token) == (E.ACQUIRED, held.fencing_token)
            sent = time.perf_counter()
            await actor.Release(pb.ReleaseRequest(name="bench/watch", lease_id=held.lease_id))
            took["(Release RPC)"].append(time.perf_counter() - sent)  # for comparison
            event = await anext(events)
            took["released"].append(time.perf_counter() - sent)
            assert (event.type, event.fencing_token) == (E.RELEASED, held.fencing_token)
        return took


@contextlib.contextmanager
def _two_gateways(tmp: Path, shape: str) -> Iterator[tuple[Served, Served]]:
    if shape == "embedded":
        with gateway(tmp) as only:
            yield only, only
        return
    nodes = engine_nodes(tmp) if shape == "engine" else redis_nodes(tmp)
    with nodes as served, gateway(tmp, served.target) as a, gateway(tmp, served.target) as b:
        yield a, b


def watch_latency(cycles: int = 300, shapes: tuple[str, ...] = ("engine", "redis")) -> list[Row]:
    """Rows for `make bench`: p50/p99 event latency per shape and event type."""
    rows: list[Row] = []
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp, _two_gateways(Path(tmp), shape) as (a, b):
            took = asyncio.run(_measure(a.target, b.target, cycles))
        where = "same gateway" if shape == "embedded" else "gateway A -> watcher on B"
        for kind, samples in took.items():
            p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
            rows.append(
                (
                    f"watch {kind}, {shape} nodes, {where}",
                    f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms",
                    f"n={len(samples)}, mean {statistics.fmean(samples) * 1000:.2f} ms",
                )
            )
    return rows


def main() -> None:
    """Print the latency rows for the shapes asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument(
        "--shape", action="append", choices=["engine", "redis", "embedded"], default=None
    )
    args = parser.parse_args()
    for name, value, note in watch_latency(args.cycles, tuple(args.shape or ["engine", "redis"])):
        print(f"{name:<58} {value:>28}  {note}")


if __name__ == "__main__":
    main()
