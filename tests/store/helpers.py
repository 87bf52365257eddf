"""Helpers for store tests: in-process servers, a `lockd store` process, error details."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lockd.store import StoreConfig, StoreServer, create_server
from lockd_client.store import AsyncStoreClient
from tests.support import free_port, wait_for_port


@contextlib.asynccontextmanager
async def running(directory: Path, **settings: int) -> AsyncIterator[StoreServer]:
    """A started store server in this event loop on a free port, stopped at the end."""
    server, _ = await create_server(StoreConfig(directory, "127.0.0.1:0", **settings))
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


@contextlib.asynccontextmanager
async def client(
    directory: Path, **settings: int
) -> AsyncIterator[tuple[StoreServer, AsyncStoreClient]]:
    """A running server and an asyncio client connected to it."""
    async with (
        running(directory, **settings) as server,
        AsyncStoreClient(f"127.0.0.1:{server.port}", timeout=10) as c,
    ):
        yield server, c


@contextlib.contextmanager
def threaded_server(directory: Path, **settings: int) -> Iterator[StoreServer]:
    """A store server on an event loop in a background thread (for blocking clients)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="store-loop", daemon=True)
    thread.start()
    config = StoreConfig(directory, "127.0.0.1:0", **settings)
    try:
        server, _ = asyncio.run_coroutine_threadsafe(create_server(config), loop).result(10)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(grace=0.5), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class StoreProcess:
    """`lockd store` in a separate process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        command = ["store", "--listen", f"127.0.0.1:{self.port}", "--dir", str(directory)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lockd", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, self.proc)
        except BaseException:
            self.close()
            raise

    def kill(self) -> None:
        """SIGKILL: an unclean stop."""
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM: a graceful stop; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def output(self) -> str:
        """What the process printed (once it exited)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")

    def close(self) -> None:
        """Kill it if still running; close its pipe."""
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail of a failed call (the test fails without one)."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo detail")
