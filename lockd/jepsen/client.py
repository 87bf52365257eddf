"""The Jepsen client role for lockd: `open`, `invoke(op) -> completion`, `close`.

`FencedCounterClient` (the fenced-counter workload) and `ElectionClient` (the election
workload) speak to the gateways with `lockd_client.AsyncClient` and to the store with
`AsyncStoreClient`, exactly as an application would. `invoke` never raises:
every outcome becomes a completion, `ok`, `fail` (certainly did not happen: the gateway
refused or the store rejected a stale token) or `info` (unknown: a timeout, a broken
connection, anything unexpected).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from lockd_client import (
    AsyncClient,
    AsyncLeadership,
    AsyncLease,
    AsyncStoreClient,
    InvalidRequest,
    LockError,
    LockTimeout,
    NotOwned,
    StaleToken,
    StoreError,
    Unavailable,
    ValueChanged,
)

__all__ = ["CLAIM", "COUNTER", "LEADER", "Completion", "ElectionClient", "FencedCounterClient"]

COUNTER = "counter"
"""The store key each lock's counter lives under (the store resource is the lock name)."""
CLAIM = "claim"
"""The store key a holder writes its token to before reading: the read is then fenced."""
LEADER = "leader"
"""The store key an election's leaders write with their term (the resource: the election)."""

# Refusals after which the gateway holds nothing for the caller: certainly not granted.
_DEFINITE = {
    "QUORUM_UNAVAILABLE",
    "NODES_RESTARTING",
    "TTL_TOO_SHORT",
    "FENCE_CONTENDED",
    "SHUTTING_DOWN",
    "TOO_MANY_WAITERS",
    "TOO_MANY_LOCKS",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """How an invocation ended: type ok/fail/info, value, error text, time."""

    type: str
    value: Any = None
    error: str | None = None
    time: int = 0


def _error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", "")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{f' {reason}' if reason else ''}: {text}"[:300]


class _Connections:
    """One worker's gateway and store clients."""

    def __init__(self, gateways: Sequence[str], store: str, *, timeout_s: float = 2.0) -> None:
        self.gateways = list(gateways)
        self.store_endpoint = store
        self.timeout_s = timeout_s
        self._lock: AsyncClient | None = None
        self._store: AsyncStoreClient | None = None

    @property
    def client(self) -> AsyncClient:
        """The gateway client (after `open`)."""
        assert self._lock is not None
        return self._lock

    async def open(self) -> None:
        """Create the clients (connections are made lazily)."""
        self._lock = AsyncClient(self.gateways, timeout=self.timeout_s)
        self._store = AsyncStoreClient(self.store_endpoint, timeout=self.timeout_s)

    async def close(self) -> None:
        """Close the connections (a lease still held just runs out)."""
        if self._lock is not None:
            await self._lock.close()
        if self._store is not None:
            await self._store.close()


class FencedCounterClient(_Connections):
    """One worker's connections; at most one lease held at a time."""

    def __init__(self, gateways: Sequence[str], store: str, *, timeout_s: float = 2.0) -> None:
        super().__init__(gateways, store, timeout_s=timeout_s)
        self.lease: AsyncLease | None = None

    async def invoke(self, f: str, key: str, value: Any) -> Completion:
        """Run one operation; never raises."""
        return await _complete(self._invoke(f, key, value))

    async def _invoke(self, f: str, key: str, value: Any) -> Completion:
        assert self._lock is not None and self._store is not None
        if f == "acquire":
            self.lease = None
            lease = await self._lock.acquire(key, value["ttl_s"], value["wait_s"], watchdog=False)
            self.lease = lease
            deadline_ns = int(lease.deadline * 1e9)  # time.monotonic() seconds -> ns
            return Completion("ok", {"token": lease.token, "deadline": deadline_ns})
        if f == "release":
            held, self.lease = self.lease, None
            if held is None:
                raise NotOwned("no lease to release", name=key)
            await held.release()
            return Completion("ok", {"token": held.token})
        if f == "claim":
            highest = await self._store.write(key, CLAIM, str(value["token"]), token=value["token"])
            return Completion("ok", {"token": value["token"], "highest": highest})
        if f == "read":
            result = await self._store.read(key, COUNTER)
            number = int(result.value) if result.value is not None else None
            return Completion("ok", {"value": number, "highest": result.highest_token})
        if f == "write":
            highest = await self._store.write(
                key, COUNTER, str(value["value"]), token=value["token"]
            )
            return Completion("ok", {**value, "highest": highest})
        raise ValueError(f"unknown operation {f!r}")


async def _complete(operation: Coroutine[Any, Any, Completion]) -> Completion:
    """The completion of `operation`: its own, or fail/info for what it raised."""
    try:
        done = await operation
    except (LockTimeout, NotOwned, StaleToken, ValueChanged, InvalidRequest) as exc:
        done = Completion("fail", _failure_value(exc), _error(exc))
    except Unavailable as exc:
        definite = exc.reason in _DEFINITE
        done = Completion("fail" if definite else "info", None, _error(exc))
    except (LockError, StoreError) as exc:
        done = Completion("info", None, _error(exc))
    except Exception as exc:
        done = Completion("info", None, _error(exc))
    return dataclasses.replace(done, time=time.monotonic_ns())


class ElectionClient(_Connections):
    """One candidate's connections: campaign, write as leader with the term, resign.
    The leadership is kept by the client library's watchdog (the subject under test)."""

    def __init__(self, gateways: Sequence[str], store: str, *, timeout_s: float = 2.0) -> None:
        super().__init__(gateways, store, timeout_s=timeout_s)
        self.leader: AsyncLeadership | None = None

    async def invoke(self, f: str, key: str, value: Any) -> Completion:
        """Run one operation; never raises. A campaign ended by its RPC deadline rather
        than by the gateway's LOCK_HELD has an unknown outcome (`info`): the gateway may
        have granted it (and shown its record) before releasing it again."""
        return await _complete(self._invoke(f, key, value))

    async def _invoke(self, f: str, key: str, value: Any) -> Completion:
        assert self._lock is not None and self._store is not None
        if f == "campaign":
            try:
                return await self._campaign(key, value)
            except LockTimeout as exc:
                if exc.reason == "LOCK_HELD":
                    raise
                return Completion("info", None, _error(exc))
        return await self._lead(f, key, value)

    async def _campaign(self, key: str, value: Any) -> Completion:
        assert self._lock is not None
        self.leader = None
        leader = await self._lock.election(key).lead(
            value["value"].encode(), value["ttl_s"], wait=value["wait_s"]
        )
        self.leader = leader
        deadline_ns = int(leader.deadline * 1e9)
        return Completion("ok", {"term": leader.term, "deadline": deadline_ns})

    async def _lead(self, f: str, key: str, value: Any) -> Completion:
        assert self._store is not None
        if f == "elect-write":
            highest = await self._store.write(key, LEADER, value["value"], token=value["term"])
            return Completion("ok", {"term": value["term"], "highest": highest})
        if f == "resign":
            held, self.leader = self.leader, None
            if held is None:
                raise NotOwned("not leading", name=key)
            await held.resign()
            return Completion("ok", {"term": held.term})
        raise ValueError(f"unknown operation {f!r}")


def _failure_value(exc: BaseException) -> Any:
    if isinstance(exc, StaleToken):
        return {"highest": exc.highest_token}
    return None
