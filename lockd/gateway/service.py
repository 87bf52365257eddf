"""The gRPC servicer: thin methods over `LockManager`, and error mapping.

Each call is implemented once (`_acquire`, `_release`, `_renew`, raising `LockdError`).
Like the manager's, each returns its response at once when the manager answered
inline (embedded engines, nothing to wait for: the hot path), else a coroutine. The
unary methods await it and turn errors into a status with a google.rpc ErrorInfo
detail; `Session` carries the same calls on one stream, errors as `Error` messages,
and starts a task only for answers that are not ready at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeAlias, TypeVar

import grpc

from lockd import __version__
from lockd.admin import admin_identity
from lockd.core import Granted, Released, Renewed
from lockd.core.records import Leader, election_lock
from lockd.errors import ErrorReason, LockdError, abort
from lockd.gateway import admin, election, listing, records, watch
from lockd.gateway.locks import LockManager, Now
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
Message = TypeVar("Message", pb.AcquireResponse, pb.ReleaseResponse, pb.RenewResponse)
Response: TypeAlias = pb.AcquireResponse | pb.ReleaseResponse | pb.RenewResponse


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


async def _ready(answer: Now[Message]) -> Message:
    """The response, awaited if it was not ready at once."""
    if isinstance(answer, Coroutine):
        return await answer
    return answer


def _owner(owner: str) -> bytes:
    """A candidate's owner, or INVALID_ARGUMENT BAD_OWNER (the lock owner rule)."""
    meta = records.requested(owner, b"")
    return meta.owner if meta is not None else b""


def _leader(name: str, found: Leader) -> pb.LeaderResponse:
    return pb.LeaderResponse(
        election=name,
        term=found.term,
        value=found.value,
        owner=found.owner.decode(errors="replace"),
        ttl_remaining_ms=found.ttl_remaining_ms,
    )


_WATCH_TYPES = {
    watch.EventType.STATE: pb.WatchEvent.STATE,
    watch.EventType.SYNCED: pb.WatchEvent.SYNCED,
    watch.EventType.ACQUIRED: pb.WatchEvent.ACQUIRED,
    watch.EventType.UPDATED: pb.WatchEvent.UPDATED,
    watch.EventType.RELEASED: pb.WatchEvent.RELEASED,
    watch.EventType.EXPIRED: pb.WatchEvent.EXPIRED,
    watch.EventType.FORCE_RELEASED: pb.WatchEvent.FORCE_RELEASED,
}


def _watch_event(event: watch.WatchEvent) -> pb.WatchEvent:
    meta = event.meta
    return pb.WatchEvent(
        type=_WATCH_TYPES[event.type],
        name=event.name.decode(errors="replace"),
        held=event.held,
        fencing_token=event.token,
        owner=meta.owner.decode(errors="replace") if meta else "",
        value=meta.value if meta else b"",
        ttl_remaining_ms=event.ttl_remaining_ms,
        acquired_at_ms=meta.acquired_at_ms if meta else 0,
    )


def _deadline_ns(context: Context) -> int | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic_ns() + int(remaining * 1e9)


class Backlog:
    """Session requests read and not yet answered back, per stream and in total: a stream
    at its `window`, or holding any while the gateway is at its `limit`, is not read
    until an answer is sent (flow control: its client's writes then block). A stream with
    nothing unanswered is always read, so stalled streams cannot starve the others."""

    def __init__(self, window: int, limit: int) -> None:
        self.window = window
        self.limit = limit
        self.used = 0
        """Requests read and not yet answered back, over every stream."""
        self._waiting: list[asyncio.Future[None]] = []

    def full(self, held: int) -> bool:
        """Whether a stream with `held` unanswered requests must wait before reading."""
        return held >= self.window or (held > 0 and self.used >= self.limit)

    async def freed(self) -> None:
        """Wait until some stream sends an answer back."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        await waiter

    def take(self) -> None:
        self.used += 1

    def give(self, n: int = 1) -> None:
        self.used -= n
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)


class LockService(pb_grpc.LockServiceServicer):
    """`lockd.v1.LockService`."""

    def __init__(self, manager: LockManager) -> None:
        self.manager = manager
        config = manager.config
        self.backlog = Backlog(config.session_window, config.session_backlog)
        self.watch_hub = watch.WatchHub(manager)
        self.draining = asyncio.Event()
        """Set at graceful shutdown: sessions end once their calls in flight finish."""
        self.observers = election.Observers(manager, self.watch_hub)

    # -- the calls, once -------------------------------------------------------------------

    def _acquire(
        self, request: pb.AcquireRequest, deadline_ns: int | None, late: Callable[[], bool]
    ) -> Now[pb.AcquireResponse]:
        received = time.monotonic_ns()
        start = time.perf_counter()
        m = self.manager
        try:
            name = election.check_not_reserved(m.check_name(request.name))
            ttl = m.check_ttl(request.ttl_ms)
            meta = records.requested(request.owner, request.value)
            granted = m.acquire(name, ttl, request.wait_ms, deadline_ns, meta)
        except LockdError as exc:
            self._observe_acquire(exc.reason.lower(), start)
            raise
        if isinstance(granted, Granted):
            return self._acquired(name, ttl, granted, received, start, late)
        return self._acquire_later(name, ttl, granted, received, start, late)

    async def _acquire_later(
        self,
        name: bytes,
        ttl: int,
        pending: Coroutine[Any, Any, Granted],
        received: int,
        start: float,
        late: Callable[[], bool],
    ) -> pb.AcquireResponse:
        try:
            granted = await pending
        except LockdError as exc:
            self._observe_acquire(exc.reason.lower(), start)
            raise
        return self._acquired(name, ttl, granted, received, start, late)

    def _acquired(
        self,
        name: bytes,
        ttl: int,
        granted: Granted,
        received: int,
        start: float,
        late: Callable[[], bool],
    ) -> pb.AcquireResponse:
        if late():
            # Granted too late for the caller to hear of it: give it back at once.
            self.manager.release_in_background(name, granted.lease)
            self._observe_acquire("lock_held", start)
            raise LockdError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                ErrorReason.LOCK_HELD,
                "granted after the RPC deadline; released again",
            )
        self._observe_acquire("granted", start)
        return _granted(granted, received, ttl)

    def _observe_acquire(self, result: str, start: float) -> None:
        self.manager.metrics.acquire_seconds.labels(result).observe(time.perf_counter() - start)

    def _release(self, request: pb.ReleaseRequest) -> Now[pb.ReleaseResponse]:
        m = self.manager
        released = m.release(m.check_name(request.name), m.check_lease(request.lease_id))
        if isinstance(released, Released):
            return pb.ReleaseResponse(nodes_released=released.released)
        return self._release_later(released)

    @staticmethod
    async def _release_later(pending: Coroutine[Any, Any, Released]) -> pb.ReleaseResponse:
        return pb.ReleaseResponse(nodes_released=(await pending).released)

    def _renew(self, request: pb.RenewRequest) -> Now[pb.RenewResponse]:
        received = time.monotonic_ns()
        start = time.perf_counter()
        m = self.manager
        try:
            renewed = m.renew(
                m.check_name(request.name), m.check_lease(request.lease_id), request.ttl_ms
            )
        except LockdError as exc:
            self._observe_renew(exc.reason.lower(), start)
            raise
        if isinstance(renewed, Renewed):
            return self._renewed(renewed, received, start)
        return self._renew_later(renewed, received, start)

    async def _renew_later(
        self, pending: Coroutine[Any, Any, Renewed], received: int, start: float
    ) -> pb.RenewResponse:
        try:
            renewed = await pending
        except LockdError as exc:
            self._observe_renew(exc.reason.lower(), start)
            raise
        return self._renewed(renewed, received, start)

    def _renewed(self, renewed: Renewed, received: int, start: float) -> pb.RenewResponse:
        self._observe_renew("renewed", start)
        return pb.RenewResponse(validity_ms=(renewed.deadline_ns - received) // MS)

    def _observe_renew(self, result: str, start: float) -> None:
        self.manager.metrics.renew_seconds.labels(result).observe(time.perf_counter() - start)

    # -- unary RPCs ------------------------------------------------------------------------

    async def Acquire(self, request: pb.AcquireRequest, context: Context) -> pb.AcquireResponse:
        def late() -> bool:
            remaining = context.time_remaining()
            return remaining is not None and remaining <= 0

        try:
            return await _ready(self._acquire(request, _deadline_ns(context), late))
        except LockdError as exc:
            await abort(context, exc)

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        try:
            return await _ready(self._release(request))
        except LockdError as exc:
            await abort(context, exc)

    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        try:
            return await _ready(self._renew(request))
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
            who = admin_identity(m.config, context, "ForceRelease")
            done = await admin.force_release(m, m.check_name(request.name), who)
        except LockdError as exc:
            await abort(context, exc)
        return pb.ForceReleaseResponse(
            released=done.released > 0,
            nodes_released=done.released,
            fencing_counter=done.counter,
        )

    # -- elections -------------------------------------------------------------------------

    async def Campaign(self, request: pb.CampaignRequest, context: Context) -> pb.CampaignResponse:
        received = time.monotonic_ns()
        m = self.manager
        try:
            name = election.check_election(m, request.election)
            ttl = m.check_ttl(request.ttl_ms)
            value = election.check_value(request.value)
            owner = _owner(request.owner)
            granted = await election.campaign(
                m, name, value, owner, ttl, request.wait_ms, _deadline_ns(context)
            )
        except LockdError as exc:
            await abort(context, exc)
        self.observers.poke(name)
        return pb.CampaignResponse(
            leader=pb.LeaderKey(
                election=request.election, lease_id=granted.lease, term=granted.token
            ),
            validity_ms=(granted.deadline_ns - received) // MS,
            ttl_ms=ttl,
            lock_name=election_lock(name).decode(),
        )

    async def Proclaim(self, request: pb.ProclaimRequest, context: Context) -> pb.ProclaimResponse:
        received = time.monotonic_ns()
        m = self.manager
        key = request.leader
        try:
            name = election.check_election(m, key.election)
            lease = m.check_lease(key.lease_id)
            term = election.check_term(key.term)
            value = election.check_value(request.value)
            owner = _owner(request.owner)
            renewed = await election.proclaim(m, name, lease, term, value, owner, request.ttl_ms)
        except LockdError as exc:
            await abort(context, exc)
        self.observers.poke(name)
        return pb.ProclaimResponse(validity_ms=(renewed.deadline_ns - received) // MS)

    async def Resign(self, request: pb.ResignRequest, context: Context) -> pb.ResignResponse:
        m = self.manager
        try:
            name = election.check_election(m, request.leader.election)
            await election.resign(m, name, m.check_lease(request.leader.lease_id))
        except LockdError as exc:
            await abort(context, exc)
        self.observers.poke(name)
        return pb.ResignResponse()

    async def Leader(self, request: pb.LeaderRequest, context: Context) -> pb.LeaderResponse:
        try:
            name = election.check_election(self.manager, request.election)
            found = await election.leader(self.manager, name)
        except LockdError as exc:
            await abort(context, exc)
        return _leader(request.election, found)

    async def Observe(
        self, request: pb.ObserveRequest, context: Context
    ) -> AsyncIterator[pb.LeaderResponse]:
        """The leader now and at each change; ends when the gateway drains."""
        try:
            name = election.check_election(self.manager, request.election)
        except LockdError as exc:
            await abort(context, exc)
        changes = self.observers.observe(name)
        draining = asyncio.create_task(self.draining.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(changes))
                await asyncio.wait({following, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                    return
                yield _leader(request.election, following.result())
        finally:
            draining.cancel()
            await changes.aclose()

    async def Watch(self, request: pb.WatchRequest, context: Context) -> None:
        """Stream the watch's events with `context.write` (see `lockd.gateway.watch`)."""
        key = request.name.encode("utf-8", "surrogatepass")
        try:
            sub = await self.watch_hub.subscribe(key, prefix=request.prefix)
        except LockdError as exc:
            await abort(context, exc)
        try:
            async with sub:
                async for event in sub:
                    # A client that does not read blocks the write: stop it when cut off.
                    write = asyncio.ensure_future(context.write(_watch_event(event)))
                    await asyncio.wait({write, sub.failed}, return_when=asyncio.FIRST_COMPLETED)
                    if not write.done():
                        write.cancel()
                        assert sub.error is not None
                        raise sub.error
                    write.result()
        except LockdError as exc:
            await abort(context, exc)

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
        (cancelled acquisitions release whatever they had taken). Reading stops while the
        stream holds as many unanswered requests as `Backlog` allows."""
        responses: asyncio.Queue[pb.SessionResponse | None] = asyncio.Queue()
        granted_names: dict[int, str] = {}  # request id -> lock name, for undelivered grants
        tasks: set[asyncio.Task[None]] = set()
        closed = False
        backlog = self.backlog
        held = 0  # requests read and not yet answered back

        def late() -> bool:
            return closed

        async def deliver(
            response: pb.SessionResponse,
            kind: str,
            pending: Coroutine[Any, Any, Response],
            name: str,
        ) -> None:
            try:
                getattr(response, kind).CopyFrom(await pending)
            except LockdError as exc:
                response.error.CopyFrom(_error(exc))
            else:
                if kind == "acquire":
                    granted_names[response.id] = name
            responses.put_nowait(response)

        async def read() -> None:
            nonlocal held
            stream = aiter(requests)
            while True:
                while backlog.full(held):
                    await backlog.freed()
                try:
                    request = await anext(stream)
                except StopAsyncIteration:
                    return
                held += 1
                backlog.take()
                response = pb.SessionResponse(id=request.id)
                kind = request.WhichOneof("call")
                answer: Response | Coroutine[Any, Any, Response]
                try:
                    if kind == "acquire":
                        answer = self._acquire(request.acquire, None, late)
                    elif kind == "release":
                        answer = self._release(request.release)
                    elif kind == "renew":
                        answer = self._renew(request.renew)
                    else:
                        raise LockdError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            ErrorReason.BAD_REQUEST,
                            "session request has no call",
                        )
                except LockdError as exc:
                    response.error.CopyFrom(_error(exc))
                    responses.put_nowait(response)
                    continue
                assert kind is not None
                if isinstance(answer, Coroutine):
                    task = asyncio.create_task(
                        deliver(response, kind, answer, request.acquire.name)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    continue
                getattr(response, kind).CopyFrom(answer)
                if kind == "acquire":
                    granted_names[request.id] = request.acquire.name
                responses.put_nowait(response)

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
                yield response  # resumes once gRPC has taken the answer
                held -= 1
                backlog.give()
        finally:
            closed = True
            backlog.give(held)
            held = 0
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
