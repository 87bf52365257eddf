"""What every lockd server does the same way: parse its listen address and run until a
signal. (The gRPC servers' shared parts are in `lockd/rpc.py`; this module stays free of
grpc so that `lockd engine` starts fast.)"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable

__all__ = ["host_port", "is_loopback", "run_until_signal"]

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


async def run_until_signal(
    start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[None]], what: str
) -> None:
    """Start, wait for SIGTERM or SIGINT, then stop (gracefully: `stop` owns the grace)."""
    await start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
        log.info("%s stopping", what)
    finally:
        await stop()
