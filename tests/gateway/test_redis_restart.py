"""A real Redis node that restarts with an empty data directory has lost lockd's Lua
library: the gateway loads it again when it reconnects, so after the restart delay the
node holds locks again (it used to be excluded for good while shown as reachable)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import redis

from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import client, eventually
from tests.gateway.test_nodes import _all_ready, redis_servers
from tests.support import free_port, redis_server


@pytest.mark.redis
async def test_a_redis_restarted_empty_gets_the_library_again(tmp_path: Path) -> None:
    port = free_port()
    wiped = tmp_path / "wiped"
    with contextlib.ExitStack() as stack, redis_servers(tmp_path, 4) as others:
        stack.enter_context(redis_server(wiped, port=port, load_library=False))
        nodes = (f"redis://127.0.0.1:{port}", *(f"redis://127.0.0.1:{p}" for p in others))
        async with client(GatewayConfig(nodes=nodes, max_ttl_ms=1000)) as (_, stub):
            await eventually(lambda: _all_ready(stub), timeout=5, interval=0.05)
            got = await stub.Acquire(pb.AcquireRequest(name="a", ttl_ms=1000))
            d = await stub.Describe(pb.DescribeRequest(name="a"))
            assert d.nodes_holding == 5
            await stub.Release(pb.ReleaseRequest(name="a", lease_id=got.lease_id))
            # Restart the first node with an empty data directory (no library).
            stack.close()
            shutil.rmtree(wiped)
            stack.enter_context(redis_server(wiped, port=port, load_library=False))

            async def holds_on_all() -> bool:
                if not await _all_ready(stub):
                    return False
                lease = await stub.Acquire(pb.AcquireRequest(name="b", ttl_ms=1000, wait_ms=500))
                holding = (await stub.Describe(pb.DescribeRequest(name="b"))).nodes_holding
                await stub.Release(pb.ReleaseRequest(name="b", lease_id=lease.lease_id))
                return holding == 5

            await eventually(holds_on_all, timeout=10, interval=0.2)
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert status.nodes[0].reachable and not status.nodes[0].error


@pytest.mark.redis
async def test_a_redis_that_lost_the_library_while_connected_gets_it_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FUNCTION FLUSH on a connected node (no reconnect to trigger the check): every lock
    call to it failed while ClusterStatus showed it reachable with no error; the health
    poll now notices, loads the library again and says so."""
    with redis_servers(tmp_path, 5) as ports:
        nodes = tuple(f"redis://127.0.0.1:{p}" for p in ports)
        async with client(GatewayConfig(nodes=nodes, max_ttl_ms=1000)) as (_, stub):
            await eventually(lambda: _all_ready(stub), timeout=5, interval=0.05)
            flushed = redis.Redis(port=ports[0])
            flushed.function_flush()
            flushed.close()

            async def holds_on_all() -> bool:
                lease = await stub.Acquire(pb.AcquireRequest(name="c", ttl_ms=1000, wait_ms=500))
                holding = (await stub.Describe(pb.DescribeRequest(name="c"))).nodes_holding
                await stub.Release(pb.ReleaseRequest(name="c", lease_id=lease.lease_id))
                return holding == 5

            await eventually(holds_on_all, timeout=5, interval=0.2)
    assert any("lost lockd's library while connected" in r.getMessage() for r in caplog.records)
