"""Bursts never cost a held lease (DESIGN §8): 500 holders through one gateway over five
`lockd engine` processes, from four client processes that start at the same instant,
each holder acquiring its own lock, renewing it three times and releasing it. Nothing
may be refused, lost or left unreleased: the node transport queues instead of refusing,
renewals and releases go ahead of queued acquisitions, node timeouts count from the
write, and a renewal that timed out is tried again within its validity."""

from __future__ import annotations

import asyncio
import collections
import multiprocessing as mp
import time

import grpc

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc
from tests.gateway.helpers import client, urls
from tests.support import EngineProcess

HOLDERS = 500
PROCESSES = 4
TTL_MS = 3000
RENEWALS = 3
RENEW_EVERY_S = 0.8


def holders(port: int, first: int, count: int, start_at: float) -> tuple[dict[str, int], list[str]]:
    """Run `count` holders in this (client) process from `time.monotonic()` `start_at`."""

    async def run() -> tuple[dict[str, int], list[str]]:
        outcomes: collections.Counter[str] = collections.Counter()
        errors: list[str] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = lock_service_pb2_grpc.LockServiceStub(channel)
            await channel.channel_ready()

            async def holder(i: int) -> None:
                name = f"burst-{i}"
                try:
                    got = await stub.Acquire(
                        pb.AcquireRequest(name=name, ttl_ms=TTL_MS, wait_ms=20_000)
                    )
                except grpc.aio.AioRpcError as err:
                    outcomes["acquire failed"] += 1
                    errors.append(f"acquire {name}: {err.details()}")
                    return
                outcomes["acquired"] += 1
                for _ in range(RENEWALS):
                    await asyncio.sleep(RENEW_EVERY_S)
                    try:
                        await stub.Renew(pb.RenewRequest(name=name, lease_id=got.lease_id))
                    except grpc.aio.AioRpcError as err:
                        outcomes["lease lost"] += 1
                        errors.append(f"renew {name}: {err.details()}")
                        return
                    outcomes["renewed"] += 1
                try:
                    await stub.Release(pb.ReleaseRequest(name=name, lease_id=got.lease_id))
                except grpc.aio.AioRpcError as err:
                    outcomes["release failed"] += 1
                    errors.append(f"release {name}: {err.details()}")
                    return
                outcomes["released"] += 1

            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            await asyncio.gather(*(holder(i) for i in range(first, first + count)))
        return dict(outcomes), errors

    return asyncio.run(run())


async def test_500_holders_lose_nothing(engines: list[EngineProcess]) -> None:
    # The default node timeout (200 ms): the one bursts used to overrun.
    config = GatewayConfig(nodes=urls(engines), max_ttl_ms=10_000)
    outcomes: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    async with client(config) as (gateway, stub):
        per = HOLDERS // PROCESSES
        start_at = time.monotonic() + 4.0  # the client processes are up and connected by then
        with mp.get_context("spawn").Pool(PROCESSES) as pool:
            pending = [
                pool.apply_async(holders, (gateway.port, p * per, per, start_at))
                for p in range(PROCESSES)
            ]
            for result in pending:
                counts, errs = await asyncio.to_thread(result.get, 50)
                outcomes.update(counts)
                errors += errs
        elapsed = time.monotonic() - start_at
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())

    print(f"\n{HOLDERS} holders: {dict(outcomes)} in {elapsed:.1f} s")
    assert errors == [], errors[:5]
    assert outcomes == {
        "acquired": HOLDERS,
        "renewed": HOLDERS * RENEWALS,
        "released": HOLDERS,
    }
    assert all(n.reachable for n in status.nodes)
