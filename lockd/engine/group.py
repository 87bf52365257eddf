"""Group commit for engines under `appendfsync always`, on one asyncio event loop.

A host that answers from several concurrent requests (the RESP server, the embedded
gateway) makes its writes, then awaits `GroupCommit.durable()` before answering. One
batch at a time is in flight: it writes every engine's queued records (on the loop
thread), fsyncs the engines' files in parallel in a thread pool (`os.fsync` releases
the GIL), and resolves every waiter that joined before it started. Requests that
arrive meanwhile keep being served and join the next batch, which starts as soon as
this one ends: one fsync per engine covers every write of a batch, however many
clients made them.

The rule this enforces: a waiter learns, per engine, whether every write made before
it asked is durable; False (a failed write or fsync, or any disk error standing at the
end of the batch) means the host must answer those writes with the engine's MISCONF
error, never with success.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import threading
from collections.abc import Sequence

from lockd.engine.engine import Engine
from lockd.engine.persistence import FsyncJob, attempt

__all__ = ["GroupCommit"]

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
POOL_THREADS = 8


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's fsync threads (shared by every group; idle threads cost nothing)."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(POOL_THREADS, "lockd-fsync")
    return _POOL


class GroupCommit:
    """Batches the commits of `engines` (each under `always`); see the module docstring."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        self.engines = list(engines)
        self._waiters: list[asyncio.Future[tuple[bool, ...]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches run (each one commit, and at most one fsync, per engine)."""
        self.waits = 0
        """Calls to `durable()`: the commits that would have run without batching."""
        self.fsync_jobs = 0
        """fsyncs run off the event loop (at most one per engine per batch)."""
        for engine in self.engines:
            engine.settle_calls = False  # answers wait for the batch instead

    @property
    def waiting(self) -> int:
        """Waiters queued for the next batch (not yet in one)."""
        return len(self._waiters)

    @property
    def busy(self) -> bool:
        """True while a batch runs or one is about to start."""
        return self._task is not None

    def durable(self) -> asyncio.Future[tuple[bool, ...]]:
        """A future of, per engine (in `engines` order), whether every write made on it
        before this call that needs an fsync is durable (a read may have seen another
        caller's write whose batch is still in flight, as it may between any write and
        its fsync; lock safety does not rest on reads of that kind). The batch starts at
        the end of this loop turn (so requests served in the same turn join it) or when
        the batch in flight ends."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, ...]] = loop.create_future()
        self.waits += 1
        if not any(e.aof is not None and e.aof.sync_pending for e in self.engines):
            # Nothing queued needs an fsync (no writes, or only fencing records, which
            # the reservation covers): the caller's writes are durable already, or were
            # never fsynced, since each caller waits for its batch before it writes again.
            future.set_result(self._written())
            return future
        self._waiters.append(future)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return future

    async def drain(self) -> None:
        """Wait until no batch runs (before closing the engines); a batch that failed or
        was cancelled does not raise here."""
        while self._task is not None:
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                try:
                    results = await self._batch()
                except BaseException as exc:
                    for waiter in waiters:
                        if waiter.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            waiter.cancel()
                        else:
                            waiter.set_exception(exc)
                    raise
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(results)
        finally:
            self._task = None

    def _written(self) -> tuple[bool, ...]:
        """Hand every engine's queued records to the OS (no fsync is due): per engine,
        whether that worked and no disk error stands."""
        return tuple(e.commit_write() is True and e.disk_error is None for e in self.engines)

    async def _batch(self) -> tuple[bool, ...]:
        """Write every engine's queued records, fsync those that need it in parallel, and
        return per engine whether all of it is durable."""
        self.batches += 1
        steps = [engine.commit_write() for engine in self.engines]
        jobs = [(i, step) for i, step in enumerate(steps) if not isinstance(step, bool)]
        if jobs:
            self.fsync_jobs += len(jobs)
            synced = await _in_parallel([(self.engines[i], job) for i, job in jobs])
            for (i, _), ok in zip(jobs, synced, strict=True):
                steps[i] = ok
        return tuple(
            step is True and engine.disk_error is None
            for step, engine in zip(steps, self.engines, strict=True)
        )


def _in_parallel(jobs: list[tuple[Engine, FsyncJob]]) -> asyncio.Future[list[bool]]:
    """Run the engines' fsync jobs on the fsync threads at once; a future of each
    engine's `commit_synced()`. The last job to finish wakes the event loop, once for
    the whole batch, and the outcomes reach the engines then even if nobody awaits the
    future any more (a cancelled batch leaves no job unreported)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[bool]] = loop.create_future()
    errors: list[OSError | None] = [None] * len(jobs)
    left = [len(jobs)]
    lock = threading.Lock()

    def run(i: int, job: FsyncJob) -> None:
        try:
            errors[i] = attempt(job)
        except BaseException as exc:  # never leave the batch waiting
            errors[i] = OSError(errno.EIO, f"fsync job failed: {exc!r}")
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            loop.call_soon_threadsafe(report)

    def report() -> None:
        synced = [engine.commit_synced(e) for (engine, _), e in zip(jobs, errors, strict=True)]
        if not future.done():
            future.set_result(synced)

    pool = _pool()
    for i, (_, job) in enumerate(jobs):
        pool.submit(run, i, job)
    return future
