"""What every lockd server does the same way: parse its listen address and run until a
signal. (The gRPC servers' shared parts are in `lockd/rpc.py`; this module stays free of
grpc so that `lockd engine` starts fast.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "AcceptErrors",
    "host_port",
    "is_loopback",
    "raise_fd_limit",
    "run_until_signal",
    "watch_open_files",
]

OPEN_FILES_CHECK_S = 5.0
"""How often a server counts its open files (`watch_open_files`)."""

log = logging.getLogger("lockd")


def host_port(listen: str) -> tuple[str, int]:
    """(host, port) of a `HOST:PORT` address (`[::1]:7400` for IPv6)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address {listen!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (as Redis does at start), so
    many clients do not exhaust file descriptors; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class AcceptErrors:
    """An event-loop exception handler that reports failed accepts (out of file
    descriptors, most often) once per `interval_s` with a count, instead of a traceback
    per attempt; everything else goes to the default handler."""

    def __init__(self, what: str, interval_s: float = 10.0) -> None:
        self.what = what
        self.interval_s = interval_s
        self.count = 0
        self._last = -interval_s

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ValueError) and "_start_serving" in repr(
            context.get("handle")
        ):
            # asyncio's retry of a refused accept fired after the server closed its socket
            # (fd -1): nothing is left to serve, so nothing is lost.
            log.debug("%s: accept retry after close ignored", self.what)
            return
        if "accept" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            log.error(
                "%s cannot accept connections (%s): %d refused so far; raise the open-files "
                "limit (ulimit -n) or reduce idle clients",
                self.what,
                context.get("exception") or context.get("message"),
                self.count,
            )


async def watch_open_files(what: str, share: float = 0.9) -> None:
    """Every `OPEN_FILES_CHECK_S`, log an error while the process holds `share` of its
    open-files limit or more (new connections are about to be refused, and grpc's own
    failed accepts never reach Python), and one line when it is below again."""
    full = False
    while True:
        await asyncio.sleep(OPEN_FILES_CHECK_S)
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            held = len(os.listdir("/proc/self/fd"))
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                return  # no /proc: nothing to watch
            held = limit  # listing /proc/self/fd takes a file, and none is left
        if held >= share * limit:
            full = True
            log.error(
                "%s holds %d of its %d open files: new connections will be refused; raise "
                "the open-files limit (ulimit -n) or reduce idle clients",
                what,
                held,
                limit,
            )
        elif full:
            full = False
            log.warning("%s holds %d of its %d open files again", what, held, limit)


async def run_until_signal(
    start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[None]], what: str
) -> None:
    """Raise the open-files limit, start, wait for SIGTERM or SIGINT, then stop
    (gracefully: `stop` owns the grace). Failed accepts are logged once per interval, and
    so is an open-files count near the limit."""
    limit = raise_fd_limit()
    log.debug("%s may open %d files", what, limit)
    asyncio.get_running_loop().set_exception_handler(AcceptErrors(what))
    watcher = asyncio.create_task(watch_open_files(what))
    await start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
        log.info("%s stopping", what)
    finally:
        watcher.cancel()
        await stop()
