"""The gRPC servicer: thin methods over `LockManager`, and error mapping.

Each call is implemented once (`_acquire`, `_release`, `_renew`, raising `LockdError`);
the unary methods turn errors into a status with a google.rpc ErrorInfo detail, and
`Session` carries the same calls on one stream with errors as `Error` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from lockd import __version__
from lockd.core import Granted
from lockd.errors import ErrorReason, LockdError, abort
from lockd.gateway import admin, listing, records
from lockd.gateway.locks import LockManager
from lockd.gateway.nodes import Mode
from lockd.units import MS
from lockd.v1 import lock_service_pb2 as pb
from lockd.v1 import lock_service_pb2_grpc as pb_grpc

__all__ = ["LockService"]

_MODES = {
    Mode.EMBEDDED: pb.NODE_MODE_EMBEDDED,
    Mode.LOCKD_ENGINE: pb.NODE_MODE_LOCKD_ENGINE,
    Mode.REDIS: pb.NODE_MODE_REDIS,
}
Context: TypeAlias = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


def _granted(granted: Granted, received_ns: int, ttl_ms: int) -> pb.AcquireResponse:
    """The response to a grant; validity counted from when the request arrived."""
    return pb.AcquireResponse(
        lease_id=granted.lease,
        fencing_token=granted.token,
        validity_ms=(granted.deadline_ns - received_ns) // MS,
        ttl_ms=ttl_ms,
    )


def _error(error: LockdError) -> pb.Error:
    """A session error message for `error`."""
    return pb.Error(
        code=error.code.value[0],
        message=error.message,
        reason=error.reason,
        metadata=error.metadata,
    )


def _deadline_ns(context: Context) -> int | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic_ns() + int(remaining * 1e9)


class LockService(pb_grpc.LockServiceServicer):
    """`lockd.v1.LockService`."""

    def __init__(self, manager: LockManager) -> None:
        self.manager = manager
        self.draining = asyncio.Event()
        """Set at graceful shutdown: sessions end once their calls in flight finish."""

    # -- the calls, once -------------------------------------------------------------------

    async def _acquire(
        self, request: pb.AcquireRequest, deadline_ns: int | None, cancelled: Callable[[], bool]
    ) -> pb.AcquireResponse:
        received = time.monotonic_ns()
        m = self.manager
        start = time.perf_counter()
        try:
            name = m.check_name(request.name)
            ttl = m.check_ttl(request.ttl_ms)
            meta = records.requested(request.owner, request.value)
            granted = await m.acquire(name, ttl, request.wait_ms, deadline_ns, meta)
            if cancelled():
                # Granted too late for the caller to hear of it: give it back at once.
                m.release_in_background(name, granted.lease)
                raise LockdError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    ErrorReason.LOCK_HELD,
                    "granted after the RPC deadline; released again",
                )
        except LockdError as exc:
            m.metrics.acquire_seconds.labels(exc.reason.lower()).observe(
                time.perf_counter() - start
            )
            raise
        m.metrics.acquire_seconds.labels("granted").observe(time.perf_counter() - start)
        return _granted(granted, received, ttl)

    def _answer_now(self, request: pb.SessionRequest) -> pb.SessionResponse | None:
        """Answer a session request without a task when every node is embedded and the
        call needs no waiting: the hot path. None means "take the async path"."""
        m = self.manager
        response = pb.SessionResponse(id=request.id)
        kind = request.WhichOneof("call")
        try:
            if kind == "acquire":
                received = time.monotonic_ns()
                start = time.perf_counter()
                name = m.check_name(request.acquire.name)
                ttl = m.check_ttl(request.acquire.ttl_ms)
                meta = records.requested(request.acquire.owner, request.acquire.value)
                granted = m.acquire_now(name, ttl, meta) if request.acquire.wait_ms >= 0 else None
                if granted is None:
                    return None
                m.metrics.acquire_seconds.labels("granted").observe(time.perf_counter() - start)
                response.acquire.CopyFrom(_granted(granted, received, ttl))
            elif kind == "release":
                rel = request.release
                released = m.release_now(m.check_name(rel.name), m.check_lease(rel.lease_id))
                response.release.nodes_released = released.released
            elif kind == "renew":
                received = time.monotonic_ns()
                ren = request.renew
                renewed = m.renew_now(
                    m.check_name(ren.name), m.check_lease(ren.lease_id), ren.ttl_ms
                )
                response.renew.validity_ms = (renewed.deadline_ns - received) // MS
            else:
                return None
        except LockdError as exc:
            response.error.CopyFrom(_error(exc))
        return response

    async def _release(self, request: pb.ReleaseRequest) -> pb.ReleaseResponse:
        m = self.manager
        released = await m.release(m.check_name(request.name), m.check_lease(request.lease_id))
        return pb.ReleaseResponse(nodes_released=released.released)

    async def _renew(self, request: pb.RenewRequest) -> pb.RenewResponse:
        received = time.monotonic_ns()
        m = self.manager
        start = time.perf_counter()
        try:
            renewed = await m.renew(
                m.check_name(request.name), m.check_lease(request.lease_id), request.ttl_ms
            )
        except LockdError as exc:
            m.metrics.renew_seconds.labels(exc.reason.lower()).observe(time.perf_counter() - start)
            raise
        m.metrics.renew_seconds.labels("renewed").observe(time.perf_counter() - start)
        return pb.RenewResponse(validity_ms=(renewed.deadline_ns - received) // MS)

    # -- unary RPCs ------------------------------------------------------------------------

    async def Acquire(self, request: pb.AcquireRequest, context: Context) -> pb.AcquireResponse:
        def late() -> bool:
            remaining = context.time_remaining()
            return remaining is not None and remaining <= 0

        try:
            return await self._acquire(request, _deadline_ns(context), late)
        except LockdError as exc:
            await abort(context, exc)

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        try:
            return await self._release(request)
        except LockdError as exc:
            await abort(context, exc)

    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        try:
            return await self._renew(request)
        except LockdError as exc:
            await abort(context, exc)

    async def Describe(self, request: pb.DescribeRequest, context: Context) -> pb.DescribeResponse:
        m = self.manager
        try:
            name = m.check_name(request.name)
        except LockdError as exc:
            await abort(context, exc)
        d = await records.holder(m, name)
        meta = d.meta
        return pb.DescribeResponse(
            owner=meta.owner.decode(errors="replace") if meta else "",
            value=meta.value if meta else b"",
            acquired_at_ms=meta.acquired_at_ms if meta else 0,
            name=request.name,
            held=d.held,
            ttl_remaining_ms=d.ttl_remaining_ms,
            fencing_counter=d.fencing_counter,
            waiters=m.waiters(name),
            nodes_answered=d.nodes_answered,
            nodes_holding=d.nodes_holding,
        )

    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        try:
            page = await listing.list_page(
                self.manager,
                request.prefix.encode("utf-8", "surrogatepass"),
                request.page_token,
                request.page_size,
            )
        except LockdError as exc:
            await abort(context, exc)
        return pb.ListResponse(
            locks=[
                pb.LockEntry(
                    name=e.name.decode(errors="replace"),
                    owner=e.meta.owner.decode(errors="replace") if e.meta else "",
                    value=e.meta.value if e.meta else b"",
                    fencing_token=e.fencing_counter,
                    ttl_remaining_ms=e.ttl_remaining_ms,
                    acquired_at_ms=e.meta.acquired_at_ms if e.meta else 0,
                    waiters=e.waiters,
                )
                for e in page.entries
            ],
            next_page_token=page.next_token,
        )

    async def ForceRelease(
        self, request: pb.ForceReleaseRequest, context: Context
    ) -> pb.ForceReleaseResponse:
        m = self.manager
        try:
            who = admin.admin_identity(m.config, context)
            done = await admin.force_release(m, m.check_name(request.name), who)
        except LockdError as exc:
            await abort(context, exc)
        return pb.ForceReleaseResponse(
            released=done.released > 0,
            nodes_released=done.released,
            fencing_counter=done.counter,
        )

    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: Context
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

    # -- the stream ------------------------------------------------------------------------

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        """Answer each request as it completes; when the stream ends, cancel what is left
        (cancelled acquisitions release whatever they had taken)."""
        responses: asyncio.Queue[pb.SessionResponse | None] = asyncio.Queue()
        granted_names: dict[int, str] = {}  # request id -> lock name, for undelivered grants
        tasks: set[asyncio.Task[None]] = set()
        closed = False

        async def answer(request: pb.SessionRequest) -> None:
            response = pb.SessionResponse(id=request.id)
            try:
                kind = request.WhichOneof("call")
                if kind == "acquire":
                    response.acquire.CopyFrom(
                        await self._acquire(request.acquire, None, lambda: closed)
                    )
                    granted_names[request.id] = request.acquire.name
                elif kind == "release":
                    response.release.CopyFrom(await self._release(request.release))
                elif kind == "renew":
                    response.renew.CopyFrom(await self._renew(request.renew))
                else:
                    raise LockdError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        ErrorReason.BAD_REQUEST,
                        "session request has no call",
                    )
            except LockdError as exc:
                response.error.CopyFrom(_error(exc))
            responses.put_nowait(response)

        inline = self.manager.driver.synchronous

        async def read() -> None:
            async for request in requests:
                if inline and (now := self._answer_now(request)) is not None:
                    if now.WhichOneof("result") == "acquire":
                        granted_names[request.id] = request.acquire.name
                    responses.put_nowait(now)
                    continue
                task = asyncio.create_task(answer(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        async def finish() -> None:
            """When the client stops sending, or the gateway drains for shutdown, stop
            reading, let the calls in flight finish, then end the stream (the client
            library then carries on with another gateway)."""
            draining = asyncio.create_task(self.draining.wait())
            await asyncio.wait({reader, draining}, return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
            reader.cancel()
            while tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            responses.put_nowait(None)

        reader = asyncio.create_task(read())
        finisher = asyncio.create_task(finish())
        try:
            while (response := await responses.get()) is not None:
                granted_names.pop(response.id, None)
                yield response
        finally:
            closed = True
            reader.cancel()
            finisher.cancel()
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(reader, finisher, *tasks, return_exceptions=True)
            # Grants the caller never received would otherwise block the lock for a TTL.
            while not responses.empty():
                undelivered = responses.get_nowait()
                if undelivered is not None and undelivered.id in granted_names:
                    self.manager.release_in_background(
                        granted_names[undelivered.id].encode(), undelivered.acquire.lease_id
                    )
