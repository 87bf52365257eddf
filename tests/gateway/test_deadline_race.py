"""Acquire calls whose wait ends exactly at their RPC deadline: the refusal and the
deadline race, an expected outcome that the gateway must not log as an error (it logged
`ExecuteBatchError` tracebacks: a status sent after grpc had ended the call)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from lockd.v1 import lock_service_pb2 as pb
from tests.client.helpers import serve_process
from tests.gateway.helpers import Stub, channel


async def test_wait_ending_at_the_deadline_logs_no_traceback(tmp_path: Path) -> None:
    proc = serve_process(tmp_path / "data").start()
    try:
        async with channel(proc.port) as ch:
            stub = Stub(ch)
            await stub.Acquire(pb.AcquireRequest(name="busy", ttl_ms=60_000))
            codes: list[grpc.StatusCode] = []

            async def one(wait_ms: int) -> None:
                try:
                    await stub.Acquire(
                        pb.AcquireRequest(name="busy", ttl_ms=1000, wait_ms=wait_ms),
                        timeout=wait_ms / 1000,
                    )
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())

            for _ in range(10):
                await asyncio.gather(*(one(100 + i % 20) for i in range(300)))
            # A refusal well before the deadline still carries its reason.
            try:
                await stub.Acquire(pb.AcquireRequest(name="busy", ttl_ms=1000), timeout=5)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "lock" in (err.details() or "")
        await asyncio.sleep(0.5)
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3000
        log = proc.output()
        assert "Traceback" not in log and "ExecuteBatchError" not in log, log[-3000:]
        assert " ERROR " not in log, log[-3000:]
    finally:
        proc.close()
