"""The asyncio client: `AsyncClient`, and `AsyncLease` with its watchdog.

    async with AsyncClient(["127.0.0.1:7400"]) as client:
        async with client.lock("orders/42", ttl=10, wait=5) as lease:
            lease.check()                    # raises LeaseLost once it may be lost
            await store.write(..., token=lease.token)

While a lease is held its watchdog renews it every `validity * renew_fraction`. If
renewals keep failing it declares the lease lost *before* its deadline (by
`safety_margin`), calls `on_lost` once, and `check()` raises from then on. A lease is
never reported held after its deadline, whatever the watchdog managed to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import TracebackType

from lockd_client._transport import TLS, Transport
from lockd_client.errors import (
    ErrorReason,
    LeaseLost,
    LockError,
    LockTimeout,
    NotOwned,
    Overloaded,
    Unavailable,
    reason_name,
)
from lockd_client.v1 import lock_service_pb2 as pb

__all__ = [
    "AsyncClient",
    "AsyncElection",
    "AsyncLeadership",
    "AsyncLease",
    "ClusterInfo",
    "HeldLock",
    "LeaderInfo",
    "LockInfo",
    "NodeInfo",
]

log = logging.getLogger("lockd_client")

DEFAULT_ENDPOINT = "127.0.0.1:7400"
LostCallback = Callable[["AsyncLease"], object]
MAX_OWNER_BYTES = 128
CAMPAIGN_ROUND_S = 300.0
"""One Campaign RPC waits this long at most; campaigning goes on with the next."""
CAMPAIGN_RETRY_S = 0.2
"""Pause before campaigning again after UNAVAILABLE without a retry hint."""


def default_owner() -> str:
    """`host/pid`: who holds a lock, as Describe and List show it (at most 128 bytes)."""
    owner = f"{socket.gethostname()}/{os.getpid()}".encode()
    return owner[-MAX_OWNER_BYTES:].decode(errors="ignore")


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """A lock as `describe` shows it (never its holder's lease id)."""

    name: str
    held: bool
    ttl_remaining: float
    fencing_counter: int
    waiters: int
    nodes_answered: int
    nodes_holding: int
    owner: str = ""
    """Who holds it, as the holder's Acquire said (empty when not held)."""
    value: bytes = b""
    """The small value stored with the lock by its holder."""
    acquired_at: float | None = None
    """When the gateway granted it (Unix seconds), None when not held or unknown."""


@dataclasses.dataclass(frozen=True)
class HeldLock:
    """A held lock as `list` shows it (never its lease id)."""

    name: str
    owner: str
    value: bytes
    token: int
    """The highest fencing counter the nodes report: the holder's token, or more."""
    ttl_remaining: float
    acquired_at: float | None
    """When it was granted (Unix seconds), None when unknown."""
    waiters: int


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """One engine node as the gateway sees it."""

    address: str
    mode: str
    reachable: bool
    latency_ms: float
    restart_delay: float
    restart_reason: str
    error: str


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """The gateway's view of its nodes."""

    nodes: list[NodeInfo]
    quorum: int
    quorum_available: bool
    version: str


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One message of `watch`: first the current state ("state", then one "synced"),
    then "acquired", "updated" (the holder replaced owner and value), "released",
    "expired" or "force_released" as they happen (never a lease id)."""

    type: str
    name: str
    """The lock (for "synced": the watched name or prefix)."""
    held: bool
    """For "state": whether a majority of nodes hold it."""
    token: int
    """The grant's fencing token (0 when unknown)."""
    owner: str = ""
    value: bytes = b""
    ttl_remaining: float = 0.0
    """For "state" and "acquired": seconds until fewer than a majority hold it."""
    acquired_at: float | None = None
    """For "state" and "acquired": when it was granted (Unix seconds), if known."""


def _watch_event(e: pb.WatchEvent) -> WatchEvent:
    return WatchEvent(
        pb.WatchEvent.Type.Name(e.type).lower(),
        e.name,
        e.held,
        e.fencing_token,
        e.owner,
        e.value,
        e.ttl_remaining_ms / 1000,
        e.acquired_at_ms / 1000 if e.acquired_at_ms else None,
    )


class AsyncLease:
    """A granted lease: `token`, `deadline`, `check()`, `renew()`, `release()`."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        response: pb.AcquireResponse,
        sent: float,
        on_lost: LostCallback | None,
        safety_margin: float | None,
        renew_fraction: float,
    ) -> None:
        self.client = client
        self.name = name
        self.lease_id: bytes = response.lease_id
        self.token: int = response.fencing_token
        """The fencing token: pass it to storage that checks tokens."""
        self.ttl: float = response.ttl_ms / 1000
        self.deadline: float = sent + response.validity_ms / 1000
        """`time.monotonic()` after which the lease must not be relied on."""
        self.safety_margin = (
            safety_margin if safety_margin is not None else max(0.005, self.ttl * 0.1)
        )
        self.renew_fraction = renew_fraction
        self._on_lost = on_lost
        self._lost: LockError | None = None
        self._released = False
        self._watchdog: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never shows the lease id
        state = "lost" if self._lost else "released" if self._released else "held"
        return f"<AsyncLease {self.name!r} token={self.token} {state}>"

    @property
    def held(self) -> bool:
        """True while the lease can be relied on (not lost, released or near its deadline)."""
        return (
            self._lost is None
            and not self._released
            and time.monotonic() < self.deadline - self.safety_margin
        )

    def remaining(self) -> float:
        """Seconds until the lease must be considered lost (0 when it is)."""
        return max(0.0, self.deadline - self.safety_margin - time.monotonic()) if self.held else 0.0

    def check(self) -> None:
        """Raise `LeaseLost` if the lease may be lost; call it before each fenced write."""
        if self._released:
            raise LeaseLost(
                "the lease was released", name=self.name, reason=reason_name(ErrorReason.RELEASED)
            )
        if self._lost is not None:
            raise LeaseLost(
                f"lease lost: {self._lost.message}",
                name=self.name,
                reason=self._lost.reason or reason_name(ErrorReason.LEASE_LOST),
            )
        if time.monotonic() >= self.deadline - self.safety_margin:
            self._declare_lost(
                LeaseLost(
                    "the lease's deadline passed without a renewal",
                    name=self.name,
                    reason=reason_name(ErrorReason.EXPIRED),
                )
            )
            assert self._lost is not None
            raise LeaseLost(
                self._lost.message, name=self.name, reason=reason_name(ErrorReason.EXPIRED)
            )

    async def renew(self, ttl: float | None = None) -> None:
        """Extend the lease now (the watchdog does this by itself)."""
        self.check()
        sent = time.monotonic()
        try:
            response = await self.client._transport.session_call(
                "renew",
                pb.RenewRequest(
                    name=self.name, lease_id=self.lease_id, ttl_ms=round((ttl or self.ttl) * 1000)
                ),
                name=self.name,
                timeout=max(0.001, self.deadline - self.safety_margin - sent),
                repeatable=True,
            )
        except (LeaseLost, NotOwned) as exc:
            self._declare_lost(exc)
            raise
        if ttl is not None:
            self.ttl = ttl
        self.deadline = sent + response.validity_ms / 1000

    async def release(self) -> None:
        """Give the lock up (a lease that was already lost is released quietly)."""
        if self._released:
            return
        self._released = True
        self.stop_watchdog()
        lost = self._lost is not None or time.monotonic() >= self.deadline
        try:
            await self._give_up(min(1.0, self.client.timeout) if lost else self.client.timeout)
        except (NotOwned, Unavailable):
            if not lost:
                raise  # releasing a lost lease is a courtesy: its TTL frees the lock anyway

    async def _give_up(self, timeout: float) -> None:
        """Tell the gateway (Release)."""
        await self.client._transport.session_call(
            "release",
            pb.ReleaseRequest(name=self.name, lease_id=self.lease_id),
            name=self.name,
            timeout=timeout,
            repeatable=True,
        )

    # -- watchdog ------------------------------------------------------------------------

    def start_watchdog(self) -> None:
        """Renew in the background until released or lost."""
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name=f"lockd watchdog {self.name}")

    def stop_watchdog(self) -> None:
        """Stop renewing (the lease then runs out at its deadline)."""
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self.client._watched.discard(self)

    async def _watch(self) -> None:
        while not self._released and self._lost is None:
            validity = self.deadline - time.monotonic()
            await asyncio.sleep(max(0.0, validity * self.renew_fraction))
            while not self._released and self._lost is None:
                if time.monotonic() >= self.deadline - self.safety_margin:
                    self._declare_lost(
                        LeaseLost(
                            "could not renew before the deadline",
                            name=self.name,
                            reason=reason_name(ErrorReason.RENEW_FAILED),
                        )
                    )
                    return
                try:
                    await self.renew()
                    break
                except (LeaseLost, NotOwned):
                    return  # already declared lost
                except LockError as exc:
                    log.warning("lockd: renewing %r failed, retrying: %s", self.name, exc)
                    await asyncio.sleep(min(0.05, max(0.0, self.remaining() / 4)))

    def _declare_lost(self, error: LockError) -> None:
        if self._lost is not None or self._released:
            return
        self._lost = error
        self.stop_watchdog()
        log.warning("lockd: lease on %r lost: %s", self.name, error.message)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                log.exception("lockd: on_lost callback for %r failed", self.name)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Unavailable):
            await self.release()


@dataclasses.dataclass(frozen=True)
class LeaderInfo:
    """An election's leader as `leader()` and `observe()` show it."""

    election: str
    term: int
    """The leader's term: its fencing token, larger than every earlier leader's."""
    value: bytes
    owner: str
    ttl_remaining: float


def _leader_info(r: pb.LeaderResponse) -> LeaderInfo:
    return LeaderInfo(r.election, r.term, r.value, r.owner, r.ttl_remaining_ms / 1000)


class AsyncLeadership(AsyncLease):
    """Leading an election: an `AsyncLease` on the election's lock (renewed by the
    watchdog, `check()`, `on_lost`) whose token is the `term`; `proclaim()` and
    `resign()`."""

    def __init__(
        self,
        election: AsyncElection,
        response: pb.CampaignResponse,
        sent: float,
        on_lost: LostCallback | None,
        value: bytes,
        owner: str,
    ) -> None:
        client = election.client
        granted = pb.AcquireResponse(
            lease_id=response.leader.lease_id,
            fencing_token=response.leader.term,
            validity_ms=response.validity_ms,
            ttl_ms=response.ttl_ms,
        )
        super().__init__(
            client,
            response.lock_name,
            granted,
            sent,
            on_lost,
            client.safety_margin,
            client.renew_fraction,
        )
        self.election = election.name
        self.key = response.leader
        self.value = value
        """The value this leader last proclaimed."""
        self.owner = owner

    def __repr__(self) -> str:  # never shows the lease id
        return super().__repr__().replace("AsyncLease", "AsyncLeadership")

    @property
    def term(self) -> int:
        """This leadership's term (its fencing token): pass it to fenced storage."""
        return self.token

    async def proclaim(self, value: bytes) -> None:
        """Replace this leader's value, keeping the term (and renewing the lease).
        `LeaseLost` (and on_lost) when it no longer leads."""
        self.check()
        sent = time.monotonic()
        try:
            r = await self.client._transport.unary(
                "Proclaim",
                pb.ProclaimRequest(
                    leader=self.key, value=value, ttl_ms=round(self.ttl * 1000), owner=self.owner
                ),
                name=self.election,
                timeout=max(0.001, self.deadline - self.safety_margin - sent),
            )
        except (LeaseLost, NotOwned) as exc:
            self._declare_lost(exc)
            raise
        self.value = value
        self.deadline = sent + r.validity_ms / 1000

    async def resign(self) -> None:
        """Stop leading (a leadership already lost resigns quietly)."""
        await self.release()

    async def _give_up(self, timeout: float) -> None:
        await self.client._transport.unary(
            "Resign", pb.ResignRequest(leader=self.key), name=self.election, timeout=timeout
        )


class AsyncElection:
    """An election: `campaign()` to lead it, `leader()` and `observe()` to follow it."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"<AsyncElection {self.name!r}>"

    async def lead(
        self,
        value: bytes = b"",
        ttl: float = 30.0,
        *,
        wait: float | None = None,
        on_lost: LostCallback | None = None,
        owner: str | None = None,
    ) -> AsyncLeadership:
        """Wait (up to `wait` seconds; None: as long as it takes) until this candidate
        leads, then keep leading (the watchdog renews) until `resign()` or loss.
        `LockTimeout` when `wait` ran out."""
        owner = self.client.owner if owner is None else owner
        give_up = None if wait is None else time.monotonic() + wait
        while True:
            left = CAMPAIGN_ROUND_S if give_up is None else give_up - time.monotonic()
            wait_ms = max(1, round(min(left, CAMPAIGN_ROUND_S) * 1000))
            sent = time.monotonic()
            try:
                r = await self.client._transport.unary(
                    "Campaign",
                    pb.CampaignRequest(
                        election=self.name,
                        value=value,
                        ttl_ms=round(ttl * 1000),
                        owner=owner,
                        wait_ms=wait_ms,
                    ),
                    name=self.name,
                    timeout=wait_ms / 1000 + self.client.timeout,  # the gateway's wait ends first
                )
            except LockTimeout:
                if give_up is not None and time.monotonic() >= give_up:
                    raise
                continue  # a round ended: campaign again
            except Unavailable as exc:  # no quorum, restarting nodes: try again
                pause = exc.retry_after or CAMPAIGN_RETRY_S
                if give_up is not None and time.monotonic() + pause >= give_up:
                    raise
                log.warning("lockd: campaign for %r: %s; trying again", self.name, exc)
                await asyncio.sleep(pause)
                continue
            leadership = AsyncLeadership(self, r, sent, on_lost, value, owner)
            leadership.start_watchdog()
            self.client._watched.add(leadership)
            return leadership

    @contextlib.asynccontextmanager
    async def campaign(
        self,
        value: bytes = b"",
        ttl: float = 30.0,
        *,
        wait: float | None = None,
        on_lost: LostCallback | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[AsyncLeadership]:
        """`async with election.campaign(value) as leader:` leads for the block, then
        resigns; check `leader.check()` before acting as leader."""
        leadership = await self.lead(value, ttl, wait=wait, on_lost=on_lost, owner=owner)
        async with leadership:
            yield leadership

    async def leader(self) -> LeaderInfo:
        """The current leader; `NoLeader` when there is none."""
        r = await self.client._transport.unary(
            "Leader", pb.LeaderRequest(election=self.name), name=self.name
        )
        return _leader_info(r)

    async def observe(self) -> AsyncGenerator[LeaderInfo, None]:
        """`async for leader in election.observe()`: the leader now (once there is one)
        and at every change, in term order (across gateway failovers too)."""
        last: tuple[int, bytes] | None = None
        async for r in self.client._transport.stream(
            "Observe", pb.ObserveRequest(election=self.name), name=self.name
        ):
            if last is not None and (r.term < last[0] or (r.term, r.value) == last):
                continue  # another gateway that has not seen the newest leader yet
            last = (r.term, r.value)
            yield _leader_info(r)


class AsyncClient:
    """A client of one or more lockd gateways (tried in order, failing over)."""

    def __init__(
        self,
        endpoints: Sequence[str] | str = (DEFAULT_ENDPOINT,),
        *,
        tls: TLS | bool | None = None,
        timeout: float = 10.0,
        renew_fraction: float = 1 / 3,
        safety_margin: float | None = None,
        owner: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if tls is True:
            tls = TLS()
        self.timeout = timeout
        self.renew_fraction = renew_fraction
        self.safety_margin = safety_margin
        self.owner = default_owner() if owner is None else owner
        """Sent with every Acquire (shown by Describe and List); `host/pid` by default."""
        self._transport = Transport(list(endpoints), tls or None, timeout)
        self._watched: set[AsyncLease] = set()

    @property
    def endpoint(self) -> str:
        """The gateway calls currently go to."""
        return self._transport.endpoint

    async def acquire(
        self,
        name: str,
        ttl: float = 30.0,
        wait: float = 0.0,
        *,
        watchdog: bool = True,
        on_lost: LostCallback | None = None,
        owner: str | None = None,
        value: bytes = b"",
    ) -> AsyncLease:
        """Wait up to `wait` seconds for the lock and hold it for `ttl` seconds (renewed by
        the watchdog unless `watchdog=False`). Raises `LockTimeout` if it stays held.
        `owner` (default: the client's) and `value` (at most 1 KiB) are stored with the
        lock for Describe and List."""
        sent = time.monotonic()
        response = await self._transport.session_call(
            "acquire",
            pb.AcquireRequest(
                name=name,
                ttl_ms=round(ttl * 1000),
                wait_ms=round(wait * 1000),
                owner=self.owner if owner is None else owner,
                value=value,
            ),
            name=name,
            timeout=wait + self.timeout,
            repeatable=False,
        )
        lease = AsyncLease(
            self, name, response, sent, on_lost, self.safety_margin, self.renew_fraction
        )
        if watchdog:
            lease.start_watchdog()
            self._watched.add(lease)
        return lease

    @contextlib.asynccontextmanager
    async def lock(
        self,
        name: str,
        ttl: float = 30.0,
        wait: float = 60.0,
        *,
        on_lost: LostCallback | None = None,
        owner: str | None = None,
        value: bytes = b"",
    ) -> AsyncIterator[AsyncLease]:
        """`async with client.lock(name) as lease:` holds the lock for the block."""
        lease = await self.acquire(name, ttl, wait, on_lost=on_lost, owner=owner, value=value)
        async with lease:
            yield lease

    def election(self, name: str) -> AsyncElection:
        """Election `name` (its lock is `@election/<name>`, apart from the locks)."""
        return AsyncElection(self, name)

    async def release(self, name: str, lease_id: bytes) -> int:
        """Release a lease by id; returns how many nodes released it (`NotOwned` if none)."""
        response = await self._transport.session_call(
            "release",
            pb.ReleaseRequest(name=name, lease_id=lease_id),
            name=name,
            timeout=self.timeout,
            repeatable=True,
        )
        return int(response.nodes_released)

    async def renew(self, name: str, lease_id: bytes, ttl: float) -> float:
        """Renew a lease by id; returns its validity in seconds (`LeaseLost` if lost)."""
        response = await self._transport.session_call(
            "renew",
            pb.RenewRequest(name=name, lease_id=lease_id, ttl_ms=round(ttl * 1000)),
            name=name,
            timeout=self.timeout,
            repeatable=True,
        )
        return float(response.validity_ms) / 1000

    async def describe(self, name: str) -> LockInfo:
        """Held?, TTL left, fencing counter, waiters, owner, value and when it was
        acquired (never the holder's lease id)."""
        r = await self._transport.unary("Describe", pb.DescribeRequest(name=name), name=name)
        return LockInfo(
            r.name,
            r.held,
            r.ttl_remaining_ms / 1000,
            r.fencing_counter,
            r.waiters,
            r.nodes_answered,
            r.nodes_holding,
            r.owner,
            r.value,
            r.acquired_at_ms / 1000 if r.acquired_at_ms else None,
        )

    async def list(self, prefix: str = "", page_size: int = 0) -> AsyncIterator[HeldLock]:
        """`async for lock in client.list("orders/")`: the held locks whose names start
        with `prefix`, fetched a page at a time (each page is bounded work for lockd)."""
        token = ""
        while True:
            r = await self._transport.unary(
                "List", pb.ListRequest(prefix=prefix, page_token=token, page_size=page_size)
            )
            for e in r.locks:
                yield HeldLock(
                    e.name,
                    e.owner,
                    e.value,
                    e.fencing_token,
                    e.ttl_remaining_ms / 1000,
                    e.acquired_at_ms / 1000 if e.acquired_at_ms else None,
                    e.waiters,
                )
            token = r.next_page_token
            if not token:
                return

    async def watch(
        self, name: str, *, prefix: bool = False, resume: bool = True
    ) -> AsyncGenerator[WatchEvent, None]:
        """`async for event in client.watch("orders/42")`: the lock's current state
        ("state", then "synced"), then each change made through any gateway. With
        `prefix=True`, every lock whose name starts with `name` (one "state" per held
        lock). When the gateway goes away and `resume` is true, the watch moves to the
        next endpoint and starts again from the current state (a new "state"/"synced").
        A watcher that reads too slowly is cut off by the gateway: `Overloaded` with
        reason WATCHER_TOO_SLOW (watch again to resume from the current state)."""
        request = pb.WatchRequest(name=name, prefix=prefix)
        attempt = 0
        while True:
            try:
                async for message in self._transport.server_stream("Watch", request, name=name):
                    attempt = 0
                    yield _watch_event(message)
            except Unavailable as exc:
                if not resume or isinstance(exc, Overloaded):
                    raise
                if attempt >= self._transport.retries * len(self._transport.endpoints):
                    raise
            if not resume:
                return
            await asyncio.sleep(self._transport.backoff(attempt))
            attempt += 1

    async def force_release(self, name: str, admin_token: str | None = None) -> int:
        """Take lock `name` back whatever lease holds it (an admin operation): with the
        gateway's admin token, or over mutual TLS with an admin certificate. Returns how
        many nodes held it (0: it was not held). `PermissionDenied` without a credential."""
        metadata = (("authorization", f"Bearer {admin_token}"),) if admin_token else None
        r = await self._transport.unary(
            "ForceRelease", pb.ForceReleaseRequest(name=name), name=name, metadata=metadata
        )
        return int(r.nodes_released)

    async def cluster_status(self) -> ClusterInfo:
        """Every node as the gateway sees it, and whether a quorum is available."""
        r = await self._transport.unary("ClusterStatus", pb.ClusterStatusRequest())
        nodes = [
            NodeInfo(
                n.address,
                pb.NodeMode.Name(n.mode).removeprefix("NODE_MODE_").lower(),
                n.reachable,
                n.latency_ms,
                n.restart_delay_remaining_ms / 1000,
                n.restart_delay_reason,
                n.error,
            )
            for n in r.nodes
        ]
        return ClusterInfo(nodes, r.quorum, r.quorum_available, r.version)

    async def close(self) -> None:
        """Stop watchdogs and close the connections (held leases stay held on the nodes
        until their TTL runs out)."""
        for lease in list(self._watched):  # stop_watchdog() removes it from the set
            lease.stop_watchdog()
        self._watched.clear()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
