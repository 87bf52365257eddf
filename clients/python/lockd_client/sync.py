"""The blocking client: a thin wrapper running `AsyncClient` on a private event loop in
a background thread, so both share every line of logic (watchdog included).

    client = Client(["127.0.0.1:7400"])
    with client.lock("orders/42", ttl=10, wait=5) as lease:
        lease.check()
        store.write("orders", "42", b"paid", lease=lease)

`on_lost` callbacks run on the client's background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from lockd_client._transport import TLS
from lockd_client.aio import (
    DEFAULT_ENDPOINT,
    AsyncClient,
    AsyncElection,
    AsyncLeadership,
    AsyncLease,
    ClusterInfo,
    HeldLock,
    LeaderInfo,
    LockInfo,
    WatchEvent,
)
from lockd_client.errors import Unavailable

__all__ = ["Client", "Election", "Leadership", "Lease"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="lockd-client", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking lockd call from inside an on_lost callback")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop's thread, where the leases' state (and watchdogs) live."""
        if threading.current_thread() is self._thread or not self.loop.is_running():
            return fn()

        async def on_loop() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class Lease:
    """A granted lease (blocking API); see `AsyncLease` for the semantics."""

    def __init__(self, runner: _LoopThread, lease: AsyncLease) -> None:
        self._runner = runner
        self._lease = lease

    def __repr__(self) -> str:
        return repr(self._lease).replace("AsyncLease", "Lease")

    name = property(lambda self: self._lease.name, doc="The lock name.")
    lease_id = property(lambda self: self._lease.lease_id, doc="The lease id (a secret).")
    token = property(lambda self: self._lease.token, doc="The fencing token.")
    deadline = property(
        lambda self: self._lease.deadline,
        doc="`time.monotonic()` after which the lease must not be relied on.",
    )
    held = property(lambda self: self._lease.held, doc="True while it can be relied on.")

    def remaining(self) -> float:
        """Seconds until the lease must be considered lost."""
        return self._lease.remaining()

    def check(self) -> None:
        """Raise `LeaseLost` if the lease may be lost."""
        # On the loop's thread: declaring the lease lost stops its watchdog task and
        # calls on_lost, neither of which may happen from another thread.
        self._runner.call(self._lease.check)

    def renew(self, ttl: float | None = None) -> None:
        """Extend the lease now."""
        self._runner.run(self._lease.renew(ttl))

    def release(self) -> None:
        """Give the lock up."""
        self._runner.run(self._lease.release())

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Unavailable):
            self.release()


class Leadership(Lease):
    """Leading an election (blocking API); see `AsyncLeadership`."""

    def __init__(self, runner: _LoopThread, leadership: AsyncLeadership) -> None:
        super().__init__(runner, leadership)
        self._leadership = leadership

    def __repr__(self) -> str:
        return repr(self._leadership).replace("AsyncLeadership", "Leadership")

    election = property(lambda self: self._leadership.election, doc="The election name.")
    term = property(lambda self: self._leadership.term, doc="The term (fencing token).")
    value = property(lambda self: self._leadership.value, doc="The value last proclaimed.")

    def proclaim(self, value: bytes) -> None:
        """Replace this leader's value, keeping the term."""
        self._runner.run(self._leadership.proclaim(value))

    def resign(self) -> None:
        """Stop leading."""
        self._runner.run(self._leadership.resign())

    def __enter__(self) -> Leadership:
        return self


class Election:
    """An election (blocking API); see `AsyncElection`."""

    def __init__(self, runner: _LoopThread, election: AsyncElection) -> None:
        self._runner = runner
        self._election = election

    name = property(lambda self: self._election.name, doc="The election name.")

    def lead(
        self,
        value: bytes = b"",
        ttl: float = 30.0,
        *,
        wait: float | None = None,
        on_lost: Callable[[Leadership], object] | None = None,
        owner: str | None = None,
    ) -> Leadership:
        """Wait until this candidate leads (up to `wait` seconds; None: no limit), then
        keep leading (renewed) until `resign()` or loss."""
        holder: list[Leadership] = []

        def lost(inner: AsyncLease) -> None:
            assert isinstance(inner, AsyncLeadership)
            if on_lost is not None:
                on_lost(holder[0] if holder else Leadership(self._runner, inner))

        leadership = Leadership(
            self._runner,
            self._runner.run(self._election.lead(value, ttl, wait=wait, on_lost=lost, owner=owner)),
        )
        holder.append(leadership)
        return leadership

    @contextlib.contextmanager
    def campaign(
        self,
        value: bytes = b"",
        ttl: float = 30.0,
        *,
        wait: float | None = None,
        on_lost: Callable[[Leadership], object] | None = None,
        owner: str | None = None,
    ) -> Iterator[Leadership]:
        """`with election.campaign(value) as leader:` leads for the block, then resigns."""
        with self.lead(value, ttl, wait=wait, on_lost=on_lost, owner=owner) as leadership:
            yield leadership

    def leader(self) -> LeaderInfo:
        """The current leader; `NoLeader` when there is none."""
        return self._runner.run(self._election.leader())

    def observe(self) -> Iterator[LeaderInfo]:
        """`for leader in election.observe()`: the leader now and at every change."""
        changes = self._election.observe()

        async def step() -> LeaderInfo:
            return await anext(changes)

        try:
            while True:
                yield self._runner.run(step())
        finally:
            with contextlib.suppress(Exception):
                self._runner.run(changes.aclose())


class Client:
    """A blocking client of one or more lockd gateways; same arguments as `AsyncClient`."""

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
        self._runner = _LoopThread()

        async def make() -> AsyncClient:
            return AsyncClient(
                endpoints,
                tls=tls,
                timeout=timeout,
                renew_fraction=renew_fraction,
                safety_margin=safety_margin,
                owner=owner,
            )

        self._client = self._runner.run(make())

    @property
    def endpoint(self) -> str:
        """The gateway calls currently go to."""
        return self._client.endpoint

    def acquire(
        self,
        name: str,
        ttl: float = 30.0,
        wait: float = 0.0,
        *,
        watchdog: bool = True,
        on_lost: Callable[[Lease], object] | None = None,
        owner: str | None = None,
        value: bytes = b"",
    ) -> Lease:
        """Wait up to `wait` seconds for the lock; hold it for `ttl` (renewed). `owner`
        and `value` are stored with it for Describe and List."""
        holder: list[Lease] = []

        def lost(inner: AsyncLease) -> None:
            if on_lost is not None:  # it may be lost before acquire() has returned
                on_lost(holder[0] if holder else Lease(self._runner, inner))

        lease = Lease(
            self._runner,
            self._runner.run(
                self._client.acquire(
                    name, ttl, wait, watchdog=watchdog, on_lost=lost, owner=owner, value=value
                )
            ),
        )
        holder.append(lease)
        return lease

    @contextlib.contextmanager
    def lock(
        self,
        name: str,
        ttl: float = 30.0,
        wait: float = 60.0,
        *,
        on_lost: Callable[[Lease], object] | None = None,
        owner: str | None = None,
        value: bytes = b"",
    ) -> Iterator[Lease]:
        """`with client.lock(name) as lease:` holds the lock for the block."""
        with self.acquire(name, ttl, wait, on_lost=on_lost, owner=owner, value=value) as lease:
            yield lease

    def election(self, name: str) -> Election:
        """Election `name` (its lock is `@election/<name>`, apart from the locks)."""
        return Election(self._runner, self._client.election(name))

    def release(self, name: str, lease_id: bytes) -> int:
        """Release a lease by id; how many nodes released it (`NotOwned` if none)."""
        return self._runner.run(self._client.release(name, lease_id))

    def renew(self, name: str, lease_id: bytes, ttl: float) -> float:
        """Renew a lease by id; its validity in seconds."""
        return self._runner.run(self._client.renew(name, lease_id, ttl))

    def describe(self, name: str) -> LockInfo:
        """Held?, TTL left, fencing counter, waiters, owner, value, acquired at."""
        return self._runner.run(self._client.describe(name))

    def list(self, prefix: str = "", page_size: int = 0) -> Iterator[HeldLock]:
        """`for lock in client.list("orders/")`: held locks under `prefix`, page by page."""
        pages = self._client.list(prefix, page_size)

        async def step() -> HeldLock | None:
            try:
                return await anext(pages)
            except StopAsyncIteration:
                return None

        while (lock := self._runner.run(step())) is not None:
            yield lock

    def watch(
        self, name: str, *, prefix: bool = False, resume: bool = True
    ) -> Iterator[WatchEvent]:
        """`for event in client.watch("orders/42")`: see `AsyncClient.watch`. Stop
        early with `break` (the stream is closed when the generator is)."""
        events = self._client.watch(name, prefix=prefix, resume=resume)

        async def step() -> WatchEvent | None:
            try:
                return await anext(events)
            except StopAsyncIteration:
                return None

        try:
            while (event := self._runner.run(step())) is not None:
                yield event
        finally:
            self._runner.run(events.aclose())

    def force_release(self, name: str, admin_token: str | None = None) -> int:
        """Take lock `name` back whatever lease holds it (admin); nodes that held it."""
        return self._runner.run(self._client.force_release(name, admin_token))

    def cluster_status(self) -> ClusterInfo:
        """Every node as the gateway sees it."""
        return self._runner.run(self._client.cluster_status())

    def close(self) -> None:
        """Close connections and stop the background loop."""
        self._runner.run(self._client.close())
        self._runner.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
