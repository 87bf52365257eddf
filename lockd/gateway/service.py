"""The gRPC servicer: thin methods over `LockManager`, and error mapping."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from lockd import __version__
from lockd.gateway.errors import DOMAIN, LockdError
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import Mode
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc as pb_grpc

__all__ = ["LockService", "abort"]

MS = 1_000_000
_MODES = {
    Mode.EMBEDDED: pb.NODE_MODE_EMBEDDED,
    Mode.LOCKD_ENGINE: pb.NODE_MODE_LOCKD_ENGINE,
    Mode.REDIS: pb.NODE_MODE_REDIS,
}


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: LockdError) -> NoReturn:
    """End the call with `error`'s code, message and a google.rpc ErrorInfo detail."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    await context.abort(
        error.code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
    raise AssertionError("unreachable")  # abort raises


def _deadline_ns(context: grpc.aio.ServicerContext[Any, Any]) -> int | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic_ns() + int(remaining * 1e9)


class LockService(pb_grpc.LockServiceServicer):
    """`lockd.v1.LockService`."""

    def __init__(self, manager: LockManager) -> None:
        self.manager = manager

    async def Acquire(
        self, request: pb.AcquireRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AcquireResponse:
        received = time.monotonic_ns()
        m = self.manager
        start = time.perf_counter()
        try:
            name = m.check_name(request.name)
            ttl = m.check_ttl(request.ttl_ms)
            granted = await m.acquire(name, ttl, request.wait_ms, _deadline_ns(context))
        except LockdError as exc:
            m.metrics.acquire_seconds.labels(exc.reason.lower()).observe(
                time.perf_counter() - start
            )
            await abort(context, exc)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # Granted too late for the caller to hear of it: give it back at once.
            m.release_in_background(name, granted.lease)
            await abort(
                context,
                LockdError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "LOCK_HELD",
                    "granted after the RPC deadline; released",
                ),
            )
        m.metrics.acquire_seconds.labels("granted").observe(time.perf_counter() - start)
        return pb.AcquireResponse(
            lease_id=granted.lease,
            fencing_token=granted.token,
            validity_ms=(granted.deadline_ns - received) // MS,
            ttl_ms=ttl,
        )

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReleaseResponse:
        m = self.manager
        try:
            released = await m.release(m.check_name(request.name), m.check_lease(request.lease_id))
        except LockdError as exc:
            await abort(context, exc)
        return pb.ReleaseResponse(nodes_released=released.released)

    async def Renew(
        self, request: pb.RenewRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RenewResponse:
        received = time.monotonic_ns()
        m = self.manager
        start = time.perf_counter()
        try:
            renewed = await m.renew(
                m.check_name(request.name), m.check_lease(request.lease_id), request.ttl_ms
            )
        except LockdError as exc:
            m.metrics.renew_seconds.labels(exc.reason.lower()).observe(time.perf_counter() - start)
            await abort(context, exc)
        m.metrics.renew_seconds.labels("renewed").observe(time.perf_counter() - start)
        return pb.RenewResponse(validity_ms=(renewed.deadline_ns - received) // MS)

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DescribeResponse:
        m = self.manager
        try:
            d = await m.describe(m.check_name(request.name))
        except LockdError as exc:
            await abort(context, exc)
        return pb.DescribeResponse(
            name=request.name,
            held=d.held,
            ttl_remaining_ms=d.ttl_remaining_ms,
            fencing_counter=d.fencing_counter,
            waiters=d.waiters,
            nodes_answered=d.nodes_answered,
            nodes_holding=d.nodes_holding,
        )

    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ClusterStatusResponse:
        infos = await self.manager.cluster()
        ready = sum(1 for i in infos if i.reachable and i.restart_delay_ms == 0)
        return pb.ClusterStatusResponse(
            nodes=[
                pb.NodeStatus(
                    address=i.address,
                    mode=_MODES[i.mode],
                    reachable=i.reachable,
                    latency_ms=i.latency_ms,
                    restart_delay_remaining_ms=i.restart_delay_ms,
                    restart_delay_reason=i.restart_reason,
                    run_id=i.run_id,
                    error=i.error,
                )
                for i in infos
            ],
            quorum=self.manager.quorum,
            quorum_available=ready >= self.manager.quorum,
            version=__version__,
        )
