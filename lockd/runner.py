"""`lockd run NAME -- CMD`: run a command while holding a lock; `lockd elect NAME VALUE
-- CMD`: run it while leading an election.

The lease (the leadership) is renewed by the client library's watchdog. If it is lost,
CMD gets SIGTERM at once and SIGKILL when the lease's deadline arrives (never later),
and the command exits with `exits.LEASE_LOST` after at most `RELEASE_AFTER_LOSS_S` more
spent trying to release it (a courtesy: its TTL frees the lock anyway; a gateway that
cannot be reached must not keep it waiting out the client timeout). SIGINT and SIGTERM
are forwarded to CMD. The lock is released (the leader resigns) when CMD exits. CMD
sees `LOCKD_FENCING_TOKEN` and `LOCKD_LOCK_NAME` in its environment; under `lockd elect`
also `LOCKD_TERM` (the same number) and `LOCKD_ELECTION`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence

from lockd import exits
from lockd_client import AsyncClient, AsyncLease, LockError

__all__ = ["RELEASE_AFTER_LOSS_S", "run_as_leader", "run_under_lock"]

RELEASE_AFTER_LOSS_S = 1.0
"""The longest a release of a lease no longer held may take."""


async def _spinner(client: AsyncClient, name: str) -> None:
    """While waiting on a terminal: a spinner and how many wait at this gateway."""
    frames = "|/-\\"
    for i in range(10**9):
        waiting = ""
        if i % 5 == 0:
            with contextlib.suppress(LockError):
                info = await client.describe(name)
                waiting = f" ({info.waiters} waiting at the gateway)" if info.waiters else ""
        sys.stderr.write(f"\r{frames[i % 4]} waiting for lock {name!r}{waiting}   ")
        sys.stderr.flush()
        await asyncio.sleep(0.1)


async def _acquire(
    client: AsyncClient, name: str, ttl: float, wait: float, lost: asyncio.Event
) -> AsyncLease:
    spinner = None
    if sys.stderr.isatty() and wait > 0:
        spinner = asyncio.create_task(_spinner(client, name))
    try:
        return await client.acquire(name, ttl, wait, on_lost=lambda _: lost.set())
    finally:
        if spinner is not None:
            spinner.cancel()
            sys.stderr.write("\r\033[K")


async def run_under_lock(
    client: AsyncClient, name: str, ttl: float, wait: float, argv: Sequence[str]
) -> int:
    """Hold `name` while `argv` runs; returns the exit status (see module doc)."""
    lost = asyncio.Event()
    try:
        lease = await _acquire(client, name, ttl, wait, lost)
    except LockError as exc:
        print(f"lockd run: {exc}", file=sys.stderr)
        return exits.for_error(exc)
    env = {"LOCKD_FENCING_TOKEN": str(lease.token), "LOCKD_LOCK_NAME": name}
    return await _run_holding(lease, lost, argv, env, "lockd run")


async def run_as_leader(
    client: AsyncClient,
    election: str,
    value: bytes,
    ttl: float,
    wait: float | None,
    argv: Sequence[str],
) -> int:
    """Lead `election` (waiting up to `wait` seconds, None: no limit) while `argv` runs;
    returns the exit status as `run_under_lock`."""
    lost = asyncio.Event()
    try:
        leader = await client.election(election).lead(
            value, ttl, wait=wait, on_lost=lambda _: lost.set()
        )
    except LockError as exc:
        print(f"lockd elect: {exc}", file=sys.stderr)
        return exits.for_error(exc)
    env = {
        "LOCKD_TERM": str(leader.term),
        "LOCKD_FENCING_TOKEN": str(leader.term),
        "LOCKD_ELECTION": election,
        "LOCKD_LOCK_NAME": leader.name,
    }
    return await _run_holding(leader, lost, argv, env, "lockd elect")


async def _run_holding(
    lease: AsyncLease,
    lost: asyncio.Event,
    argv: Sequence[str],
    extra_env: dict[str, str],
    prog: str,
) -> int:
    """Run `argv` while `lease` is held; release it at the end."""
    env = dict(os.environ, **extra_env)
    loop = asyncio.get_running_loop()
    # Signals are caught before CMD starts (and passed on once it has), so none can
    # kill `lockd run` and leave CMD running without anyone holding its lock.
    received: list[int] = []
    proc: asyncio.subprocess.Process | None = None

    def on_signal(sig: int) -> None:
        if proc is None:
            received.append(sig)
        else:
            _forward(proc, sig)

    for sig in _FORWARDED:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env)
        except OSError as exc:
            print(f"{prog}: cannot run {argv[0]!r}: {exc}", file=sys.stderr)
            return exits.CANNOT_RUN
        for pending in received:
            _forward(proc, pending)
        return await _supervise(proc, lease, lost, prog)
    finally:
        for sig in _FORWARDED:
            loop.remove_signal_handler(sig)
        await _release(lease)


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _supervise(
    proc: asyncio.subprocess.Process, lease: AsyncLease, lost: asyncio.Event, prog: str
) -> int:
    """Wait for CMD; stop it if the lease is lost (by `on_lost`, or, should the watchdog
    ever fail silently, by the lease no longer being held)."""

    async def until_not_held() -> None:
        while lease.held:
            await asyncio.sleep(min(0.5, max(0.005, lease.remaining())))

    exited = asyncio.create_task(proc.wait())
    watchers = {asyncio.create_task(lost.wait()), asyncio.create_task(until_not_held())}
    try:
        await asyncio.wait({exited, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            return _status(exited.result())
        print(f"{prog}: lease on {lease.name!r} lost; stopping the command", file=sys.stderr)
        _forward(proc, signal.SIGTERM)
        grace = max(0.0, lease.deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(exited), grace)
        except TimeoutError:
            _forward(proc, signal.SIGKILL)
            await exited
        return exits.LEASE_LOST
    finally:
        for watcher in watchers:
            watcher.cancel()


def _forward(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _status(returncode: int) -> int:
    """A shell-style exit status: 128 + N when CMD died of signal N."""
    return 128 - returncode if returncode < 0 else returncode


async def _release(lease: AsyncLease) -> None:
    """Release the lease: with the client's timeout while it is held, and for at most
    `RELEASE_AFTER_LOSS_S` once it is not (lost, or too close to its deadline)."""
    with contextlib.suppress(LockError, TimeoutError):
        if lease.held:
            await lease.release()
        else:
            async with asyncio.timeout(RELEASE_AFTER_LOSS_S):
                await lease.release()
