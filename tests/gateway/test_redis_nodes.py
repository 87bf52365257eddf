"""Real redis-servers as nodes, without windows: the restart guard inside lockd's Lua
library, settings re-checked while running, and the library reloaded after a node lost it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lockd.core import lock_key
from lockd.core.quorum import restart_delay_ms
from lockd.gateway import GatewayConfig
from lockd.gateway.nodes import RespNode, lua_library
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, client, eventually, fails
from tests.support import RedisProcess, redis_server_binary

pytestmark = pytest.mark.redis


@contextlib.contextmanager
def servers(tmp_path: Path, n: int) -> Iterator[list[RedisProcess]]:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed; `make test` installs Debian's package")
    procs = [RedisProcess(tmp_path / f"redis-{i}") for i in range(n)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.close()


def _config(procs: list[RedisProcess], max_ttl_ms: int = 2000) -> GatewayConfig:
    return GatewayConfig(
        nodes=tuple(f"redis://127.0.0.1:{p.port}" for p in procs),
        max_ttl_ms=max_ttl_ms,
        node_timeout_ms=500,
    )


async def _status(stub: Stub) -> list[pb.NodeStatus]:
    return list((await stub.ClusterStatus(pb.ClusterStatusRequest())).nodes)


async def _held_everywhere(stub: Stub) -> bool:
    """One acquire landed on every node (every node past its delay, library loaded)."""
    try:
        got = await stub.Acquire(pb.AcquireRequest(name="warm", ttl_ms=1000, wait_ms=500))
    except Exception:
        return False
    held = (await stub.Describe(pb.DescribeRequest(name="warm"))).nodes_holding
    await stub.Release(pb.ReleaseRequest(name="warm", lease_id=got.lease_id))
    return held == 3


def test_lua_library_refuses_acquisitions_until_the_process_is_old_enough(
    tmp_path: Path,
) -> None:
    """The guard lives in lockd_acquire itself; a restart that empties the node removes the
    library, and the library loaded again counts from the process's start, not the load."""
    with servers(tmp_path, 1) as (proc,):
        r = proc.client()
        r.function_load(lua_library(restart_delay_ms=2000), replace=True)
        key, fence = lock_key(b"g"), b"fence:{g}"
        with pytest.raises(redis.ResponseError, match=r"^RESTARTDELAY \d+ ms left: .*up for"):
            r.fcall("lockd_acquire", 2, key, fence, b"lease-1", b"1000")
        # Only acquisition is refused: fencing, extend and release go on (as on the engine).
        assert r.fcall("lockd_fence_advance", 1, fence, b"5") == [1, 5]
        assert r.fcall("lockd_extend", 1, key, b"lease-1", b"1000") == 0
        time.sleep(3.05)  # uptime is read in whole seconds, rounded down
        assert r.fcall("lockd_acquire", 2, key, fence, b"lease-1", b"1000") == [1, 5]
        r.close()

        proc.kill(wipe=True)
        proc.start(load_library=False)
        r = proc.client()
        with pytest.raises(redis.ResponseError, match=r"(?i)function not found"):
            r.fcall("lockd_acquire", 2, key, fence, b"lease-2", b"1000")
        r.function_load(lua_library(restart_delay_ms=2000), replace=True)
        with pytest.raises(redis.ResponseError, match=r"^RESTARTDELAY"):
            r.fcall("lockd_acquire", 2, key, fence, b"lease-2", b"1000")
        r.close()


async def test_a_node_restarted_empty_gets_no_grant_before_its_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a gateway that never notices the restart (its run-id check switched off here)
    lands no grant on the node before its delay: the reloaded library refuses."""
    monkeypatch.setattr(RespNode, "_note_run_id", lambda self, run_id, uptime_s: None)
    delay_s = restart_delay_ms(2000) / 1000
    with servers(tmp_path, 3) as procs:
        async with client(_config(procs)) as (_, stub):
            await eventually(lambda: _held_everywhere(stub), timeout=10, interval=0.1)
            victim = procs[0]
            killed = time.monotonic()
            victim.kill(wipe=True)
            victim.start(load_library=False)
            direct = victim.client()
            early, landed, reads_refused = 0, [], 0
            i = 0
            while time.monotonic() < killed + delay_s + 3:
                i += 1
                name = f"x{i}"
                try:  # lock reads wait out the delay too (once the library is back)
                    direct.fcall("lockd_peek", 1, "lock:probe")
                    assert time.monotonic() >= killed + delay_s, "a lock read in the delay"
                except redis.ResponseError as exc:
                    reads_refused += "RESTARTDELAY" in str(exc)
                try:
                    got = await stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=2000))
                except Exception:
                    continue
                done = time.monotonic()
                if direct.exists(lock_key(name.encode())):
                    landed.append(done - killed)
                elif done < killed + delay_s:
                    early += 1
                await stub.Release(pb.ReleaseRequest(name=name, lease_id=got.lease_id))
            direct.close()
            assert early > 0, "no grant through the other nodes during the delay"
            assert landed, "the restarted node never served a grant (library not reloaded?)"
            assert min(landed) >= delay_s, landed
            assert reads_refused > 0


async def test_settings_drift_takes_a_node_out_until_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "lockd.gateway")
    with servers(tmp_path, 3) as procs:
        async with client(_config(procs)) as (_, stub):
            await eventually(lambda: _held_everywhere(stub), timeout=10, interval=0.1)
            a, b = procs[0].client(), procs[1].client()
            a.config_set("appendonly", "no")
            b.config_set("maxmemory-policy", "allkeys-random")

            async def out() -> bool:
                nodes = await _status(stub)
                return not nodes[0].reachable and not nodes[1].reachable

            await eventually(out, timeout=5, interval=0.05)
            nodes = await _status(stub)
            assert "appendonly='no'" in nodes[0].error and str(procs[0].port) in nodes[0].error
            assert "maxmemory-policy" in nodes[1].error and "noeviction" in nodes[1].error
            assert nodes[2].reachable and not nodes[2].error
            # Two of three nodes unusable: no quorum, and the refusal names the cause.
            refused = await fails(stub.Acquire(pb.AcquireRequest(name="d", ttl_ms=1000)))
            assert refused.reason == "QUORUM_UNAVAILABLE", refused
            await asyncio.sleep(2.5)  # reconnect attempts go on, refused each time: logged once
            unusable = [r for r in caplog.records if "is not usable" in r.getMessage()]
            assert len(unusable) == 2, [r.getMessage() for r in unusable]

            a.config_set("appendonly", "yes")
            b.config_set("maxmemory-policy", "noeviction")
            await eventually(lambda: _held_everywhere(stub), timeout=10, interval=0.1)
            again = [r for r in caplog.records if "usable again" in r.getMessage()]
            assert len(again) == 2
            a.close()
            b.close()


async def test_library_reloaded_and_unusable_node_shown(tmp_path: Path) -> None:
    with servers(tmp_path, 3) as procs:
        async with client(_config(procs)) as (_, stub):
            await eventually(lambda: _held_everywhere(stub), timeout=10, interval=0.1)
            r = procs[2].client()
            r.function_flush()
            assert r.function_list() == []
            await eventually(
                lambda: _async(bool(r.function_list(library="lockd"))), timeout=3, interval=0.05
            )
            await eventually(lambda: _held_everywhere(stub), timeout=5, interval=0.1)
            # A user that may not load functions: the node answers but cannot serve.
            r.execute_command("ACL", "SETUSER", "lockd", "on", ">pw", "~*", "&*", "+@all")
            r.execute_command("ACL", "SETUSER", "lockd", "-function")
            r.close()

        nodes = list(_config(procs).nodes)
        nodes[2] = f"redis://lockd:pw@127.0.0.1:{procs[2].port}"
        procs[2].client().function_delete("lockd")
        async with client(GatewayConfig(nodes=tuple(nodes), max_ttl_ms=2000)) as (_, stub):
            status = await _status(stub)
            assert not status[2].reachable
            assert "cannot load lockd's Lua library" in status[2].error
            assert "NOPERM" in status[2].error and "pw" not in status[2].error
            assert status[0].reachable and status[1].reachable


async def _async(value: bool) -> bool:
    return value
