"""The embedded gateway under `--appendfsync always` (issue 10): concurrent acquires
share fsyncs (one batch fsyncs the five engines in parallel for every call made while
the previous batch ran), and no acquire is granted, nor a node's answer counted, before
that node's fsync; a batch whose fsync fails on a majority fails every acquire in it.

The fsyncs are held by a gate on the disk fault injection (`tests.support.FsyncGate`),
so batching is counted, not inferred from timing."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
from collections.abc import Awaitable, Callable

import grpc

from lockd.engine import FsyncPolicy
from lockd.gateway import GatewayConfig
from lockd.gateway.nodes import EmbeddedNode
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Failure, Stub, client, fails
from tests.support import FsyncGate

ACQUIRES = 16


def _engines(gateway: object) -> list[EmbeddedNode]:
    nodes = gateway.manager.nodes  # type: ignore[attr-defined]
    return [n for n in nodes if isinstance(n, EmbeddedNode)]


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll a state (not a duration) for up to 10 s."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def _held(
    stub: Stub,
    nodes: list[EmbeddedNode],
    gates: list[FsyncGate],
    call: Callable[[str], Awaitable[object]],
) -> list[asyncio.Task[object]]:
    """Start one acquire, hold its batch's fsyncs on the gated nodes, start the rest
    (they join the next batch) and check that nothing has been answered."""
    group = nodes[0].group
    assert group is not None
    first = asyncio.ensure_future(call("r0"))
    await _until(lambda: all(g.entered.is_set() for g in gates), "the first batch's fsyncs")
    rest = [asyncio.ensure_future(call(f"r{k}")) for k in range(1, ACQUIRES)]
    await _until(lambda: group.waiting == ACQUIRES - 1, "every acquire waits for the next batch")
    tasks = [first, *rest]
    assert not any(t.done() for t in tasks), "an acquire was answered before its fsync"
    return tasks


async def test_concurrent_acquires_share_fsyncs(embedded: GatewayConfig) -> None:
    config = dataclasses.replace(embedded, appendfsync=FsyncPolicy.ALWAYS)
    async with client(config) as (gateway, stub):
        nodes = _engines(gateway)
        group = nodes[0].group
        assert group is not None and all(n.group is group for n in nodes)
        aofs = [n.engine.aof for n in nodes]
        assert all(aof is not None for aof in aofs)
        writes = [aof.durable_appends for aof in aofs if aof is not None]
        fsyncs = [aof.fsyncs for aof in aofs if aof is not None]
        jobs, batches = group.fsync_jobs, group.batches
        gates = [FsyncGate(n.engine.faults) for n in nodes]

        def acquire(name: str) -> Awaitable[object]:
            call: Awaitable[object] = stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=5000))
            return call

        tasks = await _held(stub, nodes, gates, acquire)
        for gate in gates:
            gate.open()
        granted = await asyncio.gather(*tasks)
        for gate in gates:
            gate.remove()
        assert len({g.lease_id for g in granted}) == ACQUIRES  # type: ignore[attr-defined]
        # Sixteen acquires (two durable records each, on every node): two batches, each
        # one fsync per node. The fencing round needs no fsync (the reservation covers it).
        assert group.batches - batches == 2
        assert group.fsync_jobs - jobs == 2 * len(nodes)
        registry = gateway.metrics.registry
        assert registry.get_sample_value("lockd_fsync_batches") == group.batches
        assert registry.get_sample_value("lockd_fsync_waits") == group.waits >= ACQUIRES
        for aof, w, f in zip(aofs, writes, fsyncs, strict=True):
            assert aof is not None
            assert aof.durable_appends - w >= ACQUIRES
            assert aof.fsyncs - f == 2


async def test_a_majority_failing_its_fsync_fails_every_acquire_of_the_batch(
    embedded: GatewayConfig,
) -> None:
    config = dataclasses.replace(embedded, appendfsync=FsyncPolicy.ALWAYS)
    async with client(config) as (gateway, stub):
        nodes = _engines(gateway)
        gates = [FsyncGate(n.engine.faults, fail_with=errno.EIO) for n in nodes[:3]]

        def acquire(name: str) -> Awaitable[Failure]:
            return fails(stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=5000)))

        tasks = await _held(stub, nodes, gates, acquire)
        for gate in gates:
            gate.open()
        failures = await asyncio.gather(*tasks)  # `fails`: none may succeed
        for failure in failures:
            assert isinstance(failure, Failure)
            assert failure.code is grpc.StatusCode.UNAVAILABLE
            assert failure.reason == "QUORUM_UNAVAILABLE" and "MISCONF" in failure.message
        for gate in gates:
            gate.remove()
        # The disks heal: the engines rewrite their files from memory and grant again.
        await _until(lambda: all(n.engine.disk_error is None for n in nodes), "recovery")
        got = await stub.Acquire(pb.AcquireRequest(name="after", ttl_ms=5000))
        await stub.Release(pb.ReleaseRequest(name="after", lease_id=got.lease_id))
