"""Fencing tokens keep growing across gateway restarts (clean and kill -9) and across a
restart of every engine node; after an unclean stop the delayed restart is reported as
UNAVAILABLE NODES_RESTARTING with a retry hint, and honoured."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lockd.core.quorum import restart_delay_ms
from lockd.gateway import GatewayConfig
from lockd.v1 import lock_service_pb2 as pb
from tests.gateway.helpers import Stub, channel, client, fails, start_all, urls
from tests.support import EngineProcess, free_port, wait_for_port

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def grant_some(stub: Stub, name: str, n: int, ttl_ms: int = 1000) -> list[int]:
    """Acquire and release `name` n times; the tokens."""
    tokens = []
    for _ in range(n):
        got = await stub.Acquire(pb.AcquireRequest(name=name, ttl_ms=ttl_ms, wait_ms=2000))
        tokens.append(got.fencing_token)
        await stub.Release(pb.ReleaseRequest(name=name, lease_id=got.lease_id))
    return tokens


def increasing(tokens: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(tokens))


async def test_tokens_grow_across_a_clean_gateway_restart(embedded: GatewayConfig) -> None:
    tokens: list[int] = []
    async with client(embedded) as (_, stub):
        tokens += await grant_some(stub, "r", 20)
        tokens += await grant_some(stub, "other", 3)
    for _ in range(2):
        async with client(embedded) as (_, stub):
            # A clean stop with no live lease: no restart delay.
            got = await stub.Acquire(pb.AcquireRequest(name="r", ttl_ms=1000))
            tokens.append(got.fencing_token)
            await stub.Release(pb.ReleaseRequest(name="r", lease_id=got.lease_id))
            tokens += await grant_some(stub, "r", 5)
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert status.quorum_available
            assert all(n.restart_delay_remaining_ms == 0 for n in status.nodes)
    r_tokens = tokens[:20] + tokens[23:]
    assert increasing(r_tokens), r_tokens
    assert increasing(tokens[20:23])


async def test_clean_restart_with_a_live_lease_waits_it_out(embedded: GatewayConfig) -> None:
    async with client(embedded) as (_, stub):
        held = await stub.Acquire(pb.AcquireRequest(name="live", ttl_ms=1500))
    async with client(embedded) as (_, stub):
        # A clean stop with a live lease: the nodes refuse acquisitions until it expires.
        busy = await fails(stub.Acquire(pb.AcquireRequest(name="live", ttl_ms=1000)))
        assert (busy.code, busy.reason) == (UNAVAILABLE, "NODES_RESTARTING"), busy
        assert 0 < int(busy.metadata["retry_after_ms"]) <= 1500
        # Then a larger token.
        got = await stub.Acquire(pb.AcquireRequest(name="live", ttl_ms=1000, wait_ms=3000))
        assert got.fencing_token > held.fencing_token


@contextlib.contextmanager
def lockd_serve(data_dir: Path, port: int, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m lockd serve` on 127.0.0.1:port; killed at the end if still running."""
    cmd = [sys.executable, "-m", "lockd", "serve", "--listen", f"127.0.0.1:{port}",
           "--data-dir", str(data_dir), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


async def test_unclean_gateway_stop_delays_then_grants_larger(tmp_path: Path) -> None:
    """kill -9 of `lockd serve` (embedded engines): every node restarts unclean."""
    port = free_port()
    data = tmp_path / "data"
    tokens: list[int] = []
    with lockd_serve(data, port, "--max-ttl", "1s") as proc:
        async with channel(port) as ch:
            stub = Stub(ch)
            tokens += await grant_some(stub, "u", 10)
            got = await stub.Acquire(pb.AcquireRequest(name="u", ttl_ms=1000))
            tokens.append(got.fencing_token)  # still held when the process dies
            first_v = await stub.Acquire(pb.AcquireRequest(name="v", ttl_ms=1000))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with lockd_serve(data, port, "--max-ttl", "1s"):
        async with channel(port) as ch:
            stub = Stub(ch)
            refused = await fails(stub.Acquire(pb.AcquireRequest(name="u", ttl_ms=1000)))
            assert (refused.code, refused.reason) == (UNAVAILABLE, "NODES_RESTARTING")
            retry_after = int(refused.metadata["retry_after_ms"])
            assert 0 < retry_after <= restart_delay_ms(1000)
            assert "restart" in refused.message
            # A short wait is refused at once, not after sleeping past it.
            short = await fails(stub.Acquire(pb.AcquireRequest(name="v", ttl_ms=1000, wait_ms=100)))
            assert short.reason == "NODES_RESTARTING"
            assert short.elapsed < 0.2
            # A wait longer than the delay is granted when it ends.
            start = time.perf_counter()
            granted_after: list[float] = []

            async def wait_for_v() -> pb.AcquireResponse:
                # Timed here, not in a done callback, which may run after `await waiter`.
                granted = await stub.Acquire(pb.AcquireRequest(name="v", ttl_ms=1000, wait_ms=3000))
                granted_after.append(time.perf_counter() - start)
                return granted

            waiter = asyncio.ensure_future(wait_for_v())
            status = await stub.ClusterStatus(pb.ClusterStatusRequest())
            assert not status.quorum_available
            assert all(0 < n.restart_delay_remaining_ms <= 1012 for n in status.nodes)
            assert all(n.restart_delay_reason == "unclean stop" for n in status.nodes)

            await asyncio.sleep(retry_after / 1000)
            got = await stub.Acquire(pb.AcquireRequest(name="u", ttl_ms=1000, wait_ms=500))
            assert got.fencing_token > max(tokens), (got.fencing_token, tokens)
            got_v = await waiter
            # Woken when the delay ends (it said how long), not by slow polling.
            assert granted_after[0] < retry_after / 1000 + 0.3, (granted_after, retry_after)
            assert got_v.fencing_token > first_v.fencing_token


@pytest.fixture
def short_ttl_engines(tmp_path: Path) -> Iterator[list[EngineProcess]]:
    """Five `lockd engine` processes with --max-ttl 1s."""
    procs = [EngineProcess(tmp_path / f"engine-{i}", "--max-ttl", "1s") for i in range(5)]
    try:
        yield start_all(procs)
    finally:
        for proc in procs:
            proc.close()


async def test_tokens_grow_across_a_restart_of_all_engines(
    tmp_path: Path, short_ttl_engines: list[EngineProcess]
) -> None:
    config = GatewayConfig(nodes=urls(short_ttl_engines), max_ttl_ms=1000)
    async with client(config) as (_, stub):
        tokens = await grant_some(stub, "e", 10)
        # A lease live at the crash (on another lock: this gateway would answer LOCK_HELD
        # for its own live lease without asking the nodes).
        await stub.Acquire(pb.AcquireRequest(name="held", ttl_ms=1000))
        for proc in short_ttl_engines:
            proc.kill()
        for proc in short_ttl_engines:
            proc.close()
        await asyncio.to_thread(start_all, short_ttl_engines)  # same directories and ports

        # A short wait: the first attempt may meet connections the restart closed.
        refused = await fails(stub.Acquire(pb.AcquireRequest(name="e", ttl_ms=1000, wait_ms=300)))
        assert (refused.code, refused.reason) == (UNAVAILABLE, "NODES_RESTARTING"), refused
        assert refused.elapsed < 0.5
        retry_after = int(refused.metadata["retry_after_ms"])
        assert 0 < retry_after <= restart_delay_ms(1000)
        await asyncio.sleep(retry_after / 1000)
        got = await stub.Acquire(pb.AcquireRequest(name="e", ttl_ms=1000, wait_ms=1000))
        assert got.fencing_token > max(tokens), (got.fencing_token, tokens)
        await stub.Release(pb.ReleaseRequest(name="e", lease_id=got.lease_id))
        more = await grant_some(stub, "e", 3)
        assert increasing([*tokens, got.fencing_token, *more])
