"""The embedded gateway when engines' disks fail (issue 12): one bad node never takes
the others down, and a node that cannot write is reported and routed around."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import urllib.request

import grpc
import pytest

from lockd.engine import FsyncPolicy
from lockd.engine.persistence import RESERVATION_NAME
from lockd.gateway import GatewayConfig
from lockd.gateway.nodes import EmbeddedNode
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import client, fails, running


def _engines(gateway: object) -> list[EmbeddedNode]:
    nodes = gateway.manager.nodes  # type: ignore[attr-defined]
    return [n for n in nodes if isinstance(n, EmbeddedNode)]


async def test_a_bad_directory_leaves_four_engines_serving(embedded: GatewayConfig) -> None:
    async with running(embedded):
        pass  # creates the five directories
    (embedded.data_dir / "node-4" / RESERVATION_NAME).unlink()
    async with client(embedded) as (_, stub):
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())
        bad = status.nodes[4]
        assert not bad.reachable and "fence.reserve" in bad.error and "repair" in bad.error
        assert all(n.reachable for n in status.nodes[:4]) and status.quorum_available
        got = await stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=2000))
        await stub.Release(pb.ReleaseRequest(name="r", lease_id=got.lease_id))


async def test_too_many_bad_directories_refuse_to_start(embedded: GatewayConfig) -> None:
    async with running(embedded):
        pass
    for i in (2, 3, 4):
        (embedded.data_dir / f"node-{i}" / RESERVATION_NAME).write_text("garbage")
    with pytest.raises(RuntimeError, match="3 of 5 embedded engines failed"):
        async with running(embedded):
            pass  # pragma: no cover


async def test_a_node_that_cannot_write_is_reported_and_routed_around(
    embedded: GatewayConfig,
) -> None:
    config = dataclasses.replace(embedded, appendfsync=FsyncPolicy.ALWAYS)
    async with client(config) as (gateway, stub):
        engines = _engines(gateway)
        held = await stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=5000))
        engines[0].engine.faults.fail(errno.ENOSPC)
        # Renewals and releases keep working through the four healthy nodes.
        await stub.Renew(pb.RenewRequest(name="r", lease_id=held.lease_id, ttl_ms=5000))
        await stub.Release(pb.ReleaseRequest(name="r", lease_id=held.lease_id))
        again = await stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=5000))
        assert again.fencing_token > held.fencing_token
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())
        assert not status.nodes[0].reachable and "MISCONF" in status.nodes[0].error
        assert status.quorum_available
        # A majority that cannot write: UNAVAILABLE with a reason, never UNKNOWN.
        for node in engines[1:3]:
            node.engine.faults.fail(errno.EIO)
        failure = await fails(stub.Acquire(pb.AcquireRequest(name="other", ttl_ms=1000)))
        assert failure.code is grpc.StatusCode.UNAVAILABLE
        assert failure.reason == "QUORUM_UNAVAILABLE" and "MISCONF" in failure.message
        for node in engines:
            node.engine.faults.heal()


async def test_a_renewal_refused_by_a_majority_that_cannot_write_names_the_disk_error(
    embedded: GatewayConfig,
) -> None:
    """The lease is lost (released everywhere, as the proto's FAILED_PRECONDITION
    LEASE_LOST says), and the message says why: the nodes' MISCONF, not "taken over"."""
    config = dataclasses.replace(
        embedded, appendfsync=FsyncPolicy.ALWAYS, metrics_listen="127.0.0.1:0"
    )
    async with client(config) as (gateway, stub):
        engines = _engines(gateway)
        held = await stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=5000))
        for node in engines[:3]:
            node.engine.faults.fail(errno.ENOSPC)
        failure = await fails(
            stub.Renew(pb.RenewRequest(name="r", lease_id=held.lease_id, ttl_ms=5000))
        )
        assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "LEASE_LOST"
        assert "3 failed (first: MISCONF" in failure.message and "ENOSPC" in failure.message
        assert "too few nodes could extend it" in failure.message
        assert "taken over" not in failure.message
        status = await stub.ClusterStatus(pb.ClusterStatusRequest())
        assert [n.reachable for n in status.nodes] == [False, False, False, True, True]
        assert all("MISCONF" in n.error for n in status.nodes[:3])
        assert gateway.metrics_port
        text = await asyncio.to_thread(_scrape, gateway.metrics_port)
        assert 'lockd_node_up{node="embedded:0"} 0.0' in text
        assert 'lockd_node_up{node="embedded:4"} 1.0' in text
        for node in engines:
            node.engine.faults.heal()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())
