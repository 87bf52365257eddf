"""The fenced key-value store: request checks, the token rule, group commit.

Writes are queued and committed by one writer task: it takes everything queued, decides
each write in order against the committed state plus the earlier writes of the batch,
appends the accepted ones to the log with one fsync (in a thread, so writes arriving
meanwhile form the next batch), then applies them and answers every write of the batch.
Reads see only committed state: an acknowledged write is visible to every later read,
a write still being fsynced to none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import grpc

from lockd.errors import ErrorReason, LockdError, invalid, unavailable
from lockd.store.log import Entry, State, StoreLog, encode_reset, encode_write

__all__ = [
    "DEFAULT_COMPACT_MIN_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "MAX_KEY_BYTES",
    "MAX_RESOURCE_BYTES",
    "FencedStore",
]

log = logging.getLogger("lockd.store")

DEFAULT_MAX_VALUE_BYTES = 1 << 20
DEFAULT_COMPACT_MIN_BYTES = 64 << 20
MAX_RESOURCE_BYTES = 256
MAX_KEY_BYTES = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class _Write:
    """One queued write; `expected` is set for compare-and-set (None: must be absent)."""

    resource: str
    key: str
    value: bytes
    token: int
    cas: bool = False
    expected: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Reset:
    """An admin's fence reset of `resource`, by `who` (queued like a write, for order)."""

    resource: str
    who: str


def _stale(w: _Write, highest: int) -> LockdError:
    return LockdError(
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.STALE_TOKEN,
        f"token {w.token} is stale for resource {w.resource!r}: token {highest} was already "
        "accepted",
        highest_token=str(highest),
        token=str(w.token),
    )


def _changed(w: _Write, current: Entry | None, highest: int) -> LockdError:
    now = "has no value" if current is None else f"holds a {len(current.value)}-byte value"
    want = "no value" if w.expected is None else f"a {len(w.expected)}-byte value"
    return LockdError(
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.VALUE_CHANGED,
        f"key {w.key!r} of resource {w.resource!r} {now}; the request expected {want}",
        found=str(current is not None).lower(),
        current_length=str(len(current.value) if current else 0),
        highest_token=str(highest),
    )


class FencedStore:
    """Values under (resource, key), fenced per resource by the highest accepted token.

    `open()` replays the log and starts the writer; `close()` commits what is queued and
    closes the log. Errors are `LockdError`s (the servicer turns them into statuses).
    """

    def __init__(
        self,
        directory: Path,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        check_tokens: bool = True,
    ) -> None:
        if max_value_bytes < 0:
            raise ValueError("max_value_bytes must be >= 0")
        self.max_value_bytes = max_value_bytes
        self.compact_min_bytes = compact_min_bytes
        self.check_tokens = check_tokens
        """False only to show what fencing saves (`lockd store --unsafe-no-token-check`)."""
        self.log = StoreLog(directory)
        self.state = State()
        self.writes = 0  # accepted writes since open
        self._queue: list[tuple[_Write | _Reset, asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._failed: str | None = None
        self._compact_at = compact_min_bytes  # log size before which we do not compact

    async def open(self) -> None:
        """Replay the log and start accepting writes."""
        self.state = await asyncio.to_thread(self.log.open)
        self._writer = asyncio.create_task(self._run(), name="lockd-store-writer")

    async def close(self) -> None:
        """Commit the queued writes, stop the writer, close the log."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        self.log.close()

    # -- the API ---------------------------------------------------------------------------

    def read(self, resource: str, key: str) -> tuple[bytes | None, int]:
        """(the key's value or None, the resource's highest token)."""
        self._check_names(resource, key)
        entry = self.state.values.get((resource, key))
        return (entry.value if entry else None), self.state.highest.get(resource, 0)

    async def write(self, resource: str, key: str, value: bytes, token: int) -> int:
        """Store `value` unless `token` is stale; returns the resource's highest token."""
        return await self._submit(_Write(resource, key, value, token))

    async def compare_and_set(
        self, resource: str, key: str, expected: bytes | None, value: bytes, token: int
    ) -> int:
        """Like `write`, if the key now holds `expected` (None: holds nothing)."""
        return await self._submit(_Write(resource, key, value, token, True, expected))

    async def reset_fence(self, resource: str, who: str) -> int:
        """Set the resource's highest token back to 0 (its values stay), so that writers
        are accepted again after a token too high for any lock to reach (2^64-1 locks
        every writer out for good); persisted in the log and logged at WARNING with
        `who`. Returns the highest token it replaced. Admin only: the servicer checks the
        credential."""
        self._check_names(resource, None)
        return await self._enqueue(_Reset(resource, who))

    # -- checks ----------------------------------------------------------------------------

    @staticmethod
    def _check_names(resource: str, key: str | None) -> None:
        names = [("resource", resource, MAX_RESOURCE_BYTES)]
        if key is not None:
            names.append(("key", key, MAX_KEY_BYTES))
        for what, name, limit in names:
            if not name:
                raise invalid(ErrorReason.BAD_REQUEST, f"{what} must not be empty")
            if len(name.encode()) > limit:
                raise invalid(ErrorReason.BAD_REQUEST, f"{what} is longer than {limit} bytes")

    def _check(self, w: _Write) -> None:
        self._check_names(w.resource, w.key)
        if w.token <= 0 or w.token >= 1 << 64:
            raise invalid(ErrorReason.BAD_REQUEST, f"token must be 1 to 2^64-1, not {w.token}")
        if len(w.value) > self.max_value_bytes:
            raise invalid(
                ErrorReason.BAD_REQUEST,
                f"value is {len(w.value)} bytes; this store takes at most {self.max_value_bytes}",
            )

    # -- group commit ----------------------------------------------------------------------

    async def _submit(self, w: _Write) -> int:
        self._check(w)
        return await self._enqueue(w)

    async def _enqueue(self, w: _Write | _Reset) -> int:
        if self._failed is not None:
            raise unavailable(ErrorReason.STORE_FAILED, self._failed)
        if self._closing or self._writer is None:
            raise unavailable(ErrorReason.SHUTTING_DOWN, "the store is not open")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((w, future))
        self._wakeup.set()
        # A cancelled caller does not withdraw its write: it may still be committed.
        return await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._queue = self._queue, []
            if batch:
                try:
                    await self._commit(batch)
                except Exception as exc:  # a bug: fail loudly, never leave callers hanging
                    log.exception("store writer failed")
                    self._failed = f"the store failed ({exc!r}); restart the store"
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(
                                unavailable(ErrorReason.STORE_FAILED, self._failed)
                            )
            elif self._closing:
                return
            if self._closing:
                self._wakeup.set()  # drain until nothing is left

    async def _commit(self, batch: list[tuple[_Write | _Reset, asyncio.Future[int]]]) -> None:
        state = self.state
        highest: dict[str, int] = {}  # this batch's view on top of the committed state
        current: dict[tuple[str, str], Entry | None] = {}
        accepted: list[tuple[_Write | _Reset, bytes]] = []
        outcomes: list[int | LockdError] = []
        old_tops: list[int] = []  # each reset's replaced highest token, in order
        for w, _ in batch:
            top = highest.get(w.resource, state.highest.get(w.resource, 0))
            if isinstance(w, _Reset):
                old_tops.append(top)
                highest[w.resource] = 0
                accepted.append((w, encode_reset(w.resource)))
                outcomes.append(top)
                continue
            if w.token < top and self.check_tokens:
                outcomes.append(_stale(w, top))
                continue
            where = (w.resource, w.key)
            now = current[where] if where in current else state.values.get(where)
            if w.cas and (now.value if now else None) != w.expected:
                outcomes.append(_changed(w, now, top))
                continue
            record = encode_write(w.resource, w.key, w.value, w.token)
            highest[w.resource] = max(top, w.token)
            current[where] = Entry(w.value, w.token, len(record))
            accepted.append((w, record))
            outcomes.append(highest[w.resource])
        if self._failed is None and accepted:
            try:
                await asyncio.to_thread(self.log.append, [r for _, r in accepted])
            except Exception as exc:  # any failure leaves the log's tail unknown
                self._failed = f"the store log could not be written ({exc}); restart the store"
                log.error("store log %s: %s", self.log.path, self._failed)
        if self._failed is not None:
            outcomes = [unavailable(ErrorReason.STORE_FAILED, self._failed) for _ in batch]
        else:
            replaced = iter(old_tops)
            for w, record in accepted:
                if isinstance(w, _Reset):
                    state.reset(w.resource)
                    log.warning(
                        "fence of resource %r reset by %s: highest token %s -> 0; writers with "
                        "any token are accepted again",
                        w.resource,
                        w.who,
                        next(replaced),
                    )
                else:
                    state.apply(w.resource, w.key, w.value, w.token, len(record))
            self.writes += len(accepted)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, LockdError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._failed is None and self._should_compact():
            await self._compact()

    def _should_compact(self) -> bool:
        size = self.log.size
        return size >= self._compact_at and size >= 2 * self.state.live_bytes

    async def _compact(self) -> None:
        entries = list(self.state.values.items())  # unchanged while we wait: we are the writer
        try:
            await asyncio.to_thread(self.log.compact, entries)
        except Exception as exc:
            log.error("store log %s: compaction failed: %s", self.log.path, exc)
            self._compact_at = self.log.size + self.compact_min_bytes  # not at every write
            if not self.log.usable:
                self._failed = f"the store log could not be reopened ({exc}); restart the store"
